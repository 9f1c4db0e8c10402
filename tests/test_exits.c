/* Exit signals from ports to their owners, as in Erlang (checked in erl):
 * a process that does not trap exits (the default) ignores a signal with
 * reason normal and is ended by any other; one that traps exits gets
 * {'EXIT', Port, Reason}. tdrv's control 21 ends its port with
 * driver_failure_atom(port, Data). */
#include "check.h"

#include <pthread.h>

enum { TD_FAIL_ATOM = 21 };

static edrv_port open_tdrv(edrv_proc *p) {
    edrv_port port = 0;
    if (edrv_open_port(p, "tdrv", 0, &port) != 0)
        fprintf(stderr, "open tdrv: %s\n", edrv_last_error());
    return port;
}

static int fail_port(edrv_proc *caller, edrv_port port, const char *reason) {
    edrv_reply r;
    int rc = edrv_port_control(caller, port, TD_FAIL_ATOM, reason, strlen(reason), &r);
    edrv_reply_free(&r);
    return rc;
}

/* The reason p was ended with, printed. */
static char *exit_reason(edrv_proc *p) {
    static char out[128];
    edrv_msg m;
    char *s = NULL;
    if (edrv_proc_exit_reason(p, &m) != 0 || edrv_term_format(m.data, m.len, &s) < 0)
        snprintf(out, sizeof out, "error:%s", edrv_last_error());
    else
        snprintf(out, sizeof out, "%s", s);
    free(s);
    edrv_msg_free(&m);
    return out;
}

static void flag(void) {
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *p = edrv_proc_new();
    CHECK_INT(edrv_process_flag(p, EDRV_TRAP_EXIT, 1), 0); /* false by default */
    CHECK_INT(edrv_process_flag(p, EDRV_TRAP_EXIT, 1), 1);
    CHECK_INT(edrv_process_flag(p, EDRV_TRAP_EXIT, 0), 1);
    CHECK_INT(edrv_process_flag(p, EDRV_TRAP_EXIT, 2), EDRV_EINVAL);
    CHECK_INT(edrv_process_flag(p, (edrv_proc_flag)7, 1), EDRV_EINVAL);
    CHECK_INT(edrv_process_flag(NULL, EDRV_TRAP_EXIT, 1), EDRV_EINVAL);
    edrv_msg m;
    CHECK_INT(edrv_proc_exit_reason(p, &m), EDRV_EINVAL); /* not ended */
    edrv_proc_free(p);
}

static void normal_is_ignored(void) {
    /* port_close and driver_failure_atom(normal): nothing reaches a process
     * that does not trap exits, and it lives on. */
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *p = edrv_proc_new();
    edrv_port a = open_tdrv(p), b = open_tdrv(p);
    CHECK_INT(edrv_port_close(p, a), 0);
    CHECK_INT(fail_port(p, b, "normal"), 0);
    edrv_msg m;
    CHECK_INT(edrv_receive(p, 200, &m), EDRV_ETIMEDOUT); /* a negative check */
    edrv_port c = open_tdrv(p);
    CHECK(c != 0);
    edrv_proc_free(p);
}

static void trapping_gets_messages(void) {
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *p = trapping_proc();
    edrv_port a = open_tdrv(p), b = open_tdrv(p);
    CHECK_INT(edrv_port_close(p, a), 0);
    CHECK_MSG(p, a, "{'EXIT',%P,normal}");
    CHECK_INT(fail_port(p, b, "boom"), 0);
    CHECK_MSG(p, b, "{'EXIT',%P,boom}");
    edrv_proc_free(p);
}

static void other_reasons_end_the_process(void) {
    /* A port of p fails with `boom` (the control comes from another
     * process): p is ended. Its calls return EDRV_EEXITED and say why, its
     * other port closes, messages to it are dropped, and it can be freed. */
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *p = edrv_proc_new(), *q = trapping_proc();
    edrv_port a = open_tdrv(p), b = open_tdrv(p);
    CHECK_INT(fail_port(q, a, "boom"), 0);
    edrv_msg m;
    CHECK_INT(edrv_receive(p, 0, &m), EDRV_EEXITED);
    CHECK(strstr(edrv_last_error(), "ended by an exit signal: boom") != NULL);
    CHECK_STR(exit_reason(p), "boom");
    CHECK_INT(edrv_port_command(p, b, "x", 1), EDRV_EEXITED);
    edrv_port c;
    CHECK_INT(edrv_open_port(p, "tdrv", 0, &c), EDRV_EEXITED);
    CHECK_INT(edrv_process_flag(p, EDRV_TRAP_EXIT, 1), EDRV_EEXITED);
    edrv_port_status st;
    CHECK(WAIT_UNTIL(edrv_port_info(b, &st) == EDRV_ECLOSED)); /* it went with p */
    CHECK_INT(edrv_proc_free(p), 0);
    CHECK_INT(edrv_proc_free(q), 0);
}

typedef struct {
    edrv_proc *p;
    int rc;
} waiter;

static void *receive_thread(void *arg) {
    waiter *w = arg;
    edrv_msg m;
    w->rc = edrv_receive(w->p, -1, &m);
    return NULL;
}

static void waiting_receiver_wakes(void) {
    /* A thread waiting in edrv_receive(p) with no time limit wakes with
     * EDRV_EEXITED when p is ended. */
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *p = edrv_proc_new(), *q = edrv_proc_new();
    edrv_port a = open_tdrv(p);
    waiter w = {p, 1};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, receive_thread, &w) == 0);
    edrv_proc_status st;
    CHECK(WAIT_UNTIL(edrv_proc_info(p, &st) == 0 && st.waiting == 1));
    CHECK_INT(fail_port(q, a, "gone"), 0);
    pthread_join(t, NULL);
    CHECK_INT(w.rc, EDRV_EEXITED);
    CHECK_STR(exit_reason(p), "gone");
    edrv_proc_free(p);
    edrv_proc_free(q);
}

static const test_case cases[] = {
    {"flag", flag},
    {"normal_is_ignored", normal_is_ignored},
    {"trapping_gets_messages", trapping_gets_messages},
    {"other_reasons_end_the_process", other_reasons_end_the_process},
    {"waiting_receiver_wakes", waiting_receiver_wakes},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    return run_tests(cases, argc, argv);
}
