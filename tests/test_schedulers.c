/* Schedulers (edrv_options.schedulers): queued calls to ports of different
 * locks run side by side on different schedulers, ports of one lock never
 * do, one scheduler with immediate execution off runs every callback on one
 * thread, driver_system_info counts them, and a process's exit comes after
 * the commands it queued. Each test starts its own runtime with immediate
 * execution off, so that every call is queued to a scheduler. The drivers
 * are idrv (driver-level locking) and idrvp (the same code with
 * ERL_DRV_FLAG_USE_PORT_LOCKING), which count overlapping callbacks. */
#include "check.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>

static edrv_proc *proc;
static const char *drv_name;
static int (*gate_waiting)(void);
static void (*open_gate)(void);
static long (*driver_calls)(void);

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

static edrv_port open_port(edrv_proc *p) {
    edrv_port port = 0;
    if (edrv_open_port(p, drv_name, EDRV_PORT_BINARY, &port) != 0)
        fprintf(stderr, "open %s: %s\n", drv_name, edrv_last_error());
    return port;
}

/* Restarts the runtime with n schedulers, every call queued, and loads
 * `name` (idrv or idrvp). */
static int setup(int n, const char *name) {
    edrv_stop();
    edrv_options o = {.async_threads = 2, .no_immediate = 1, .schedulers = n};
    if (edrv_start(&o) != 0)
        return -1;
    proc = trapping_proc();
    drv_name = name;
    if (edrv_load_driver(EDRV_TEST_DRIVERS, name) != 0)
        return -1;
    char path[256];
    snprintf(path, sizeof path, "%s/%s.so", EDRV_TEST_DRIVERS, name);
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return -1;
    *(void **)&gate_waiting = dlsym(h, "idrv_gate_waiting");
    *(void **)&open_gate = dlsym(h, "idrv_open_gate");
    *(void **)&driver_calls = dlsym(h, "idrv_calls");
    dlclose(h); /* the runtime's own handle keeps it loaded */
    return gate_waiting && open_gate && driver_calls ? 0 : -1;
}

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

static void system_info_counts_schedulers(void) {
    REQUIRE(setup(3, "idrv") == 0);
    edrv_port port = open_port(proc);
    CHECK_STR(ctl(proc, port, 12, "", 0), "3");
    edrv_proc_free(proc);
    REQUIRE(setup(1, "idrv") == 0);
    port = open_port(proc);
    CHECK_STR(ctl(proc, port, 12, "", 0), "1");
    edrv_proc_free(proc);
}

static void bad_scheduler_counts(void) {
    edrv_stop();
    CHECK_INT(edrv_start(&(edrv_options){.schedulers = -1}), EDRV_EINVAL);
    CHECK_INT(edrv_start(&(edrv_options){.schedulers = 1025}), EDRV_EINVAL);
    CHECK(strstr(edrv_last_error(), "1..1024") != NULL);
    setenv("EDRV_SCHEDULERS", "0x2", 1);
    CHECK_INT(edrv_start(NULL), EDRV_EINVAL);
    CHECK(strstr(edrv_last_error(), "EDRV_SCHEDULERS") != NULL);
    unsetenv("EDRV_SCHEDULERS");
    CHECK_INT(edrv_start(NULL), 0);
}

static void default_from_the_environment(void) {
    /* edrv_options.schedulers 0: $EDRV_SCHEDULERS, else one. */
    edrv_stop();
    setenv("EDRV_SCHEDULERS", "3", 1);
    int rc = edrv_start(NULL);
    unsetenv("EDRV_SCHEDULERS");
    REQUIRE(rc == 0);
    proc = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "idrv") == 0);
    drv_name = "idrv";
    edrv_port port = open_port(proc);
    CHECK_STR(ctl(proc, port, 12, "", 0), "3");
    edrv_proc_free(proc);
    edrv_stop();
    REQUIRE(edrv_start(NULL) == 0);
    proc = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "idrv") == 0);
    port = open_port(proc);
    CHECK_STR(ctl(proc, port, 12, "", 0), "1");
    edrv_proc_free(proc);
}

/* MEET on a port, from a thread of its own; the callback's thread name. */
typedef struct {
    edrv_port port;
    char reply[32];
    char name[32];
} meet_arg;

static void *meet_thread(void *arg) {
    meet_arg *m = arg;
    edrv_proc *p = trapping_proc();
    snprintf(m->reply, sizeof m->reply, "%s", ctl(p, m->port, 11, "", 0));
    snprintf(m->name, sizeof m->name, "%s", ctl(p, m->port, 10, "", 0));
    edrv_proc_free(p);
    return NULL;
}

static void locks_run_side_by_side(void) {
    /* idrvp, two schedulers, every call queued: the two ports' locks are on
     * different schedulers (round robin), so their MEET callbacks, each of
     * which waits for the other, both run: on two scheduler threads at
     * once. With one scheduler, or one lock, they would wait forever. */
    REQUIRE(setup(2, "idrvp") == 0);
    meet_arg m[2] = {{open_port(proc), "", ""}, {open_port(proc), "", ""}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&t[i], NULL, meet_thread, &m[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_STR(m[0].reply, "met");
    CHECK_STR(m[1].reply, "met");
    CHECK(strcmp(m[0].name, m[1].name) != 0);
    CHECK(strcmp(m[0].name, "emulator") == 0 || strcmp(m[1].name, "emulator") == 0);
    CHECK(strcmp(m[0].name, "scheduler 2") == 0 || strcmp(m[1].name, "scheduler 2") == 0);
    stats st = get_stats(proc, m[0].port);
    CHECK_INT(st.overlaps, 0);
    CHECK(st.doverlaps >= 1);
    edrv_proc_free(proc);
}

/* A thread that sends commands and controls to its own port, and checks
 * every reply and message. */
enum { STRESS_OPS = 5000 };

typedef struct {
    edrv_port port;
    int bad;
    char name[32]; /* the thread that ran its last control */
} stress_arg;

static void *stress_thread(void *arg) {
    stress_arg *t = arg;
    edrv_proc *p = trapping_proc();
    if (edrv_open_port(p, drv_name, EDRV_PORT_BINARY, &t->port) != 0) {
        t->bad = -1;
        edrv_proc_free(p);
        return NULL;
    }
    char b[16];
    for (int i = 0; i < STRESS_OPS; i++) {
        int n = snprintf(b, sizeof b, "%d", i);
        if (edrv_port_command(p, t->port, b, (size_t)n) != 0) {
            t->bad++;
            continue;
        }
        if (i % 8 == 0)
            snprintf(t->name, sizeof t->name, "%s", ctl(p, t->port, 10, "", 0));
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

static void stress(int schedulers, const char *driver, stats *st, stress_arg *a) {
    REQUIRE(setup(schedulers, driver) == 0);
    edrv_port ticker = open_port(proc);
    char ms[4] = {0, 0, 0, 0};
    CHECK_STR(ctl(proc, ticker, 5, ms, 4), ""); /* a timer re-arming at 0 ms meanwhile */
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&t[i], NULL, stress_thread, &a[i]) == 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK_STR(ctl(proc, ticker, 6, "\0", 1), "");
    *st = get_stats(proc, ticker);
    CHECK_INT(a[0].bad, 0);
    CHECK_INT(a[1].bad, 0);
    CHECK_INT(st->overlaps, 0);
    CHECK(st->ticks > 0);
}

static void driver_lock_serializes_across_schedulers(void) {
    /* idrv with two schedulers: its ports share the driver's lock, and so
     * one scheduler; no two of its callbacks ever overlap, timers included. */
    stats st;
    stress_arg a[2] = {{0}};
    stress(2, "idrv", &st, a);
    CHECK_INT(st.doverlaps, 0);
    CHECK_STR(a[0].name, a[1].name);
    edrv_proc_free(proc);
}

static void port_locks_spread_over_schedulers(void) {
    /* idrvp with two schedulers: the two ports are on different
     * schedulers; every message still comes back in order. */
    stats st;
    stress_arg a[2] = {{0}};
    stress(2, "idrvp", &st, a);
    CHECK(strcmp(a[0].name, a[1].name) != 0);
    printf("port_locks_spread_over_schedulers: %ld callbacks met another of the driver\n",
           st.doverlaps);
    edrv_proc_free(proc);
}

static void one_scheduler_is_one_thread(void) {
    /* One scheduler, immediate execution off: the seed's model, every
     * callback on the emulator thread. */
    stats st;
    stress_arg a[2] = {{0}};
    stress(1, "idrvp", &st, a);
    CHECK_STR(a[0].name, "emulator");
    CHECK_STR(a[1].name, "emulator");
    CHECK_INT(st.doverlaps, 0);
    edrv_proc_free(proc);
}

static void timers_run_on_their_ports_schedulers(void) {
    /* idrvp, two schedulers: each port's timer runs on the scheduler of the
     * port's lock, one on the emulator thread, the other on the second. */
    REQUIRE(setup(2, "idrvp") == 0);
    edrv_proc *q[2] = {trapping_proc(), trapping_proc()}; /* one mailbox each */
    edrv_port p[2] = {open_port(q[0]), open_port(q[1])};
    char ms[4] = {0, 0, 0, 0};
    for (int i = 0; i < 2; i++)
        CHECK_STR(ctl(q[i], p[i], 5, ms, 4), ""); /* re-arming at 0 ms */
    for (int i = 0; i < 2; i++)
        CHECK_MSG(q[i], p[i], "{%P,{data,<<\"tick\">>}}");
    CHECK_STR(ctl(proc, p[0], 6, "\0", 1), ""); /* ticking off, for both */
    char a[32], b[32];
    snprintf(a, sizeof a, "%s", ctl(proc, p[0], 13, "", 0));
    snprintf(b, sizeof b, "%s", ctl(proc, p[1], 13, "", 0));
    CHECK(strcmp(a, b) != 0);
    CHECK(strcmp(a, "scheduler 2") == 0 || strcmp(b, "scheduler 2") == 0);
    CHECK(strcmp(a, "emulator") == 0 || strcmp(b, "emulator") == 0);
    edrv_proc_free(q[0]);
    edrv_proc_free(q[1]);
    edrv_proc_free(proc);
}

/* Frees a process from a thread of its own. */
static void *free_thread(void *arg) {
    edrv_proc_free(arg);
    return NULL;
}

static void *gate_thread(void *arg) {
    edrv_proc *p = trapping_proc();
    ctl(p, *(edrv_port *)arg, 2, "", 0);
    edrv_proc_free(p);
    return NULL;
}

static void exit_follows_queued_commands(void) {
    /* A process queues commands to its port behind a callback that waits at
     * the gate, then ends: the commands reach the driver before the
     * process's exit closes the port, whenever the gate opens. */
    REQUIRE(setup(2, "idrvp") == 0);
    edrv_proc *owner = trapping_proc();
    edrv_port port = open_port(owner);
    pthread_t g, f;
    REQUIRE(pthread_create(&g, NULL, gate_thread, &port) == 0);
    REQUIRE(WAIT_UNTIL(gate_waiting()));
    long before = driver_calls();
    enum { N = 100 };
    for (int i = 0; i < N; i++)
        CHECK_INT(edrv_port_command(owner, port, "x", 1), 0);
    CHECK_INT(driver_calls(), before); /* all queued behind the gate */
    REQUIRE(pthread_create(&f, NULL, free_thread, owner) == 0);
    open_gate();
    pthread_join(f, NULL);
    pthread_join(g, NULL);
    CHECK_INT(driver_calls() - before, N);
    edrv_port_status s;
    CHECK_INT(edrv_port_info(port, &s), EDRV_ECLOSED);
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"system_info_counts_schedulers", system_info_counts_schedulers},
    {"bad_scheduler_counts", bad_scheduler_counts},
    {"default_from_the_environment", default_from_the_environment},
    {"locks_run_side_by_side", locks_run_side_by_side},
    {"driver_lock_serializes_across_schedulers", driver_lock_serializes_across_schedulers},
    {"port_locks_spread_over_schedulers", port_locks_spread_over_schedulers},
    {"one_scheduler_is_one_thread", one_scheduler_is_one_thread},
    {"exit_follows_queued_commands", exit_follows_queued_commands},
    {"timers_run_on_their_ports_schedulers", timers_run_on_their_ports_schedulers},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    return run_tests(cases, argc, argv);
}
