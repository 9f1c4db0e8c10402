/*
 * async.c: the async thread pool (driver_async) and its cancel.
 *
 * N pool threads, async_1..async_N, each with its own lane of jobs.
 * driver_async puts a job on the lane its key picks, as ERTS does (*key % N,
 * written back into *key; without a key, the job id % N), so jobs with one key
 * run one at a time, in order, on one thread.
 *
 * Lanes: only the emulator thread submits, and only the lane's thread takes,
 * so a lane is a lock-free stack that the emulator pushes onto (one
 * compare-and-swap) and the pool thread empties in one exchange, then reverses
 * into submission order. Nobody ever holds a lock around a job.
 *
 * Sleeping and waking: a pool thread with nothing to do first spins for a
 * while (edrv_options.spin_us), watching its lane and yielding its core;
 * only then does it set its `sleeping` word, look at the lane once more, and
 * wait on the word (a futex). driver_async wakes the thread right away if it
 * sleeps, as ERTS does (a callback may wait for its own job), and only then:
 * the wake-up clears the word, so a burst costs one wake-up per thread, and a
 * thread that is spinning or working costs none. The job is pushed before
 * `sleeping` is read, and `sleeping` is set before the lane is read (both
 * sequentially consistent), so a job is never left on the lane of a sleeping
 * thread.
 *
 * Completions: each pool thread appends its finished jobs to a queue of its
 * own, a FIFO linked through the jobs (the producer links the new job to the
 * last one; the consumer keeps the job it ended last as the queue's head
 * until the next one ends, and only then reuses it). It wakes the emulator
 * thread only if that is parked (edrv__wake). The emulator thread walks the
 * queues in order, a few jobs from each in turn, and ends each job with
 * exactly one of ready_async (the port lives and has one) or free. There is
 * no shared completion word for the pool threads to fight over, and no list
 * to reverse: a long backlog of completions is read once, in order.
 *
 * Cancel: every job has an atomic state. A pool thread moves QUEUED to
 * RUNNING before invoke; driver_async_cancel moves QUEUED to CANCELLED. One
 * compare-and-swap decides, so a job is cancelled or run, never both; the
 * canceller finds the job through the job table, in O(1), and never walks a
 * lane. A cancelled job stays on its lane until its thread reaches it and
 * hands it back through its completion queue, unrun, for reuse.
 *
 * Memory: a job is 40 bytes, cut from slabs of SLAB_JOBS and reused through
 * a free list, all on the emulator thread; its invoke and free functions are
 * one index into a table of the distinct pairs drivers use; the job table is
 * one pointer per slot and at most three quarters full. A second after the
 * last job ended, the slabs go back to the allocator but the newest and any
 * that holds a completion queue's head, and so does the table.
 *
 * Threads: driver_async, driver_async_cancel and the completion pass run on
 * the emulator thread, which alone touches the job table, the slabs, ports
 * and drivers. Pool threads touch only their lane, the jobs they take, their
 * completion queue's tail and the function table's published entries.
 */
#include "internal.h"

#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdalign.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_CANCELLED };

#define SLAB_JOBS 1024
/* Jobs the drain ends from one lane before it turns to the next. */
#define DRAIN_TURN 4
/* Spare slabs and a big job table go back after a second with no live job:
 * a pool that works in bursts keeps them between bursts, and glibc is not
 * asked for a large block (which merges its free small blocks) every burst. */
#define TRIM_AFTER_NS 1000000000u
#define CACHE_LINE 64
/* The function table: FN_CHUNKS chunks of FN_CHUNK pairs, never moved, so a
 * pool thread reads a pair without a lock while the table grows. */
#define FN_CHUNK 256
#define FN_CHUNKS 256

typedef struct job {
    _Atomic(struct job *) next; /* on a lane, then on a completion queue, or free */
    edrv_port_t *port;
    void *data;
    long id;
    uint32_t fn; /* index into the function table */
    _Atomic uint32_t state;
} job;

typedef struct slab {
    struct slab *next;
    job jobs[SLAB_JOBS];
} slab;

typedef struct {
    void (*invoke)(void *);
    void (*free)(void *);
} fn_pair;

/* One lane per pool thread, each on cache lines of its own: the emulator
 * thread writes `head` and reads `sleeping`, the pool thread the reverse. */
typedef struct {
    alignas(CACHE_LINE) _Atomic(job *) head; /* newest first */
    _Atomic uint32_t sleeping;               /* the futex word: 1 while it sleeps */
    _Atomic bool quit;
    alignas(CACHE_LINE) _Atomic uint64_t started; /* the pool thread's counter */
    job *ctail; /* the pool thread's: the last job on its completion queue */
    pthread_t thread;
    bool running;
    /* The completion queue: a FIFO linked through the jobs, from stub or the
     * job last ended (kept until the next one ends: the pool thread may still
     * link to it) to ctail. The emulator thread's: */
    alignas(CACHE_LINE) job *chead;
    job stub;
} lane;

static struct {
    alignas(CACHE_LINE) lane *lanes;
    void *lanes_block; /* what lanes was cut from */
    int n;
    long spin_ns; /* how long an idle pool thread spins */
    /* The emulator thread's: */
    struct {
        job **slots; /* NULL: empty; TOMB: removed */
        size_t cap, used, live;
    } table;          /* id -> queued or running job */
    slab *slabs;      /* newest first; jobs are cut from slabs->jobs[slab_used..] */
    size_t slab_used;
    job *free_jobs;
    size_t live_jobs; /* cut and not back on the free list (cancelled ones on a lane too) */
    uint64_t idle_since; /* edrv__async_trim_ms: when no job was live, 0 if unknown */
    long idle_id;        /* next_id then */
    fn_pair *fns[FN_CHUNKS];
    uint32_t nfns, last_fn;
    long next_id;        /* last id handed out */
    size_t pending;
    /* Statistics: written by the emulator thread alone, read by any. */
    _Atomic uint64_t submitted, ready, freed, cancelled;
    _Atomic uint64_t started; /* after a stop: what the lanes' counters came to */
} pool;

#define TOMB ((job *)1)

/* Guards pool.n and pool.lanes against edrv_pool on another thread while
 * the pool starts or stops. */
static pthread_mutex_t lanes_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- futex ------------------------------------------------------------------- */

static void futex_wait(_Atomic uint32_t *word, uint32_t val) {
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* A counter with one writer: a plain add, no locked instruction. */
static inline void bump(_Atomic uint64_t *c) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* ---- pool threads ---------------------------------------------------------- */

/* Appends a finished (or cancelled) job to the lane's completion queue. */
static void complete(lane *l, job *j) {
    atomic_store_explicit(&j->next, NULL, memory_order_relaxed);
    atomic_store_explicit(&l->ctail->next, j, memory_order_release);
    l->ctail = j;
    atomic_thread_fence(memory_order_seq_cst); /* the link, then the parked flag */
    edrv__wake(); /* only if the emulator thread is parked */
}

/* Spins until the lane has jobs or spin_ns pass; whether it has. The spin
 * yields the processor on every round: where threads outnumber cores, a
 * spinning thread gives its core to one with work, and comes back within a
 * scheduler round when there is none. */
static bool spin_for_jobs(lane *l) {
    if (pool.spin_ns <= 0)
        return false;
    int64_t until = edrv__now_ns() + pool.spin_ns;
    do {
        if (atomic_load_explicit(&l->head, memory_order_relaxed) ||
            atomic_load_explicit(&l->quit, memory_order_relaxed))
            return true;
        sched_yield();
    } while (edrv__now_ns() < until);
    return false;
}

static void *lane_main(void *arg) {
    lane *l = arg;
    for (;;) {
        job *stack = atomic_exchange_explicit(&l->head, NULL, memory_order_acquire);
        if (!stack) {
            if (atomic_load_explicit(&l->quit, memory_order_acquire))
                return NULL;
            if (spin_for_jobs(l))
                continue;
            atomic_store(&l->sleeping, 1);
            if (atomic_load(&l->head) || atomic_load(&l->quit)) {
                atomic_store(&l->sleeping, 0);
                continue;
            }
            futex_wait(&l->sleeping, 1);
            atomic_store(&l->sleeping, 0); /* woken, or a spurious return */
            continue;
        }
        /* Newest first: reverse into submission order. */
        job *batch = NULL;
        while (stack) {
            job *next = atomic_load_explicit(&stack->next, memory_order_relaxed);
            atomic_store_explicit(&stack->next, batch, memory_order_relaxed);
            batch = stack;
            stack = next;
        }
        while (batch) {
            job *j = batch;
            batch = atomic_load_explicit(&j->next, memory_order_relaxed);
            uint32_t queued = JOB_QUEUED;
            if (atomic_compare_exchange_strong(&j->state, &queued, JOB_RUNNING)) {
                bump(&l->started); /* this thread's alone */
                const fn_pair *f = &pool.fns[j->fn / FN_CHUNK][j->fn % FN_CHUNK];
                f->invoke(j->data);
                atomic_store_explicit(&j->state, JOB_DONE, memory_order_relaxed);
            }
            complete(l, j); /* cancelled ones go back unrun, for reuse */
        }
    }
}

int edrv__async_start(int threads, long spin_ns) {
    atomic_store(&pool.submitted, 0);
    atomic_store(&pool.ready, 0);
    atomic_store(&pool.freed, 0);
    atomic_store(&pool.cancelled, 0);
    atomic_store(&pool.started, 0);
    pool.spin_ns = spin_ns;
    pool.lanes_block = edrv__alloc(EDRV_MEM_SYSTEM, (size_t)threads * sizeof(lane) + CACHE_LINE);
    if (!pool.lanes_block) {
        edrv__free(pool.lanes_block);
        pool.lanes_block = NULL;
        return edrv__fail(EDRV_ENOMEM, "out of memory for %d pool threads", threads);
    }
    uintptr_t at = ((uintptr_t)pool.lanes_block + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    memset((void *)at, 0, (size_t)threads * sizeof(lane));
    for (int i = 0; i < threads; i++) {
        lane *l = (lane *)at + i;
        l->chead = l->ctail = &l->stub;
    }
    pthread_mutex_lock(&lanes_lock);
    pool.lanes = (lane *)at;
    pool.n = threads;
    pthread_mutex_unlock(&lanes_lock);
    for (int i = 0; i < threads; i++) {
        lane *l = &pool.lanes[i];
        int rc = pthread_create(&l->thread, NULL, lane_main, l);
        if (rc) {
            edrv__async_stop();
            return edrv__fail(-rc, "cannot start pool thread %d: %s", i + 1, strerror(rc));
        }
        l->running = true;
        char name[16]; /* the kernel's limit; async_1024 fits */
        snprintf(name, sizeof name, "async_%d", (i + 1) % 10000);
        pthread_setname_np(l->thread, name);
    }
    return 0;
}

static void slabs_free(void);

void edrv__async_stop(void) {
    int n = pool.n; /* only start and stop, on this thread, change it */
    for (int i = 0; i < n; i++) {
        lane *l = &pool.lanes[i];
        atomic_store(&l->quit, true);
        if (atomic_exchange(&l->sleeping, 0))
            futex_wake(&l->sleeping);
    }
    for (int i = 0; i < n; i++) {
        lane *l = &pool.lanes[i];
        if (l->running)
            pthread_join(l->thread, NULL);
    }
    pthread_mutex_lock(&lanes_lock);
    for (int i = 0; i < n; i++)
        atomic_fetch_add(&pool.started, atomic_load(&pool.lanes[i].started));
    pool.n = 0;
    pthread_mutex_unlock(&lanes_lock);
    /* Every job has ended; cancelled ones may still be on a completion
     * queue, and all of them live in the slabs. */
    slabs_free();
    edrv__free(pool.lanes_block);
    edrv__free(pool.table.slots);
    for (uint32_t c = 0; c < FN_CHUNKS && pool.fns[c]; c++) {
        edrv__free(pool.fns[c]);
        pool.fns[c] = NULL;
    }
    pool.nfns = pool.last_fn = 0;
    pool.table.slots = NULL;
    pool.table.cap = pool.table.used = pool.table.live = 0;
    pool.idle_since = 0;
    pool.lanes_block = NULL;
    pool.lanes = NULL;
}

/* ---- the emulator thread: jobs, slabs, functions, the job table --------------- */

static void slabs_free(void) {
    while (pool.slabs) {
        slab *s = pool.slabs;
        pool.slabs = s->next;
        edrv__free(s);
    }
    pool.slab_used = 0;
    pool.free_jobs = NULL;
    pool.live_jobs = 0;
}

static job *job_new(void) {
    job *j = pool.free_jobs;
    if (j) {
        pool.free_jobs = atomic_load_explicit(&j->next, memory_order_relaxed);
    } else {
        if (!pool.slabs || pool.slab_used == SLAB_JOBS) {
            slab *s = edrv__alloc(EDRV_MEM_ASYNC, sizeof *s);
            if (!s)
                return NULL;
            s->next = pool.slabs;
            pool.slabs = s;
            pool.slab_used = 0;
        }
        j = &pool.slabs->jobs[pool.slab_used++];
    }
    pool.live_jobs++;
    return j;
}

/* A job is back: onto the free list. */
static void job_recycle(job *j) {
    atomic_store_explicit(&j->next, pool.free_jobs, memory_order_relaxed);
    pool.free_jobs = j;
    pool.live_jobs--;
}

/* The job a lane's completion queue starts from, if it is one of the slabs'. */
static job *queue_dummy(int i) {
    job *h = pool.lanes[i].chead;
    return h == &pool.lanes[i].stub ? NULL : h;
}

static bool in_slab(const job *j, const slab *s, size_t cut) {
    return j >= s->jobs && j < s->jobs + cut;
}

int edrv__async_trim_ms(uint64_t now) {
    /* Live, every job is queued, running or waiting to be ended, but for the
     * one each completion queue starts from. */
    size_t dummies = 0;
    for (int i = 0; i < pool.n; i++)
        dummies += queue_dummy(i) != NULL;
    bool spare = pool.slabs && pool.slabs->next;
    if (pool.live_jobs > dummies || (!spare && pool.table.cap <= 64)) {
        pool.idle_since = 0;
        return -1;
    }
    if (!pool.idle_since || pool.idle_id != pool.next_id) {
        pool.idle_since = now; /* idle from now on, or again */
        pool.idle_id = pool.next_id;
    }
    uint64_t waited = now - pool.idle_since;
    if (waited < TRIM_AFTER_NS)
        return (int)((TRIM_AFTER_NS - waited + 999999) / 1000000);
    /* The newest slab stays, and any that holds a queue's first job; the
     * free list is made again from the jobs cut from the slabs that stay. */
    slab *s = pool.slabs, *kept = NULL, **tail = &kept;
    bool newest = true;
    pool.free_jobs = NULL;
    while (s) {
        slab *next = s->next;
        size_t cut = newest ? pool.slab_used : SLAB_JOBS;
        bool keep = newest;
        for (int i = 0; i < pool.n && !keep; i++)
            keep = queue_dummy(i) && in_slab(queue_dummy(i), s, cut);
        if (keep) {
            for (size_t k = 0; k < cut; k++) {
                job *j = &s->jobs[k];
                bool dummy = false;
                for (int i = 0; i < pool.n; i++)
                    dummy |= queue_dummy(i) == j;
                if (!dummy) {
                    atomic_store_explicit(&j->next, pool.free_jobs, memory_order_relaxed);
                    pool.free_jobs = j;
                }
            }
            *tail = s;
            tail = &s->next;
        } else {
            edrv__free(s);
        }
        newest = false;
        s = next;
    }
    *tail = NULL;
    pool.slabs = kept;
    edrv__free(pool.table.slots);
    pool.table.slots = NULL;
    pool.table.cap = pool.table.used = pool.table.live = 0;
    pool.idle_since = 0;
    return -1;
}

/* The index of the pair (invoke, free), added if new; UINT32_MAX when the
 * table is full or out of memory. Drivers use a handful of pairs: the last
 * one found is tried first, then the table from the start. */
static uint32_t fn_index(void (*invoke)(void *), void (*free_fn)(void *)) {
    if (pool.nfns) {
        const fn_pair *f = &pool.fns[pool.last_fn / FN_CHUNK][pool.last_fn % FN_CHUNK];
        if (f->invoke == invoke && f->free == free_fn)
            return pool.last_fn;
    }
    for (uint32_t i = 0; i < pool.nfns; i++) {
        const fn_pair *f = &pool.fns[i / FN_CHUNK][i % FN_CHUNK];
        if (f->invoke == invoke && f->free == free_fn)
            return pool.last_fn = i;
    }
    uint32_t i = pool.nfns;
    if (i == FN_CHUNK * FN_CHUNKS) {
        edrv__warn("driver_async: more than %d distinct (invoke, free) pairs",
                   FN_CHUNK * FN_CHUNKS);
        return UINT32_MAX;
    }
    if (!pool.fns[i / FN_CHUNK] &&
        !(pool.fns[i / FN_CHUNK] = edrv__alloc(EDRV_MEM_ASYNC, FN_CHUNK * sizeof(fn_pair))))
        return UINT32_MAX;
    pool.fns[i / FN_CHUNK][i % FN_CHUNK] = (fn_pair){invoke, free_fn};
    pool.nfns++; /* published to pool threads with the job that uses it */
    return pool.last_fn = i;
}

/* The job table: open addressing on the id (ids are consecutive, so live
 * jobs fall in consecutive slots and rarely collide), one pointer a slot. */
static size_t slot_of(long id) {
    return (size_t)id & (pool.table.cap - 1);
}

static job *table_get(long id) {
    if (!pool.table.cap)
        return NULL;
    for (size_t i = slot_of(id);; i = (i + 1) & (pool.table.cap - 1)) {
        job *j = pool.table.slots[i];
        if (!j)
            return NULL;
        if (j != TOMB && j->id == id)
            return j;
    }
}

static void table_del(job *j) {
    for (size_t i = slot_of(j->id);; i = (i + 1) & (pool.table.cap - 1)) {
        if (pool.table.slots[i] == j) {
            pool.table.slots[i] = TOMB;
            pool.table.live--;
            return;
        }
    }
}

/* Rebuilt without tombstones, at most half full: a table that fills to
 * three quarters doubles, to three eighths full. */
static int table_rehash(void) {
    size_t cap = 64;
    while (cap < (pool.table.live + 1) * 2)
        cap *= 2;
    job **t = edrv__calloc(EDRV_MEM_ASYNC, cap * sizeof *t);
    if (!t)
        return -1;
    size_t old = pool.table.cap;
    job **s = pool.table.slots;
    pool.table.slots = t;
    pool.table.cap = cap;
    for (size_t i = 0; i < old; i++) {
        if (s[i] && s[i] != TOMB) {
            size_t k = slot_of(s[i]->id);
            while (t[k])
                k = (k + 1) & (cap - 1);
            t[k] = s[i];
        }
    }
    edrv__free(s);
    pool.table.used = pool.table.live;
    return 0;
}

static int table_put(job *j) {
    if ((pool.table.used + 1) * 4 > pool.table.cap * 3 && table_rehash() < 0)
        return -1;
    size_t i = slot_of(j->id);
    while (pool.table.slots[i] && pool.table.slots[i] != TOMB)
        i = (i + 1) & (pool.table.cap - 1);
    if (!pool.table.slots[i])
        pool.table.used++;
    pool.table.slots[i] = j;
    pool.table.live++;
    return 0;
}

/* Ends a job that will not run again: its port and driver let go of it. */
static void release(edrv_port_t *pt) {
    pool.pending--;
    edrv__driver_job_done(pt->drv);
    edrv__port_unref(pt);
}

bool edrv__async_has_done(void) {
    for (int i = 0; i < pool.n; i++)
        if (atomic_load(&pool.lanes[i].chead->next))
            return true;
    return false;
}

/* Ends one finished (or cancelled) job; it is recycled later (see drain). */
static void end_job(job *j) {
    if (atomic_load_explicit(&j->state, memory_order_relaxed) == JOB_CANCELLED)
        return; /* ended when it was cancelled */
    table_del(j);
    /* Counted before the callback runs, so that a host that saw the
     * callback's message also sees the count. */
    if (edrv__port_ready_async_ok(j->port)) {
        bump(&pool.ready);
        edrv__port_ready_async(j->port, j->data);
    } else {
        bump(&pool.freed);
        const fn_pair *f = &pool.fns[j->fn / FN_CHUNK][j->fn % FN_CHUNK];
        if (f->free)
            f->free(j->data);
    }
    release(j->port);
}

size_t edrv__async_drain(void) {
    /* Each lane's finished jobs in the order they ran, DRAIN_TURN at a time
     * from each lane in turn: across lanes, jobs end close to the order they
     * were submitted in, so a driver frees its job data close to the order it
     * allocated it, and one busy lane does not hold back the others. A job
     * that ended stays at the head of its queue until the next one ends (the
     * pool thread may link the next one to it), then goes to the free list. */
    size_t ended = 0;
    for (bool more = true; more;) {
        more = false;
        for (int i = 0; i < pool.n; i++) {
            lane *l = &pool.lanes[i];
            job *h = l->chead;
            for (int k = 0; k < DRAIN_TURN; k++) {
                job *j = atomic_load_explicit(&h->next, memory_order_acquire);
                if (!j)
                    break;
                job *ahead = atomic_load_explicit(&j->next, memory_order_relaxed);
                if (ahead)
                    __builtin_prefetch(ahead, 1);
                if (atomic_load_explicit(&j->state, memory_order_relaxed) != JOB_CANCELLED)
                    ended++;
                end_job(j);
                if (h != &l->stub)
                    job_recycle(h);
                h = l->chead = j;
                more = true;
            }
        }
    }
    return ended;
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
    uint32_t fn = fn_index(async_invoke, async_free);
    if (fn == UINT32_MAX)
        return -1;
    job *j = job_new();
    if (!j)
        return -1;
    /* Ids are positive and never 0, from one counter, as in ERTS. */
    j->id = pool.next_id == LONG_MAX ? 1 : pool.next_id + 1;
    if (table_put(j) < 0) {
        job_recycle(j);
        return -1;
    }
    pool.next_id = j->id;
    unsigned int qix;
    if (key) {
        qix = *key % (unsigned)pool.n;
        *key = qix; /* ERTS writes the lane back */
    } else {
        qix = (unsigned)(j->id % pool.n);
    }
    j->port = port;
    j->data = async_data;
    j->fn = fn;
    atomic_store_explicit(&j->state, JOB_QUEUED, memory_order_relaxed);
    edrv__port_ref(port);
    edrv__driver_job_added(port->drv);
    pool.pending++;
    bump(&pool.submitted);
    long id = j->id; /* j belongs to the lane's thread once it is pushed */

    lane *l = &pool.lanes[qix];
    job *old = atomic_load_explicit(&l->head, memory_order_relaxed);
    do {
        atomic_store_explicit(&j->next, old, memory_order_relaxed);
    } while (!atomic_compare_exchange_weak_explicit(&l->head, &old, j, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (atomic_load(&l->sleeping) && atomic_exchange(&l->sleeping, 0))
        futex_wake(&l->sleeping);
    return id;
}

EDRV_API int driver_async_cancel(long id) {
    if (!edrv__on_emulator_thread()) {
        edrv__warn("driver_async_cancel called outside the emulator thread");
        return 0;
    }
    job *j = id > 0 ? table_get(id) : NULL;
    if (!j)
        return 0; /* finished, or never was */
    uint32_t queued = JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED))
        return 0; /* running, or done and waiting to be completed */
    /* The job stays on its lane, and comes back through the completion stack
     * unrun; its fields are the emulator thread's to read until then. */
    table_del(j);
    const fn_pair *f = &pool.fns[j->fn / FN_CHUNK][j->fn % FN_CHUNK];
    if (f->free)
        f->free(j->data);
    bump(&pool.cancelled);
    release(j->port);
    return 1;
}

EDRV_API void edrv_pool(edrv_pool_stats *st) {
    if (!st)
        return;
    st->threads = edrv__async_threads();
    st->submitted = atomic_load(&pool.submitted);
    /* The lanes exist from edrv_start to edrv_stop; after a stop, the
     * counters read the last run's. */
    st->started = atomic_load(&pool.started);
    pthread_mutex_lock(&lanes_lock);
    for (int i = 0; i < pool.n; i++)
        st->started += atomic_load(&pool.lanes[i].started);
    pthread_mutex_unlock(&lanes_lock);
    st->ready_async = atomic_load(&pool.ready);
    st->freed = atomic_load(&pool.freed);
    st->cancelled = atomic_load(&pool.cancelled);
}
