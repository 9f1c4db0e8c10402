/*
 * async.c: the async thread pool (driver_async) and its cancel.
 *
 * N pool threads, async_1..async_N, each with its own lane: a FIFO of jobs.
 * driver_async puts a job on the lane its key picks, as ERTS does (*key % N,
 * written back into *key; without a key, the job id % N), so jobs with one key
 * run one at a time, in order, on one thread. A sleeping thread is signalled
 * once the emulator thread's current callbacks are done (edrv__async_wake_lanes),
 * so a burst of jobs costs one wake-up per thread. A pool thread takes its whole
 * lane at once, runs each job's invoke, and pushes the finished job onto one
 * lock-free completion stack; the push that finds the stack empty wakes the
 * emulator thread, so a burst of completions costs one wake-up. The emulator
 * thread then takes the whole stack, restores its order, and ends each job
 * with exactly one of ready_async (the port lives and has one) or free.
 *
 * Cancel: every job has an atomic state. A pool thread moves QUEUED to
 * RUNNING before invoke; driver_async_cancel moves QUEUED to CANCELLED. One
 * compare-and-swap decides, so a job is cancelled or run, never both; the
 * canceller finds the job through the id map, in O(1), and never walks a lane.
 * A cancelled job stays linked in its lane until its thread reaches it and
 * frees it without running it.
 *
 * Threads: driver_async, driver_async_cancel and the completion pass run on
 * the emulator thread, which alone touches the id map, ports and drivers. A
 * lane's lock is held only to link or unlink jobs; a pool thread never holds
 * it while a job runs. Lock order: lane lock -> nothing.
 */
#include "internal.h"
#include "idmap.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED };

#define WAKE_BATCH 64

typedef struct job {
    struct job *next; /* in a lane, then on the completion stack */
    long id;
    edrv_port_t *port;
    void (*invoke)(void *);
    void (*free_data)(void *);
    void *data;
    _Atomic int state;
} job;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job *head, *tail;
    bool sleeping; /* the thread waits on `wake` */
    bool to_wake;  /* the emulator thread's: listed in pool.wake_list */
    bool quit;
    pthread_t thread;
    bool started;
} lane;

static struct {
    lane *lanes;
    int n;
    _Atomic(job *) done; /* completion stack, newest first */
    /* The emulator thread's: */
    idmap jobs;   /* id -> queued or running job */
    lane **wake_list; /* lanes to signal once the current callbacks are done */
    int nwake;
    unsigned since_wake; /* jobs submitted since the lanes were last signalled */
    long next_id; /* last id handed out */
    size_t pending;
    /* Statistics, any thread. */
    _Atomic uint64_t submitted, started, ready, freed, cancelled;
} pool;

/* ---- pool threads ---------------------------------------------------------- */

static void complete(job *j) {
    job *old = atomic_load_explicit(&pool.done, memory_order_relaxed);
    do {
        j->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&pool.done, &old, j, memory_order_release,
                                                    memory_order_relaxed));
    if (!old)
        edrv__wake(); /* the first of a batch: the emulator thread drains them all */
}

static void *lane_main(void *arg) {
    lane *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->lock);
        while (!l->head && !l->quit) {
            l->sleeping = true;
            pthread_cond_wait(&l->wake, &l->lock);
            l->sleeping = false;
        }
        job *batch = l->head;
        l->head = l->tail = NULL;
        bool quit = l->quit;
        pthread_mutex_unlock(&l->lock);
        if (!batch && quit)
            return NULL;
        while (batch) {
            job *j = batch;
            batch = j->next;
            int queued = JOB_QUEUED;
            if (!atomic_compare_exchange_strong(&j->state, &queued, JOB_RUNNING)) {
                edrv__free(j); /* cancelled: the canceller released the rest */
                continue;
            }
            atomic_fetch_add_explicit(&pool.started, 1, memory_order_relaxed);
            j->invoke(j->data);
            atomic_store_explicit(&j->state, JOB_DONE, memory_order_relaxed);
            complete(j);
        }
    }
}

int edrv__async_start(int threads) {
    atomic_store(&pool.submitted, 0);
    atomic_store(&pool.started, 0);
    atomic_store(&pool.ready, 0);
    atomic_store(&pool.freed, 0);
    atomic_store(&pool.cancelled, 0);
    pool.lanes = edrv__calloc(EDRV_MEM_SYSTEM, (size_t)threads * sizeof *pool.lanes);
    pool.wake_list = edrv__calloc(EDRV_MEM_SYSTEM, (size_t)threads * sizeof *pool.wake_list);
    pool.nwake = 0;
    if (!pool.lanes || !pool.wake_list) {
        edrv__free(pool.lanes);
        edrv__free(pool.wake_list);
        pool.lanes = NULL;
        pool.wake_list = NULL;
        return edrv__fail(EDRV_ENOMEM, "out of memory for %d pool threads", threads);
    }
    pool.n = threads;
    /* Every lane's lock exists before any thread does, so that stopping after
     * a failed start destroys only what was made. */
    for (int i = 0; i < threads; i++) {
        pthread_mutex_init(&pool.lanes[i].lock, NULL);
        pthread_cond_init(&pool.lanes[i].wake, NULL);
    }
    for (int i = 0; i < threads; i++) {
        lane *l = &pool.lanes[i];
        int rc = pthread_create(&l->thread, NULL, lane_main, l);
        if (rc) {
            edrv__async_stop();
            return edrv__fail(-rc, "cannot start pool thread %d: %s", i + 1, strerror(rc));
        }
        l->started = true;
        char name[16]; /* the kernel's limit; async_1024 fits */
        snprintf(name, sizeof name, "async_%d", (i + 1) % 10000);
        pthread_setname_np(l->thread, name);
    }
    return 0;
}

void edrv__async_stop(void) {
    for (int i = 0; i < pool.n; i++) {
        lane *l = &pool.lanes[i];
        pthread_mutex_lock(&l->lock);
        l->quit = true;
        pthread_cond_signal(&l->wake);
        pthread_mutex_unlock(&l->lock);
    }
    for (int i = 0; i < pool.n; i++) {
        lane *l = &pool.lanes[i];
        if (l->started)
            pthread_join(l->thread, NULL);
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->wake);
    }
    edrv__free(pool.lanes);
    edrv__free(pool.wake_list);
    pool.wake_list = NULL;
    edrv__idmap_free(&pool.jobs);
    pool.lanes = NULL;
    pool.n = 0;
}

/* ---- the emulator thread ------------------------------------------------------ */

/* Ends a job that will not run again: its port and driver let go of it. */
static void release(job *j) {
    edrv_port_t *pt = j->port;
    pool.pending--;
    edrv__driver_job_done(pt->drv);
    edrv__port_unref(pt);
}

size_t edrv__async_drain(void) {
    job *stack = atomic_exchange_explicit(&pool.done, NULL, memory_order_acquire);
    /* Newest first on the stack: reverse, so each lane's jobs end in order. */
    job *list = NULL;
    while (stack) {
        job *next = stack->next;
        stack->next = list;
        list = stack;
        stack = next;
    }
    size_t n = 0;
    while (list) {
        job *j = list;
        list = j->next;
        edrv__idmap_del(&pool.jobs, (uint64_t)j->id);
        /* Counted before the callback runs, so that a host that saw the
         * callback's message also sees the count. */
        if (edrv__port_ready_async_ok(j->port)) {
            atomic_fetch_add_explicit(&pool.ready, 1, memory_order_relaxed);
            edrv__port_ready_async(j->port, j->data);
        } else {
            atomic_fetch_add_explicit(&pool.freed, 1, memory_order_relaxed);
            if (j->free_data)
                j->free_data(j->data);
        }
        release(j);
        edrv__free(j);
        n++;
    }
    return n;
}

void edrv__async_wake_lanes(void) {
    /* A lane listed here was asleep with its queue empty when a job went in;
     * signalling it late is safe: it cannot have gone back to sleep with the
     * job still queued, it rechecks under its lock before waiting. */
    for (int i = 0; i < pool.nwake; i++) {
        pool.wake_list[i]->to_wake = false;
        pthread_cond_signal(&pool.wake_list[i]->wake);
    }
    pool.nwake = 0;
    pool.since_wake = 0;
}

size_t edrv__async_pending(void) {
    return pool.pending;
}

EDRV_API long driver_async(ErlDrvPort port, unsigned int *key, void (*async_invoke)(void *),
                           void *async_data, void (*async_free)(void *)) {
    if (!edrv__on_emulator_thread()) {
        edrv__warn("driver_async called outside the emulator thread");
        return -1;
    }
    if (!port || !async_invoke || !edrv__port_accepts_jobs(port) || !pool.n)
        return -1;
    job *j = edrv__alloc(EDRV_MEM_ASYNC, sizeof *j);
    if (!j)
        return -1;
    /* Ids are positive and never 0, from one counter, as in ERTS. */
    long id = pool.next_id == LONG_MAX ? 1 : pool.next_id + 1;
    if (edrv__idmap_put(&pool.jobs, (uint64_t)id, j) < 0) {
        edrv__free(j);
        return -1;
    }
    pool.next_id = id;
    unsigned int qix;
    if (key) {
        qix = *key % (unsigned)pool.n;
        *key = qix; /* ERTS writes the lane back */
    } else {
        qix = (unsigned)(id % pool.n);
    }
    j->next = NULL;
    j->id = id;
    j->port = port;
    j->invoke = async_invoke;
    j->free_data = async_free;
    j->data = async_data;
    atomic_init(&j->state, JOB_QUEUED);
    edrv__port_ref(port);
    edrv__driver_job_added(port->drv);
    pool.pending++;
    atomic_fetch_add_explicit(&pool.submitted, 1, memory_order_relaxed);

    lane *l = &pool.lanes[qix];
    pthread_mutex_lock(&l->lock);
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    bool wake = l->sleeping && !l->to_wake;
    pthread_mutex_unlock(&l->lock);
    if (wake) {
        /* One signal per lane per turn of the loop, not one per job: a burst
         * of submissions from one callback wakes a thread once ... */
        l->to_wake = true;
        pool.wake_list[pool.nwake++] = l;
    }
    /* ... or every WAKE_BATCH jobs, so that a long burst's first jobs start
     * while the rest are still being submitted. */
    if (++pool.since_wake >= WAKE_BATCH && pool.nwake)
        edrv__async_wake_lanes();
    return id;
}

EDRV_API int driver_async_cancel(long id) {
    if (!edrv__on_emulator_thread()) {
        edrv__warn("driver_async_cancel called outside the emulator thread");
        return 0;
    }
    job *j = id > 0 ? edrv__idmap_get(&pool.jobs, (uint64_t)id) : NULL;
    if (!j)
        return 0; /* finished, or never was */
    /* Read the job before the swap: once it is CANCELLED, its pool thread may
     * free it at any moment. */
    void (*free_data)(void *) = j->free_data;
    void *data = j->data;
    edrv_port_t *pt = j->port;
    int queued = JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED))
        return 0; /* running, or done and waiting to be completed */
    edrv__idmap_del(&pool.jobs, (uint64_t)id);
    if (free_data)
        free_data(data);
    atomic_fetch_add_explicit(&pool.cancelled, 1, memory_order_relaxed);
    pool.pending--;
    edrv__driver_job_done(pt->drv);
    edrv__port_unref(pt);
    return 1;
}

EDRV_API void edrv_pool(edrv_pool_stats *st) {
    if (!st)
        return;
    st->threads = pool.n ? pool.n : edrv__async_threads();
    st->submitted = atomic_load(&pool.submitted);
    st->started = atomic_load(&pool.started);
    st->ready_async = atomic_load(&pool.ready);
    st->freed = atomic_load(&pool.freed);
    st->cancelled = atomic_load(&pool.cancelled);
}
