/* The runtime's life: start, stop with ports open, calls after stop, options;
 * and the driver interface's system functions. Also built against libedrv.a
 * (test_static_link), where drivers find the API in the program itself. */
#include "check.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

/* driver_get_now is deprecated in erl_driver.h, and still part of the API. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

static void start_twice_and_options(void) {
    CHECK_INT(edrv_start(NULL), EDRV_ERUNNING);
    CHECK_INT(edrv_stop(), 0);
    CHECK_INT(edrv_stop(), EDRV_ENOTRUNNING);
    edrv_options bad = {.async_threads = 1025};
    CHECK_INT(edrv_start(&bad), EDRV_EINVAL);
    bad.async_threads = -1;
    CHECK_INT(edrv_start(&bad), EDRV_EINVAL);
    CHECK_INT(edrv_start(NULL), 0);
    ErlDrvSysInfo si;
    driver_system_info(&si, sizeof si);
    CHECK_INT(si.async_threads, sysconf(_SC_NPROCESSORS_ONLN));
    CHECK_INT(edrv_stop(), 0);
    edrv_options o = {.async_threads = 7};
    CHECK_INT(edrv_start(&o), 0);
    driver_system_info(&si, sizeof si);
    CHECK_INT(si.async_threads, 7);
    CHECK_INT(si.driver_major_version, ERL_DRV_EXTENDED_MAJOR_VERSION);
    CHECK_INT(si.driver_minor_version, ERL_DRV_EXTENDED_MINOR_VERSION);
    CHECK(si.thread_support && si.smp_support);
    CHECK(si.erts_version && strchr(si.erts_version, '.'));
    CHECK(si.otp_release && atoi(si.otp_release) >= 17);
    /* An old driver's smaller struct: only what fits is written. */
    struct {
        int major, minor;
        char guard[32];
    } small;
    memset(&small, 0x5a, sizeof small);
    driver_system_info((ErlDrvSysInfo *)&small, 2 * sizeof(int));
    CHECK_INT(small.major, ERL_DRV_EXTENDED_MAJOR_VERSION);
    CHECK((unsigned char)small.guard[0] == 0x5a);
}

static void start_out_of_memory(void) {
    /* Every allocation of edrv_start can fail: a clear error, nothing left
     * behind, and the runtime starts afterwards. */
    CHECK_INT(edrv_stop(), 0);
    int failures = 0;
    for (long n = 1; n <= 6; n++) {
        edrv_testing_fail_alloc(n);
        edrv_options o = {.async_threads = 3};
        int rc = edrv_start(&o);
        edrv_testing_fail_alloc(0);
        if (rc == 0) {
            CHECK_INT(edrv_stop(), 0);
        } else {
            CHECK_INT(rc, EDRV_ENOMEM);
            CHECK_INT(edrv_stop(), EDRV_ENOTRUNNING);
            failures++;
        }
        CHECK(!mem_in_use());
    }
    CHECK(failures > 0);
    CHECK_INT(edrv_start(NULL), 0);
}

static void stop_with_ports_open(void) {
    char log[64];
    snprintf(log, sizeof log, "/tmp/edrv-runtime-%d.log", (int)getpid());
    unlink(log);
    setenv("LOADDRV_LOG", log, 1);
    edrv_proc *p = edrv_proc_new();
    edrv_port a, b, c;
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_ok") == 0);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    REQUIRE(edrv_open_port(p, "ld_ok", 0, &a) == 0);
    REQUIRE(edrv_open_port(p, "ld_ok", 0, &b) == 0);
    REQUIRE(edrv_open_port(p, "tdrv", 0, &c) == 0);
    REQUIRE(edrv_port_command(p, c, "queued", 6) == 0);
    CHECK_INT(edrv_stop(), 0);
    /* Every port's stop ran, then the driver's finish. */
    FILE *f = fopen(log, "r");
    char text[256] = "";
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    CHECK_STR(text, "ld_ok init\nld_ok stop\nld_ok stop\nld_ok finish\n");
    unlink(log);
    /* After stop: clear errors, and the process still works. */
    edrv_port d;
    edrv_reply r;
    CHECK_INT(edrv_open_port(p, "tdrv", 0, &d), EDRV_ENOTRUNNING);
    CHECK_INT(edrv_port_command(p, c, "x", 1), EDRV_ENOTRUNNING);
    CHECK_INT(edrv_port_control(p, c, 1, "", 0, &r), EDRV_ENOTRUNNING);
    CHECK_INT(edrv_port_close(p, c), EDRV_ENOTRUNNING);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv"), EDRV_ENOTRUNNING);
    CHECK_INT(edrv_unload_driver("tdrv"), EDRV_ENOTRUNNING);
    CHECK_STR(edrv_err_name(EDRV_ENOTRUNNING), "not_running");
    edrv_msg m;
    while (edrv_receive(p, 0, &m) == 0) /* what arrived before the stop */
        edrv_msg_free(&m);
    edrv_proc_free(p);
    /* The runtime starts again, with nothing left from before. */
    CHECK_INT(edrv_start(NULL), 0);
    p = edrv_proc_new();
    CHECK_INT(edrv_open_port(p, "tdrv", 0, &d), EDRV_EBADARG); /* no such driver now */
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    REQUIRE(edrv_open_port(p, "tdrv", 0, &d) == 0);
    CHECK(d > c); /* port numbers are never reused */
    edrv_proc_free(p);
}

static void time_functions(void) {
    ErlDrvTime t1 = erl_drv_monotonic_time(ERL_DRV_NSEC);
    ErlDrvTime t2 = erl_drv_monotonic_time(ERL_DRV_NSEC);
    CHECK(t2 >= t1);
    CHECK_INT(erl_drv_monotonic_time((ErlDrvTimeUnit)17), ERL_DRV_TIME_ERROR);
    CHECK_INT(erl_drv_convert_time_unit(1500, ERL_DRV_MSEC, ERL_DRV_SEC), 1);
    CHECK_INT(erl_drv_convert_time_unit(-1500, ERL_DRV_MSEC, ERL_DRV_SEC), -2);
    CHECK_INT(erl_drv_convert_time_unit(3, ERL_DRV_SEC, ERL_DRV_USEC), 3000000);
    CHECK_INT(erl_drv_convert_time_unit(1, ERL_DRV_SEC, (ErlDrvTimeUnit)9), ERL_DRV_TIME_ERROR);
    ErlDrvTime sys = erl_drv_monotonic_time(ERL_DRV_SEC) + erl_drv_time_offset(ERL_DRV_SEC);
    CHECK(sys > 1700000000 && sys < 4000000000LL);
    ErlDrvNowData a, b;
    CHECK_INT(driver_get_now(&a), 0);
    CHECK_INT(driver_get_now(&b), 0);
    CHECK(b.megasecs * 1000000000000ull + b.secs * 1000000ull + b.microsecs >
          a.megasecs * 1000000000000ull + a.secs * 1000000ull + a.microsecs);
}

static void misc_functions(void) {
    CHECK_STR(erl_errno_id(ENOENT), "enoent");
    CHECK_STR(erl_errno_id(EIO), "eio");
    CHECK_STR(erl_errno_id(100000), "unknown");
    CHECK_STR(edrv_err_name(EDRV_EVERSION), "driver_incorrect_version");
    CHECK_STR(edrv_strerror(-ENOENT), "No such file or directory");
    CHECK_STR(edrv_err_name(12345), "unknown");
    char v[8];
    size_t n = sizeof v;
    CHECK_INT(erl_drv_putenv("EDRV_TEST_VAR", "value"), 0);
    CHECK_INT(erl_drv_getenv("EDRV_TEST_VAR", v, &n), 0);
    CHECK_STR(v, "value");
    CHECK_INT(n, 5);
    CHECK_INT(erl_drv_putenv("EDRV_TEST_VAR", "a longer value"), 0);
    n = sizeof v;
    CHECK_INT(erl_drv_getenv("EDRV_TEST_VAR", v, &n), 1);
    CHECK_INT(n, 15);
    CHECK_INT(erl_drv_getenv("EDRV_TEST_UNSET_VAR", v, &n), -1);
    void *dl = driver_dl_open(EDRV_TEST_DRIVERS "/tdrv.so");
    CHECK(dl != NULL);
    CHECK(driver_dl_sym(dl, "driver_init") != NULL);
    CHECK(driver_dl_sym(dl, "no_such_symbol") == NULL);
    CHECK(strstr(driver_dl_error(), "no_such_symbol") != NULL);
    CHECK_INT(driver_dl_close(dl), 0);
    CHECK(driver_dl_open("/nonexistent.so") == NULL);
    CHECK(driver_mk_atom(NULL) == 0);
    CHECK(driver_mk_atom("same") == driver_mk_atom("same"));
    CHECK(driver_mk_atom("one") != driver_mk_atom("other"));
    CHECK_INT(driver_mk_term_nil(), ERL_DRV_NIL);
    char *s;
    CHECK_INT(edrv_term_format("\x83\x61\x07", 3, &s), 1);
    CHECK_STR(s, "7");
    free(s);
    CHECK_INT(edrv_term_format("\x83\x61\x07\x00", 4, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x61\x07", 2, &s), EDRV_EBADTERM);
}

/* A driver that writes to a pipe with no reader gets EPIPE, as in ERTS, on
 * the emulator thread and in a driver thread (tdrv's op 78; the differential
 * test broken_pipe does it in erl too, and on a pool thread); and edrv has not
 * changed the process's action for SIGPIPE, nor the host thread's mask. */
static void broken_pipe(void) {
    struct sigaction sa;
    REQUIRE(sigaction(SIGPIPE, NULL, &sa) == 0);
    CHECK(sa.sa_handler == SIG_DFL);
    sigset_t mask;
    REQUIRE(pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0);
    CHECK(!sigismember(&mask, SIGPIPE));
    edrv_proc *p = edrv_proc_new();
    edrv_port port;
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    edrv_reply r;
    REQUIRE(edrv_port_control(p, port, 78, "", 0, &r) == 0);
    CHECK(r.len == strlen("control=epipe,thread=epipe") &&
          memcmp(r.data, "control=epipe,thread=epipe", r.len) == 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_close(p, port), 0);
    edrv_proc_free(p);
}

static const test_case cases[] = {
    {"start_twice_and_options", start_twice_and_options},
    {"start_out_of_memory", start_out_of_memory},
    {"stop_with_ports_open", stop_with_ports_open},
    {"time_functions", time_functions},
    {"misc_functions", misc_functions},
    {"broken_pipe", broken_pipe},
    {NULL, NULL},
};

TEST_MAIN(cases)
