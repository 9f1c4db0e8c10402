/*
 * bench_edrv: the edrv peer of the async pool benchmark. A host program that
 * starts edrv with N pool threads, loads bdrv.so (the driver that bench_erts
 * loads into erl too), and runs the four cases through bdrv's RUN control op;
 * the driver times each run and reports it in a {bench_done, ...} message.
 *
 * Usage: bench_edrv DRIVERS_DIR N K JOBS TRIPS BIG
 *   N pool threads, K spin steps per "work" job, JOBS jobs per throughput
 *   case, TRIPS round trips in the latency case, BIG jobs in the growth
 *   case's big burst.
 * Prints `RESULT edrv CASE METRIC VALUE` lines (see bench/README.md).
 */
#include <edrv.h>
#include <ei.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static edrv_proc *proc;
static edrv_port port;

typedef struct {
    unsigned long ns, violations, p50, p99;
    uint64_t host_ns; /* the whole run as this host sees it */
} run_result;

static void put32(char *p, unsigned v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static int decode_done(const edrv_msg *m, run_result *r) {
    int idx = 0, version, arity;
    char atom[MAXATOMLEN];
    return ei_decode_version(m->data, &idx, &version) == 0 &&
                   ei_decode_tuple_header(m->data, &idx, &arity) == 0 && arity == 5 &&
                   ei_decode_atom(m->data, &idx, atom) == 0 && strcmp(atom, "bench_done") == 0 &&
                   ei_decode_ulong(m->data, &idx, &r->ns) == 0 &&
                   ei_decode_ulong(m->data, &idx, &r->violations) == 0 &&
                   ei_decode_ulong(m->data, &idx, &r->p50) == 0 &&
                   ei_decode_ulong(m->data, &idx, &r->p99) == 0
               ? 0
               : -1;
}

/* One RUN of bdrv (see bdrv.c); waits for its bench_done message. */
static int run(unsigned mode, unsigned count, unsigned k, unsigned nkeys, run_result *r) {
    char data[16];
    put32(data, mode);
    put32(data + 4, count);
    put32(data + 8, k);
    put32(data + 12, nkeys);
    uint64_t t0 = bench_now_ns();
    edrv_reply reply;
    int rc = edrv_port_control(proc, port, 1, data, sizeof data, &reply);
    edrv_reply_free(&reply);
    if (rc < 0) {
        fprintf(stderr, "bench_edrv: RUN failed: %s %s\n", edrv_err_name(rc), edrv_last_error());
        return -1;
    }
    edrv_msg m;
    if (edrv_receive(proc, 300000, &m) != 0) {
        fprintf(stderr, "bench_edrv: no bench_done within 300 s\n");
        return -1;
    }
    r->host_ns = bench_now_ns() - t0;
    rc = decode_done(&m, r);
    if (rc < 0) {
        char *s = NULL;
        edrv_term_format(m.data, m.len, &s);
        fprintf(stderr, "bench_edrv: unexpected message %s\n", s ? s : "?");
        free(s);
    } else if (r->violations == ~0u) {
        fprintf(stderr, "bench_edrv: driver_async failed during the run\n");
        rc = -1;
    }
    edrv_msg_free(&m);
    return rc;
}

static int throughput(const char *name, unsigned count, unsigned k, unsigned nkeys) {
    run_result r = {0};
    if (run(0, count, k, nkeys, &r) < 0)
        return -1;
    printf("RESULT edrv %s jobs_per_s %.1f\n", name, count * 1e9 / (double)r.ns);
    printf("RESULT edrv %s host_jobs_per_s %.1f\n", name, count * 1e9 / (double)r.host_ns);
    if (nkeys)
        printf("RESULT edrv %s violations %lu\n", name, r.violations);
    fflush(stdout);
    return 0;
}

/* The growth case: small bursts, then two of `big` jobs (bench.h). */
static int growth(unsigned big) {
    uint64_t ns[BENCH_SMALL_REPS];
    for (int i = 0; i < BENCH_SMALL_REPS; i++) {
        run_result r;
        if (run(0, BENCH_SMALL_JOBS, 0, 0, &r) < 0)
            return -1;
        ns[i] = r.ns;
    }
    printf("RESULT edrv burst10k jobs_per_s %.1f\n",
           BENCH_SMALL_JOBS * 1e9 / (double)bench_percentile(ns, BENCH_SMALL_REPS, 50, 0));
    /* Once more, on the heap the first left: the pages it kept are mapped. */
    return throughput("burstbig", big, 0, 0) < 0 ? -1 : throughput("burstbig2", big, 0, 0);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: bench_edrv DRIVERS_DIR N K JOBS TRIPS BIG\n");
        return 2;
    }
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    unsigned k = (unsigned)strtoul(argv[3], NULL, 10);
    unsigned jobs = (unsigned)strtoul(argv[4], NULL, 10);
    unsigned trips = (unsigned)strtoul(argv[5], NULL, 10);
    unsigned big = (unsigned)strtoul(argv[6], NULL, 10);
    if (n < 1 || !jobs || !trips || !big) {
        fprintf(stderr, "bench_edrv: N, JOBS, TRIPS and BIG must be positive\n");
        return 2;
    }
    int rc = edrv_start(&(edrv_options){.async_threads = n});
    if (rc < 0) {
        fprintf(stderr, "bench_edrv: edrv_start: %s\n", edrv_last_error());
        return 1;
    }
    proc = edrv_proc_new();
    if (!proc || (rc = edrv_load_driver(dir, "bdrv")) < 0 ||
        (rc = edrv_open_port(proc, "bdrv", EDRV_PORT_BINARY, &port)) < 0) {
        fprintf(stderr, "bench_edrv: cannot open bdrv from %s: %s %s\n", dir, edrv_err_name(rc),
                edrv_last_error());
        return 1;
    }
    edrv_pool_stats st;
    edrv_pool(&st);
    printf("INFO edrv pool_threads %d\n", st.threads);

    int failed = 0;
    run_result r;
    /* Warm-up (bench.h): pool threads, allocator, page faults. */
    if (run(0, jobs, 0, 0, &r) < 0 || run(1, BENCH_WARMUP_TRIPS, 0, 0, &r) < 0)
        failed = 1;
    if (!failed && (throughput("burst", jobs, 0, 0) < 0 || throughput("work", jobs, k, 0) < 0 ||
                    throughput("keys", jobs, 0, 64) < 0 || growth(big) < 0))
        failed = 1;
    if (!failed) {
        if (run(1, trips, 0, 0, &r) < 0) {
            failed = 1;
        } else {
            printf("RESULT edrv latency p50_us %.2f\n", r.p50 / 1e3);
            printf("RESULT edrv latency p99_us %.2f\n", r.p99 / 1e3);
        }
    }
    edrv_port_close(proc, port);
    edrv_proc_free(proc);
    edrv_stop();
    return failed;
}
