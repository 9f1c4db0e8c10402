/*
 * bench_calibrate: finds K, the number of bench_spin steps (bench.h) that
 * take about TARGET nanoseconds (default 1000) on this machine, on one thread.
 * bench/run runs it once and passes K to every peer, so that a "work" job is
 * the same work everywhere.
 *
 * Usage: bench_calibrate [TARGET_NS]
 * Prints `K <steps>` and `NS_PER_JOB <measured ns of one job with that K>`.
 */
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

int main(int argc, char **argv) {
    double target = argc > 1 ? atof(argv[1]) : 1000.0;
    if (target <= 0) {
        fprintf(stderr, "usage: bench_calibrate [TARGET_NS]\n");
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
    return 0;
}
