/* The emulator thread's backlog naps (loop.c) where epoll_pwait2 is missing,
 * as on Linux before 5.11 and under valgrind: the naps fall back to
 * epoll_wait once, in silence, and none of them fails. Every case runs with
 * EDRV_TESTING_EPOLL_PWAIT2=off, which makes libedrv act as if the call were
 * missing; the program links libedrv.a to read the naps' internal counters. */
#define _GNU_SOURCE
#include "check.h"

#include <stdbool.h>
#include <unistd.h>

/* loop.c's counters since edrv_start; no header declares them. */
void edrv__testing_naps(uint64_t *naps, uint64_t *enosys, uint64_t *failed);

static edrv_proc *proc;

static void put32(char *p, unsigned v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static const char *ctl(edrv_port port, unsigned op, const char *data, size_t len) {
    static char out[256];
    edrv_reply r;
    int rc = edrv_port_control(proc, port, op, data, len, &r);
    if (rc < 0)
        snprintf(out, sizeof out, "error:%s", edrv_err_name(rc));
    else
        snprintf(out, sizeof out, "%.*s", (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static uint64_t naps_so_far(void) {
    uint64_t naps, enosys, failed;
    edrv__testing_naps(&naps, &enosys, &failed);
    return naps;
}

/* fd 2 into a temporary file while the runtime works, so that the case can
 * check that it printed nothing. */
static int stderr_saved = -1;
static FILE *stderr_file;

static void stderr_capture(void) {
    fflush(stderr);
    stderr_file = tmpfile();
    stderr_saved = dup(2);
    if (stderr_file && stderr_saved >= 0)
        dup2(fileno(stderr_file), 2);
}

/* Restores fd 2; what was written meanwhile, or NULL. The caller frees it. */
static char *stderr_restore(void) {
    fflush(stderr);
    if (stderr_saved >= 0) {
        dup2(stderr_saved, 2);
        close(stderr_saved);
        stderr_saved = -1;
    }
    if (!stderr_file)
        return NULL;
    char *text = calloc(1, 4096);
    rewind(stderr_file);
    if (text)
        (void)!fread(text, 1, 4095, stderr_file);
    fclose(stderr_file);
    stderr_file = NULL;
    return text;
}

/* A backlog that cannot move (jobs behind one that waits at adrv's gate), so
 * that the emulator thread naps; then the gate opens and the jobs finish in a
 * stream, which the emulator thread collects nap after nap. epoll_pwait2 is
 * found missing once, every nap sleeps in epoll_wait instead (none fails,
 * which a thread that spins through the backlog would show), and nothing is
 * printed. */
static void backlog_without_epoll_pwait2(void) {
    enum { JOBS = 200 }; /* > 16 per pool thread: a backlog */
    proc = edrv_proc_new();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "adrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(proc, "adrv", 0, &port) == 0);
    stderr_capture();
    char b[13];
    put32(b, 0);
    long blocker = atol(ctl(port, 3, b, 4)); /* BLOCK on key 0 */
    b[0] = 1;
    put32(b + 1, 0); /* key 0: behind the blocker */
    put32(b + 5, JOBS);
    put32(b + 9, 100); /* 100 us each */
    bool submitted = strchr(ctl(port, 1, b, sizeof b), ',') != NULL;
    /* With the lane held, the backlog stays: the emulator thread naps. */
    WAIT_UNTIL(naps_so_far() > 0);
    uint64_t naps_blocked = naps_so_far();
    ctl(port, 4, "", 0); /* RELEASE */
    int done = 0;
    edrv_msg m;
    while (done < JOBS + 1 && edrv_receive(proc, CHECK_WAIT_MS, &m) == 0) {
        done++;
        edrv_msg_free(&m);
    }
    uint64_t naps, enosys, failed;
    edrv__testing_naps(&naps, &enosys, &failed);
    char *printed = stderr_restore();
    CHECK(blocker > 0);
    CHECK(submitted);
    CHECK_INT(done, JOBS + 1);
    CHECK(naps_blocked >= 1);
    CHECK_INT(enosys, 1);
    CHECK_INT(failed, 0);
    CHECK_STR(printed, "");
    fprintf(stderr, "naps: %llu (%llu while blocked)\n", (unsigned long long)naps,
            (unsigned long long)naps_blocked);
    free(printed);
    CHECK_INT(edrv_port_close(proc, port), 0);
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"backlog_without_epoll_pwait2", backlog_without_epoll_pwait2},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    setenv("EDRV_TESTING_EPOLL_PWAIT2", "off", 1); /* read by edrv_start */
    return run_tests(cases, argc, argv);
}
