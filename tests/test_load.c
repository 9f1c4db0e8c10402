/* Loading drivers: every outcome of erl_ddll:load_driver/2, unloading, finish. */
#include "check.h"

#include <unistd.h>

static char log_path[64];

static void log_reset(void) {
    snprintf(log_path, sizeof log_path, "/tmp/edrv-loaddrv-%d.log", (int)getpid());
    unlink(log_path);
    setenv("LOADDRV_LOG", log_path, 1);
}

/* The log's lines joined with '|'. */
static char *log_text(void) {
    static char buf[1024];
    buf[0] = '\0';
    FILE *f = fopen(log_path, "r");
    if (!f)
        return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\n')
            buf[i] = i + 1 == n ? '\0' : '|';
    return buf;
}

static void outcomes(void) {
    const struct {
        const char *name;
        int rc;
        const char *reason;
    } want[] = {
        {"ld_ok", 0, "ok"},
        {"ld_v20", 0, "ok"},
        {"ld_v32", 0, "ok"},
        {"ld_v34", EDRV_EVERSION, "driver_incorrect_version"},
        {"ld_v1", EDRV_EVERSION, "driver_incorrect_version"},
        {"ld_v4", EDRV_EVERSION, "driver_incorrect_version"},
        {"ld_marker", EDRV_EVERSION, "driver_incorrect_version"},
        {"ld_nullinit", EDRV_EDRVINIT, "driver_init_failed"},
        {"ld_initfail", EDRV_EDRVINIT, "driver_init_failed"},
        {"ld_noinit", EDRV_ENODRVINIT, "no_driver_init"},
        {"ld_badname", EDRV_EBADNAME, "bad_driver_name"},
        {"ld_notelf", EDRV_EOPEN, "open_error"},
        {"no_such_file", EDRV_EOPEN, "open_error"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int rc = edrv_load_driver(EDRV_TEST_DRIVERS, want[i].name);
        if (rc != want[i].rc)
            fprintf(stderr, "loading %s: %s (%s)\n", want[i].name, edrv_err_name(rc),
                    edrv_last_error());
        CHECK_INT(rc, want[i].rc);
        CHECK_STR(edrv_err_name(rc), want[i].reason);
    }
    for (const char *n = "ld_ok\0ld_v20\0ld_v32\0"; *n; n += strlen(n) + 1)
        CHECK_INT(edrv_unload_driver(n), 0);
}

static void open_error_has_dlerror_text(void) {
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "no_such_file"), EDRV_EOPEN);
    CHECK(strstr(edrv_last_error(), "No such file or directory") != NULL);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_notelf"), EDRV_EOPEN);
    CHECK(strstr(edrv_last_error(), "ld_notelf.so") != NULL);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_v34"), EDRV_EVERSION);
    CHECK(strstr(edrv_last_error(), "3.4") != NULL);
}

static void init_and_finish(void) {
    log_reset();
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_ok"), 0);
    CHECK_STR(log_text(), "ld_ok init");
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_ok"), 0); /* a second user */
    CHECK_STR(log_text(), "ld_ok init");
    CHECK_INT(edrv_unload_driver("ld_ok"), 0);
    CHECK_STR(log_text(), "ld_ok init");
    CHECK_INT(edrv_unload_driver("ld_ok"), 0);
    CHECK_STR(log_text(), "ld_ok init|ld_ok finish");
    CHECK_INT(edrv_unload_driver("ld_ok"), EDRV_ENODRIVER);
    /* A failing init is not finished. */
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_initfail"), EDRV_EDRVINIT);
    CHECK_STR(log_text(), "ld_ok init|ld_ok finish|ld_initfail init");
    unlink(log_path);
}

static void unload_kills_ports(void) {
    /* As erl_ddll:unload_driver/1 after load_driver/2. */
    log_reset();
    edrv_proc *p = trapping_proc();
    edrv_port port;
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "ld_ok") == 0);
    REQUIRE(edrv_open_port(p, "ld_ok", 0, &port) == 0);
    CHECK_INT(edrv_unload_driver("ld_ok"), 0);
    CHECK_STR(log_text(), "ld_ok init|ld_ok stop|ld_ok finish");
    CHECK_MSG(p, port, "{'EXIT',%P,driver_unloaded}");
    CHECK_INT(edrv_port_command(p, port, "x", 1), EDRV_ECLOSED);
    edrv_port p2;
    CHECK_INT(edrv_open_port(p, "ld_ok", 0, &p2), EDRV_EBADARG);
    CHECK(strstr(edrv_last_error(), "no driver named 'ld_ok'") != NULL);
    edrv_proc_free(p);
    unlink(log_path);
}

static void same_name_other_file(void) {
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv"), 0);
    CHECK_INT(edrv_load_driver("/tmp", "tdrv"), EDRV_EBADNAME);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS "/.", "tdrv"), 0); /* the same file */
    CHECK_INT(edrv_unload_driver("tdrv"), 0);
    CHECK_INT(edrv_unload_driver("tdrv"), 0);
}

static void bad_names(void) {
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, ""), EDRV_EINVAL);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "../drivers/tdrv"), EDRV_EINVAL);
    CHECK_INT(edrv_load_driver(NULL, "tdrv"), EDRV_EINVAL);
    CHECK_INT(edrv_unload_driver(NULL), EDRV_EINVAL);
    CHECK_INT(edrv_unload_driver("never_loaded"), EDRV_ENODRIVER);
}

/* A driver linked into the host program. */
static int static_stops;
static ErlDrvData st_start(ErlDrvPort port, char *cmd) {
    return (ErlDrvData)port;
}
static void st_stop(ErlDrvData d) {
    static_stops++;
}
static ErlDrvEntry static_entry = {
    .start = st_start,
    .stop = st_stop,
    .driver_name = "static_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};
static ErlDrvEntry bad_static_entry = {
    .start = st_start,
    .driver_name = "bad_static",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = 3,
    .minor_version = 9,
};

/* One name, two kinds of driver: a file's and one linked into the host. A
 * file is refused under a registered name (EDRV_EBADNAME), and an entry under
 * a name loaded from a file (EDRV_ELOADED), as edrv.h says. */
static ErlDrvEntry static_tdrv_entry = {
    .start = st_start,
    .driver_name = "tdrv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

static void same_name_file_and_static(void) {
    CHECK_INT(edrv_register_driver(&static_tdrv_entry), 0);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv"), EDRV_EBADNAME);
    CHECK(strstr(edrv_last_error(), "the host program") != NULL);
    CHECK_INT(edrv_unload_driver("tdrv"), 0);
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv"), 0);
    CHECK_INT(edrv_register_driver(&static_tdrv_entry), EDRV_ELOADED);
    CHECK_INT(edrv_unload_driver("tdrv"), 0);
}

static void register_static(void) {
    static_stops = 0;
    edrv_proc *p = trapping_proc();
    CHECK_INT(edrv_register_driver(&static_entry), 0);
    CHECK_INT(edrv_register_driver(&bad_static_entry), EDRV_EVERSION);
    CHECK_INT(edrv_register_driver(NULL), EDRV_EINVAL);
    edrv_port port;
    REQUIRE(edrv_open_port(p, "static_drv with args", 0, &port) == 0);
    CHECK_INT(edrv_port_close(p, port), 0);
    CHECK_INT(static_stops, 1);
    CHECK_INT(edrv_unload_driver("static_drv"), 0);
    edrv_proc_free(p);
}

static const test_case cases[] = {
    {"outcomes", outcomes},
    {"open_error_has_dlerror_text", open_error_has_dlerror_text},
    {"init_and_finish", init_and_finish},
    {"unload_kills_ports", unload_kills_ports},
    {"same_name_other_file", same_name_other_file},
    {"same_name_file_and_static", same_name_file_and_static},
    {"bad_names", bad_names},
    {"register_static", register_static},
    {NULL, NULL},
};

TEST_MAIN(cases)
