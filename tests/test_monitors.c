/* Ports monitoring processes, and the small per-port functions. */
#include "check.h"

#include <semaphore.h>

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
    owner = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = trapping_proc();
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
    owner = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = trapping_proc();
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
    owner = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_proc *watched = trapping_proc();
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
    owner = trapping_proc();
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

/* Monitors of one process fire in the order they were made, whichever
 * ports made them: a1, b1, b2, a2 here. tdrv keeps its last monitor, so its
 * first one reports "other" and its last "same". */
static void fire_in_order(void) {
    owner = trapping_proc();
    REQUIRE(owner && edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port a, b;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &a) == 0);
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &b) == 0);
    edrv_proc *watched = trapping_proc();
    REQUIRE(watched);
    CHECK_STR(ctl(watched, a, 70), "0");
    CHECK_STR(ctl(watched, b, 70), "0");
    CHECK_STR(ctl(watched, b, 70), "0");
    CHECK_STR(ctl(watched, a, 70), "0");
    edrv_proc_free(watched);
    CHECK_MSG(owner, a, "{process_exit,other}");
    CHECK_MSG(owner, b, "{process_exit,other}");
    CHECK_MSG(owner, b, "{process_exit,same}");
    CHECK_MSG(owner, a, "{process_exit,same}");
    edrv_proc_free(owner);
}

static size_t blocks_of(edrv_mem_type t) {
    edrv_mem_stats st;
    edrv_memory(&st);
    return st.blocks[t];
}

/* Each allocation that a port's end may make fails in turn, with a monitor
 * on the port: the monitor ends with the port all the same, and the
 * monitored process's exit later finds nothing of it. (Issue 12: the
 * monitor stayed registered, pointing at the freed port, and the process's
 * exit used it; ASan shows that, the block count the monitor left.) */
static void alloc_fails_as_port_ends(void) {
    owner = trapping_proc();
    REQUIRE(owner && edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    for (long n = 1; n <= 8; n++) {
        edrv_port port;
        REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
        edrv_proc *watched = trapping_proc();
        REQUIRE(watched);
        CHECK_STR(ctl(watched, port, 70), "0");
        edrv_testing_fail_alloc(n);
        int rc = edrv_port_close(owner, port);
        edrv_testing_fail_alloc(0);
        CHECK_INT(rc, 0);
        edrv_port_status st;
        CHECK_INT(edrv_port_info(port, &st), EDRV_ECLOSED);
        CHECK_INT(blocks_of(EDRV_MEM_PORT), 0); /* the port, its name, its monitor */
        edrv_proc_free(watched);
        /* The exit signal, unless its message was the allocation that
         * failed; never a process_exit of the dead port. */
        char *m;
        while (strcmp(m = recv_text(owner, 0), "timeout") != 0) {
            char want[64];
            snprintf(want, sizeof want, "{'EXIT',#Port<0.%llu>,normal}",
                     (unsigned long long)port);
            CHECK_STR(m, want);
            free(m);
        }
        free(m);
    }
    edrv_proc_free(owner);
}

/* Each allocation that a process's exit may make fails in turn, for a
 * process that owns two ports and is monitored by a port of another and by
 * one of its own: its ports end, and the monitors fire (and are no longer
 * active) all the same. (Issue 12: the ports stayed open with no owner, or
 * the monitors stayed registered.) */
static void alloc_fails_as_process_exits(void) {
    owner = trapping_proc();
    REQUIRE(owner && edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port watcher;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &watcher) == 0);
    for (long n = 1; n <= 8; n++) {
        edrv_proc *p = trapping_proc();
        REQUIRE(p);
        edrv_port own[2];
        REQUIRE(edrv_open_port(p, "tdrv", 0, &own[0]) == 0);
        REQUIRE(edrv_open_port(p, "tdrv", 0, &own[1]) == 0);
        CHECK_STR(ctl(p, watcher, 70), "0");
        CHECK_STR(ctl(p, own[1], 70), "0");
        edrv_testing_fail_alloc(n);
        edrv_proc_free(p);
        edrv_testing_fail_alloc(0);
        edrv_port_status st;
        CHECK_INT(edrv_port_info(own[0], &st), EDRV_ECLOSED);
        CHECK_INT(edrv_port_info(own[1], &st), EDRV_ECLOSED);
        ctl(owner, watcher, 72);
        /* {process_exit,same} first, unless its message was the allocation
         * that failed. */
        char *m = recv_text(owner, 1000);
        if (strcmp(m, "{process_exit,same}") == 0) {
            free(m);
            m = recv_text(owner, 1000);
        }
        CHECK_STR(m, "{monitored,[]}");
        free(m);
    }
    edrv_proc_free(owner);
}

/* A driver linked into the test: port A queues a job that waits for the
 * test, which keeps A's struct after A ended; port B then tries to make A
 * monitor a process. */
static ErlDrvPort held;
static sem_t job_gate, job_ended;

static ErlDrvData hd_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    return (ErlDrvData)port;
}

static void hd_invoke(void *data) {
    (void)data;
    sem_wait(&job_gate);
}

static void hd_free(void *data) {
    (void)data;
    sem_post(&job_ended);
}

static void hd_process_exit(ErlDrvData d, ErlDrvMonitor *m) {
    (void)d, (void)m;
}

static ErlDrvSSizeT hd_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    (void)buf, (void)len, (void)rlen;
    ErlDrvPort port = (ErlDrvPort)d;
    if (op == 1) {
        held = port;
        return driver_async(port, NULL, hd_invoke, NULL, hd_free) > 0 ? 0 : -1;
    }
    ErlDrvMonitor mon;
    (*rbuf)[0] = (char)('1' + driver_monitor_process(held, driver_caller(port), &mon));
    return 1;
}

static ErlDrvEntry held_entry = {
    .start = hd_start,
    .control = hd_control,
    .process_exit = hd_process_exit,
    .driver_name = "held_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

/* A port that has ended cannot monitor (-1), even while a job keeps its
 * struct: the monitor would outlive the port, and the process's exit would
 * reach the freed port. */
static void dead_port_cannot_monitor(void) {
    sem_init(&job_gate, 0, 0);
    sem_init(&job_ended, 0, 0);
    owner = trapping_proc();
    REQUIRE(owner && edrv_register_driver(&held_entry) == 0);
    edrv_port a, b;
    REQUIRE(edrv_open_port(owner, "held_drv", 0, &a) == 0);
    REQUIRE(edrv_open_port(owner, "held_drv", 0, &b) == 0);
    CHECK_STR(ctl(owner, a, 1), "");
    CHECK_INT(edrv_port_close(owner, a), 0);
    edrv_proc *watched = trapping_proc();
    REQUIRE(watched);
    CHECK_STR(ctl(watched, b, 2), "0"); /* '1' + -1 */
    sem_post(&job_gate);
    sem_wait(&job_ended); /* the job ended with free: a's struct is gone */
    edrv_proc_free(watched);
    edrv_proc_free(owner);
    sem_destroy(&job_gate);
    sem_destroy(&job_ended);
}

static const test_case cases[] = {
    {"monitor_fires", monitor_fires},
    {"demonitor", demonitor},
    {"port_ends_first", port_ends_first},
    {"os_pid_and_lock", os_pid_and_lock},
    {"fire_in_order", fire_in_order},
    {"alloc_fails_as_port_ends", alloc_fails_as_port_ends},
    {"alloc_fails_as_process_exits", alloc_fails_as_process_exits},
    {"dead_port_cannot_monitor", dead_port_cannot_monitor},
    {NULL, NULL},
};

TEST_MAIN(cases)
