/*
 * bench_msg: the C host of the message path benchmark. It starts edrv, loads
 * mdrv.so and mdrvp.so (the drivers bench_msg_erts.erl loads into erl), and
 * times what a host pays per port operation through edrv.h:
 *
 *   control   TRIPS edrv_port_control(P, 1, "hello") round trips
 *   call      TRIPS edrv_port_call(P, 1, {hello,42}) round trips
 *   command   TRIPS edrv_port_command(P, "hello") + edrv_receive of its echo
 *   pipe      PIPE commands, then PIPE receives (one thread, a port of mdrvp,
 *             the driver with ERL_DRV_FLAG_USE_PORT_LOCKING)
 *   pipe2p    the same with two threads, each with its own process and
 *             mdrvp port, each PIPE/2 commands then PIPE/2 receives; timed
 *             from the moment both start to the moment both are done
 *   command2p command round trips on two threads as pipe2p, 4 x TRIPS on
 *             each (its own process and mdrvp port); its round trips per
 *             second against command's say what the second thread adds
 *
 * SIGPIPE is ignored first, as ERTS does, so that edrv runs the calls'
 * callbacks in this program's threads when it can (immediate execution,
 * edrv.h); --queued starts edrv with no_immediate, the queued model;
 * --schedulers N sets edrv_options.schedulers (default: edrv's); --peer
 * NAME names the peer in the output.
 *
 * Usage: bench_msg [--queued] [--schedulers N] [--peer NAME] [--only CASE]
 *                  DRIVERS_DIR TRIPS PIPE
 *   --only CASE runs one case (control, call, command or pipe) TRIPS times,
 *   with no warm-up and no output: for callgrind, see bench/README.md.
 * Prints `RESULT PEER CASE METRIC VALUE` lines, PEER being c, c_queued, or
 * --peer's NAME (see bench/README.md), and `INFO PEER callbacks_in_caller SHARE`: the share
 * of 1000 controls whose callback ran in the calling thread.
 * Threads: the main thread, and two more in pipe2p and command2p.
 */
#define _GNU_SOURCE
#include <edrv.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

static const char *peer = "c";
static const char *dir;

/* {hello,42} in ETF: version, SMALL_TUPLE_EXT 2, SMALL_ATOM_UTF8_EXT "hello",
 * SMALL_INTEGER_EXT 42. */
static const char call_term[] = {(char)131, 104, 2, 119, 5, 'h', 'e', 'l', 'l', 'o', 97, 42};

static int fail(const char *what, int rc) {
    fprintf(stderr, "bench_msg: %s: %s (%s)\n", what, edrv_err_name(rc), edrv_last_error());
    return -1;
}

static void result(const char *c, const char *metric, double v) {
    printf("RESULT %s %s %s %.4f\n", peer, c, metric, v);
    fflush(stdout);
}

/* A process with one binary port of `drv`. */
static int open_one(const char *drv, edrv_proc **p, edrv_port *port) {
    int rc;
    if (!(*p = edrv_proc_new()))
        return fail("edrv_proc_new", EDRV_ENOMEM);
    if ((rc = edrv_open_port(*p, drv, EDRV_PORT_BINARY, port)) < 0)
        return fail("edrv_open_port", rc);
    return 0;
}

static int controls(edrv_proc *p, edrv_port port, unsigned n) {
    edrv_reply r;
    for (unsigned i = 0; i < n; i++) {
        int rc = edrv_port_control(p, port, 1, "hello", 5, &r);
        if (rc < 0)
            return fail("edrv_port_control", rc);
        int ok = r.len == 5 && memcmp(r.data, "HELLO", 5) == 0;
        edrv_reply_free(&r);
        if (!ok)
            return fail("control's reply is not HELLO", 0);
    }
    return 0;
}

static int calls(edrv_proc *p, edrv_port port, unsigned n) {
    edrv_reply r;
    for (unsigned i = 0; i < n; i++) {
        int rc = edrv_port_call(p, port, 1, call_term, sizeof call_term, &r);
        if (rc < 0)
            return fail("edrv_port_call", rc);
        int ok = r.len == sizeof call_term;
        edrv_reply_free(&r);
        if (!ok)
            return fail("call's reply is not the term sent", 0);
    }
    return 0;
}

/* The echo's length, learnt from the first one (receive_n checks them). */
static size_t echo_len;

static int receive_n(edrv_proc *p, unsigned n) {
    edrv_msg m;
    for (unsigned i = 0; i < n; i++) {
        int rc = edrv_receive(p, 10000, &m);
        if (rc < 0)
            return fail("edrv_receive", rc);
        int ok = m.len == echo_len;
        edrv_msg_free(&m);
        if (!ok)
            return fail("unexpected message", 0);
    }
    return 0;
}

static int commands(edrv_proc *p, edrv_port port, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        int rc = edrv_port_command(p, port, "hello", 5);
        if (rc < 0)
            return fail("edrv_port_command", rc);
        if (receive_n(p, 1) < 0)
            return -1;
    }
    return 0;
}

static int pipelined(edrv_proc *p, edrv_port port, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        int rc = edrv_port_command(p, port, "hello", 5);
        if (rc < 0)
            return fail("edrv_port_command", rc);
    }
    return receive_n(p, n);
}

/* The first echo, checked in full: {#Port<0.N>,{data,<<"hello">>}}. */
static int check_echo(edrv_proc *p, edrv_port port) {
    edrv_msg m;
    char *s = NULL;
    int rc = edrv_port_command(p, port, "hello", 5);
    if (rc < 0 || (rc = edrv_receive(p, 10000, &m)) < 0)
        return fail("first echo", rc);
    edrv_term_format(m.data, m.len, &s);
    int ok = s && strstr(s, ",{data,<<\"hello\">>}}");
    if (!ok)
        fprintf(stderr, "bench_msg: unexpected echo %s\n", s ? s : "?");
    echo_len = m.len;
    free(s);
    edrv_msg_free(&m);
    return ok ? 0 : -1;
}

/* The share of IN_CALLER_TRIES controls whose callback ran in this thread
 * (control 2 tells the callback's thread): 1 when every call runs
 * immediately, 0 in the queued model; a call finding the lock taken (the
 * emulator thread's turn) is queued, so a few may be missing. */
#define IN_CALLER_TRIES 1000

static double in_caller(edrv_proc *p, edrv_port port) {
    long self = (long)syscall(SYS_gettid);
    int mine = 0;
    for (int i = 0; i < IN_CALLER_TRIES; i++) {
        edrv_reply r;
        char tid[32];
        if (edrv_port_control(p, port, 2, "", 0, &r) < 0)
            return -1;
        size_t n = r.len < sizeof tid - 1 ? r.len : sizeof tid - 1;
        memcpy(tid, r.data, n);
        tid[n] = 0;
        edrv_reply_free(&r);
        mine += atol(tid) == self;
    }
    return (double)mine / IN_CALLER_TRIES;
}

typedef int (*case_fn)(edrv_proc *, edrv_port, unsigned);

/* n operations of fn, timed; per-op time, and the rate when asked. */
static int timed(const char *name, case_fn fn, edrv_proc *p, edrv_port port, unsigned n,
                 int rate) {
    uint64_t t0 = bench_now_ns();
    if (fn(p, port, n) < 0)
        return -1;
    double ns = (double)(bench_now_ns() - t0);
    result(name, "us_per_op", ns / 1e3 / n);
    if (rate)
        result(name, "msgs_per_s", n * 1e9 / ns);
    return 0;
}

/* ---- pipe2p, command2p: two threads, two port-locked ports ---------------------- */

typedef struct {
    pthread_barrier_t *ready;
    case_fn fn;
    unsigned n, warm;
    uint64_t start, end;
    int rc;
} two_thread;

static void *two_main(void *arg) {
    two_thread *t = arg;
    edrv_proc *p;
    edrv_port port = 0;
    t->rc = open_one("mdrvp", &p, &port);
    for (int i = 0; i < 2 && !t->rc; i++) /* this thread's warm-up (see bench) */
        t->rc = t->fn(p, port, t->warm);
    pthread_barrier_wait(t->ready);
    t->start = bench_now_ns();
    if (!t->rc)
        t->rc = t->fn(p, port, t->n);
    t->end = bench_now_ns();
    if (port)
        edrv_port_close(p, port);
    edrv_proc_free(p);
    return NULL;
}

/* Case `name`: fn, n times on each of two threads (2n in all), each of
 * which first warms up with `warm`, twice. */
static int two(const char *name, const char *metric, case_fn fn, unsigned n, unsigned warm) {
    pthread_barrier_t ready;
    two_thread t[2] = {{&ready, fn, n, warm, 0, 0, 0}, {&ready, fn, n, warm, 0, 0, 0}};
    pthread_t th[2];
    pthread_barrier_init(&ready, NULL, 2);
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, two_main, &t[i]) != 0) {
            fprintf(stderr, "bench_msg: pthread_create failed\n");
            exit(1); /* the other thread waits at the barrier for ever */
        }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&ready);
    if (t[0].rc || t[1].rc)
        return -1;
    uint64_t start = t[0].start < t[1].start ? t[0].start : t[1].start;
    uint64_t end = t[0].end > t[1].end ? t[0].end : t[1].end;
    result(name, "us_per_op", (double)(end - start) / 1e3 / (2.0 * n));
    result(name, metric, 2.0 * n * 1e9 / (double)(end - start));
    return 0;
}

/* ---- main -------------------------------------------------------------------------- */

static const struct {
    const char *name;
    case_fn fn;
} cases[] = {{"control", controls}, {"call", calls}, {"command", commands}, {"pipe", pipelined}};

/* --only CASE: that case alone, n times, with no warm-up and no output, for
 * callgrind (two counts, subtracted, give the instructions of one). */
static int only(const char *name, unsigned n) {
    edrv_proc *p;
    edrv_port port;
    int rc;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strcmp(name, cases[i].name) != 0)
            continue;
        if ((rc = edrv_load_driver(dir, "mdrv")) < 0)
            return fail("edrv_load_driver", rc);
        if (open_one("mdrv", &p, &port) < 0 || check_echo(p, port) < 0 ||
            cases[i].fn(p, port, n) < 0)
            return -1;
        edrv_port_close(p, port);
        edrv_proc_free(p);
        return 0;
    }
    fprintf(stderr, "bench_msg: --only: no case '%s' (control, call, command, pipe)\n", name);
    return -1;
}

static int bench(unsigned trips, unsigned npipe) {
    edrv_proc *p, *pp;
    edrv_port port, portp;
    int rc;
    if ((rc = edrv_load_driver(dir, "mdrv")) < 0 || (rc = edrv_load_driver(dir, "mdrvp")) < 0)
        return fail("edrv_load_driver", rc);
    if (open_one("mdrv", &p, &port) < 0 || open_one("mdrvp", &pp, &portp) < 0 ||
        check_echo(p, port) < 0 || check_echo(pp, portp) < 0)
        return -1;
    /* Warm-up: a tenth of each round-trip case, and two whole pipelined
     * bursts, so that no pipelined case pays for the first touch of its
     * messages' memory: the allocator takes two bursts to settle on the
     * pages it reuses (the first touch costs page faults, which two threads
     * would also queue for in the kernel). */
    unsigned wt = trips / 10 + 1;
    if (controls(p, port, wt) < 0 || calls(p, port, wt) < 0 || commands(p, port, wt) < 0 ||
        pipelined(pp, portp, npipe) < 0 || pipelined(pp, portp, npipe) < 0)
        return -1;
    if (timed("control", controls, p, port, trips, 0) < 0 ||
        timed("call", calls, p, port, trips, 0) < 0 ||
        timed("command", commands, p, port, trips, 0) < 0 ||
        timed("pipe", pipelined, pp, portp, npipe, 1) < 0 ||
        /* pipe2p's threads warm up as pipe did, with their half. */
        two("pipe2p", "msgs_per_s", pipelined, npipe / 2, npipe / 2) < 0 ||
        /* Four times command's count on each thread: a window long enough
         * that two threads' start and end skew does not show. */
        two("command2p", "trips_per_s", commands, 4 * trips, wt) < 0)
        return -1;
    printf("INFO %s callbacks_in_caller %.3f\n", peer, in_caller(p, port));
    edrv_port_close(p, port);
    edrv_port_close(pp, portp);
    edrv_proc_free(p);
    edrv_proc_free(pp);
    return 0;
}

int main(int argc, char **argv) {
    edrv_options opts = {0};
    const char *only_case = NULL;
    for (; argc > 1 && argv[1][0] == '-'; argc--, argv++) {
        if (strcmp(argv[1], "--queued") == 0) {
            opts.no_immediate = 1;
            peer = "c_queued";
        } else if (strcmp(argv[1], "--schedulers") == 0 && argc > 2) {
            opts.schedulers = atoi(argv[2]);
            argc--, argv++;
        } else if (strcmp(argv[1], "--peer") == 0 && argc > 2) {
            peer = argv[2];
            argc--, argv++;
        } else if (strcmp(argv[1], "--only") == 0 && argc > 2) {
            only_case = argv[2];
            argc--, argv++;
        } else {
            argc = 0; /* the usage */
            break;
        }
    }
    if (argc != 4) {
        fprintf(stderr, "usage: bench_msg [--queued] [--schedulers N] [--peer NAME] [--only CASE] "
                        "DRIVERS_DIR TRIPS PIPE\n");
        return 2;
    }
    dir = argv[1];
    long trips = atol(argv[2]), npipe = atol(argv[3]);
    if (trips < 1 || npipe < 2 || trips > 1000000000 || npipe > 1000000000) {
        fprintf(stderr, "bench_msg: TRIPS must be 1..1e9 and PIPE 2..1e9\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* as ERTS: see the top of this file */
    int rc = edrv_start(&opts);
    if (rc < 0) {
        fail("edrv_start", rc);
        return 1;
    }
    int failed = only_case ? only(only_case, (unsigned)trips) < 0
                           : bench((unsigned)trips, (unsigned)npipe) < 0;
    edrv_stop();
    return failed;
}
