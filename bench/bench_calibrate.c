/*
 * bench_calibrate: finds K, the number of bench_spin steps (bench.h) that
 * take about TARGET nanoseconds (default 1000) on this machine, on one thread.
 * bench/run runs it once and passes K to every peer, so that a "work" job is
 * the same work everywhere.
 *
 * Then, given THREADS and JOBS, it measures the work case's ideal on this
 * machine: THREADS plain threads, no pool, each spinning through its share of
 * JOBS jobs of K steps, from a common start to the last one's end. One job
 * alone takes NS_PER_JOB, but with every core busy a job may take longer (a
 * virtual machine's cores can be the two hyperthreads of one physical core);
 * this is what "THREADS workers fully busy" achieve here.
 *
 * Usage: bench_calibrate [TARGET_NS [THREADS JOBS]]
 * Prints `K <steps>`, `NS_PER_JOB <measured ns of one job with that K>` and,
 * with THREADS and JOBS, `BUSY_JOBS_PER_S <jobs/s, the median of 3 runs>`.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

static volatile uint64_t sink;

/* The fastest of `tries` timings of `reps` spins of k steps, per spin. */
static double ns_per_spin(unsigned k, unsigned reps, int tries) {
    double best = 1e300;
    for (int t = 0; t < tries; t++) {
        uint64_t x = (uint64_t)t, t0 = bench_now_ns();
        for (unsigned i = 0; i < reps; i++)
            x = bench_spin(x, k);
        double ns = (double)(bench_now_ns() - t0) / reps;
        sink = x;
        if (ns < best)
            best = ns;
    }
    return best;
}

typedef struct {
    pthread_t thread;
    unsigned k, jobs;
    uint64_t end_ns, result;
} worker;

static pthread_barrier_t start_line;

static void *worker_main(void *arg) {
    worker *w = arg;
    uint64_t x = 0;
    pthread_barrier_wait(&start_line);
    for (unsigned i = 0; i < w->jobs; i++)
        x += bench_spin(i, w->k); /* as bdrv's job_invoke: job i spins from i */
    w->result = x;
    w->end_ns = bench_now_ns();
    return NULL;
}

/* Jobs per second of `threads` threads sharing `jobs` jobs of k steps; -1
 * when out of memory. Exits if a thread cannot start. */
static double busy_rate(unsigned k, int threads, unsigned jobs) {
    worker *w = calloc((size_t)threads, sizeof *w);
    if (!w || pthread_barrier_init(&start_line, NULL, (unsigned)threads + 1) != 0) {
        free(w);
        return -1;
    }
    int started = 0;
    for (; started < threads; started++) {
        w[started].k = k;
        w[started].jobs = jobs / (unsigned)threads + ((unsigned)started < jobs % (unsigned)threads);
        if (pthread_create(&w[started].thread, NULL, worker_main, &w[started]) != 0)
            break;
    }
    if (started < threads) { /* the barrier would never open */
        fprintf(stderr, "bench_calibrate: cannot start thread %d\n", started + 1);
        exit(1);
    }
    pthread_barrier_wait(&start_line);
    uint64_t t0 = bench_now_ns(), last = t0;
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].thread, NULL);
        if (w[i].end_ns > last)
            last = w[i].end_ns;
        sink += w[i].result;
    }
    pthread_barrier_destroy(&start_line);
    free(w);
    return last > t0 ? jobs * 1e9 / (double)(last - t0) : -1;
}

int main(int argc, char **argv) {
    double target = argc > 1 ? atof(argv[1]) : 1000.0;
    int threads = argc > 3 ? atoi(argv[2]) : 0;
    long jobs = argc > 3 ? atol(argv[3]) : 0;
    if (target <= 0 || argc == 3 || argc > 4 || (argc == 4 && (threads < 1 || jobs < threads))) {
        fprintf(stderr, "usage: bench_calibrate [TARGET_NS [THREADS JOBS]]\n");
        return 2;
    }
    (void)ns_per_spin(1000, 20000, 3); /* warm up: let the clock rise */
    unsigned probe = 10000;
    double per_step = ns_per_spin(probe, 2000, 15) / probe;
    unsigned k = (unsigned)(target / per_step + 0.5);
    if (k < 1)
        k = 1;
    printf("K %u\n", k);
    printf("NS_PER_JOB %.1f\n", ns_per_spin(k, 20000, 15));
    if (threads) {
        double r[3];
        for (int i = 0; i < 3; i++)
            if ((r[i] = busy_rate(k, threads, (unsigned)jobs)) < 0)
                return 1;
        double lo = r[0] < r[1] ? r[0] : r[1], hi = r[0] < r[1] ? r[1] : r[0];
        printf("BUSY_JOBS_PER_S %.1f\n", r[2] < lo ? lo : r[2] > hi ? hi : r[2]);
    }
    return 0;
}
