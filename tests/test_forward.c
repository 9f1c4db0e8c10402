/* Forwarding processes (edrv_proc_new_forward): the stand-ins of processes of
 * other nodes, as the edrv node makes them. What is delivered to one reaches
 * its function, in order, as ETF; drivers see the pid it stands for; its
 * ports' exits come as exit signals. And what else the edrv node uses: the
 * command options EDRV_CMD_QUEUE (a busy port does not suspend the sender)
 * and EDRV_CMD_BINARY (the data is one binary), and edrv_port_busy. */
#define _GNU_SOURCE /* asprintf */
#include "check.h"

#include <ei.h>
#include <pthread.h>

/* What a forwarding process got: each delivery as "m:TERM" or "x:TERM",
 * with " [pid]" after it when the bytes hold the foreign pid's (the text of
 * a pid does not show its node). */
typedef struct {
    pthread_mutex_t lock;
    char *got[64];
    int n;
} sink;

static sink the_sink = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};

/* A pid of another node, in ETF (version byte first). */
static char foreign[64];
static size_t foreign_len;
static char foreign_text[64];

static void to_sink(void *ctx, edrv_fwd_kind kind, const char *etf, size_t len) {
    sink *s = ctx;
    char *text = NULL, *line = NULL;
    if (edrv_term_format(etf, len, &text) < 0 ||
        asprintf(&line, "%c:%s%s", kind == EDRV_FWD_MESSAGE ? 'm' : 'x', text,
                 memmem(etf, len, foreign + 1, foreign_len - 1) ? " [pid]" : "") < 0)
        line = NULL;
    free(text);
    pthread_mutex_lock(&s->lock);
    if (s->n < 64)
        s->got[s->n++] = line ? line : strdup("(not a term)");
    else
        free(line);
    pthread_mutex_unlock(&s->lock);
}

static int sink_count(void) {
    pthread_mutex_lock(&the_sink.lock);
    int n = the_sink.n;
    pthread_mutex_unlock(&the_sink.lock);
    return n;
}

/* The i-th delivery, once it has come ("timeout" if it does not). */
static const char *sink_get(int i) {
    WAIT_UNTIL(sink_count() > i);
    pthread_mutex_lock(&the_sink.lock);
    const char *s = i < the_sink.n ? the_sink.got[i] : "timeout";
    pthread_mutex_unlock(&the_sink.lock);
    return s;
}

static void sink_clear(void) {
    pthread_mutex_lock(&the_sink.lock);
    for (int i = 0; i < the_sink.n; i++)
        free(the_sink.got[i]);
    the_sink.n = 0;
    pthread_mutex_unlock(&the_sink.lock);
}

static void make_foreign(void) {
    erlang_pid pid = {.num = 42, .serial = 7, .creation = 3};
    strcpy(pid.node, "beam@somewhere");
    int i = 0;
    ei_encode_version(foreign, &i);
    ei_encode_pid(foreign, &i, &pid);
    foreign_len = (size_t)i;
    char *t = NULL;
    REQUIRE(edrv_term_format(foreign, foreign_len, &t) > 0);
    snprintf(foreign_text, sizeof foreign_text, "%s", t);
    free(t);
}

static edrv_proc *forwarder(void) {
    make_foreign();
    sink_clear();
    return edrv_proc_new_forward(foreign, foreign_len, to_sink, &the_sink);
}

static void bad_arguments(void) {
    make_foreign();
    char atom[8];
    int i = 0;
    ei_encode_version(atom, &i);
    ei_encode_atom(atom, &i, "x");
    char big[EDRV_FWD_PID_MAX + 2];
    memcpy(big, foreign, foreign_len);
    CHECK(edrv_proc_new_forward(NULL, 10, to_sink, &the_sink) == NULL);
    CHECK(strlen(edrv_last_error()) > 0);
    CHECK(edrv_proc_new_forward(foreign, 0, to_sink, &the_sink) == NULL);
    CHECK(edrv_proc_new_forward(foreign, foreign_len, NULL, &the_sink) == NULL);
    CHECK(edrv_proc_new_forward(atom, (size_t)i, to_sink, &the_sink) == NULL);
    /* one pid and nothing after it */
    CHECK(edrv_proc_new_forward(foreign, foreign_len - 1, to_sink, &the_sink) == NULL);
    CHECK(edrv_proc_new_forward(big, foreign_len + 1, to_sink, &the_sink) == NULL);
    CHECK(edrv_proc_new_forward(big, sizeof big, to_sink, &the_sink) == NULL);
}

static void messages_in_order(void) {
    edrv_proc *f = forwarder();
    REQUIRE(f != NULL);
    edrv_proc *q = edrv_proc_new();
    REQUIRE(q != NULL);
    for (long k = 0; k < 20; k++) {
        ei_x_buff x;
        ei_x_new_with_version(&x);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "n");
        ei_x_encode_long(&x, k);
        CHECK_INT(edrv_send(edrv_proc_pid(f), x.buff, (size_t)x.index), 0);
        ei_x_free(&x);
    }
    char want[32];
    for (int k = 0; k < 20; k++) {
        snprintf(want, sizeof want, "m:{n,%d}", k);
        CHECK_STR(sink_get(k), want);
    }
    /* its messages are not here to receive */
    edrv_msg m;
    CHECK_INT(edrv_receive(f, 0, &m), EDRV_EINVAL);
    CHECK_INT(edrv_is_process_alive(edrv_proc_pid(f)), 1);
    edrv_proc_free(q);
    edrv_proc_free(f);
    CHECK_INT(sink_count(), 20);
    sink_clear();
}

/* A port it owns: output reaches the function; drivers see the foreign pid
 * as the caller and the connected process; the port's exit comes as an
 * exit signal, never as a message. */
static void owns_a_port(void) {
    edrv_proc *f = forwarder();
    REQUIRE(f != NULL);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port = 0;
    REQUIRE(edrv_open_port(f, "tdrv", 0, &port) == 0);
    char want[256];
    int n = 0;
    CHECK_INT(edrv_port_command(f, port, "hi", 2), 0);
    port_subst(want, sizeof want, "m:{%P,{data,\"out:hi\"}}", port);
    CHECK_STR(sink_get(n++), want);
    control_text(f, port, 40, "", 0); /* TD_CALLERS */
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "m:{callers,%s,%s,%s} [pid]", foreign_text, foreign_text, foreign_text);
    port_subst(want, sizeof want, tmpl, port);
    CHECK_STR(sink_get(n++), want);
    edrv_port_status st;
    CHECK_INT(edrv_port_info(port, &st), 0);
    CHECK(st.connected == edrv_proc_pid(f));
    control_text(f, port, 21, "boom", 4); /* TD_FAIL_ATOM: driver_failure_atom(port, "boom") */
    port_subst(want, sizeof want, "x:{'EXIT',%P,boom}", port);
    CHECK_STR(sink_get(n++), want);
    /* the stand-in lives on: an exit signal is only handed over */
    CHECK_INT(edrv_is_process_alive(edrv_proc_pid(f)), 1);
    edrv_proc_free(f);
    CHECK_INT(sink_count(), n);
    sink_clear();
}

/* Its end (edrv_proc_exit) ends its ports as an owner's end does. */
static void exit_closes_its_ports(void) {
    edrv_proc *f = forwarder();
    REQUIRE(f != NULL);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port = 0;
    REQUIRE(edrv_open_port(f, "tdrv", 0, &port) == 0);
    char reason[16];
    int i = 0;
    ei_encode_version(reason, &i);
    ei_encode_atom(reason, &i, "gone");
    CHECK_INT(edrv_proc_exit(f, reason, (size_t)i), 0);
    edrv_port_status st;
    WAIT_UNTIL(edrv_port_info(port, &st) != 0);
    CHECK(edrv_port_info(port, &st) != 0);
    sink_clear();
}

static void queue_does_not_suspend(void) {
    edrv_proc *p = trapping_proc();
    REQUIRE(p != NULL);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port = 0;
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    CHECK_INT(edrv_port_busy(port), 0);
    control_text(p, port, 74, "\x01", 1); /* TD_BUSY: busy */
    CHECK_INT(edrv_port_busy(port), 1);
    struct iovec v = {"q", 1};
    CHECK_INT(edrv_port_command_opts(p, port, &v, 1, EDRV_CMD_NOSUSPEND), EDRV_EBUSY);
    /* sent at once, busy or not, without the soft-busy flag force needs */
    CHECK_INT(edrv_port_command_opts(p, port, &v, 1, EDRV_CMD_QUEUE), 0);
    CHECK_MSG(p, port, "{%P,{data,\"out:q\"}}");
    edrv_proc_status st = {0};
    CHECK_INT(edrv_proc_info(p, &st), 0);
    CHECK_INT(st.suspended, 0);
    CHECK_INT(edrv_port_command_opts(p, port, &v, 1, EDRV_CMD_QUEUE | 0x100), EDRV_EINVAL);
    control_text(p, port, 74, "\x00", 1);
    CHECK_INT(edrv_port_busy(port), 0);
    CHECK_INT(edrv_port_close(p, port), 0);
    CHECK_INT(edrv_port_busy(port), EDRV_ECLOSED);
    CHECK_INT(edrv_port_busy(port + 1000), EDRV_ENOPORT);
    /* a closed port: an error at once, as port_command/2's badarg */
    CHECK(edrv_port_command_opts(p, port, &v, 1, EDRV_CMD_QUEUE) < 0);
    edrv_proc_free(p);
}

static void binary_is_one_element(void) {
    edrv_proc *p = trapping_proc();
    REQUIRE(p != NULL);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrvv") == 0);
    edrv_port port = 0;
    REQUIRE(edrv_open_port(p, "tdrvv", 0, &port) == 0);
    struct iovec v[2] = {{"ab", 2}, {"cde", 3}};
    CHECK_INT(edrv_port_command_opts(p, port, v, 2, 0), 0);
    CHECK_MSG(p, port, "{outputv,3,5,[0,2,3],<<\"abcde\">>}");
    CHECK_INT(edrv_port_command_opts(p, port, v, 2, EDRV_CMD_BINARY), 0);
    CHECK_MSG(p, port, "{outputv,2,5,[0,5],<<\"abcde\">>}");
    /* an empty binary is an element too, an empty iolist is none */
    struct iovec empty = {"", 0};
    CHECK_INT(edrv_port_command_opts(p, port, &empty, 1, EDRV_CMD_BINARY), 0);
    CHECK_MSG(p, port, "{outputv,2,0,[0,0],<<>>}");
    CHECK_INT(edrv_port_command_opts(p, port, &empty, 1, 0), 0);
    CHECK_MSG(p, port, "{outputv,1,0,[0],<<>>}");
    CHECK_INT(edrv_port_close(p, port), 0);
    edrv_proc_free(p);
}

static const test_case cases[] = {
    {"bad_arguments", bad_arguments},
    {"messages_in_order", messages_in_order},
    {"owns_a_port", owns_a_port},
    {"exit_closes_its_ports", exit_closes_its_ports},
    {"queue_does_not_suspend", queue_does_not_suspend},
    {"binary_is_one_element", binary_is_one_element},
    {NULL, NULL},
};

TEST_MAIN(cases)
