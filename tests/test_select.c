/* driver_select: ready_input and ready_output on the emulator thread,
 * stop_select as ERTS calls it, ports that end with fds selected, missing
 * callbacks, fds epoll refuses, and misuse. The driver is tests/drivers/sdrv.c;
 * tests/diff/select.scenario checks the same against erl. */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

/* sdrv's control ops and mode bits (see tests/drivers/sdrv.c). */
enum {
    SD_PIPE = 1, SD_SELECT_RD = 2, SD_WRITE = 3, SD_STOPS = 4, SD_SELECT_WR = 5,
    SD_CLOSE_WR = 6, SD_RD_OPEN = 7, SD_SELECT_FD = 8, SD_ON_INPUT = 9,
    SD_STOP_DESELECT = 10, SD_OPEN_FILE = 11, SD_WRITE_ORPHAN = 12, SD_SELECT_LAST = 13,
};
enum { IN_NOTHING = 0, IN_FAIL = 1, IN_STOP_USE = 2 };
enum { R = ERL_DRV_READ, W = ERL_DRV_WRITE, USE = ERL_DRV_USE, NOCB = ERL_DRV_USE_NO_CALLBACK };

static edrv_proc *proc;

/* The control's reply as text ("badarg" when it fails). */
static const char *ctl(edrv_port port, unsigned op, const void *data, size_t len) {
    static char out[64];
    edrv_reply r;
    int rc = edrv_port_control(proc, port, op, data, len, &r);
    if (rc < 0)
        snprintf(out, sizeof out, "%s", edrv_err_name(rc));
    else
        snprintf(out, sizeof out, "%.*s", (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static const char *sel(edrv_port port, unsigned op, int mode, int on) {
    char b[2] = {(char)mode, (char)on};
    return ctl(port, op, b, 2);
}

static const char *sel_fd(edrv_port port, long fd, int mode, int on) {
    char b[6] = {(char)(fd >> 24), (char)(fd >> 16), (char)(fd >> 8), (char)fd, (char)mode,
                 (char)on};
    return ctl(port, SD_SELECT_FD, b, 6);
}

static void check_quiet(long ms) {
    char *m = recv_text(proc, ms);
    CHECK_STR(m, "timeout");
    free(m);
}

/* The emulator thread sleeps: no fd keeps the loop spinning. The bound is
 * loose; a spinning loop uses all of the 300 ms. */
static void check_idle(void) {
    double before = check_cpu_seconds();
    usleep(300 * 1000);
    CHECK(check_cpu_seconds() - before < 0.15);
}

/* fd 2 into a temporary file, so that a case can wait for a report that the
 * emulator thread prints when it handles an fd's event. */
static int stderr_saved = -1;
static FILE *stderr_file;

static void stderr_capture(void) {
    fflush(stderr);
    stderr_file = tmpfile();
    stderr_saved = dup(2);
    if (stderr_file && stderr_saved >= 0)
        dup2(fileno(stderr_file), 2);
}

/* How many times `what` was printed since stderr_capture. */
static int stderr_count(const char *what) {
    char text[4096];
    ssize_t n = stderr_file ? pread(fileno(stderr_file), text, sizeof text - 1, 0) : -1;
    text[n > 0 ? n : 0] = '\0';
    int count = 0;
    for (const char *at = text; (at = strstr(at, what)); at++)
        count++;
    return count;
}

/* Restores fd 2 and prints there what was captured. */
static void stderr_restore(void) {
    if (stderr_saved < 0)
        return;
    char text[4096];
    ssize_t n = stderr_file ? pread(fileno(stderr_file), text, sizeof text, 0) : -1;
    dup2(stderr_saved, 2);
    close(stderr_saved);
    stderr_saved = -1;
    if (n > 0)
        (void)!write(2, text, (size_t)n);
    if (stderr_file)
        fclose(stderr_file);
    stderr_file = NULL;
}

static int setup(edrv_port *port, const char *driver) {
    proc = trapping_proc();
    if (!proc || edrv_load_driver(EDRV_TEST_DRIVERS, driver) != 0)
        return -1;
    return edrv_open_port(proc, driver, 0, port);
}

static void read_events(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0"); /* again: nothing changes */
    CHECK_STR(ctl(p, SD_WRITE, "hello", 5), "5");
    CHECK_MSG(proc, p, "{%P,{data,\"hello\"}}");
    CHECK_STR(ctl(p, SD_WRITE, "world", 5), "5");
    CHECK_MSG(proc, p, "{%P,{data,\"world\"}}");
    /* Deselected: the data waits; selected again: it comes. */
    CHECK_STR(sel(p, SD_SELECT_RD, R, 0), "0");
    CHECK_STR(ctl(p, SD_WRITE, "quiet", 5), "5");
    check_quiet(100);
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_MSG(proc, p, "{%P,{data,\"quiet\"}}");
    /* End of file: sdrv says so and deselects. */
    CHECK_STR(ctl(p, SD_WRITE, "last", 4), "4");
    CHECK_STR(ctl(p, SD_CLOSE_WR, "", 0), "ok");
    CHECK_MSG(proc, p, "{%P,{data,\"last\"}}");
    CHECK_MSG(proc, p, "{%P,{data,\"eof\"}}");
    check_quiet(50);
    CHECK_STR(ctl(p, SD_RD_OPEN, "", 0), "open");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "0");
    edrv_proc_free(proc);
}

static void write_events(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    /* ready_output deselects WRITE: one message per select. */
    CHECK_STR(sel(p, SD_SELECT_WR, W, 1), "0");
    CHECK_MSG(proc, p, "{%P,{data,\"writable\"}}");
    check_quiet(50);
    CHECK_STR(sel(p, SD_SELECT_WR, W | USE, 1), "0");
    CHECK_MSG(proc, p, "{%P,{data,\"writable\"}}");
    /* Both directions of one pipe at once. */
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(sel(p, SD_SELECT_WR, W, 1), "0");
    CHECK_STR(ctl(p, SD_WRITE, "x", 1), "1");
    char *a = recv_text(proc, CHECK_WAIT_MS), *b = recv_text(proc, CHECK_WAIT_MS);
    char x[256], w[256];
    port_subst(x, sizeof x, "{%P,{data,\"x\"}}", p);
    port_subst(w, sizeof w, "{%P,{data,\"writable\"}}", p);
    CHECK((!strcmp(a, x) && !strcmp(b, w)) || (!strcmp(a, w) && !strcmp(b, x)));
    free(a);
    free(b);
    edrv_proc_free(proc);
}

static void stop_select_calls(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    /* Deselecting with ERL_DRV_USE calls stop_select inside driver_select. */
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "0");
    CHECK_STR(ctl(p, SD_RD_OPEN, "", 0), "open");
    CHECK_STR(sel(p, SD_SELECT_RD, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "1");
    CHECK_STR(ctl(p, SD_CLOSE_WR, "", 0), "ok");
    /* Also for an fd never selected, and one selected without ERL_DRV_USE. */
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "2");
    CHECK_STR(ctl(p, SD_CLOSE_WR, "", 0), "ok");
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "2");
    CHECK_STR(sel(p, SD_SELECT_RD, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "3");
    CHECK_STR(ctl(p, SD_CLOSE_WR, "", 0), "ok");
    /* ERL_DRV_USE_NO_CALLBACK: no stop_select, and only the directions in the
     * mode go (here none: READ stays selected). */
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_STR(sel(p, SD_SELECT_RD, NOCB, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "3");
    CHECK_STR(ctl(p, SD_WRITE, "nocb", 4), "4");
    CHECK_MSG(proc, p, "{%P,{data,\"nocb\"}}");
    edrv_proc_free(proc);
}

static void stop_select_in_ready_input(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(ctl(p, SD_ON_INPUT, (char[]){IN_STOP_USE}, 1), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_STR(ctl(p, SD_WRITE, "in", 2), "2");
    /* stop_select ran inside ready_input, from driver_select, as in ERTS. */
    CHECK_MSG(proc, p, "{%P,{data,\"in\"}}");
    CHECK_MSG(proc, p, "{%P,{data,\"stops=1\"}}");
    CHECK_STR(ctl(p, SD_RD_OPEN, "", 0), "closed");
    check_quiet(50);
    /* A new pipe likely reuses the number: the old entry must not leak into it. */
    CHECK_STR(ctl(p, SD_CLOSE_WR, "", 0), "ok");
    CHECK_STR(ctl(p, SD_ON_INPUT, (char[]){IN_NOTHING}, 1), "ok");
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(ctl(p, SD_WRITE, "again", 5), "5");
    CHECK_MSG(proc, p, "{%P,{data,\"again\"}}");
    edrv_proc_free(proc);
}

static void failure_in_ready_input(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    CHECK_STR(ctl(p, SD_ON_INPUT, (char[]){IN_FAIL}, 1), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(ctl(p, SD_WRITE, "bye", 3), "3");
    /* Output before the failure goes; "after" is dropped; stop runs after. */
    CHECK_MSG(proc, p, "{%P,{data,\"bye\"}}");
    CHECK_MSG(proc, p, "{'EXIT',%P,boom}");
    check_quiet(50);
    edrv_proc_free(proc);
}

static void port_ends_selected(void) {
    edrv_port a, b, c;
    REQUIRE(setup(&a, "sdrv") == 0);
    REQUIRE(edrv_open_port(proc, "sdrv", 0, &b) == 0);
    REQUIRE(edrv_open_port(proc, "sdrv", 0, &c) == 0);
    /* Ended without deselecting: deselected, stop_select not called. */
    CHECK_STR(ctl(a, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(a, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_INT(edrv_port_close(proc, a), 0);
    CHECK_MSG(proc, a, "{'EXIT',%P,normal}");
    CHECK_STR(ctl(b, SD_STOPS, "", 0), "0");
    /* Data on the fd the dead port had selected: nothing runs, no spinning. */
    CHECK_STR(ctl(b, SD_WRITE_ORPHAN, "orphan", 6), "6");
    check_quiet(100);
    check_idle();
    /* A stop that deselects with ERL_DRV_USE gets stop_select. */
    CHECK_STR(ctl(c, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(c, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_STR(ctl(c, SD_STOP_DESELECT, "", 0), "ok");
    CHECK_INT(edrv_port_close(proc, c), 0);
    CHECK_MSG(proc, c, "{'EXIT',%P,normal}");
    CHECK_STR(ctl(b, SD_STOPS, "", 0), "1");
    /* The runtime stops with an fd still selected: nothing leaks. */
    CHECK_STR(ctl(b, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(b, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_STR(sel(b, SD_SELECT_WR, W, 1), "0");
    edrv_proc_free(proc);
}

static void no_ready_callbacks(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrvn") == 0);
    CHECK_STR(ctl(p, SD_PIPE, "", 0), "ok");
    /* Each event is reported on stderr when it is handled: the case waits
     * for the report, then checks what follows it. */
    stderr_capture();
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(ctl(p, SD_WRITE, "nobody", 6), "6");
    /* Reported, the port lives, and READ is deselected: no spin. */
    CHECK(WAIT_UNTIL(stderr_count("ready_input() callback") == 1));
    check_quiet(50);
    check_idle();
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "0");
    CHECK_STR(sel(p, SD_SELECT_WR, W, 1), "0");
    CHECK(WAIT_UNTIL(stderr_count("ready_output() callback") == 1));
    check_quiet(50);
    check_idle();
    edrv_port_status st;
    CHECK_INT(edrv_port_info(p, &st), 0);
    /* Selected again: reported again; then given up with stop_select. */
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK(WAIT_UNTIL(stderr_count("ready_input() callback") == 2));
    stderr_restore();
    check_quiet(50);
    CHECK_STR(sel(p, SD_SELECT_RD, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "1");
    edrv_proc_free(proc);
}

static void always_ready_fd(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    /* epoll refuses /dev/null; ERTS's poll() fallback finds it always ready. */
    CHECK_STR(ctl(p, SD_OPEN_FILE, "", 0), "ok");
    CHECK_STR(sel(p, SD_SELECT_RD, R, 1), "0");
    CHECK_MSG(proc, p, "{%P,{data,\"eof\"}}"); /* sdrv deselects at end of file */
    check_quiet(50);
    check_idle();
    CHECK_STR(sel(p, SD_SELECT_RD, R | USE, 1), "0");
    CHECK_MSG(proc, p, "{%P,{data,\"eof\"}}");
    CHECK_STR(sel(p, SD_SELECT_RD, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "1");
    edrv_proc_free(proc);
}

static void bad_fds(void) {
    edrv_port p;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_STR(sel_fd(p, -1, R, 1), "-1");
    CHECK_STR(sel_fd(p, -1, USE, 0), "-1");
    long max = sysconf(_SC_OPEN_MAX);
    CHECK_STR(sel_fd(p, max, R, 1), "-1");
    CHECK_STR(sel_fd(p, max - 1, R, 0), "0");
    /* An fd that is not open: reported and forgotten, still 0; no callback. */
    long closed = max - 1;
    REQUIRE(fcntl((int)closed, F_GETFD) < 0);
    CHECK_STR(sel_fd(p, closed, R, 1), "0");
    check_quiet(100);
    CHECK_STR(sel_fd(p, closed, USE, 0), "0");
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "1");
    /* Not from a host thread, not without a port. */
    CHECK_INT(driver_select(NULL, (ErlDrvEvent)0, ERL_DRV_READ, 1), -1);
    char fake[64] = {0};
    CHECK_INT(driver_select((ErlDrvPort)fake, (ErlDrvEvent)0, ERL_DRV_READ, 1), -1);
    edrv_proc_free(proc);
}

static void steal(void) {
    edrv_port a, b;
    REQUIRE(setup(&a, "sdrv") == 0);
    REQUIRE(edrv_open_port(proc, "sdrv", 0, &b) == 0);
    CHECK_STR(ctl(a, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(a, SD_SELECT_RD, R, 1), "0");
    /* b selects a's read end: it takes input over (reported). */
    CHECK_STR(sel(b, SD_SELECT_LAST, R, 1), "0");
    CHECK_STR(ctl(a, SD_WRITE, "who", 3), "3");
    CHECK_MSG(proc, b, "{%P,{data,\"who\"}}");
    /* One port per direction of one fd. */
    CHECK_STR(sel(b, SD_SELECT_LAST, R, 0), "0");
    CHECK_STR(sel(a, SD_SELECT_RD, R, 1), "0");
    CHECK_STR(sel(b, SD_SELECT_LAST, W, 1), "0");
    CHECK_STR(ctl(a, SD_WRITE, "x", 1), "1");
    CHECK_MSG(proc, a, "{%P,{data,\"x\"}}");
    /* b ends: a keeps its direction. */
    CHECK_INT(edrv_port_close(proc, b), 0);
    CHECK_MSG(proc, b, "{'EXIT',%P,normal}");
    CHECK_STR(ctl(a, SD_WRITE, "y", 1), "1");
    CHECK_MSG(proc, a, "{%P,{data,\"y\"}}");
    edrv_proc_free(proc);
}

/* A start that selects a readable fd and fails: the port never reaches
 * finish_exit, and its fd must not call into it (ASan checks this). */
static void select_in_failed_start(void) {
    edrv_port p, q;
    REQUIRE(setup(&p, "sdrv") == 0);
    CHECK_INT(edrv_open_port(proc, "sdrv selfail", 0, &q), -EINVAL);
    check_quiet(100);
    check_idle();
    CHECK_STR(ctl(p, SD_STOPS, "", 0), "0");
    /* The runtime stops with the entry still there. */
    CHECK_INT(edrv_open_port(proc, "sdrv selfail", 0, &q), -EINVAL);
    edrv_proc_free(proc);
}

/* More fds than one epoll_wait returns, all ready at once. */
static void many_ports(void) {
    enum { N = 100 };
    edrv_port p[N];
    REQUIRE(setup(&p[0], "sdrv") == 0);
    for (int i = 1; i < N; i++)
        REQUIRE(edrv_open_port(proc, "sdrv", 0, &p[i]) == 0);
    for (int i = 0; i < N; i++) {
        CHECK_STR(ctl(p[i], SD_PIPE, "", 0), "ok");
        CHECK_STR(sel(p[i], SD_SELECT_RD, R | USE, 1), "0");
    }
    for (int i = 0; i < N; i++)
        CHECK_STR(ctl(p[i], SD_WRITE, "m", 1), "1");
    int got[N] = {0}, n = 0;
    edrv_msg m;
    while (n < N && edrv_receive(proc, CHECK_WAIT_MS, &m) == 0) {
        int idx = 1, arity;
        erlang_port ep;
        ei_decode_tuple_header(m.data, &idx, &arity);
        ei_decode_port(m.data, &idx, &ep);
        for (int i = 0; i < N; i++)
            if (p[i] == ep.id)
                got[i]++;
        n++;
        edrv_msg_free(&m);
    }
    CHECK_INT(n, N);
    for (int i = 0; i < N; i++)
        CHECK_INT(got[i], 1);
    /* Half of them end: the others still work. */
    for (int i = 0; i < N; i += 2) {
        CHECK_INT(edrv_port_close(proc, p[i]), 0);
        CHECK_MSG(proc, p[i], "{'EXIT',%P,normal}");
    }
    for (int i = 1; i < N; i += 2)
        CHECK_STR(ctl(p[i], SD_WRITE, "k", 1), "1");
    for (int i = 1; i < N; i += 2) {
        char *t = recv_text(proc, CHECK_WAIT_MS);
        CHECK(strstr(t, "{data,\"k\"}") != NULL);
        free(t);
    }
    CHECK_STR(ctl(p[1], SD_STOPS, "", 0), "0");
    edrv_proc_free(proc);
}

/* A driver linked into the test that selects two fds epoll refuses in one
 * callback, and fails in ready_input. */
static int twin_fds[2] = {-1, -1};

static ErlDrvData tw_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    return (ErlDrvData)port;
}

static void tw_input(ErlDrvData d, ErlDrvEvent ev) {
    (void)ev;
    driver_output((ErlDrvPort)d, "in", 2);
    driver_failure_atom((ErlDrvPort)d, "boom");
}

static ErlDrvSSizeT tw_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    (void)op, (void)buf, (void)len, (void)rbuf, (void)rlen;
    for (int i = 0; i < 2; i++)
        driver_select((ErlDrvPort)d, (ErlDrvEvent)(ErlDrvSInt)twin_fds[i], ERL_DRV_READ, 1);
    return 0;
}

static ErlDrvEntry twin_entry = {
    .start = tw_start,
    .control = tw_control,
    .ready_input = tw_input,
    .driver_name = "twin_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

/* Two always-ready fds of one port, served in one turn: the first one's
 * ready_input ends the port, which takes the second with it before its
 * turn; it is not served (ASan checks that nothing freed is touched). */
static void always_fds_end_with_port(void) {
    proc = trapping_proc();
    REQUIRE(proc && edrv_register_driver(&twin_entry) == 0);
    for (int i = 0; i < 2; i++)
        REQUIRE((twin_fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0);
    edrv_port p;
    REQUIRE(edrv_open_port(proc, "twin_drv", 0, &p) == 0);
    CHECK_STR(ctl(p, 1, "", 0), "");
    CHECK_MSG(proc, p, "{%P,{data,\"in\"}}");
    CHECK_MSG(proc, p, "{'EXIT',%P,boom}");
    check_quiet(50);
    check_idle();
    for (int i = 0; i < 2; i++)
        close(twin_fds[i]);
    edrv_proc_free(proc);
}

/* Ports that share fds, one direction each, end in turn: each end takes
 * only its own directions; the other port's still fire. */
static void shared_fds_end_in_turn(void) {
    edrv_port a, b;
    REQUIRE(setup(&a, "sdrv") == 0);
    REQUIRE(edrv_open_port(proc, "sdrv", 0, &b) == 0);
    CHECK_STR(ctl(b, SD_PIPE, "", 0), "ok");
    CHECK_STR(ctl(a, SD_PIPE, "", 0), "ok");
    CHECK_STR(sel(a, SD_SELECT_RD, R, 1), "0");  /* a's read end: a reads */
    CHECK_STR(sel(b, SD_SELECT_LAST, W, 1), "0"); /* and b waits to write it, never */
    CHECK_STR(sel(b, SD_SELECT_RD, R, 1), "0");  /* b's own read end */
    CHECK_INT(edrv_port_close(proc, a), 0);
    CHECK_MSG(proc, a, "{'EXIT',%P,normal}");
    CHECK_STR(ctl(b, SD_WRITE, "b", 1), "1");
    CHECK_MSG(proc, b, "{%P,{data,\"b\"}}");
    CHECK_STR(sel(b, SD_SELECT_RD, R, 1), "0");
    CHECK_INT(edrv_port_close(proc, b), 0);
    CHECK_MSG(proc, b, "{'EXIT',%P,normal}");
    check_quiet(50);
    check_idle();
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"read_events", read_events},
    {"write_events", write_events},
    {"stop_select_calls", stop_select_calls},
    {"stop_select_in_ready_input", stop_select_in_ready_input},
    {"failure_in_ready_input", failure_in_ready_input},
    {"port_ends_selected", port_ends_selected},
    {"no_ready_callbacks", no_ready_callbacks},
    {"always_ready_fd", always_ready_fd},
    {"bad_fds", bad_fds},
    {"steal", steal},
    {"select_in_failed_start", select_in_failed_start},
    {"many_ports", many_ports},
    {"always_fds_end_with_port", always_fds_end_with_port},
    {"shared_fds_end_in_turn", shared_fds_end_in_turn},
    {NULL, NULL},
};

TEST_MAIN(cases)
