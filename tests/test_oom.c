/* Allocation failures swept across a port's whole life: for every n, the nth
 * allocation of the scenario fails (edrv_testing_fail_alloc), and every step
 * must end in a clean error or its documented result, the runtime must stop
 * cleanly, and nothing may leak (the harness checks after each stop; ASan
 * checks every access in the sanitizer build). Teardown paths (a port's
 * end, a process's end, edrv_stop) must not need memory to succeed. */
#include "check.h"

#include <errno.h>

/* A control call whose result is 0, or an error an allocation failure may
 * cause: ENOMEM from the runtime, EBADARG when the driver's own allocation
 * failed and it declined. Anything else is a failure of the test. */
static void ctl_ok(edrv_proc *p, edrv_port port, unsigned op, const char *data, size_t len) {
    edrv_reply r;
    int rc = edrv_port_control(p, port, op, data, len, &r);
    edrv_reply_free(&r);
    if (rc != 0 && rc != EDRV_ENOMEM && rc != EDRV_EBADARG && rc != EDRV_ECLOSED)
        CHECK_INT(rc, 0);
}

static int allowed(int rc) {
    return rc == 0 || rc == EDRV_ENOMEM;
}

/* Big-endian 32-bit, as adrv reads its arguments. */
static void put32(char *p, unsigned v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* open -> command -> output_term -> monitor -> control -> queue -> close,
 * then the owner of two more ports (one with async jobs, one monitoring)
 * exits, and the monitored process exits. */
static void scenario(void) {
    edrv_proc *owner = edrv_proc_new(), *watched = edrv_proc_new(), *other = edrv_proc_new();
    if (!owner || !watched || !other) {
        edrv_proc_free(owner);
        edrv_proc_free(watched);
        edrv_proc_free(other);
        return;
    }
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv");
    CHECK(allowed(rc));
    int rc2 = edrv_load_driver(EDRV_TEST_DRIVERS, "adrv");
    CHECK(allowed(rc2) || rc2 == EDRV_EDRVINIT); /* adrv's init allocates too */
    edrv_port port = 0, port2 = 0, aport = 0;
    rc = edrv_open_port(owner, "tdrv", 0, &port);
    /* start's own allocation failing gives ERL_DRV_ERROR_GENERAL (-EINVAL);
     * a load that failed leaves no driver of that name (EDRV_EBADARG). */
    if (!allowed(rc) && rc != -EINVAL && rc != EDRV_EBADARG)
        CHECK_INT(rc, 0);
    if (rc == 0) {
        CHECK(allowed(edrv_port_command(owner, port, "abc", 3)));
        char spec = 0;
        ctl_ok(owner, port, 30, &spec, 1);      /* TD_TERM */
        ctl_ok(watched, port, 70, "", 0);       /* TD_MONITOR: the port monitors watched */
        ctl_ok(owner, port, 1, "hello", 5);     /* TD_ECHO */
        ctl_ok(owner, port, 60, "queued", 6);   /* TD_ENQ: data in the driver queue */
        ctl_ok(owner, port, 62, "\x06", 1);     /* TD_DEQ */
        rc = edrv_port_close(owner, port);
        CHECK(rc == 0 || rc == EDRV_ECLOSED); /* it may have failed already */
    }
    if (edrv_open_port(other, "tdrv", 0, &port2) == 0)
        ctl_ok(watched, port2, 70, "", 0);
    if (edrv_open_port(other, "adrv", 0, &aport) == 0) {
        char b[13] = {1};
        put32(b + 1, 3);
        put32(b + 5, 4);
        put32(b + 9, 0);
        ctl_ok(other, aport, 1, b, sizeof b); /* SUBMIT: 4 jobs on key 3 */
    }
    CHECK_INT(edrv_proc_free(other), 0); /* its ports end with it */
    edrv_port_status st;
    if (port2)
        CHECK_INT(edrv_port_info(port2, &st), EDRV_ECLOSED);
    if (aport)
        CHECK_INT(edrv_port_info(aport, &st), EDRV_ECLOSED);
    CHECK_INT(edrv_proc_free(watched), 0); /* the monitors (if any) fire */
    edrv_msg m;
    while (edrv_receive(owner, 0, &m) == 0)
        edrv_msg_free(&m);
    CHECK_INT(edrv_proc_free(owner), 0);
}

static void sweep(void) {
    /* n runs until the scenario makes fewer than n allocations. */
    long last = 0;
    for (long n = 1; n < 100000; n++) {
        if (n > 1)
            REQUIRE(edrv_start(&(edrv_options){.async_threads = 2}) == 0);
        edrv_testing_fail_alloc(n);
        scenario();
        long left = edrv_testing_fail_alloc(0);
        int rc = edrv_stop();
        CHECK_INT(rc, 0);
        if (mem_in_use()) {
            fprintf(stderr, "sweep: memory left allocated with allocation %ld failing\n", n);
            check_failures++;
        }
        if (check_failures) {
            fprintf(stderr, "sweep: failed with allocation %ld failing\n", n);
            return;
        }
        if (left > 0) { /* fewer than n allocations: every one was tried */
            last = n - 1;
            break;
        }
    }
    printf("sweep: %ld allocations, each failed in turn\n", last);
    CHECK(last > 20);
    REQUIRE(edrv_start(&(edrv_options){.async_threads = 2}) == 0);
}

static const test_case cases[] = {
    {"sweep", sweep},
    {NULL, NULL},
};

TEST_MAIN(cases)
