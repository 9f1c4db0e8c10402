/*
 * bdrv: the async pool benchmark's driver. A plain OTP driver (built against
 * erl_driver.h alone), so the same bdrv.so runs in edrv (bench_edrv) and in
 * `erl +A N` (bench_erts.erl): the measurement is made here, by the same code,
 * in both runtimes.
 *
 * One control op, RUN (op 1), data = four big-endian 32-bit numbers:
 *   mode count k nkeys
 *   mode 0, throughput: submits `count` jobs with driver_async in one loop,
 *           inside this control callback; each job spins k LCG steps (0: an
 *           empty job). nkeys 0: no key (NULL); nkeys > 0: job i has key
 *           i % nkeys and its sequence number within that key, and
 *           ready_async counts the jobs of a key that end out of order.
 *           The time runs from the first driver_async to the last ready_async.
 *   mode 1, latency: one job in flight; the ready_async of job i submits job
 *           i+1, `count` round trips; each round trip is timed from just
 *           before driver_async to the start of its ready_async.
 * Reply: empty; -1 (badarg) for bad data or while a run is going on.
 * When the run ends, the port's owner gets
 *   {bench_done, Nanoseconds, Violations, P50Nanoseconds, P99Nanoseconds}
 * (the percentiles are 0 for throughput runs).
 */
#include <erl_driver.h>
#include <string.h>

#include "bench.h"

typedef struct {
    unsigned key, seq, k;
    uint64_t t_submit; /* latency runs */
    uint64_t sink;     /* the spin's result, so that it is not optimized away */
} job;

typedef struct {
    ErlDrvPort port;
    int running;
    unsigned mode, count, k, nkeys;
    unsigned submitted, ended;
    unsigned violations;
    unsigned *expect; /* per key: the sequence number due next */
    uint64_t *lat;    /* latency runs: one per round trip */
    uint64_t t0;
} bdrv;

static unsigned get32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3];
}

static void job_invoke(void *arg) {
    job *j = arg;
    if (j->k)
        j->sink = bench_spin(j->seq, j->k);
}

static void job_free(void *arg) {
    driver_free(arg);
}

static ErlDrvData b_start(ErlDrvPort port, char *command) {
    (void)command;
    bdrv *b = driver_alloc(sizeof *b);
    if (!b)
        return ERL_DRV_ERROR_GENERAL;
    memset(b, 0, sizeof *b);
    b->port = port;
    return (ErlDrvData)b;
}

static void end_run(bdrv *b) {
    driver_free(b->expect);
    driver_free(b->lat);
    b->expect = NULL;
    b->lat = NULL;
    b->running = 0;
}

static void b_stop(ErlDrvData d) {
    bdrv *b = (bdrv *)d;
    end_run(b); /* jobs still queued end with job_free */
    driver_free(b);
}

/* Submits job number i of the run; 0 or -1. */
static int submit(bdrv *b, unsigned i) {
    job *j = driver_alloc(sizeof *j);
    if (!j)
        return -1;
    j->k = b->k;
    j->sink = 0;
    long id;
    if (b->nkeys) {
        unsigned key = i % b->nkeys;
        j->key = key;
        j->seq = i / b->nkeys;
        id = driver_async(b->port, &key, job_invoke, j, job_free);
    } else {
        j->key = 0;
        j->seq = i;
        j->t_submit = b->mode == 1 ? bench_now_ns() : 0;
        id = driver_async(b->port, NULL, job_invoke, j, job_free);
    }
    if (id < 0) {
        driver_free(j);
        return -1;
    }
    b->submitted++;
    return 0;
}

static void send_done(bdrv *b, uint64_t ns) {
    uint64_t p50 = 0, p99 = 0;
    if (b->mode == 1) {
        p50 = bench_percentile(b->lat, b->count, 50, 0);
        p99 = bench_percentile(b->lat, b->count, 99, 1);
    }
    ErlDrvTermData spec[] = {
        ERL_DRV_ATOM, driver_mk_atom("bench_done"),
        ERL_DRV_UINT, (ErlDrvTermData)ns,
        ERL_DRV_UINT, (ErlDrvTermData)b->violations,
        ERL_DRV_UINT, (ErlDrvTermData)p50,
        ERL_DRV_UINT, (ErlDrvTermData)p99,
        ERL_DRV_TUPLE, 5,
    };
    erl_drv_output_term(driver_mk_port(b->port), spec, sizeof spec / sizeof spec[0]);
    end_run(b);
}

static void b_ready_async(ErlDrvData d, ErlDrvThreadData td) {
    bdrv *b = (bdrv *)d;
    job *j = (job *)td;
    uint64_t now = b->mode == 1 ? bench_now_ns() : 0;
    if (!b->running) { /* cannot happen: a run ends with its last job */
        driver_free(j);
        return;
    }
    if (b->mode == 1)
        b->lat[b->ended] = now - j->t_submit;
    else if (b->nkeys) {
        if (j->seq != b->expect[j->key])
            b->violations++;
        b->expect[j->key] = j->seq + 1;
    }
    driver_free(j);
    b->ended++;
    if (b->ended == b->count) {
        send_done(b, bench_now_ns() - b->t0);
    } else if (b->mode == 1 && submit(b, b->ended) < 0) {
        b->violations = ~0u; /* a submission failed: report it as the run's result */
        send_done(b, bench_now_ns() - b->t0);
    }
}

static ErlDrvSSizeT b_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    bdrv *b = (bdrv *)d;
    (void)rbuf;
    (void)rlen;
    if (op != 1 || len < 16 || b->running)
        return -1;
    unsigned mode = get32(buf), count = get32(buf + 4), k = get32(buf + 8),
             nkeys = get32(buf + 12);
    if (mode > 1 || count == 0 || (mode == 1 && nkeys))
        return -1;
    b->mode = mode;
    b->count = count;
    b->k = k;
    b->nkeys = nkeys;
    b->submitted = b->ended = b->violations = 0;
    if (nkeys) {
        b->expect = driver_alloc(nkeys * sizeof *b->expect);
        if (!b->expect)
            return -1;
        memset(b->expect, 0, nkeys * sizeof *b->expect);
    }
    if (mode == 1 && !(b->lat = driver_alloc(count * sizeof *b->lat))) {
        end_run(b);
        return -1;
    }
    b->running = 1;
    b->t0 = bench_now_ns();
    unsigned n = mode == 1 ? 1 : count;
    for (unsigned i = 0; i < n; i++) {
        if (submit(b, i) < 0) {
            if (b->submitted == 0) {
                end_run(b);
                return -1;
            }
            b->count = b->submitted; /* end with what was submitted ... */
            b->violations = ~0u;     /* ... and report the failure */
            break;
        }
    }
    return 0;
}

static ErlDrvEntry bdrv_entry = {
    .start = b_start,
    .stop = b_stop,
    .driver_name = "bdrv",
    .control = b_control,
    .ready_async = b_ready_async,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
    .driver_flags = ERL_DRV_FLAG_USE_PORT_LOCKING,
};

DRIVER_INIT(bdrv) {
    return &bdrv_entry;
}
