/*
 * soakdrv: the soak program's driver (see soak.h, soak.c). Its one control
 * op submits a batch of jobs, keyed and unkeyed, and after each one may
 * cancel a recently submitted job, of this port or any other, live or long
 * ended. Every job notes in the program's records what happened to it:
 * invoke on its pool thread, then exactly one of ready_async or free on the
 * emulator thread. A port opened as "soakdrv stop_job" submits one more job
 * from its stop, as a file driver queues its close. One job in SOAK_MSG_EVERY
 * sends its port's owner a message from ready_async.
 *
 * The driver is an edrv driver, not an OTP one: it calls driver_async_cancel
 * (edrv.h) and finds its records in the host program (soak.h says why).
 *
 * Threads: every callback runs on the emulator thread, but invoke, which runs
 * on a pool thread and touches only the job, its record byte and key_last.
 */
#include "soak.h"

#include <dlfcn.h>
#include <edrv.h>
#include <erl_driver.h>
#include <string.h>

/* The program's records: set by every init, so valid in every callback. */
static soak_state *sh;
/* 0 in a freshly mapped .so: a reload that finds 1 was never dlclosed. */
static int mapped_before;

typedef struct {
    ErlDrvPort port;
    int stop_job; /* submit a job from stop */
} sport;

typedef struct {
    uint64_t job; /* its number in the round: its record */
    long id;      /* written once driver_async returns; emulator thread only */
    int key;      /* its key, or -1 */
} sjob;

static void violation(int kind, uint64_t job, long id) {
    sh->violation(kind, job, id);
}

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* ---- the job's life ------------------------------------------------------------- */

/* A pool thread: the job runs. Jobs of one key run in submission order, on
 * one thread (one lane), so their numbers must come in increasing order. */
static void job_invoke(void *arg) {
    sjob *j = arg;
    unsigned b = atomic_fetch_or_explicit(&sh->rec[j->job], REC_INVOKED, memory_order_relaxed);
    if (b & REC_INVOKED)
        violation(V_INVOKED_TWICE, j->job, -1);
    if (b & REC_CANCELLED)
        violation(V_CANCELLED_INVOKED, j->job, -1);
    if (j->key >= 0) {
        uint64_t prev = atomic_exchange_explicit(&sh->key_last[j->key], j->job + 1,
                                                 memory_order_relaxed);
        if (prev > j->job + 1)
            violation(V_KEY_ORDER, j->job, -1);
    }
}

/* The job's one end: ready_async or free. The release increment of `ended`
 * comes last, so that the program sees every write of the job once it
 * counts it. */
static void job_end(sjob *j, unsigned how) {
    unsigned b = atomic_fetch_or_explicit(&sh->rec[j->job], how, memory_order_relaxed);
    if (b & (REC_READY | REC_FREED))
        violation(V_ENDED_TWICE, j->job, j->id);
    if (how == REC_READY && !(b & REC_INVOKED))
        violation(V_READY_NOT_INVOKED, j->job, j->id);
    atomic_fetch_add_explicit(how == REC_READY ? &sh->ready : &sh->freed, 1, memory_order_relaxed);
    driver_free(j);
    atomic_fetch_add_explicit(&sh->ended, 1, memory_order_release);
}

static void job_free(void *arg) {
    job_end(arg, REC_FREED);
}

static void s_ready(ErlDrvData d, ErlDrvThreadData td) {
    sport *s = (sport *)d;
    sjob *j = (sjob *)td;
    if (j->job % SOAK_MSG_EVERY == 0) {
        ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("soak"), ERL_DRV_UINT,
                                 (ErlDrvTermData)j->job, ERL_DRV_TUPLE, 2};
        erl_drv_output_term(driver_mk_port(s->port), spec, sizeof spec / sizeof spec[0]);
        atomic_fetch_add_explicit(&sh->msgs, 1, memory_order_relaxed);
    }
    job_end(j, REC_READY);
}

/* ---- submitting and cancelling ---------------------------------------------------- */

/* Notes a new id: it must lie in this round's range and be new. */
static void note_id(sjob *j) {
    if (!sh->id_base)
        sh->id_base = j->id; /* the run's first job */
    if (j->id < sh->id_base || (uint64_t)(j->id - sh->id_base) >= sh->cap) {
        violation(V_ID_RANGE, j->job, j->id);
    } else if (sh->ids[j->id - sh->id_base]++) {
        violation(V_ID_REPEATED, j->job, j->id);
    }
    if (j->id > sh->max_id)
        sh->max_id = j->id;
    sh->ring[sh->ring_n++ % SOAK_RING] = (soak_recent){j->id, j->job, sh->round};
}

/* Submits one job; key is -1 for none. 0, or -1 if it could not be. */
static int submit(sport *s, int key) {
    uint64_t n = atomic_load_explicit(&sh->next_job, memory_order_relaxed);
    if (n >= sh->cap) {
        violation(V_CAPACITY, n, -1);
        return -1;
    }
    sjob *j = driver_alloc(sizeof *j);
    if (!j)
        return -1;
    *j = (sjob){.job = n, .id = -1, .key = key};
    unsigned k = (unsigned)key;
    long id = driver_async(s->port, key >= 0 ? &k : NULL, job_invoke, j, job_free);
    if (id <= 0) { /* no id taken, and invoke never ran: the number is free again */
        driver_free(j);
        violation(V_SUBMIT_FAILED, n, id);
        return -1;
    }
    if (key >= 0 && k != (unsigned)key % (unsigned)sh->async_threads)
        violation(V_KEY_WRITEBACK, n, id);
    /* The job may have run already, but it cannot have ended: that happens
     * on this thread, after this callback. */
    j->id = id;
    atomic_fetch_or_explicit(&sh->rec[n], REC_SUBMITTED, memory_order_relaxed);
    atomic_store_explicit(&sh->next_job, n + 1, memory_order_relaxed);
    note_id(j);
    return 0;
}

/* Cancels a recent job, of any port and any round. A cancel that succeeds
 * must have run the job's free, before the job ran and before it ended. */
static void cancel_recent(unsigned *seed) {
    uint64_t n = sh->ring_n < SOAK_RING ? sh->ring_n : SOAK_RING;
    if (!n)
        return;
    soak_recent r = sh->ring[rnd(seed) % n];
    atomic_fetch_add_explicit(&sh->cancel_tries, 1, memory_order_relaxed);
    if (driver_async_cancel(r.id) != 1)
        return;
    atomic_fetch_add_explicit(&sh->cancels, 1, memory_order_relaxed);
    if (r.round != sh->round) { /* ended before this round began */
        violation(V_CANCEL_ENDED, r.job, r.id);
        return;
    }
    unsigned b = atomic_fetch_or_explicit(&sh->rec[r.job], REC_CANCELLED, memory_order_relaxed);
    if (!(b & REC_FREED))
        violation(V_CANCEL_NO_FREE, r.job, r.id);
    if (b & REC_INVOKED)
        violation(V_CANCELLED_INVOKED, r.job, r.id);
    if (b & REC_READY)
        violation(V_CANCEL_ENDED, r.job, r.id);
}

/* Now and then, an id that no job has yet: the cancel must find nothing. */
static void cancel_unknown(unsigned *seed) {
    long id = sh->max_id + 1 + (long)(rnd(seed) % 1000);
    atomic_fetch_add_explicit(&sh->unknown_cancels, 1, memory_order_relaxed);
    if (driver_async_cancel(id) != 0)
        violation(V_CANCEL_UNKNOWN, 0, id);
}

static ErlDrvSSizeT submit_batch(sport *s, const soak_submit *q) {
    unsigned seed = q->seed;
    uint32_t done = 0;
    for (; done < q->count; done++) {
        int key = rnd(&seed) % 1000 < q->keyed_per_mille ? (int)(rnd(&seed) % SOAK_KEYS) : -1;
        if (submit(s, key) < 0)
            break;
        if (rnd(&seed) % 1000 < q->cancel_per_mille)
            cancel_recent(&seed);
        if (rnd(&seed) % 65536 == 0)
            cancel_unknown(&seed);
    }
    return done;
}

/* ---- the driver entry ----------------------------------------------------------- */

static ErlDrvSSizeT s_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    soak_submit q;
    if (op != SOAK_OP_SUBMIT || len != sizeof q)
        return -1;
    memcpy(&q, buf, sizeof q);
    uint32_t done = (uint32_t)submit_batch((sport *)d, &q);
    if (rlen < sizeof done)
        return -1;
    memcpy(*rbuf, &done, sizeof done);
    return sizeof done;
}

static ErlDrvData s_start(ErlDrvPort port, char *cmd) {
    sport *s = driver_alloc(sizeof *s);
    if (!s)
        return ERL_DRV_ERROR_GENERAL;
    s->port = port;
    s->stop_job = strstr(cmd, " stop_job") != NULL;
    return (ErlDrvData)s;
}

static void s_stop(ErlDrvData d) {
    sport *s = (sport *)d;
    if (s->stop_job && submit(s, -1) == 0)
        atomic_fetch_add_explicit(&sh->stop_jobs, 1, memory_order_relaxed);
    driver_free(s);
}

static int s_init(void) {
    sh = dlsym(RTLD_DEFAULT, SOAK_SHARED_SYMBOL);
    if (!sh || sh->version != SOAK_VERSION)
        return -1; /* not the soak program: driver_init_failed */
    atomic_fetch_add_explicit(&sh->inits, 1, memory_order_relaxed);
    if (!mapped_before)
        atomic_fetch_add_explicit(&sh->fresh_loads, 1, memory_order_relaxed);
    mapped_before = 1;
    return 0;
}

static void s_finish(void) {
    atomic_fetch_add_explicit(&sh->finishes, 1, memory_order_release);
}

static ErlDrvEntry soakdrv_entry = {
    .init = s_init,
    .start = s_start,
    .stop = s_stop,
    .driver_name = SOAK_DRIVER,
    .finish = s_finish,
    .control = s_control,
    .ready_async = s_ready,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

DRIVER_INIT(soakdrv) {
    return &soakdrv_entry;
}
