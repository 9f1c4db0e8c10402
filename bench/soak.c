/*
 * soak: edrv's async pool under everything at once, for as long as asked.
 *
 * N host threads, each an edrv process with a few ports of soakdrv.so, submit
 * batches of keyed and unkeyed jobs; the driver cancels recent jobs at random
 * as it goes. The threads also close ports with jobs pending and end their
 * process (an owner exit closes its ports), while the main thread unloads and
 * reloads the driver with jobs pending: the unload kills every port, the
 * driver stays loaded until its last job has ended, and the reload then
 * dlopens a freshly mapped file (checked) or, if it comes first, cancels the
 * unload.
 *
 * The run is cut into rounds. At the end of each, every thread ends its
 * process, the pool drains, and the soak checks the round: every job ended
 * exactly once (ready_async or free), every job not cancelled ran invoke and
 * no cancelled one did, no id came twice, jobs of a key ran in order,
 * edrv_pool's counters agree with the driver's, edrv_memory is back to its
 * baseline, type by type, and the resident set is within its slack. Then the
 * records are cleared for the next round (soak.h has the layout). After the
 * last round edrv_stop runs and every edrv_memory count must be back to what
 * it was before edrv_start.
 *
 * Exit status 0 only if every check held; 1 on a violation; 2 on bad options
 * or a setup failure.
 *
 * Threads: the main thread parses, starts, runs the unloads and checks the
 * rounds; worker threads act as processes. Rounds are fenced by two barriers:
 * the records are only read and reset while every worker waits.
 */
#define _GNU_SOURCE
#include "soak.h"

#include <edrv.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Under ASan the resident set says nothing: its quarantine keeps freed
 * blocks (256 MiB by default), so the RSS check is off there. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_CHECKED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_CHECKED 0
#endif
#endif
#ifndef RSS_CHECKED
#define RSS_CHECKED 1
#endif

#ifndef SOAK_DRIVERS_DIR
#define SOAK_DRIVERS_DIR "drivers"
#endif
#define MAX_PORTS 64
#define MAX_THREADS 256
/* Violations printed in full; the rest are only counted. */
#define MAX_REPORTS 20

/* The program's records; the driver finds them by this name (soak.h). */
soak_state soak_shared;
#define sh soak_shared

/* ---- options ------------------------------------------------------------------ */

typedef struct {
    int threads, ports, async_threads;
    int queued; /* --queued: every call through the emulator thread */
    uint64_t jobs, round_jobs;
    double duration_s;
    unsigned batch, cancel_pm, keyed_pm, close_pm, exit_pm, stop_job_pm;
    unsigned unload_ms, settle_ms;
    uint64_t rss_slack_mb, table_slack_kb;
    uint64_t seed;
    const char *drivers;
} options;

static void usage(void) {
    printf(
        "usage: soak [options]\n"
        "Runs edrv's async pool under random cancels, port closes, owner exits and\n"
        "driver unloads, checks that every job ends exactly once and that memory\n"
        "returns to its baseline, and prints jobs/s. Exit status 0 only if every\n"
        "check held. Numbers take a k, M or G suffix (10^3, 10^6, 10^9).\n"
        "\n"
        "  --jobs N            stop after N jobs (default 10M; 0: no limit)\n"
        "  --duration S        stop after S seconds, at the end of a round (default: none)\n"
        "  --round-jobs N      jobs per round, checked at its end (default 1M)\n"
        "  --threads N         host threads, each an edrv process (default 4)\n"
        "  --ports N           ports per host thread (default 4, at most %d)\n"
        "  --async-threads N   pool threads (default 0: edrv's default)\n"
        "  --batch N           at most N jobs per port_control (default 256)\n"
        "  --keyed PM          per mille of jobs with a key (default 500)\n"
        "  --cancel PM         per mille of jobs followed by a cancel (default 50)\n"
        "  --close PM          per mille of steps that close a port (default 10)\n"
        "  --exit PM           per mille of steps that end the process (default 2)\n"
        "  --stop-job PM       per mille of ports that submit a job from stop (default 250)\n"
        "  --unload-ms MS      mean time between driver unloads (default 20; 0: never)\n"
        "  --settle-ms MS      how long memory may take to return (default 3000)\n"
        "  --table-slack-kb KB how far the runtime's tables may end from their baseline\n"
        "                      size, in the same blocks (default 64)\n"
        "  --rss-slack-mb MB   resident set growth allowed over the first round's (default 64;\n"
        "                      not checked under ASan)\n"
        "  --seed N            random seed (default: from the clock, printed)\n"
        "  --drivers DIR       where soakdrv.so is (default %s)\n"
        "  --queued            every call queued to the emulator thread (edrv_options\n"
        "                      no_immediate); by default the host threads run their own\n"
        "                      calls' callbacks when they can (SIGPIPE is ignored for it)\n"
        "  --help              this text\n",
        MAX_PORTS, SOAK_DRIVERS_DIR);
}

/* A count with an optional k/M/G suffix; -1 if it is not one. */
static int parse_count(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        return -1;
    uint64_t mul = *end == 'k' ? 1000 : *end == 'M' ? 1000000 : *end == 'G' ? 1000000000 : 1;
    if (mul > 1)
        end++;
    if (*end || (mul > 1 && v > UINT64_MAX / mul))
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_uint(const char *s, uint64_t max, unsigned *out) {
    uint64_t v;
    if (parse_count(s, &v) < 0 || v > max)
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* One option with its value; 1 if name matched, -1 on a bad value. */
static int option(options *o, const char *name, const char *v) {
    struct { const char *name; unsigned *u; uint64_t max; } uints[] = {
        {"--batch", &o->batch, 1u << 20},     {"--keyed", &o->keyed_pm, 1000},
        {"--cancel", &o->cancel_pm, 1000},    {"--close", &o->close_pm, 1000},
        {"--exit", &o->exit_pm, 1000},        {"--stop-job", &o->stop_job_pm, 1000},
        {"--unload-ms", &o->unload_ms, 1000000}, {"--settle-ms", &o->settle_ms, 3600000},
    };
    for (size_t i = 0; i < sizeof uints / sizeof uints[0]; i++)
        if (strcmp(name, uints[i].name) == 0)
            return parse_uint(v, uints[i].max, uints[i].u) < 0 ? -1 : 1;
    unsigned u;
    if (strcmp(name, "--threads") == 0)
        return parse_uint(v, MAX_THREADS, &u) < 0 || !u ? -1 : (o->threads = (int)u, 1);
    if (strcmp(name, "--ports") == 0)
        return parse_uint(v, MAX_PORTS, &u) < 0 || !u ? -1 : (o->ports = (int)u, 1);
    if (strcmp(name, "--async-threads") == 0)
        return parse_uint(v, 1024, &u) < 0 ? -1 : (o->async_threads = (int)u, 1);
    if (strcmp(name, "--jobs") == 0)
        return parse_count(v, &o->jobs) < 0 ? -1 : 1;
    if (strcmp(name, "--round-jobs") == 0)
        return parse_count(v, &o->round_jobs) < 0 || !o->round_jobs ? -1 : 1;
    if (strcmp(name, "--table-slack-kb") == 0)
        return parse_count(v, &o->table_slack_kb) < 0 || o->table_slack_kb > (1u << 30) ? -1 : 1;
    if (strcmp(name, "--rss-slack-mb") == 0)
        return parse_count(v, &o->rss_slack_mb) < 0 ? -1 : 1;
    if (strcmp(name, "--seed") == 0)
        return parse_count(v, &o->seed) < 0 ? -1 : 1;
    if (strcmp(name, "--drivers") == 0)
        return (o->drivers = v, 1);
    if (strcmp(name, "--duration") == 0) {
        char *end;
        o->duration_s = strtod(v, &end);
        return *end || end == v || !(o->duration_s > 0) ? -1 : 1;
    }
    return 0;
}

/* 0, 1 for --help, -1 on an error (said on stderr). */
static int parse_options(int argc, char **argv, options *o) {
    *o = (options){.threads = 4, .ports = 4, .jobs = 10000000, .round_jobs = 1000000,
                   .batch = 256, .cancel_pm = 50, .keyed_pm = 500, .close_pm = 10,
                   .exit_pm = 2, .stop_job_pm = 250, .unload_ms = 20, .settle_ms = 3000,
                   .rss_slack_mb = 64, .table_slack_kb = 64, .drivers = SOAK_DRIVERS_DIR};
    o->seed = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
        if (strcmp(argv[i], "--queued") == 0) {
            o->queued = 1;
            continue;
        }
        int rc = i + 1 < argc ? option(o, argv[i], argv[i + 1]) : 0;
        if (rc < 0)
            fprintf(stderr, "soak: '%s' is not a valid value for %s (see --help)\n", argv[i + 1],
                    argv[i]);
        else if (rc == 0)
            fprintf(stderr, "soak: unknown option, or no value after it: %s (see --help)\n",
                    argv[i]);
        if (rc <= 0)
            return -1;
        i++;
    }
    if (!o->batch || (!o->jobs && !o->duration_s)) {
        fprintf(stderr, "soak: --batch must be positive, and --jobs 0 needs --duration\n");
        return -1;
    }
    return 0;
}

/* ---- violations ---------------------------------------------------------------- */

static const char *const violation_text[V_COUNT] = {
#define SOAK_V_TEXT(name, text) #name ": " text,
    SOAK_VIOLATIONS(SOAK_V_TEXT)
#undef SOAK_V_TEXT
};
static _Atomic uint64_t violations[V_COUNT];
static atomic_int reports;

static void report(int kind, const char *fmt, ...) {
    atomic_fetch_add(&violations[kind], 1);
    if (atomic_fetch_add(&reports, 1) >= MAX_REPORTS)
        return;
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    fprintf(stderr, "soak: VIOLATION %s (%s)\n", violation_text[kind], detail);
}

/* The driver's way in (soak_state.violation); any thread. */
static void driver_violation(int kind, uint64_t job, long id) {
    report(kind, "round %u, job %" PRIu64 ", id %ld", sh.round, job, id);
}

static uint64_t violations_total(void) {
    uint64_t n = 0;
    for (int i = 0; i < V_COUNT; i++)
        n += atomic_load(&violations[i]);
    return n;
}

/* ---- small helpers ---------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, us % 1000000 * 1000};
    nanosleep(&ts, NULL);
}

/* xorshift64*: each thread its own. */
static uint64_t rnd64(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static unsigned rnd(uint64_t *s, unsigned n) {
    return (unsigned)((rnd64(s) >> 32) % n);
}

/* The resident set now, in bytes. */
static uint64_t rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t rss_peak(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss * 1024;
}

/* A zeroed mapping for the records, whose pages the kernel gives back on
 * clear(): a big round costs memory only while it runs. */
static void *map_zeroed(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void clear(void *p, size_t len) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    len = (len + page - 1) / page * page;
    if (madvise(p, len, MADV_DONTNEED) != 0)
        memset(p, 0, len);
}

/* ---- the host threads -------------------------------------------------------------- */

typedef struct {
    pthread_t thread;
    const options *o;
    uint64_t rng;
    edrv_proc *p;
    edrv_port ports[MAX_PORTS];
    /* Counters, read by the main thread between rounds. */
    uint64_t batches, closes, exits, opens, open_refused, gone, msgs;
} worker;

static pthread_barrier_t round_start, round_end;
static _Atomic uint64_t round_quota; /* job numbers this round may reach */
static atomic_bool quitting;

static void api(const char *what, int rc) {
    report(V_API, "%s: %s (%d): %s", what, edrv_err_name(rc), rc, edrv_last_error());
}

/* Takes every message waiting: {soak, N} from ready_async, and
 * {'EXIT', Port, driver_unloaded} from an unload. */
static void drain(worker *w) {
    edrv_msg m;
    while (edrv_receive(w->p, 0, &m) == 0) {
        w->msgs++;
        edrv_msg_free(&m);
    }
}

static void new_proc(worker *w) {
    while (!(w->p = edrv_proc_new())) {
        api("edrv_proc_new", EDRV_ENOMEM);
        sleep_us(1000);
    }
    /* Unloads end ports with driver_unloaded: a trapping worker gets
     * messages (drain) instead of being ended. */
    edrv_process_flag(w->p, EDRV_TRAP_EXIT, 1);
    memset(w->ports, 0, sizeof w->ports);
}

/* An owner exit: the process ends with its ports open and their jobs pending. */
static void end_proc(worker *w) {
    drain(w);
    edrv_proc_free(w->p);
    w->p = NULL;
}

static void open_one(worker *w, int i) {
    const char *cmd = rnd(&w->rng, 1000) < w->o->stop_job_pm ? SOAK_DRIVER " stop_job" : SOAK_DRIVER;
    int rc = edrv_open_port(w->p, cmd, 0, &w->ports[i]);
    if (rc == 0) {
        w->opens++;
    } else if (rc == EDRV_EBADARG) { /* unloaded, or unloading: wait for the reload */
        w->ports[i] = 0;
        w->open_refused++;
        sleep_us(50);
    } else {
        w->ports[i] = 0;
        api("edrv_open_port", rc);
    }
}

/* A port killed by an unload answers ENOPORT or ECLOSED; so does nothing else. */
static int port_gone(worker *w, int i, int rc, const char *what) {
    if (rc == EDRV_ENOPORT || rc == EDRV_ECLOSED) {
        w->gone++;
    } else if (rc != 0) {
        api(what, rc);
    }
    w->ports[i] = 0;
    return rc;
}

static void submit_batch(worker *w, int i) {
    const options *o = w->o;
    soak_submit q = {.count = 1 + rnd(&w->rng, o->batch), .cancel_per_mille = o->cancel_pm,
                     .keyed_per_mille = o->keyed_pm, .seed = (uint32_t)rnd64(&w->rng)};
    edrv_reply r = {0};
    int rc = edrv_port_control(w->p, w->ports[i], SOAK_OP_SUBMIT, &q, sizeof q, &r);
    edrv_reply_free(&r);
    if (rc == 0)
        w->batches++;
    else
        port_gone(w, i, rc, "edrv_port_control");
}

/* One step: open a port, close one, end the process, or submit a batch. */
static void step(worker *w) {
    int i = (int)rnd(&w->rng, (unsigned)w->o->ports);
    if (!w->ports[i]) {
        open_one(w, i);
        return;
    }
    unsigned r = rnd(&w->rng, 1000);
    if (r < w->o->close_pm) {
        w->closes++;
        port_gone(w, i, edrv_port_close(w->p, w->ports[i]), "edrv_port_close");
    } else if (r < w->o->close_pm + w->o->exit_pm) {
        w->exits++;
        end_proc(w);
        new_proc(w);
    } else {
        submit_batch(w, i);
    }
}

static void worker_round(worker *w) {
    new_proc(w);
    uint64_t quota = atomic_load(&round_quota);
    while (atomic_load_explicit(&sh.next_job, memory_order_relaxed) < quota) {
        drain(w);
        step(w);
    }
    end_proc(w); /* the round's end: every port closes */
}

static void *worker_main(void *arg) {
    worker *w = arg;
    for (;;) {
        pthread_barrier_wait(&round_start);
        if (atomic_load(&quitting))
            return NULL;
        worker_round(w);
        pthread_barrier_wait(&round_end);
    }
}

/* ---- the main thread: unloads and reloads ---------------------------------------------- */

typedef struct {
    const options *o;
    uint64_t rng;
    int loaded; /* the soak holds its one user of the driver */
    /* Counters. */
    uint64_t unloads, unloads_at_once, unloads_deferred, reload_cancelled, reload_after_end;
    uint64_t waited_unloads, loads;
} chaos;

static int load(chaos *c) {
    uint64_t fresh = atomic_load(&sh.fresh_loads);
    int rc = edrv_load_driver(c->o->drivers, SOAK_DRIVER);
    if (rc < 0) {
        api("edrv_load_driver", rc);
        return rc;
    }
    c->loaded = 1;
    c->loads++;
    return (int)(atomic_load(&sh.fresh_loads) - fresh); /* 1 if it dlopened anew */
}

/* Waits until the driver's finish has run since `fin` read it; 0 or -1. */
static int wait_finish(uint64_t fin) {
    for (int i = 0; i < 300000; i++) { /* 30 s */
        if (atomic_load_explicit(&sh.finishes, memory_order_acquire) != fin)
            return 0;
        sleep_us(100);
    }
    return -1;
}

/* Reloads after a completed unload: finish ran, so the file was closed, and
 * the reload must find it freshly mapped. */
static void reload_fresh(chaos *c) {
    if (rnd(&c->rng, 2))
        sleep_us(rnd(&c->rng, 2000)); /* the threads meet an unloaded driver */
    int fresh = load(c);
    if (fresh == 0)
        report(V_NOT_FRESH, "reload %" PRIu64 " found soakdrv.so's statics set", c->loads);
}

static void unload_cycle(chaos *c) {
    uint64_t fin = atomic_load(&sh.finishes);
    int rc = edrv_unload_driver(SOAK_DRIVER);
    if (rc < 0) {
        api("edrv_unload_driver", rc);
        return;
    }
    c->loaded = 0;
    c->unloads++;
    if (rc == 0) { /* no port, no job: gone at once */
        c->unloads_at_once++;
        if (atomic_load(&sh.finishes) != fin + 1)
            report(V_UNLOAD, "unload returned 0 but finish did not run once");
        reload_fresh(c);
        return;
    }
    c->unloads_deferred++;
    if (rnd(&c->rng, 4) == 0) { /* reload at once: cancels the pending unload */
        int fresh = load(c);
        if (fresh < 0)
            return;
        if (atomic_load(&sh.finishes) == fin) {
            c->reload_cancelled++;
        } else { /* the last job ended first: the file was closed */
            c->reload_after_end++;
            if (fresh == 0)
                report(V_NOT_FRESH, "reload %" PRIu64 " found soakdrv.so's statics set", c->loads);
        }
        return;
    }
    if (wait_finish(fin) < 0) {
        report(V_UNLOAD, "the driver was still loaded 30 s after its unload");
        return;
    }
    c->waited_unloads++;
    reload_fresh(c);
}

/* Until the round's quota is reached: sleep a random while, unload, reload. */
static void chaos_round(chaos *c) {
    uint64_t quota = atomic_load(&round_quota);
    while (atomic_load_explicit(&sh.next_job, memory_order_relaxed) < quota) {
        if (!c->o->unload_ms) {
            sleep_us(1000);
            continue;
        }
        long wait_us = (long)rnd(&c->rng, 2 * c->o->unload_ms * 1000 + 1);
        for (; wait_us > 0 && atomic_load(&sh.next_job) < quota; wait_us -= 1000)
            sleep_us(wait_us < 1000 ? wait_us : 1000);
        if (atomic_load(&sh.next_job) >= quota)
            break;
        if (c->loaded)
            unload_cycle(c);
        else
            load(c); /* an earlier load failed (reported) */
    }
    if (!c->loaded)
        load(c);
}

/* ---- checking a round ------------------------------------------------------------------- */

typedef struct {
    edrv_mem_stats base;   /* see set_baseline */
    uint64_t rss_base;     /* after the first round */
    uint64_t rss_max;      /* the highest at a round's end */
    uint64_t jobs;         /* over all rounds */
    uint64_t pool_submitted; /* edrv_pool's, at the last round's end */
    edrv_pool_stats pool0;   /* before the first round */
    long table_lo[2], table_hi[2]; /* system, async: bytes from the baseline */
    double busy_s;         /* from each round's start to its last job's end */
    int mem_rounds_ok, rounds;
} totals;

/* Waits until every job of the round has ended; the count, or -1 on timeout. */
static int64_t wait_drained(void) {
    for (int i = 0; i < 6000; i++) { /* 60 s */
        uint64_t n = atomic_load(&sh.next_job);
        if (atomic_load_explicit(&sh.ended, memory_order_acquire) == n)
            return (int64_t)n;
        sleep_us(10000);
    }
    return -1;
}

/* Every record of the round must say: submitted, ended once, and invoked
 * unless cancelled (then freed, never invoked, never ready). */
static void check_records(uint64_t n) {
    for (uint64_t j = 0; j < n; j++) {
        unsigned b = atomic_load_explicit(&sh.rec[j], memory_order_relaxed);
        unsigned end = b & (REC_READY | REC_FREED);
        if (!(b & REC_SUBMITTED))
            report(V_CAPACITY, "round %u, job %" PRIu64 " never submitted", sh.round, j);
        if (!end)
            report(V_NEVER_ENDED, "round %u, job %" PRIu64 ", record 0x%x", sh.round, j, b);
        else if (end == (REC_READY | REC_FREED))
            report(V_ENDED_TWICE, "round %u, job %" PRIu64 ", record 0x%x", sh.round, j, b);
        if (b & REC_CANCELLED) {
            if (b & REC_INVOKED)
                report(V_CANCELLED_INVOKED, "round %u, job %" PRIu64, sh.round, j);
            if (b & REC_READY)
                report(V_CANCELLED_READY, "round %u, job %" PRIu64, sh.round, j);
        } else if (!(b & REC_INVOKED)) {
            report(V_NOT_INVOKED, "round %u, job %" PRIu64 ", record 0x%x", sh.round, j, b);
        }
    }
}

/* Ids: one per job, each once (the driver saw repeats as they came), and
 * the round's range is left behind for good. */
static void check_ids(uint64_t n) {
    uint64_t seen = 0, span = sh.max_id >= sh.id_base ? (uint64_t)(sh.max_id - sh.id_base + 1) : 0;
    for (uint64_t i = 0; i < span && i < sh.cap; i++)
        seen += sh.ids[i] != 0;
    if (seen != n)
        report(V_ID_REPEATED, "round %u: %" PRIu64 " jobs but %" PRIu64 " distinct ids",
               sh.round, n, seen);
}

/* The pool's own counters must account for exactly the driver's jobs. */
static void check_pool(totals *t, uint64_t n) {
    edrv_pool_stats st;
    edrv_pool(&st);
    uint64_t ended = st.ready_async + st.freed + st.cancelled;
    uint64_t drv_ready = atomic_load(&sh.ready), drv_freed = atomic_load(&sh.freed);
    if (st.submitted - t->pool0.submitted != t->jobs + n || ended != st.submitted ||
        st.ready_async - t->pool0.ready_async != drv_ready ||
        st.freed + st.cancelled - t->pool0.freed - t->pool0.cancelled != drv_freed)
        report(V_POOL_COUNTS, "pool submitted %" PRIu64 " ready %" PRIu64 " freed %" PRIu64
               " cancelled %" PRIu64 "; driver jobs %" PRIu64 " ready %" PRIu64 " freed %" PRIu64,
               st.submitted, st.ready_async, st.freed, st.cancelled, t->jobs + n, drv_ready,
               drv_freed);
    t->pool_submitted = st.submitted;
}

static int mem_equal(const edrv_mem_stats *a, const edrv_mem_stats *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

/* Back to the baseline, type by type. What drivers, ports and messages
 * hold must come back exactly. The runtime's own tables (system, async) are
 * resized to what they hold: the port map to the ports alive at its last
 * rehash, each lane's segment table to the longest queue it has had. After a
 * round they may hold other sizes in the same blocks, so for them the blocks
 * must come back exactly and the bytes within table_slack of the baseline:
 * a table that kept growing would still show. */
static size_t table_slack;

static int type_back(const edrv_mem_stats *base, const edrv_mem_stats *now, int i) {
    size_t slack = i == EDRV_MEM_SYSTEM || i == EDRV_MEM_ASYNC ? table_slack : 0;
    size_t diff = now->bytes[i] > base->bytes[i] ? now->bytes[i] - base->bytes[i]
                                                 : base->bytes[i] - now->bytes[i];
    return now->blocks[i] == base->blocks[i] && diff <= slack;
}

static int mem_back(const edrv_mem_stats *base, const edrv_mem_stats *now) {
    for (int i = 0; i < EDRV_MEM_TYPES; i++)
        if (!type_back(base, now, i))
            return 0;
    return 1;
}

/* Reports each type not back: exactly, or as type_back says. */
static void mem_diff(const char *when, const edrv_mem_stats *base, const edrv_mem_stats *now,
                     int exact) {
    for (int i = 0; i < EDRV_MEM_TYPES; i++)
        if (exact ? base->bytes[i] != now->bytes[i] || base->blocks[i] != now->blocks[i]
                  : !type_back(base, now, i))
            report(V_MEMORY, "%s: %s %zu bytes in %zu blocks, baseline %zu in %zu", when,
                   edrv_mem_type_name((edrv_mem_type)i), now->bytes[i], now->blocks[i],
                   base->bytes[i], base->blocks[i]);
}

/* Memory must come back to the baseline within settle_ms: the pool gives
 * its spare segments back a second after it went idle. */
static int wait_memory(const edrv_mem_stats *base, unsigned settle_ms, edrv_mem_stats *now) {
    for (unsigned waited = 0;; waited += 10) {
        edrv_memory(now);
        if (mem_back(base, now))
            return 0;
        if (waited >= settle_ms)
            return -1;
        sleep_us(10000);
    }
}

/* Memory once it no longer changes: the same over 1.2 s, longer than the
 * pool keeps its spare segments (at most 10 tries). */
static void settle(edrv_mem_stats *now) {
    edrv_mem_stats prev;
    edrv_memory(&prev);
    for (int i = 0; i < 10; i++) {
        sleep_us(1200000);
        edrv_memory(now);
        if (mem_equal(&prev, now))
            return;
        prev = *now;
    }
}

/* The baseline: for what drivers, ports and messages hold, the state after
 * the driver was loaded, since nothing of theirs outlives a round; for the
 * runtime's own tables (system, async), their size once the first round has
 * grown them to their working size. Every round must return to it. */
static void set_baseline(totals *t) {
    edrv_mem_stats now;
    settle(&now);
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        if (i == EDRV_MEM_SYSTEM || i == EDRV_MEM_ASYNC) {
            t->base.bytes[i] = now.bytes[i];
            t->base.blocks[i] = now.blocks[i];
        }
    }
}

/* The tables' sizes over the rounds, for the summary. */
static void table_range(totals *t, const edrv_mem_stats *now) {
    for (int k = 0; k < 2; k++) {
        int i = k ? EDRV_MEM_ASYNC : EDRV_MEM_SYSTEM;
        long d = (long)now->bytes[i] - (long)t->base.bytes[i];
        if (d < t->table_lo[k])
            t->table_lo[k] = d;
        if (d > t->table_hi[k])
            t->table_hi[k] = d;
    }
}

static void check_memory(totals *t, const options *o) {
    edrv_mem_stats now;
    if (t->rounds == 0)
        set_baseline(t);
    if (wait_memory(&t->base, o->settle_ms, &now) == 0) {
        t->mem_rounds_ok++;
        table_range(t, &now);
    } else {
        char when[64];
        snprintf(when, sizeof when, "round %u", sh.round);
        mem_diff(when, &t->base, &now, 0);
    }
    uint64_t rss = rss_now();
    if (t->rounds == 0)
        t->rss_base = rss;
    if (rss > t->rss_max)
        t->rss_max = rss;
    if (RSS_CHECKED && rss > t->rss_base + o->rss_slack_mb * 1048576)
        report(V_RSS, "round %u: %" PRIu64 " MiB, baseline %" PRIu64 " MiB", sh.round,
               rss >> 20, t->rss_base >> 20);
}

/* Clears the round's records and moves the id range past it. */
static void next_round(uint64_t n) {
    clear((void *)sh.rec, n);
    uint64_t span = sh.max_id >= sh.id_base ? (uint64_t)(sh.max_id - sh.id_base + 1) : 0;
    clear(sh.ids, span < sh.cap ? span : sh.cap);
    if (sh.max_id)
        sh.id_base = sh.max_id + 1;
    for (int k = 0; k < SOAK_KEYS; k++)
        atomic_store(&sh.key_last[k], 0);
    atomic_store(&sh.next_job, 0);
    atomic_store(&sh.ended, 0);
    sh.round++;
}

/* ---- the run ------------------------------------------------------------------------------ */

typedef struct {
    uint64_t batches, closes, exits, opens, open_refused, gone, msgs;
} worker_sums;

static worker_sums sum_workers(const worker *w, int n) {
    worker_sums s = {0};
    for (int i = 0; i < n; i++) {
        s.batches += w[i].batches;
        s.closes += w[i].closes;
        s.exits += w[i].exits;
        s.opens += w[i].opens;
        s.open_refused += w[i].open_refused;
        s.gone += w[i].gone;
        s.msgs += w[i].msgs;
    }
    return s;
}

static int setup_records(const options *o) {
    uint64_t per_round = o->jobs && o->jobs < o->round_jobs ? o->jobs : o->round_jobs;
    /* The quota is checked between batches, and ports' stops submit too. */
    sh.cap = per_round + (uint64_t)o->threads * (o->batch + 2 * MAX_PORTS + 16) + 1024;
    sh.rec = map_zeroed(sh.cap);
    sh.ids = map_zeroed(sh.cap);
    table_slack = (size_t)o->table_slack_kb * 1024;
    sh.version = SOAK_VERSION;
    sh.violation = driver_violation;
    return sh.rec && sh.ids ? 0 : -1;
}

/* Runs one round of at most `quota` jobs; its count. */
static uint64_t one_round(const options *o, chaos *c, totals *t, worker *w, uint64_t quota) {
    double t0 = now_s();
    atomic_store(&round_quota, quota);
    pthread_barrier_wait(&round_start);
    chaos_round(c);
    pthread_barrier_wait(&round_end);
    int64_t n = wait_drained();
    double dt = now_s() - t0;
    t->busy_s += dt;
    if (n < 0) {
        report(V_NEVER_ENDED, "round %u: %" PRIu64 " of %" PRIu64 " jobs ended after 60 s",
               sh.round, atomic_load(&sh.ended), atomic_load(&sh.next_job));
        n = (int64_t)atomic_load(&sh.next_job);
    }
    check_records((uint64_t)n);
    check_ids((uint64_t)n);
    check_pool(t, (uint64_t)n);
    check_memory(t, o);
    worker_sums s = sum_workers(w, o->threads);
    printf("round %4u: %9" PRId64 " jobs in %6.2f s, %6.2f M jobs/s; %" PRIu64 " unloads, %" PRIu64
           " closes, %" PRIu64 " exits so far; RSS %" PRIu64 " MiB; %" PRIu64 " violations\n",
           sh.round, n, dt, (double)n / dt / 1e6, c->unloads, s.closes, s.exits,
           rss_now() >> 20, violations_total());
    fflush(stdout);
    t->rounds++;
    return (uint64_t)n;
}

static void summary(const options *o, const chaos *c, const totals *t, const worker *w,
                    double secs, const edrv_mem_stats *before, const edrv_mem_stats *after) {
    worker_sums s = sum_workers(w, o->threads);
    printf("\nsoak: %" PRIu64 " jobs in %u rounds, %.1f s: %.2f M jobs/s; %.1f s in the rounds "
           "(submission to the last job's end): %.2f M jobs/s\n",
           t->jobs, sh.round, secs, (double)t->jobs / secs / 1e6, t->busy_s,
           (double)t->jobs / t->busy_s / 1e6);
    printf("  ended: %" PRIu64 " with ready_async, %" PRIu64 " with free (%" PRIu64
           " of them cancelled); %" PRIu64 " submitted from stop\n",
           atomic_load(&sh.ready), atomic_load(&sh.freed), atomic_load(&sh.cancels),
           atomic_load(&sh.stop_jobs));
    printf("  cancels: %" PRIu64 " tried, %" PRIu64 " succeeded; %" PRIu64
           " of unknown ids, none may succeed\n",
           atomic_load(&sh.cancel_tries), atomic_load(&sh.cancels),
           atomic_load(&sh.unknown_cancels));
    printf("  host threads: %" PRIu64 " batches, %" PRIu64 " ports opened, %" PRIu64
           " port_close calls, %" PRIu64 " owner exits, %" PRIu64 " ports found killed, %"
           PRIu64 " opens refused while unloaded, %" PRIu64 " messages\n",
           s.batches, s.opens, s.closes, s.exits, s.gone, s.open_refused, s.msgs);
    printf("  driver: %" PRIu64 " unloads (%" PRIu64 " at once, %" PRIu64 " deferred: %" PRIu64
           " waited for, %" PRIu64 " cancelled by a reload, %" PRIu64 " ended before it); %" PRIu64
           " loads, %" PRIu64 " finish, %" PRIu64 " fresh mappings (dlclose really closed)\n",
           c->unloads, c->unloads_at_once, c->unloads_deferred, c->waited_unloads,
           c->reload_cancelled, c->reload_after_end, c->loads + 1, atomic_load(&sh.finishes),
           atomic_load(&sh.fresh_loads));
    printf("  memory: back to the baseline after %d of %d rounds (tables from the baseline: "
           "system %+ld..%+ld bytes, async %+ld..%+ld, slack %zu); after edrv_stop %s\n",
           t->mem_rounds_ok, t->rounds, t->table_lo[0], t->table_hi[0], t->table_lo[1],
           t->table_hi[1], table_slack, mem_equal(before, after) ? "back to before edrv_start" : "NOT back to before edrv_start");
    for (int i = 0; i < EDRV_MEM_TYPES; i++)
        printf("    %-8s baseline %9zu bytes %6zu blocks\n", edrv_mem_type_name((edrv_mem_type)i),
               t->base.bytes[i], t->base.blocks[i]);
    printf("  RSS: %" PRIu64 " MiB after the first round, %" PRIu64 " MiB at most after a round, %"
           PRIu64 " MiB at the end; peak %" PRIu64 " MiB%s\n",
           t->rss_base >> 20, t->rss_max >> 20, rss_now() >> 20, rss_peak() >> 20,
           RSS_CHECKED ? "" : " (not checked under ASan: its quarantine keeps freed memory)");
    uint64_t v = violations_total();
    for (int i = 0; i < V_COUNT; i++)
        if (atomic_load(&violations[i]))
            printf("  VIOLATION x%" PRIu64 " %s\n", atomic_load(&violations[i]), violation_text[i]);
    printf("soak: %s\n", v ? "FAILED" : "every check held");
}

static int start_workers(const options *o, worker *w) {
    if (pthread_barrier_init(&round_start, NULL, (unsigned)o->threads + 1) ||
        pthread_barrier_init(&round_end, NULL, (unsigned)o->threads + 1))
        return -1;
    for (int i = 0; i < o->threads; i++) {
        w[i] = (worker){.o = o, .rng = o->seed * 0x9e3779b97f4a7c15ull + (uint64_t)i + 1};
        if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
            return -1;
    }
    return 0;
}

static void stop_workers(const options *o, worker *w) {
    atomic_store(&quitting, 1);
    pthread_barrier_wait(&round_start);
    for (int i = 0; i < o->threads; i++)
        pthread_join(w[i].thread, NULL);
}

/* Starts edrv and loads the driver; 0 or -1 (said). */
static int start_edrv(const options *o, chaos *c) {
    /* Ignored, as ERTS does, so that the host threads may run driver code
     * themselves (edrv.h: immediate execution). */
    signal(SIGPIPE, SIG_IGN);
    int rc = edrv_start(&(edrv_options){.async_threads = o->async_threads,
                                        .no_immediate = o->queued});
    if (rc < 0) {
        fprintf(stderr, "soak: edrv_start: %s\n", edrv_strerror(rc));
        return -1;
    }
    edrv_pool_stats st;
    edrv_pool(&st);
    sh.async_threads = st.threads;
    rc = edrv_load_driver(o->drivers, SOAK_DRIVER);
    if (rc < 0) {
        fprintf(stderr, "soak: cannot load %s/%s.so: %s: %s\n", o->drivers, SOAK_DRIVER,
                edrv_strerror(rc), edrv_last_error());
        edrv_stop();
        return -1;
    }
    c->loaded = 1;
    return 0;
}

int main(int argc, char **argv) {
    options o;
    int rc = parse_options(argc, argv, &o);
    if (rc > 0)
        usage();
    if (rc)
        return rc > 0 ? 0 : 2;
    static worker w[MAX_THREADS];
    chaos c = {.o = &o, .rng = o.seed ^ 0x5bd1e995u};
    totals t = {0};
    edrv_mem_stats before, after;
    edrv_memory(&before);
    if (setup_records(&o) < 0 || start_edrv(&o, &c) < 0 || start_workers(&o, w) < 0) {
        fprintf(stderr, "soak: setup failed\n");
        return 2;
    }
    edrv_pool(&t.pool0);
    edrv_memory(&t.base); /* the driver loaded, no port, no process: see set_baseline */
    printf("soak: seed %" PRIu64 ", %d host threads x %d ports, %d pool threads, allocator %s, "
           "%" PRIu64 " jobs per round, jobs %" PRIu64 ", duration %.0f s\n",
           o.seed, o.threads, o.ports, sh.async_threads, edrv_allocator(), o.round_jobs, o.jobs,
           o.duration_s);
    double t0 = now_s();
    while ((!o.jobs || t.jobs < o.jobs) && (!o.duration_s || now_s() - t0 < o.duration_s)) {
        uint64_t quota = o.jobs && o.jobs - t.jobs < o.round_jobs ? o.jobs - t.jobs : o.round_jobs;
        uint64_t n = one_round(&o, &c, &t, w, quota);
        t.jobs += n;
        next_round(n);
    }
    double secs = now_s() - t0;
    stop_workers(&o, w);
    if ((rc = edrv_stop()) < 0)
        api("edrv_stop", rc);
    edrv_memory(&after);
    if (!mem_equal(&before, &after))
        mem_diff("after edrv_stop", &before, &after, 1);
    summary(&o, &c, &t, w, secs, &before, &after);
    return violations_total() ? 1 : 0;
}
