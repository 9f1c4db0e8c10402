/*
 * bench_uv: the libuv peer of the async pool benchmark. uv_queue_work on
 * libuv's thread pool (UV_THREADPOOL_SIZE = N, set here before the pool
 * starts); every after_work callback runs on the loop thread, which is what a
 * driver's ready_async is to edrv and ERTS. The cases are those of bdrv.c:
 * the same job record, the same spin, the same clock points. libuv has no
 * keys: the keys case runs the same jobs without them, and its order is not
 * checked.
 *
 * Usage: bench_uv N K JOBS TRIPS
 * Prints `RESULT libuv CASE METRIC VALUE` lines (see bench/README.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "bench.h"

typedef struct {
    uv_work_t req;
    unsigned key, seq, k;
    uint64_t t_submit;
    uint64_t sink;
} job;

static struct {
    uv_loop_t *loop;
    int latency;
    unsigned count, k, nkeys;
    unsigned ended;
    uint64_t t0, t_end;
    uint64_t *lat;
    int failed;
} run_state;

static void work_cb(uv_work_t *req) {
    job *j = (job *)req;
    if (j->k)
        j->sink = bench_spin(j->seq, j->k);
}

static int submit(unsigned i);

static void after_cb(uv_work_t *req, int status) {
    job *j = (job *)req;
    uint64_t now = run_state.latency ? bench_now_ns() : 0;
    if (status != 0)
        run_state.failed = 1;
    if (run_state.latency)
        run_state.lat[run_state.ended] = now - j->t_submit;
    free(j);
    run_state.ended++;
    if (run_state.ended == run_state.count)
        run_state.t_end = bench_now_ns();
    else if (run_state.latency && submit(run_state.ended) < 0)
        run_state.failed = 1;
}

static int submit(unsigned i) {
    job *j = malloc(sizeof *j);
    if (!j)
        return -1;
    j->k = run_state.k;
    j->sink = 0;
    if (run_state.nkeys) {
        j->key = i % run_state.nkeys;
        j->seq = i / run_state.nkeys;
    } else {
        j->key = 0;
        j->seq = i;
    }
    j->t_submit = run_state.latency ? bench_now_ns() : 0;
    if (uv_queue_work(run_state.loop, &j->req, work_cb, after_cb) != 0) {
        free(j);
        return -1;
    }
    return 0;
}

/* One run, as bdrv's RUN: the nanoseconds from the first submission to the
 * last after_work, or 0 on failure. */
static uint64_t run(int latency, unsigned count, unsigned k, unsigned nkeys) {
    run_state.latency = latency;
    run_state.count = count;
    run_state.k = k;
    run_state.nkeys = nkeys;
    run_state.ended = 0;
    run_state.failed = 0;
    run_state.t_end = 0;
    run_state.t0 = bench_now_ns();
    unsigned n = latency ? 1 : count;
    for (unsigned i = 0; i < n; i++) {
        if (submit(i) < 0) {
            run_state.failed = 1;
            break;
        }
    }
    uv_run(run_state.loop, UV_RUN_DEFAULT);
    if (run_state.failed || run_state.ended != count) {
        fprintf(stderr, "bench_uv: a run failed (%u of %u jobs ended)\n", run_state.ended, count);
        return 0;
    }
    return run_state.t_end - run_state.t0;
}

static int throughput(const char *name, unsigned count, unsigned k, unsigned nkeys) {
    uint64_t ns = run(0, count, k, nkeys);
    if (!ns)
        return -1;
    printf("RESULT libuv %s jobs_per_s %.1f\n", name, count * 1e9 / (double)ns);
    fflush(stdout);
    return 0;
}

/* The growth case: small bursts, then two of `big` jobs (bench.h). */
static int growth(unsigned big) {
    uint64_t ns[BENCH_SMALL_REPS];
    for (int i = 0; i < BENCH_SMALL_REPS; i++)
        if (!(ns[i] = run(0, BENCH_SMALL_JOBS, 0, 0)))
            return -1;
    printf("RESULT libuv burst10k jobs_per_s %.1f\n",
           BENCH_SMALL_JOBS * 1e9 / (double)bench_percentile(ns, BENCH_SMALL_REPS, 50, 0));
    /* Once more, on the heap the first left: the pages it kept are mapped. */
    return throughput("burstbig", big, 0, 0) < 0 ? -1 : throughput("burstbig2", big, 0, 0);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: bench_uv N K JOBS TRIPS BIG\n");
        return 2;
    }
    int n = atoi(argv[1]);
    unsigned k = (unsigned)strtoul(argv[2], NULL, 10);
    unsigned jobs = (unsigned)strtoul(argv[3], NULL, 10);
    unsigned trips = (unsigned)strtoul(argv[4], NULL, 10);
    unsigned big = (unsigned)strtoul(argv[5], NULL, 10);
    if (n < 1 || !jobs || !trips || !big) {
        fprintf(stderr, "bench_uv: N, JOBS, TRIPS and BIG must be positive\n");
        return 2;
    }
    /* Read once, when the first uv_queue_work starts the pool. */
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%d", n);
    setenv("UV_THREADPOOL_SIZE", nbuf, 1);
    printf("INFO libuv version %s\n", uv_version_string());
    printf("INFO libuv pool_threads %d\n", n);
    run_state.loop = uv_default_loop();
    run_state.lat = malloc((trips > BENCH_WARMUP_TRIPS ? trips : BENCH_WARMUP_TRIPS) *
                           sizeof *run_state.lat);
    if (!run_state.lat)
        return 1;

    int failed = 0;
    /* Warm-up (bench.h): pool threads, allocator, page faults. */
    if (!run(0, jobs, 0, 0) || !run(1, BENCH_WARMUP_TRIPS, 0, 0))
        failed = 1;
    if (!failed && (throughput("burst", jobs, 0, 0) < 0 || throughput("work", jobs, k, 0) < 0 ||
                    throughput("keys", jobs, 0, 64) < 0 || growth(big) < 0))
        failed = 1;
    if (!failed) {
        if (!run(1, trips, 0, 0)) {
            failed = 1;
        } else {
            printf("RESULT libuv latency p50_us %.2f\n",
                   bench_percentile(run_state.lat, trips, 50, 0) / 1e3);
            printf("RESULT libuv latency p99_us %.2f\n",
                   bench_percentile(run_state.lat, trips, 99, 1) / 1e3);
        }
    }
    free(run_state.lat);
    uv_loop_close(run_state.loop);
    return failed;
}
