/* Immediate execution: a host thread runs its own call's callback when the
 * port's unit is free and nothing it queued is in flight (src/loop.c), and
 * queues it otherwise; either way a thread's calls keep their order. Locking
 * levels: the ports of a driver run one callback at a time, unless it set
 * ERL_DRV_FLAG_USE_PORT_LOCKING; then each port does. The drivers, idrv and
 * idrvp (the same code with the flag), count overlapping callbacks, of one
 * port and of the whole driver. */
#define _GNU_SOURCE /* gettid */
#include "check.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

static edrv_proc *proc;
static int (*gate_waiting)(void);
static void (*open_gate)(void);
static long (*driver_calls)(void);
static const char *drv_name = "idrv";

static const char *ctl(edrv_proc *p, edrv_port port, unsigned op, const char *data, size_t len) {
    static _Thread_local char out[128];
    edrv_reply r;
    int rc = edrv_port_control(p, port, op, data, len, &r);
    if (rc < 0)
        snprintf(out, sizeof out, "error:%s", edrv_err_name(rc));
    else
        snprintf(out, sizeof out, "%.*s", (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static edrv_port open_idrv(edrv_proc *p) {
    edrv_port port = 0;
    if (edrv_open_port(p, drv_name, EDRV_PORT_BINARY, &port) != 0)
        fprintf(stderr, "open %s: %s\n", drv_name, edrv_last_error());
    return port;
}

/* Loads `name` (idrv or idrvp): open_idrv opens its ports from then on. */
static int setup_driver(const char *name) {
    proc = trapping_proc();
    drv_name = name;
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, name);
    char path[256];
    snprintf(path, sizeof path, "%s/%s.so", EDRV_TEST_DRIVERS, name);
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    gate_waiting = NULL;
    open_gate = NULL;
    driver_calls = NULL;
    if (h) {
        *(void **)&gate_waiting = dlsym(h, "idrv_gate_waiting");
        *(void **)&open_gate = dlsym(h, "idrv_open_gate");
        *(void **)&driver_calls = dlsym(h, "idrv_calls");
        dlclose(h); /* the runtime's own handle keeps it loaded */
    }
    return rc == 0 && gate_waiting && open_gate && driver_calls ? 0 : -1;
}

static int setup(void) {
    return setup_driver("idrv");
}

/* STATS: the driver's counts. */
typedef struct {
    long calls, overlaps, ticks, doverlaps;
} stats;

static stats get_stats(edrv_proc *p, edrv_port port) {
    stats st = {-1, -1, -1, -1};
    const char *s = ctl(p, port, 7, "", 0);
    if (sscanf(s, "calls=%ld,overlaps=%ld,ticks=%ld,doverlaps=%ld", &st.calls, &st.overlaps,
               &st.ticks, &st.doverlaps) != 4)
        fprintf(stderr, "STATS: %s\n", s);
    return st;
}

static long my_tid(void) {
    return (long)gettid();
}

static void runs_in_the_caller(void) {
    /* SIGPIPE is ignored (main): this thread may run driver code, and does
     * once the emulator thread has gone back to sleep after the calls that
     * were queued to it (it holds the lock while it works): within 60 s of
     * tries, as a bound for a broken build, not a timing. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc);
    long tid = 0;
    for (int i = 0; i < 12000 && (tid = atol(ctl(proc, port, 1, "", 0))) != my_tid(); i++)
        usleep(5000);
    CHECK_INT(tid, my_tid());
    edrv_proc_free(proc);
}

static void queued_model(void) {
    /* One scheduler, no_immediate: every callback on the emulator thread. */
    CHECK_INT(edrv_stop(), 0);
    REQUIRE(edrv_start(&(edrv_options){.async_threads = 2, .no_immediate = 1, .schedulers = 1}) == 0);
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc);
    long tid = atol(ctl(proc, port, 1, "", 0));
    CHECK(tid > 0 && tid != my_tid());
    CHECK_STR(ctl(proc, port, 10, "", 0), "emulator");
    edrv_proc_free(proc);
}

/* A thread that calls GATE: it holds the emulator lock until the gate opens. */
static void *gate_thread(void *arg) {
    edrv_proc *p = trapping_proc();
    edrv_port port = *(edrv_port *)arg;
    ctl(p, port, 2, "", 0);
    edrv_proc_free(p);
    return NULL;
}

/* Waits until the GATE callback is inside (60 s bound, not a timing). */
static int wait_gate(void) {
    for (int i = 0; i < 12000; i++) {
        if (gate_waiting())
            return 0;
        usleep(5000);
    }
    return -1;
}

static void order_with_queued_work(void) {
    /* While another thread holds the lock in a callback, this thread's
     * commands queue; once it is let go, later commands may run at once.
     * The outputs come back in the order sent, whichever way each went. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc), gated = open_idrv(proc);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, gate_thread, &gated) == 0);
    REQUIRE(wait_gate() == 0);
    enum { N = 2000 };
    char b[16];
    for (int i = 0; i < N; i++) {
        if (i == N / 4)
            open_gate(); /* the rest race with the queue being drained */
        int n = snprintf(b, sizeof b, "%d", i);
        CHECK_INT(edrv_port_command(proc, port, b, (size_t)n), 0);
    }
    pthread_join(t, NULL);
    int next = 0, bad = 0;
    for (int i = 0; i < N; i++) {
        edrv_msg m;
        if (edrv_receive(proc, 30000, &m) != 0)
            break;
        /* {Port, {data, <<"i">>}}: the digits are the message's tail. */
        int k = 0, at = (int)m.len;
        while (at > 0 && m.data[at - 1] >= '0' && m.data[at - 1] <= '9')
            at--;
        for (; at < (int)m.len; at++)
            k = k * 10 + (m.data[at] - '0');
        bad += k != next;
        next = k + 1;
        edrv_msg_free(&m);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(next, N);
    stats st = get_stats(proc, port);
    CHECK_INT(st.overlaps, 0);
    CHECK_INT(st.doverlaps, 0);
    edrv_proc_free(proc);
}

static void control_while_timers_run(void) {
    /* The emulator thread runs a timer that keeps re-arming itself at 0 ms
     * while this thread makes controls, which run here when they can: the
     * driver never sees two callbacks at once. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc), ticker = open_idrv(proc);
    char ms[4] = {0, 0, 0, 0};
    CHECK_STR(ctl(proc, ticker, 5, ms, 4), "");
    long here = 0;
    for (int i = 0; i < 20000; i++)
        here += atol(ctl(proc, port, 1, "", 0)) == my_tid();
    CHECK_STR(ctl(proc, ticker, 6, "\0", 1), "");
    stats st = get_stats(proc, port);
    CHECK_INT(st.overlaps, 0);
    CHECK_INT(st.doverlaps, 0);
    CHECK(st.ticks > 0);
    printf("control_while_timers_run: %ld of 20000 controls ran in the caller, %ld ticks\n",
           here, st.ticks);
    edrv_proc_free(proc);
}

static void closed_by_its_own_callback(void) {
    /* A callback run in the caller ends its own port: the control still
     * replies, the owner gets the exit signal, and the port is closed. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc);
    CHECK_STR(ctl(proc, port, 4, "", 0), "ok");
    CHECK_MSG(proc, port, "{'EXIT',%P,closed_by_itself}");
    CHECK_INT(edrv_port_command(proc, port, "x", 1), EDRV_ECLOSED);
    CHECK_STR(ctl(proc, port, 1, "", 0), "error:badarg");
    edrv_proc_free(proc);
}

static void callback_sends_to_another_port(void) {
    /* A callback that sends to another port through edrv.h holds the
     * emulator lock already: the command runs in place, inside it, rather
     * than waiting for itself; its output reaches the other port's owner. */
    REQUIRE(setup() == 0);
    edrv_proc *other = trapping_proc();
    edrv_port a = open_idrv(proc), b = open_idrv(other);
    char buf[16 + 5];
    memcpy(buf, &other, 8);
    uint64_t to = b;
    memcpy(buf + 8, &to, 8);
    memcpy(buf + 16, "via a", 5);
    CHECK_STR(ctl(proc, a, 9, buf, sizeof buf), "0");
    CHECK_MSG(other, b, "{%P,{data,<<\"via a\">>}}");
    CHECK_INT(edrv_proc_free(other), 0); /* b ends with its owner */
    edrv_port_status st;
    CHECK_INT(edrv_port_info(b, &st), EDRV_ECLOSED);
    edrv_proc_free(proc);
}

static void busy_port(void) {
    /* Admission comes before the lock: a busy port refuses a nosuspend
     * command at once, and takes it once not busy. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc);
    CHECK_STR(ctl(proc, port, 8, "\1", 1), "");
    struct iovec v = {"x", 1};
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), EDRV_EBUSY);
    CHECK_STR(ctl(proc, port, 8, "\0", 1), "");
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), 0);
    CHECK_MSG(proc, port, "{%P,{data,<<\"x\">>}}");
    edrv_proc_free(proc);
}

typedef struct {
    edrv_port port;
    bool expect_queued;
    long tid, callback_tid;
} tids;

static void *tid_thread(void *arg) {
    tids *t = arg;
    edrv_proc *p = trapping_proc();
    t->tid = my_tid();
    for (int i = 0; i < 12000; i++) { /* as in runs_in_the_caller */
        t->callback_tid = atol(ctl(p, t->port, 1, "", 0));
        if (t->callback_tid == t->tid || t->expect_queued)
            break;
        usleep(5000);
    }
    edrv_proc_free(p);
    return NULL;
}

static void sigpipe_default_queues(void) {
    /* A thread where SIGPIPE would kill never runs driver code itself (it
     * is looked at on a thread's first call: a new thread, here); one that
     * blocks SIGPIPE does. */
    REQUIRE(setup() == 0);
    edrv_port port = open_idrv(proc);
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
    sigaction(SIGPIPE, &dfl, &old);
    tids t = {port, true, 0, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, tid_thread, &t) == 0);
    pthread_join(th, NULL);
    CHECK(t.callback_tid > 0 && t.callback_tid != t.tid);
    sigset_t pipe, before;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &before); /* inherited by the thread */
    t = (tids){port, false, 0, 0};
    REQUIRE(pthread_create(&th, NULL, tid_thread, &t) == 0);
    pthread_join(th, NULL);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    CHECK_INT(t.callback_tid, t.tid);
    sigaction(SIGPIPE, &old, NULL);
    edrv_proc_free(proc);
}

static void port_locking_runs_ports_side_by_side(void) {
    /* idrvp: while a callback of one port waits at the gate (another thread
     * runs it), this thread's control, command and timer on another port
     * run, the first two in this thread; so the driver saw two of its
     * callbacks at once. Serialized ports would never return from the
     * control. */
    REQUIRE(setup_driver("idrvp") == 0);
    edrv_port gated = open_idrv(proc), port = open_idrv(proc);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, gate_thread, &gated) == 0);
    REQUIRE(wait_gate() == 0);
    CHECK_INT(atol(ctl(proc, port, 1, "", 0)), my_tid());
    CHECK_INT(edrv_port_command(proc, port, "side", 4), 0);
    CHECK_MSG(proc, port, "{%P,{data,<<\"side\">>}}");
    char ms[4] = {0, 0, 0, 0};
    CHECK_STR(ctl(proc, port, 6, "\0", 1), ""); /* one tick, no re-arming */
    CHECK_STR(ctl(proc, port, 5, ms, 4), "");
    CHECK_STR(ctl(proc, port, 6, "\0", 1), "");
    CHECK_MSG(proc, port, "{%P,{data,<<\"tick\">>}}");
    CHECK_INT(gate_waiting(), 1); /* all of it while the gate stayed shut */
    open_gate();
    pthread_join(t, NULL);
    stats st = get_stats(proc, port);
    CHECK_INT(st.overlaps, 0);
    CHECK(st.doverlaps >= 4);
    edrv_proc_free(proc);
}

static void driver_locking_serializes_ports(void) {
    /* idrv: while a callback of one port waits at the gate, a command to
     * another port of the driver does not run (it returns, queued), and a
     * control from another thread waits; both run once the gate opens. */
    REQUIRE(setup() == 0);
    edrv_port gated = open_idrv(proc), port = open_idrv(proc);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, gate_thread, &gated) == 0);
    REQUIRE(wait_gate() == 0);
    long before = driver_calls();
    CHECK_INT(edrv_port_command(proc, port, "later", 5), 0);
    CHECK_INT(driver_calls(), before); /* not run: queued */
    CHECK_INT(gate_waiting(), 1);
    open_gate();
    pthread_join(t, NULL);
    CHECK_MSG(proc, port, "{%P,{data,<<\"later\">>}}");
    stats st = get_stats(proc, port);
    CHECK_INT(st.overlaps, 0);
    CHECK_INT(st.doverlaps, 0);
    edrv_proc_free(proc);
}

/* ---- two threads, each on its own port, with a timer ticking on a third */

enum { STRESS_OPS = 20000 };

typedef struct {
    edrv_port port;
    long here;  /* controls that ran in this thread */
    int bad;    /* replies or messages that were not what was sent */
} stress_thread;

static void *stress_main(void *arg) {
    stress_thread *t = arg;
    edrv_proc *p = trapping_proc();
    if (edrv_open_port(p, drv_name, EDRV_PORT_BINARY, &t->port) != 0) {
        t->bad = -1;
        edrv_proc_free(p);
        return NULL;
    }
    char b[16];
    for (int i = 0; i < STRESS_OPS; i++) {
        t->here += atol(ctl(p, t->port, 1, "", 0)) == my_tid();
        int n = snprintf(b, sizeof b, "%d", i);
        if (edrv_port_command(p, t->port, b, (size_t)n) != 0) {
            t->bad++;
            continue;
        }
        edrv_msg m;
        if (edrv_receive(p, 30000, &m) != 0) {
            t->bad++;
            continue;
        }
        t->bad += m.len < (size_t)n || memcmp(m.data + m.len - (size_t)n, b, (size_t)n) != 0;
        edrv_msg_free(&m);
    }
    edrv_proc_free(p);
    return NULL;
}

static void two_threads(const char *driver) {
    REQUIRE(setup_driver(driver) == 0);
    edrv_port ticker = open_idrv(proc);
    char ms[4] = {0, 0, 0, 0};
    CHECK_STR(ctl(proc, ticker, 5, ms, 4), "");
    stress_thread t[2] = {{0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&th[i], NULL, stress_main, &t[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_STR(ctl(proc, ticker, 6, "\0", 1), "");
    stats st = get_stats(proc, ticker);
    CHECK_INT(t[0].bad, 0);
    CHECK_INT(t[1].bad, 0);
    CHECK_INT(st.overlaps, 0);
    if (strcmp(driver, "idrv") == 0)
        CHECK_INT(st.doverlaps, 0);
    printf("%s, two threads: %ld and %ld of %d controls ran in the caller, %ld ticks, "
           "%ld callbacks met another of the driver\n", driver, t[0].here, t[1].here,
           STRESS_OPS, st.ticks, st.doverlaps);
    edrv_proc_free(proc);
}

static void two_threads_driver_locking(void) {
    two_threads("idrv");
}

static void two_threads_port_locking(void) {
    two_threads("idrvp");
}

static const test_case cases[] = {
    {"runs_in_the_caller", runs_in_the_caller},
    {"queued_model", queued_model},
    {"order_with_queued_work", order_with_queued_work},
    {"control_while_timers_run", control_while_timers_run},
    {"closed_by_its_own_callback", closed_by_its_own_callback},
    {"callback_sends_to_another_port", callback_sends_to_another_port},
    {"busy_port", busy_port},
    {"sigpipe_default_queues", sigpipe_default_queues},
    {"port_locking_runs_ports_side_by_side", port_locking_runs_ports_side_by_side},
    {"driver_locking_serializes_ports", driver_locking_serializes_ports},
    {"two_threads_driver_locking", two_threads_driver_locking},
    {"two_threads_port_locking", two_threads_port_locking},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* as ERTS: host threads may run driver code */
    return run_tests(cases, argc, argv);
}
