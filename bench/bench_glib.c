/*
 * bench_glib: the GLib peer of the async pool benchmark. A GThreadPool of N
 * exclusive threads runs the jobs; each finished job is pushed onto a
 * GAsyncQueue that the main thread pops, and the main thread then does what a
 * driver's ready_async does (the usual way to hand GThreadPool results back
 * to one thread). The cases are those of bdrv.c: the same job record, the
 * same spin, the same clock points. GLib has no keys: the keys case runs the
 * same jobs without them, and its order is not checked.
 *
 * Usage: bench_glib N K JOBS TRIPS
 * Prints `RESULT glib CASE METRIC VALUE` lines (see bench/README.md).
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

typedef struct {
    unsigned key, seq, k;
    uint64_t t_submit;
    uint64_t sink;
} job;

static GThreadPool *pool;
static GAsyncQueue *done;

static void worker(gpointer data, gpointer user_data) {
    job *j = data;
    (void)user_data;
    if (j->k)
        j->sink = bench_spin(j->seq, j->k);
    g_async_queue_push(done, j);
}

static int submit(unsigned i, int latency, unsigned k, unsigned nkeys) {
    job *j = malloc(sizeof *j);
    if (!j)
        return -1;
    j->k = k;
    j->sink = 0;
    if (nkeys) {
        j->key = i % nkeys;
        j->seq = i / nkeys;
    } else {
        j->key = 0;
        j->seq = i;
    }
    j->t_submit = latency ? bench_now_ns() : 0;
    GError *err = NULL;
    if (!g_thread_pool_push(pool, j, &err)) {
        fprintf(stderr, "bench_glib: g_thread_pool_push: %s\n", err ? err->message : "?");
        g_clear_error(&err);
        free(j);
        return -1;
    }
    return 0;
}

/* One run, as bdrv's RUN: the nanoseconds from the first submission to the
 * last result taken by the main thread, or 0 on failure. */
static uint64_t run(int latency, unsigned count, unsigned k, unsigned nkeys, uint64_t *lat) {
    uint64_t t0 = bench_now_ns();
    unsigned submitted = 0;
    if (!latency) {
        for (; submitted < count; submitted++)
            if (submit(submitted, 0, k, nkeys) < 0)
                break;
        for (unsigned i = 0; i < submitted; i++)
            free(g_async_queue_pop(done));
    } else {
        for (; submitted < count; submitted++) {
            if (submit(submitted, 1, k, nkeys) < 0)
                break;
            job *j = g_async_queue_pop(done);
            lat[submitted] = bench_now_ns() - j->t_submit;
            free(j);
        }
    }
    uint64_t t1 = bench_now_ns();
    if (submitted != count) {
        fprintf(stderr, "bench_glib: a run failed (%u of %u jobs submitted)\n", submitted, count);
        return 0;
    }
    return t1 - t0;
}

static int throughput(const char *name, unsigned count, unsigned k, unsigned nkeys) {
    uint64_t ns = run(0, count, k, nkeys, NULL);
    if (!ns)
        return -1;
    printf("RESULT glib %s jobs_per_s %.1f\n", name, count * 1e9 / (double)ns);
    fflush(stdout);
    return 0;
}

/* The growth case: small bursts, then two of `big` jobs (bench.h). */
static int growth(unsigned big) {
    uint64_t ns[BENCH_SMALL_REPS];
    for (int i = 0; i < BENCH_SMALL_REPS; i++)
        if (!(ns[i] = run(0, BENCH_SMALL_JOBS, 0, 0, NULL)))
            return -1;
    printf("RESULT glib burst10k jobs_per_s %.1f\n",
           BENCH_SMALL_JOBS * 1e9 / (double)bench_percentile(ns, BENCH_SMALL_REPS, 50, 0));
    /* Once more, on the heap the first left: the pages it kept are mapped. */
    return throughput("burstbig", big, 0, 0) < 0 ? -1 : throughput("burstbig2", big, 0, 0);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: bench_glib N K JOBS TRIPS BIG\n");
        return 2;
    }
    int n = atoi(argv[1]);
    unsigned k = (unsigned)strtoul(argv[2], NULL, 10);
    unsigned jobs = (unsigned)strtoul(argv[3], NULL, 10);
    unsigned trips = (unsigned)strtoul(argv[4], NULL, 10);
    unsigned big = (unsigned)strtoul(argv[5], NULL, 10);
    if (n < 1 || !jobs || !trips || !big) {
        fprintf(stderr, "bench_glib: N, JOBS, TRIPS and BIG must be positive\n");
        return 2;
    }
    printf("INFO glib version %u.%u.%u\n", glib_major_version, glib_minor_version,
           glib_micro_version);
    printf("INFO glib pool_threads %d\n", n);
    done = g_async_queue_new();
    GError *err = NULL;
    pool = g_thread_pool_new(worker, NULL, n, TRUE, &err);
    if (!pool) {
        fprintf(stderr, "bench_glib: g_thread_pool_new: %s\n", err ? err->message : "?");
        return 1;
    }
    uint64_t *lat = malloc((trips > BENCH_WARMUP_TRIPS ? trips : BENCH_WARMUP_TRIPS) * sizeof *lat);
    if (!lat)
        return 1;

    int failed = 0;
    /* Warm-up (bench.h): pool threads, allocator, page faults. */
    if (!run(0, jobs, 0, 0, NULL) || !run(1, BENCH_WARMUP_TRIPS, 0, 0, lat))
        failed = 1;
    if (!failed && (throughput("burst", jobs, 0, 0) < 0 || throughput("work", jobs, k, 0) < 0 ||
                    throughput("keys", jobs, 0, 64) < 0 || growth(big) < 0))
        failed = 1;
    if (!failed) {
        if (!run(1, trips, 0, 0, lat)) {
            failed = 1;
        } else {
            printf("RESULT glib latency p50_us %.2f\n", bench_percentile(lat, trips, 50, 0) / 1e3);
            printf("RESULT glib latency p99_us %.2f\n", bench_percentile(lat, trips, 99, 1) / 1e3);
        }
    }
    g_thread_pool_free(pool, FALSE, TRUE);
    g_async_queue_unref(done);
    free(lat);
    return failed;
}
