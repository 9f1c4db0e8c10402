/*
 * bench.h: what every peer of the async pool benchmark shares: the clock, the
 * calibrated spin loop that is a "work" job's CPU work, and the percentiles of
 * the latency case. Header-only, so that bdrv.so (run by edrv and by ERTS),
 * bench_uv, bench_glib and bench_calibrate all compile the very same code.
 */
#ifndef EDRV_BENCH_H
#define EDRV_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds (what erl_drv_monotonic_time and uv_hrtime
 * read too). */
static inline uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* k steps of a 64-bit LCG (Knuth's MMIX constants): k dependent multiply-adds.
 * The empty asm makes x opaque to the optimizer at every step, so the loop can
 * be neither folded nor vectorized and its cost is linear in k. */
static inline uint64_t bench_spin(uint64_t x, unsigned k) {
    for (unsigned i = 0; i < k; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static inline int bench_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The growth case: per-job cost of small bursts (the median of
 * BENCH_SMALL_REPS bursts of BENCH_SMALL_JOBS) against a big burst, run
 * twice: the first maps most of its memory for the first time, the second
 * finds whatever pages the allocator kept from the first. */
#define BENCH_SMALL_JOBS 10000
#define BENCH_SMALL_REPS 21

/* The p-th percentile (0 < p <= 100) by nearest rank; sorts v. */
static inline uint64_t bench_percentile(uint64_t *v, size_t n, double p, int sorted) {
    if (!n)
        return 0;
    if (!sorted)
        qsort(v, n, sizeof *v, bench_cmp_u64);
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* Before it measures, every peer warms up with one burst of as many empty jobs
 * as a measured case has (so that the allocator's heap and the pool's tables
 * have grown and their pages are mapped) and this many latency round trips. */
#define BENCH_WARMUP_TRIPS 2000u

#endif
