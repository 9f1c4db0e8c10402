/* Back-pressure: busy ports suspend senders, nosuspend and force, the busy
 * message queue, and port_control is never blocked. */
#include "check.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static edrv_proc *proc;
static edrv_port port;

static const char *ctl(edrv_proc *p, unsigned op, const char *data, size_t len) {
    static __thread char out[64];
    edrv_reply r;
    int rc = edrv_port_control(p, port, op, data, len, &r);
    snprintf(out, sizeof out, "%.*s", rc < 0 ? 0 : (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static int setup(void) {
    proc = trapping_proc();
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv");
    return rc ? rc : edrv_open_port(proc, "tdrv", 0, &port);
}

static _Atomic int sent;

static void *sender(void *arg) {
    edrv_proc *p = arg;
    if (edrv_port_command(p, port, "late", 4) == 0)
        atomic_store(&sent, 1);
    return NULL;
}

static void busy_suspends(void) {
    REQUIRE(setup() == 0);
    ctl(proc, 74, "\x01", 1); /* busy */
    struct iovec v = {"x", 1};
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), EDRV_EBUSY);
    CHECK_STR(edrv_err_name(EDRV_EBUSY), "busy");
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_FORCE), EDRV_ENOTSUP);
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, 0x80), EDRV_EINVAL);
    edrv_proc *other = trapping_proc();
    atomic_store(&sent, 0);
    pthread_t t;
    pthread_create(&t, NULL, sender, other);
    edrv_proc_status st = {0};
    WAIT_UNTIL(edrv_proc_info(other, &st) == 0 && st.suspended == 1);
    CHECK_INT(st.suspended, 1);             /* suspended (process_info) */
    CHECK_INT(atomic_load(&sent), 0);
    CHECK_STR(ctl(proc, 1, "ok", 2), "ok"); /* control is not blocked */
    ctl(proc, 74, "\x00", 1);                /* not busy: the sender goes on */
    pthread_join(t, NULL);
    CHECK_INT(atomic_load(&sent), 1);
    CHECK_MSG(proc, port, "{%P,{data,\"out:late\"}}");
    edrv_proc_free(other);
    edrv_proc_free(proc);
}

static void busy_port_closes(void) {
    /* A sender waiting on a busy port that closes gets an error, not a hang. */
    REQUIRE(setup() == 0);
    ctl(proc, 74, "\x01", 1);
    edrv_proc *other = trapping_proc();
    atomic_store(&sent, 0);
    pthread_t t;
    pthread_create(&t, NULL, sender, other);
    edrv_proc_status st = {0};
    WAIT_UNTIL(edrv_proc_info(other, &st) == 0 && st.suspended == 1);
    CHECK_INT(st.suspended, 1); /* it waits on the busy port */
    CHECK_INT(edrv_port_close(proc, port), 0);
    pthread_join(t, NULL);
    CHECK_INT(atomic_load(&sent), 0);
    edrv_proc_free(other);
    edrv_proc_free(proc);
}

/* tdrv's TD_GATE (79) from its own process: the callback holds the
 * emulator lock until a byte comes on release; it says so on entered. */
typedef struct {
    int entered, release;
    char reply[64];
} gate_call;

static void *gate_holder(void *arg) {
    gate_call *g = arg;
    char b[8];
    for (int i = 0; i < 4; i++) {
        b[i] = (char)((unsigned)g->entered >> (24 - 8 * i));
        b[4 + i] = (char)((unsigned)g->release >> (24 - 8 * i));
    }
    edrv_proc *p = trapping_proc();
    snprintf(g->reply, sizeof g->reply, "%s", ctl(p, 79, b, 8));
    edrv_proc_free(p);
    return NULL;
}

static void busy_message_queue(void) {
    REQUIRE(setup() == 0);
    CHECK_STR(ctl(proc, 75, "\0\0\0\0\0\0\0\0", 8), "4096,8192"); /* defaults */
    CHECK_STR(ctl(proc, 75, "\0\0\0\x0a\0\0\0\x14", 8), "10,20");
    /* A callback holds the emulator, so commands queue and count against the
     * limits: the gate says when it is inside, and stays shut until told. */
    int entered[2], release[2];
    REQUIRE(pipe(entered) == 0);
    REQUIRE(pipe(release) == 0);
    gate_call g = {.entered = entered[1], .release = release[0]};
    pthread_t t;
    pthread_create(&t, NULL, gate_holder, &g);
    struct pollfd in = {.fd = entered[0], .events = POLLIN};
    char byte;
    CHECK_INT(poll(&in, 1, CHECK_WAIT_MS), 1);
    CHECK_INT(read(entered[0], &byte, 1), 1);
    struct iovec v = {"0123456789", 10};
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), 0);
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), 0); /* 20: at high */
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), 0); /* 30: busy */
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, EDRV_CMD_NOSUSPEND), EDRV_EBUSY);
    CHECK_INT(write(release[1], "r", 1), 1);
    /* The queue drains below the low limit: a plain command goes (it may
     * wait for that first). */
    CHECK_INT(edrv_port_command_opts(proc, port, &v, 1, 0), 0);
    pthread_join(t, NULL);
    CHECK_STR(g.reply, "ok");
    for (int i = 0; i < 4; i++)
        CHECK_MSG(proc, port, "{%P,{data,\"out:0123456789\"}}");
    /* Disabling writes back the values passed, as ERTS; then both read
     * DISABLED. */
    CHECK_STR(ctl(proc, 75, "\xff\xff\xff\xff\0\0\0\0", 8), "-1,0");
    CHECK_STR(ctl(proc, 75, "\0\0\0\0\0\0\0\0", 8), "-1,-1");
    for (int i = 0; i < 2; i++) {
        close(entered[i]);
        close(release[i]);
    }
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"busy_suspends", busy_suspends},
    {"busy_port_closes", busy_port_closes},
    {"busy_message_queue", busy_message_queue},
    {NULL, NULL},
};

TEST_MAIN(cases)
