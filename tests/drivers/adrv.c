/*
 * adrv: the async pool's test driver. Built against OTP's erl_driver.h alone,
 * so it also loads in erl (+A N); there driver_async_cancel does not exist,
 * so the driver looks it up at run time and the cancel op fails with badarg.
 *
 * Control ops (all numbers big-endian in the data):
 *   1 SUBMIT   key_flag:1 key:4 count:4 work_us:4 -> submits count jobs;
 *              reply "id,key_after" for the last one. Each job's ready_async
 *              sends {done, Key, Seq, InvokeOrder, Lane}: Seq counts this
 *              port's submissions, InvokeOrder counts invokes of that key,
 *              Lane is the name of the pool thread that ran it.
 *   2 CANCEL   id:8 -> reply "1" or "0"
 *   3 BLOCK    key:4 -> a job that waits until RELEASE; reply its id
 *   4 RELEASE  -> opens the gate
 *   5 STATS    -> reply "ready=R,freed=F,invoked=I,stopped=S"
 *   7 STRESS   n:4 cancel_per_mille:4 seed:4 -> submits n jobs with random
 *              keys, each ending in a shared record; cancels some at random
 *              right away; reply "submitted,cancelled"
 *   8 CHECK    -> reply "once=A,never=B,twice=C,invoked_cancelled=D"
 *   9 STOP_JOB -> stop queues a job (like a file driver's close)
 *  10 PDL      n:4 -> creates the port data lock (reply "created" or "again"),
 *              then n jobs each add 1 under it to a counter that lives with
 *              the lock (a pdl_block), each holding a reference to both until
 *              it ends: a closed port's jobs still run and count
 *  11 PDL_READ -> reply "count=C,refc=R" (read under the lock)
 *  12 FROM_POOL n:4 -> n jobs that each send {from_pool, Seq} from their pool
 *              thread with erl_drv_output_term
 *  13 WAIT_OWN key:4 -> submits a job, then waits inside this callback (up to
 *              30 s, a bound for a broken build) until the job's invoke has
 *              run; reply "ran" or "timeout".
 *              Works in ERTS, where driver_async wakes a pool thread at once.
 *  14 BROKEN_PIPE -> a job that writes to a pipe with no reader and sends
 *              {broken_pipe, R} from its pool thread: R is epipe when the
 *              write fails with EPIPE (ERTS ignores SIGPIPE)
 *  15 ENQ      n:4 -> enqueues n bytes in the driver queue, under the port
 *              data lock (created if need be); reply the queue's size
 *  16 DEQ_JOB  key:4 -> a job that waits at the gate (as BLOCK), then
 *              dequeues the whole driver queue under the port data lock
 *  17 CHURN    n:4 -> n jobs that each enqueue and dequeue 16 bytes under
 *              the port data lock, from the pool threads, with the port
 *              passed as the ErlDrvPort (valid while the lock is)
 *  18 STOP_RELEASES -> the port's stop opens the gate (as RELEASE)
 *  19 QSTATS   -> reply "deq=D,churn_ok=A,churn_dead=B": D the last DEQ_JOB's
 *              driver_deq result (-2 before any), A and B the CHURN jobs whose
 *              enqueue worked and failed (the port was dead)
 *  20 PENDING  -> reply the number of jobs (of any port of this copy of the
 *              driver) submitted and not yet ended: neither ready_async nor
 *              free has run. Tests wait for "0" instead of sleeping.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include <dlfcn.h>
#include <erl_driver.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The port data lock and the data it guards. A job that counts under the
 * lock may run after its port is gone (a closed port's queued jobs still run,
 * in ERTS too), so that data cannot be in the port's adrv, which stop frees:
 * it lives in this block, which the port and each job hold a reference to,
 * and the last to let go frees. Each job also holds a reference to the lock
 * itself (driver_pdl_inc_refc), which keeps it alive after the port. */
typedef struct {
    ErlDrvPDL pdl;
    long count;        /* guarded by pdl */
    atomic_long refs;  /* the port's and the jobs' */
} pdl_block;

typedef struct {
    ErlDrvPort port;
    unsigned seq;
    int stop_job;
    int stop_releases;
    pdl_block *pb; /* PDL: the lock, once created */
} adrv;

typedef struct {
    ErlDrvTermData port;
    unsigned key;
    int has_key;
    unsigned seq;
    unsigned work_us;
    unsigned invoke_order;
    char lane[16];
    long record; /* STRESS: index into records, or -1 */
    int quiet;    /* FROM_POOL jobs: no done message */
    unsigned gate; /* BLOCK jobs: the gate generation they wait past */
    pdl_block *pb; /* PDL jobs: the lock and its counter, referenced */
    ErlDrvPort drv_port; /* DEQ_JOB and CHURN jobs: used under the lock */
} job;

static atomic_long ready_count, freed_count, invoked_count, stopped_count;
static atomic_long live_jobs; /* PENDING: allocated by new_job, not yet freed */
static _Atomic unsigned key_invokes[4096]; /* by key % 4096 */

/* The gate BLOCK jobs wait on. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static unsigned gate_gen; /* RELEASE opens the gate of every BLOCK before it */

/* STRESS records: how each job ended. */
#define MAX_RECORDS 4000000
static atomic_uchar *ended;   /* times ready_async or free ran */
static atomic_uchar *invoked; /* times invoke ran */
static atomic_uchar *was_cancelled;
static atomic_long records;

static int (*cancel_fn)(long);

/* DEQ_JOB and CHURN results. */
static atomic_long deq_result = -2, churn_ok, churn_dead;

static unsigned get32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3];
}

static void invoke(void *arg) {
    job *j = arg;
    atomic_fetch_add(&invoked_count, 1);
    if (j->record >= 0) {
        atomic_fetch_add(&invoked[j->record], 1);
        return;
    }
    j->invoke_order = atomic_fetch_add(&key_invokes[j->key % 4096], 1) + 1;
    pthread_getname_np(pthread_self(), j->lane, sizeof j->lane);
    if (j->work_us)
        usleep(j->work_us);
}

static void block_invoke(void *arg) {
    job *j = arg;
    atomic_fetch_add(&invoked_count, 1);
    pthread_getname_np(pthread_self(), j->lane, sizeof j->lane);
    pthread_mutex_lock(&gate_lock);
    while (gate_gen == j->gate)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
}

/* WAIT_OWN: the invoke signals the callback that waits for it. */
static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t own_cond; /* on CLOCK_MONOTONIC (a_init) */
static int own_ran;

static void own_invoke(void *arg) {
    invoke(arg);
    pthread_mutex_lock(&own_lock);
    own_ran = 1;
    pthread_cond_broadcast(&own_cond);
    pthread_mutex_unlock(&own_lock);
}

static void end_record(job *j) {
    if (j->record >= 0)
        atomic_fetch_add(&ended[j->record], 1);
}

/* A new block with its lock, held by the caller (the port); NULL when out
 * of memory or when the port has a lock already. */
static pdl_block *pdl_block_new(ErlDrvPort port) {
    pdl_block *b = driver_alloc(sizeof *b);
    if (!b)
        return NULL;
    if (!(b->pdl = driver_pdl_create(port))) {
        driver_free(b);
        return NULL;
    }
    b->count = 0;
    atomic_init(&b->refs, 1);
    return b;
}

static void pdl_block_unref(pdl_block *b) {
    if (atomic_fetch_sub(&b->refs, 1) == 1)
        driver_free(b);
}

/* A job's references: to the block, and to the lock. */
static void pdl_hold(pdl_block *b) {
    atomic_fetch_add(&b->refs, 1);
    driver_pdl_inc_refc(b->pdl);
}

static void pdl_release(pdl_block *b) {
    driver_pdl_dec_refc(b->pdl); /* the last reference frees the lock */
    pdl_block_unref(b);
}

/* Frees a job: at its end (ready or job_free), or one that driver_async
 * refused. Either way, within the callback that made it or at the end that
 * PENDING counts. */
static void job_dispose(job *j) {
    if (j) {
        atomic_fetch_sub(&live_jobs, 1);
        driver_free(j);
    }
}

static void job_free(void *arg) {
    job *j = arg;
    atomic_fetch_add(&freed_count, 1);
    end_record(j);
    if (j->pb)
        pdl_release(j->pb);
    job_dispose(j);
}

/* PDL jobs count from a pool thread, under the lock, in the block their
 * reference keeps alive (not in the port's adrv: the port may be gone). */
static void pdl_invoke(void *arg) {
    job *j = arg;
    driver_pdl_lock(j->pb->pdl);
    j->pb->count++;
    driver_pdl_unlock(j->pb->pdl);
}

static void open_gate(void) {
    pthread_mutex_lock(&gate_lock);
    gate_gen++;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

/* DEQ_JOB: past the gate, the whole queue goes, from the pool thread. */
static void deq_invoke(void *arg) {
    job *j = arg;
    block_invoke(arg);
    driver_pdl_lock(j->pb->pdl);
    ErlDrvSizeT n = driver_sizeq(j->drv_port);
    long r = n == (ErlDrvSizeT)-1 ? -1 : (long)driver_deq(j->drv_port, n);
    driver_pdl_unlock(j->pb->pdl);
    atomic_store(&deq_result, r);
}

/* CHURN: the queue used from pool threads while the port lives or dies. */
static void churn_invoke(void *arg) {
    job *j = arg;
    char bytes[16] = "churn churn chur";
    driver_pdl_lock(j->pb->pdl);
    if (driver_enq(j->drv_port, bytes, sizeof bytes) == 0) {
        driver_deq(j->drv_port, sizeof bytes);
        atomic_fetch_add(&churn_ok, 1);
    } else {
        atomic_fetch_add(&churn_dead, 1);
    }
    driver_pdl_unlock(j->pb->pdl);
}

static job *new_job(adrv *a, unsigned key, int has_key, unsigned work_us, long record);

/* A job that uses the port data lock: it holds a reference to it. */
static int submit_locked(adrv *a, unsigned key, void (*invoke_fn)(void *), unsigned gate) {
    job *j = new_job(a, key, 1, 0, -1);
    if (!j)
        return -1;
    j->quiet = 1;
    j->gate = gate;
    j->pb = a->pb;
    j->drv_port = a->port;
    pdl_hold(j->pb);
    if (driver_async(a->port, &key, invoke_fn, j, job_free) < 0) {
        pdl_release(j->pb);
        job_dispose(j);
        return -1;
    }
    return 0;
}

/* FROM_POOL jobs send from the pool thread. */
static void from_pool_invoke(void *arg) {
    job *j = arg;
    ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("from_pool"), ERL_DRV_UINT, j->seq,
                             ERL_DRV_TUPLE, 2};
    erl_drv_output_term(j->port, spec, 6);
}

/* BROKEN_PIPE: the write's outcome, sent from the pool thread. */
static void broken_pipe_invoke(void *arg) {
    job *j = arg;
    const char *r = "no_pipe";
    int fd[2];
    if (pipe(fd) == 0) {
        close(fd[0]);
        ssize_t n = write(fd[1], "x", 1);
        int e = errno;
        close(fd[1]);
        r = n < 0 && e == EPIPE ? "epipe" : n < 0 ? "other_error" : "written";
    }
    ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("broken_pipe"), ERL_DRV_ATOM,
                             driver_mk_atom((char *)r), ERL_DRV_TUPLE, 2};
    erl_drv_output_term(j->port, spec, 6);
}

static void ready(ErlDrvData d, ErlDrvThreadData td) {
    adrv *a = (adrv *)d;
    job *j = (job *)td;
    atomic_fetch_add(&ready_count, 1);
    end_record(j);
    if (j->pb) {
        pdl_release(j->pb);
    } else if (j->record == -1 && !j->quiet) {
        ErlDrvTermData spec[] = {
            ERL_DRV_ATOM, driver_mk_atom("done"),
            ERL_DRV_UINT, j->has_key ? j->key : 0,
            ERL_DRV_UINT, j->seq,
            ERL_DRV_UINT, j->invoke_order,
            ERL_DRV_STRING, (ErlDrvTermData)j->lane, strlen(j->lane),
            ERL_DRV_TUPLE, 5,
        };
        erl_drv_output_term(driver_mk_port(a->port), spec, sizeof spec / sizeof spec[0]);
    }
    job_dispose(j);
}

static job *new_job(adrv *a, unsigned key, int has_key, unsigned work_us, long record) {
    job *j = driver_alloc(sizeof *j);
    if (!j)
        return NULL;
    memset(j, 0, sizeof *j);
    atomic_fetch_add(&live_jobs, 1);
    j->port = driver_mk_port(a->port);
    j->key = key;
    j->has_key = has_key;
    j->seq = ++a->seq;
    j->work_us = work_us;
    j->record = record;
    return j;
}

/* A keyless job that sends no done message (its invoke reports, if
 * anything); 0, or -1 when it cannot be submitted. */
static int submit_quiet(adrv *a, void (*invoke_fn)(void *)) {
    job *j = new_job(a, 0, 0, 0, -1);
    if (!j)
        return -1;
    j->quiet = 1;
    if (driver_async(a->port, NULL, invoke_fn, j, job_free) < 0) {
        job_dispose(j);
        return -1;
    }
    return 0;
}

static ErlDrvData a_start(ErlDrvPort port, char *cmd) {
    adrv *a = driver_alloc(sizeof *a);
    if (!a)
        return ERL_DRV_ERROR_GENERAL;
    memset(a, 0, sizeof *a);
    a->port = port;
    return (ErlDrvData)a;
}

static void a_stop(ErlDrvData d) {
    adrv *a = (adrv *)d;
    atomic_fetch_add(&stopped_count, 1);
    if (a->stop_releases)
        open_gate();
    if (a->stop_job) {
        job *j = new_job(a, 0, 0, 0, -1);
        if (j && driver_async(a->port, NULL, invoke, j, job_free) < 0)
            job_dispose(j);
    }
    if (a->pb)
        pdl_block_unref(a->pb); /* the jobs still queued hold it */
    driver_free(a);
}

#define REPLY(...) return (ErlDrvSSizeT)snprintf(*rbuf, (size_t)rlen, __VA_ARGS__)

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

static ErlDrvSSizeT a_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    adrv *a = (adrv *)d;
    switch (op) {
    case 1: { /* SUBMIT */
        if (len < 13)
            return -1;
        int has_key = buf[0] != 0;
        unsigned key = get32(buf + 1), count = get32(buf + 5), work = get32(buf + 9);
        long id = 0;
        unsigned key_after = key;
        for (unsigned i = 0; i < count; i++) {
            job *j = new_job(a, key, has_key, work, -1);
            if (!j)
                return -1;
            key_after = key;
            id = driver_async(a->port, has_key ? &key_after : NULL, invoke, j, job_free);
            if (id < 0) {
                job_dispose(j);
                return -1;
            }
        }
        REPLY("%ld,%u", id, key_after);
    }
    case 2: { /* CANCEL */
        if (len < 8 || !cancel_fn)
            return -1;
        long id = (long)((unsigned long)get32(buf) << 32 | get32(buf + 4));
        REPLY("%d", cancel_fn(id));
    }
    case 3: { /* BLOCK */
        if (len < 4)
            return -1;
        unsigned key = get32(buf);
        job *j = new_job(a, key, 1, 0, -1);
        if (j) {
            pthread_mutex_lock(&gate_lock);
            j->gate = gate_gen;
            pthread_mutex_unlock(&gate_lock);
        }
        long id = j ? driver_async(a->port, &key, block_invoke, j, job_free) : -1;
        if (id < 0) {
            job_dispose(j);
            return -1;
        }
        REPLY("%ld", id);
    }
    case 4: /* RELEASE */
        open_gate();
        return 0;
    case 5: /* STATS */
        REPLY("ready=%ld,freed=%ld,invoked=%ld,stopped=%ld", atomic_load(&ready_count),
              atomic_load(&freed_count), atomic_load(&invoked_count), atomic_load(&stopped_count));
    case 7: { /* STRESS */
        if (len < 12 || !ended)
            return -1;
        unsigned n = get32(buf), per_mille = get32(buf + 4), seed = get32(buf + 8);
        unsigned cancelled = 0, submitted = 0;
        long recent[64];
        long recent_rec[64];
        int nrecent = 0;
        for (unsigned i = 0; i < n; i++) {
            long r = atomic_fetch_add(&records, 1);
            if (r >= MAX_RECORDS)
                return -1;
            unsigned key = rnd(&seed) % 1000;
            job *j = new_job(a, key, 1, 0, r);
            if (!j)
                return -1;
            long id = driver_async(a->port, rnd(&seed) % 4 ? &key : NULL, invoke, j, job_free);
            if (id < 0) {
                job_dispose(j);
                atomic_fetch_add(&ended[r], 1); /* never submitted: counts as ended */
                continue;
            }
            submitted++;
            recent[nrecent % 64] = id;
            recent_rec[nrecent % 64] = r;
            nrecent++;
            if (cancel_fn && rnd(&seed) % 1000 < per_mille) {
                int k = (int)(rnd(&seed) % (unsigned)(nrecent < 64 ? nrecent : 64));
                /* Mark before cancelling: once cancelled, the job may be freed. */
                long rec = recent_rec[k];
                atomic_fetch_add(&was_cancelled[rec], 1);
                if (cancel_fn(recent[k]) == 1)
                    cancelled++;
                else
                    atomic_fetch_sub(&was_cancelled[rec], 1);
            }
        }
        REPLY("%u,%u", submitted, cancelled);
    }
    case 8: { /* CHECK */
        long n = atomic_load(&records), once = 0, never = 0, twice = 0, bad = 0;
        for (long i = 0; i < n && ended; i++) {
            unsigned e = atomic_load(&ended[i]);
            e == 1 ? once++ : e == 0 ? never++ : twice++;
            if (atomic_load(&was_cancelled[i]) && atomic_load(&invoked[i]))
                bad++;
        }
        REPLY("once=%ld,never=%ld,twice=%ld,invoked_cancelled=%ld", once, never, twice, bad);
    }
    case 9: /* STOP_JOB */
        a->stop_job = 1;
        return 0;
    case 10: { /* PDL */
        if (len < 4)
            return -1;
        int again = a->pb != NULL;
        if (!a->pb && !(a->pb = pdl_block_new(a->port)))
            return -1;
        if (again && driver_pdl_create(a->port) != NULL)
            return -1; /* one lock per port */
        unsigned n = get32(buf);
        for (unsigned i = 0; i < n; i++) {
            job *j = new_job(a, i, 1, 0, -1);
            if (!j)
                return -1;
            j->pb = a->pb;
            pdl_hold(j->pb);
            unsigned key = i;
            if (driver_async(a->port, &key, pdl_invoke, j, job_free) < 0) {
                pdl_release(j->pb);
                job_dispose(j);
                return -1;
            }
        }
        REPLY("%s", again ? "again" : "created");
    }
    case 11: { /* PDL_READ */
        if (!a->pb)
            return -1;
        driver_pdl_lock(a->pb->pdl);
        long c = a->pb->count;
        driver_pdl_unlock(a->pb->pdl);
        REPLY("count=%ld,refc=%ld", c, (long)driver_pdl_get_refc(a->pb->pdl));
    }
    case 12: { /* FROM_POOL */
        if (len < 4)
            return -1;
        unsigned n = get32(buf);
        for (unsigned i = 0; i < n; i++)
            if (submit_quiet(a, from_pool_invoke) < 0)
                return -1;
        return 0;
    }
    case 14: /* BROKEN_PIPE */
        return submit_quiet(a, broken_pipe_invoke);
    case 15: { /* ENQ */
        if (len < 4 || (!a->pb && !(a->pb = pdl_block_new(a->port))))
            return -1;
        unsigned n = get32(buf);
        char *bytes = driver_alloc(n ? n : 1);
        if (!bytes)
            return -1;
        memset(bytes, 'q', n);
        driver_pdl_lock(a->pb->pdl);
        int rc = driver_enq(a->port, bytes, n);
        long size = (long)driver_sizeq(a->port);
        driver_pdl_unlock(a->pb->pdl);
        driver_free(bytes);
        if (rc < 0)
            return -1;
        REPLY("%ld", size);
    }
    case 16: { /* DEQ_JOB */
        if (len < 4 || (!a->pb && !(a->pb = pdl_block_new(a->port))))
            return -1;
        pthread_mutex_lock(&gate_lock);
        unsigned gate = gate_gen;
        pthread_mutex_unlock(&gate_lock);
        return submit_locked(a, get32(buf), deq_invoke, gate);
    }
    case 17: { /* CHURN */
        if (len < 4 || (!a->pb && !(a->pb = pdl_block_new(a->port))))
            return -1;
        unsigned n = get32(buf);
        for (unsigned i = 0; i < n; i++)
            if (submit_locked(a, i, churn_invoke, 0) < 0)
                return -1;
        return 0;
    }
    case 18: /* STOP_RELEASES */
        a->stop_releases = 1;
        return 0;
    case 19: /* QSTATS */
        REPLY("deq=%ld,churn_ok=%ld,churn_dead=%ld", atomic_load(&deq_result),
              atomic_load(&churn_ok), atomic_load(&churn_dead));
    case 13: { /* WAIT_OWN */
        if (len < 4)
            return -1;
        unsigned key = get32(buf);
        job *j = new_job(a, key, 1, 0, -1);
        if (!j)
            return -1;
        pthread_mutex_lock(&own_lock);
        own_ran = 0;
        pthread_mutex_unlock(&own_lock);
        if (driver_async(a->port, &key, own_invoke, j, job_free) < 0) {
            job_dispose(j);
            return -1;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 30;
        pthread_mutex_lock(&own_lock);
        while (!own_ran && pthread_cond_timedwait(&own_cond, &own_lock, &until) == 0)
            ;
        int ran = own_ran;
        pthread_mutex_unlock(&own_lock);
        REPLY("%s", ran ? "ran" : "timeout");
    }
    case 20: /* PENDING */
        REPLY("%ld", atomic_load(&live_jobs));
    default:
        return -1;
    }
}

static void a_finish(void);

/* WAIT_OWN's bound is on the monotonic clock: a change of the wall clock
 * must not end (or stretch) the wait. */
static int own_cond_init(void) {
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
                     pthread_cond_init(&own_cond, &attr) == 0
                 ? 0
                 : -1;
    pthread_condattr_destroy(&attr);
    return rc;
}

static int a_init(void) {
    if (own_cond_init() < 0)
        return -1;
    *(void **)&cancel_fn = dlsym(RTLD_DEFAULT, "driver_async_cancel");
    ended = calloc(MAX_RECORDS, 1);
    invoked = calloc(MAX_RECORDS, 1);
    was_cancelled = calloc(MAX_RECORDS, 1);
    if (ended && invoked && was_cancelled)
        return 0;
    a_finish();
    return -1;
}

static void a_finish(void) {
    free((void *)ended);
    free((void *)invoked);
    free((void *)was_cancelled);
    ended = invoked = was_cancelled = NULL;
    pthread_cond_destroy(&own_cond);
}

static ErlDrvEntry adrv_entry = {
    .init = a_init,
    .start = a_start,
    .stop = a_stop,
    .driver_name = "adrv",
    .finish = a_finish,
    .control = a_control,
    .ready_async = ready,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

DRIVER_INIT(adrv) {
    return &adrv_entry;
}
