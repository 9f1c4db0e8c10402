/* Ports monitoring processes, and the small per-port functions. */
#include "check.h"

static edrv_proc *owner;

static const char *ctl(edrv_proc *p, edrv_port port, unsigned op) {
    static char out[64];
    edrv_reply r;
    int rc = edrv_port_control(p, port, op, "", 0, &r);
    snprintf(out, sizeof out, "%.*s", rc < 0 ? 0 : (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static void monitor_fires(void) {
    owner = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = edrv_proc_new();
    CHECK_STR(ctl(watched, port, 70), "0"); /* monitors its caller */
    ctl(owner, port, 72);
    char want[64];
    snprintf(want, sizeof want, "{monitored,<0.%llu.0>}", (unsigned long long)edrv_proc_pid(watched));
    CHECK_MSG(owner, port, want);
    edrv_proc_free(watched);
    CHECK_MSG(owner, port, "{process_exit,same}");
    ctl(owner, port, 72); /* fired: no longer active */
    CHECK_MSG(owner, port, "{monitored,[]}");
    CHECK_STR(ctl(owner, port, 71), "1");
    edrv_proc_free(owner);
}

static void demonitor(void) {
    owner = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = edrv_proc_new();
    CHECK_STR(ctl(watched, port, 70), "0");
    CHECK_STR(ctl(owner, port, 71), "0");
    edrv_proc_free(watched);
    char *m = recv_text(owner, 50);
    CHECK_STR(m, "timeout"); /* demonitored: nothing fires */
    free(m);
    edrv_proc_free(owner);
}

static void port_ends_first(void) {
    /* The port's monitors end with it: the process's end is silent, and
     * nothing leaks. */
    owner = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = edrv_proc_new();
    CHECK_STR(ctl(watched, port, 70), "0");
    CHECK_INT(edrv_port_close(owner, port), 0);
    edrv_proc_free(watched);
    CHECK_MSG(owner, port, "{'EXIT',%P,normal}");
    char *m = recv_text(owner, 50);
    CHECK_STR(m, "timeout");
    free(m);
    edrv_proc_free(owner);
}

static void os_pid_and_lock(void) {
    owner = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_port_status st;
    CHECK_INT(edrv_port_info(port, &st), 0);
    CHECK_INT(st.os_pid, -1);
    ctl(owner, port, 73);
    CHECK_INT(edrv_port_info(port, &st), 0);
    CHECK_INT(st.os_pid, 4711);
    edrv_proc_free(owner);
}

static const test_case cases[] = {
    {"monitor_fires", monitor_fires},
    {"demonitor", demonitor},
    {"port_ends_first", port_ends_first},
    {"os_pid_and_lock", os_pid_and_lock},
    {NULL, NULL},
};

TEST_MAIN(cases)
