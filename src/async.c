/*
 * async.c: the async thread pool (driver_async) and its cancel.
 *
 * N pool threads, async_1..async_N, each with its own lane of jobs.
 * driver_async puts a job on the lane its key picks, as ERTS does (*key % N,
 * written back into *key; without a key, the job id % N), so jobs with one key
 * run one at a time, in order, on one thread.
 *
 * Lanes: a lane is a queue of jobs stored in place, in segments of SEG_JOBS
 * job slots linked in order. Three cursors walk it, all counting from the
 * lane's first job: `pushed` (the emulator thread has written that many
 * jobs), `done` (the pool thread has run or skipped that many) and `ended`
 * (the emulator thread has ended that many with ready_async or free). Only
 * the emulator thread writes jobs and only the lane's thread runs them, so
 * each side publishes its cursor with one release store and reads the other's
 * with an acquire load: no lock, no compare-and-swap on a shared word, and
 * both sides walk memory in order, which the processor's prefetcher follows
 * however many jobs are queued. A segment whose jobs have all ended goes on a
 * free list for the next one the emulator thread needs.
 *
 * Sleeping and waking: a pool thread with nothing to do first spins for a
 * while (edrv_options.spin_us), watching `pushed` and yielding its core;
 * only then does it set its `sleeping` word, look at `pushed` once more, and
 * wait on the word (a futex). driver_async wakes the thread right away if it
 * sleeps, as ERTS does (a callback may wait for its own job), and only then:
 * the wake-up clears the word, so a burst costs one wake-up per thread, and a
 * thread that is spinning or working costs none. `pushed` is stored before
 * `sleeping` is read, and `sleeping` is set before `pushed` is read, so a job
 * is never left on the lane of a sleeping thread. Either side needs a full
 * barrier between its store and its load, and the emulator thread's would
 * come on every job: a locked instruction that waits for all its stores
 * before it, the driver's freshly written job data among them, a tenth of
 * the cost of an empty job. So where Linux has membarrier(2), the pool thread
 * about to sleep pays for both: its membarrier runs a barrier on every
 * thread of the process, and the emulator thread stores and loads in plain
 * order. Elsewhere (valgrind, old kernels) both are sequentially consistent.
 *
 * Completions: after each job the pool thread stores `done`, and wakes the
 * emulator thread only if that is parked (edrv__wake). The emulator thread
 * ends the jobs between `ended` and `done`, a few from each lane in turn, with
 * exactly one of ready_async (the port lives and has one) or free.
 *
 * Cancel: every job has an atomic state. A pool thread moves QUEUED to
 * RUNNING before invoke; driver_async_cancel moves QUEUED to CANCELLED. One
 * compare-and-swap decides, so a job is cancelled or run, never both. Ids
 * grow with every job, so along a lane they are sorted: the canceller finds a
 * job with a binary search over each lane's jobs not yet ended, through the
 * lane's table of segments, and keeps no index of its own. A cancelled job
 * stays in its slot; its thread skips it.
 *
 * Memory: a job is 32 bytes in its lane's segment, and nothing else: its
 * invoke and free functions are one index into a table of the distinct pairs
 * drivers use. A second after the last job ended, the spare segments go back
 * to the allocator.
 *
 * Threads: driver_async, driver_async_cancel and the drain run on the
 * emulator thread, which alone writes jobs and touches ports and drivers.
 * Pool threads read the jobs between `done` and `pushed`, write their state,
 * and read the function table's published entries.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { JOB_QUEUED, JOB_RUNNING, JOB_CANCELLED };

/* Jobs per segment: 16 KiB of jobs. */
#define SEG_JOBS 512
/* A pool thread whose lane, once empty, had jobs again within STREAM_GAP_NS
 * is chasing a burst: from then on, each time the lane runs empty, it sleeps
 * for STREAM_PAUSE_NS before it looks for more (lane_main). Its timer slack
 * is STREAM_SLACK_NS, not Linux's default 50 us, which would make every
 * pause that long. */
#define STREAM_GAP_NS 500
#define STREAM_PAUSE_NS 1000
#define STREAM_SLACK_NS 1000
/* Jobs the drain ends from one lane before it turns to the next. */
#define DRAIN_TURN 4
/* How far ahead (in jobs) the pool thread and the drain prefetch the data a
 * job points to: a long queue's driver data is no longer in the cache. */
#define PREFETCH_AHEAD 4
/* Spare segments go back a second after the last job was submitted, when no
 * job is pending: a pool that works in bursts keeps them between bursts, and
 * glibc is not asked for large blocks (which merges its free small blocks)
 * every burst. */
#define TRIM_AFTER_NS 1000000000u
#define CACHE_LINE 64
/* The function table: FN_CHUNKS chunks of FN_CHUNK pairs, never moved, so a
 * pool thread reads a pair without a lock while the table grows. */
#define FN_CHUNK 256
#define FN_CHUNKS 256

typedef struct {
    void *data;
    edrv_port_t *port;
    long id;
    uint32_t fn; /* index into the function table */
    _Atomic uint32_t state;
} job;

/* `next` is written before the jobs in the next segment are published, so
 * the pool thread reads it without an atomic; free segments are linked
 * through it too. A segment is cut from its block at a cache line, so that
 * no job straddles two lines. */
typedef struct seg {
    struct seg *next;
    void *block;
    char pad[CACHE_LINE - 2 * sizeof(void *)];
    job jobs[SEG_JOBS];
} seg;

typedef struct {
    void (*invoke)(void *);
    void (*free)(void *);
} fn_pair;

/* One lane per pool thread. Its hot words sit on cache lines by who writes
 * them: `pushed` by the emulator thread, `done` by the pool thread, and the
 * rarely written `sleeping` apart from both, since the emulator thread reads
 * it on every submission. */
typedef struct {
    alignas(CACHE_LINE) _Atomic uint64_t pushed;
    seg *first; /* the segment of job 0, for the pool thread */
    alignas(CACHE_LINE) _Atomic uint64_t done;
    _Atomic uint64_t started; /* the pool thread's counter */
    alignas(CACHE_LINE) _Atomic uint32_t sleeping; /* the futex word: 1 while it sleeps */
    _Atomic bool quit;
    pthread_t thread;
    bool running;
    int64_t move_after; /* the pool thread's: leave_emulator_core waits till then */
    /* The emulator thread's: the last segment and the one of the next job
     * to end, and every segment from that one to the last, in order, for
     * cancel (a ring of segs_cap pointers from segs[segs_at]). */
    alignas(CACHE_LINE) uint64_t tail, ended, seen_done;
    seg *tail_seg, *end_seg;
    seg **segs;
    size_t segs_cap, segs_at, nsegs;
    uint64_t segs_base; /* the number of the first job in segs[segs_at] */
} lane;

static struct {
    alignas(CACHE_LINE) lane *lanes;
    void *lanes_block; /* what lanes was cut from */
    int n;
    long spin_ns; /* how long an idle pool thread spins */
    bool membarrier; /* sleeping pool threads pay for the barriers (see top) */
    /* The emulator thread's: */
    seg *free_segs;
    uint64_t idle_since; /* edrv__async_trim_ms: when no job was pending, 0 if unknown */
    long idle_id;        /* next_id then */
    fn_pair *fns[FN_CHUNKS];
    uint32_t nfns, last_fn;
    long next_id;        /* last id handed out */
    unsigned id_lane;    /* the lane of the next id: (next_id + 1) % n */
    size_t pending;
    /* Statistics: written by the emulator thread alone, read by any. */
    _Atomic uint64_t submitted, ready, freed, cancelled;
    _Atomic uint64_t started; /* after a stop: what the lanes' counters came to */
} pool;

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

/* A full memory barrier on every thread of the process (see the top). */
static void barrier_everywhere(void) {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) < 0)
        abort(); /* registered in edrv__async_start: cannot fail */
}

/* A counter with one writer (the statistics, a lane's `started`). */
static inline void bump(_Atomic uint64_t *c) {
    EDRV_ONE_WRITER_ADD(c, 1);
}

static inline const fn_pair *fn_of(uint32_t fn) {
    return &pool.fns[fn / FN_CHUNK][fn % FN_CHUNK];
}

/* ---- pool threads ---------------------------------------------------------- */

/* An idle pool thread that spins on the core where the emulator thread
 * spins moves to another core it may run on, and then may run anywhere it
 * could before. Two spinning threads on one core hand it to each other on
 * every yield, and a round trip then waits for two context switches, 1.3 us
 * each on the development machine: its p50 was 3.1 us instead of 1.4 in
 * about one run in three there. In practice the scheduler leaves the thread
 * where it went (moving it back would not even out the load): a few moves a
 * second of round trips. A thread whose mask allows no other core stays;
 * either way it looks again only after MOVE_PAUSE_NS. */
#define MOVE_PAUSE_NS 1000000
static void leave_emulator_core(lane *l, int64_t now) {
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu != atomic_load_explicit(&edrv__emulator_cpu, memory_order_relaxed) ||
        now < l->move_after)
        return;
    l->move_after = now + MOVE_PAUSE_NS;
    cpu_set_t mask, away;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0)
        return;
    away = mask;
    CPU_CLR(cpu, &away);
    if (CPU_COUNT(&away) > 0 && sched_setaffinity(0, sizeof away, &away) == 0)
        sched_setaffinity(0, sizeof mask, &mask);
}

/* Spins until the lane has a job past `at` or spin_ns pass; whether it has.
 * The spin yields the processor on every round: where threads outnumber
 * cores, a spinning thread gives its core to one with work, and comes back
 * within a scheduler round when there is none. */
static bool spin_for_jobs(lane *l, uint64_t at) {
    if (pool.spin_ns <= 0)
        return false;
    int64_t now = edrv__now_ns(), until = now + pool.spin_ns;
    do {
        if (atomic_load_explicit(&l->pushed, memory_order_relaxed) != at ||
            atomic_load_explicit(&l->quit, memory_order_relaxed))
            return true;
        leave_emulator_core(l, now);
        sched_yield();
    } while ((now = edrv__now_ns()) < until);
    return false;
}

/* A sleep of at least ns (plus the timer's own delay: 15 us on the
 * development machine, a virtual one). A sleeping thread is off its core: a
 * yielding one, as this was, still took the core back from the emulator
 * thread every time, where the two shared one (bench/README.md). */
static void sleep_ns(long ns) {
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
        ;
}

static void *lane_main(void *arg) {
    lane *l = arg;
    seg *s = NULL; /* the segment of job `at` */
    uint64_t at = 0;
    bool streaming = false; /* jobs came right after the lane ran empty */
    edrv_mem_counters counters; /* for the jobs' driver_alloc and driver_free */
    edrv__thread_signals();
    edrv__mem_thread_begin(&counters);
    prctl(PR_SET_TIMERSLACK, (unsigned long)STREAM_SLACK_NS); /* for sleep_ns */
    for (;;) {
        uint64_t pushed = atomic_load_explicit(&l->pushed, memory_order_acquire);
        if (pushed == at) {
            if (atomic_load_explicit(&l->quit, memory_order_acquire)) {
                edrv__mem_thread_end(&counters);
                return NULL;
            }
            if (streaming) {
                /* Chasing a burst job by job: every look at `pushed` and at
                 * a new job takes its cache line from the emulator thread,
                 * which then waits to write the next one, and where the two
                 * share a core, every look takes the core. Look again only
                 * after a sleep, at a batch; a job that comes alone (a
                 * round trip) does not start this. */
                sleep_ns(STREAM_PAUSE_NS);
                streaming = atomic_load_explicit(&l->pushed, memory_order_relaxed) != at;
                continue;
            }
            int64_t idle_from = edrv__now_ns();
            if (spin_for_jobs(l, at)) {
                streaming = edrv__now_ns() - idle_from < STREAM_GAP_NS;
                continue;
            }
            atomic_store(&l->sleeping, 1);
            if (pool.membarrier)
                barrier_everywhere();
            if (atomic_load(&l->pushed) != at || atomic_load(&l->quit)) {
                atomic_store(&l->sleeping, 0);
                continue;
            }
            futex_wait(&l->sleeping, 1);
            atomic_store(&l->sleeping, 0); /* woken, or a spurious return */
            continue;
        }
        do {
            size_t k = at % SEG_JOBS;
            if (k == 0)
                s = at ? s->next : l->first;
            if (k + PREFETCH_AHEAD < SEG_JOBS && at + PREFETCH_AHEAD < pushed)
                __builtin_prefetch(s->jobs[k + PREFETCH_AHEAD].data);
            job *j = &s->jobs[k];
            uint32_t queued = JOB_QUEUED;
            if (atomic_compare_exchange_strong(&j->state, &queued, JOB_RUNNING)) {
                bump(&l->started); /* this thread's alone */
                fn_of(j->fn)->invoke(j->data);
            } /* else cancelled: skipped */
            at++;
            atomic_store_explicit(&l->done, at, memory_order_release);
            atomic_thread_fence(memory_order_seq_cst); /* `done`, then the parked flag */
            edrv__wake(); /* only if the emulator thread is parked */
        } while (at < pushed);
    }
}

int edrv__async_start(int threads, long spin_ns) {
    atomic_store(&pool.submitted, 0);
    atomic_store(&pool.ready, 0);
    atomic_store(&pool.freed, 0);
    atomic_store(&pool.cancelled, 0);
    atomic_store(&pool.started, 0);
    pool.spin_ns = spin_ns;
    pool.id_lane = (unsigned)((pool.next_id == LONG_MAX ? 1 : pool.next_id + 1) % threads);
    /* EDRV_TESTING_MEMBARRIER=off: the other way, for its tests. */
    const char *mb = getenv("EDRV_TESTING_MEMBARRIER");
    long cmds = mb && strcmp(mb, "off") == 0 ? 0 : syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    pool.membarrier = cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
                      syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    pool.lanes_block = edrv__alloc(EDRV_MEM_SYSTEM, (size_t)threads * sizeof(lane) + CACHE_LINE);
    if (!pool.lanes_block)
        return edrv__fail(EDRV_ENOMEM, "out of memory for %d pool threads", threads);
    uintptr_t at = ((uintptr_t)pool.lanes_block + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    memset((void *)at, 0, (size_t)threads * sizeof(lane));
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

static seg *seg_new(void) {
    void *block = edrv__alloc(EDRV_MEM_ASYNC, sizeof(seg) + CACHE_LINE);
    if (!block)
        return NULL;
    seg *s = (seg *)(((uintptr_t)block + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1));
    s->block = block;
    return s;
}

static void segs_free(seg *s) {
    while (s) {
        seg *next = s->next;
        edrv__free(s->block);
        s = next;
    }
}

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
    /* Every job has ended, but cancelled ones may still sit in their slots:
     * the segments go, with whatever they hold. */
    for (int i = 0; i < n; i++) {
        lane *l = &pool.lanes[i];
        segs_free(l->end_seg); /* linked through to tail_seg */
        edrv__free(l->segs);
    }
    segs_free(pool.free_segs);
    pool.free_segs = NULL;
    edrv__free(pool.lanes_block);
    for (uint32_t c = 0; c < FN_CHUNKS && pool.fns[c]; c++) {
        edrv__free(pool.fns[c]);
        pool.fns[c] = NULL;
    }
    pool.nfns = pool.last_fn = 0;
    pool.idle_since = 0;
    pool.lanes_block = NULL;
    pool.lanes = NULL;
}

/* ---- the emulator thread: segments, functions, cancel -------------------------- */

int edrv__async_trim_ms(uint64_t now) {
    EDRV_ASSERT_EMULATOR();
    if (!pool.free_segs || pool.pending) {
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
    segs_free(pool.free_segs);
    pool.free_segs = NULL;
    pool.idle_since = 0;
    return -1;
}

/* A lane's segment table: segment number i (from the lane's first live one). */
static seg *lane_seg(const lane *l, size_t i) {
    return l->segs[(l->segs_at + i) & (l->segs_cap - 1)];
}

/* Appends a new segment to lane l; -1 when out of memory. */
static int lane_grow(lane *l) {
    if (l->nsegs == l->segs_cap) {
        size_t cap = l->segs_cap ? l->segs_cap * 2 : 8;
        seg **t = edrv__alloc(EDRV_MEM_ASYNC, cap * sizeof *t);
        if (!t)
            return -1;
        for (size_t i = 0; i < l->nsegs; i++)
            t[i] = lane_seg(l, i);
        edrv__free(l->segs);
        l->segs = t;
        l->segs_cap = cap;
        l->segs_at = 0;
    }
    seg *s = pool.free_segs;
    if (s) {
        pool.free_segs = s->next;
    } else if (!(s = seg_new())) {
        return -1;
    }
    s->next = NULL;
    if (l->tail_seg) {
        l->tail_seg->next = s;
    } else { /* the lane's first job */
        l->first = l->end_seg = s;
        l->segs_base = 0;
    }
    l->tail_seg = s;
    l->segs[(l->segs_at + l->nsegs++) & (l->segs_cap - 1)] = s;
    return 0;
}

/* Lane l's oldest segment has ended all its jobs and its thread has moved
 * on: onto the free list. */
static void lane_shrink(lane *l) {
    seg *s = l->end_seg;
    l->end_seg = s->next;
    l->segs_at = (l->segs_at + 1) & (l->segs_cap - 1);
    l->nsegs--;
    l->segs_base += SEG_JOBS;
    s->next = pool.free_segs;
    pool.free_segs = s;
}

/* The queued or running job with this id, found by a binary search along
 * each lane's jobs not yet ended (ids grow along a lane, until they wrap
 * after LONG_MAX jobs: a cancel then may miss, and the job runs); NULL if
 * none. */
static job *job_find(long id) {
    for (int i = 0; i < pool.n; i++) {
        lane *l = &pool.lanes[i];
        uint64_t lo = l->ended, hi = l->tail; /* the jobs in [lo, hi) */
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            uint64_t off = mid - l->segs_base;
            job *j = &lane_seg(l, off / SEG_JOBS)->jobs[off % SEG_JOBS];
            if (j->id == id)
                return j;
            if (j->id < id)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    return NULL;
}

/* The index of the pair (invoke, free), added if new; UINT32_MAX when the
 * table is full or out of memory. Drivers use a handful of pairs: the last
 * one found is tried first, then the table from the start. A slot that a
 * driver's unload freed (edrv__async_forget_code) is taken again. */
static uint32_t fn_index(void (*invoke)(void *), void (*free_fn)(void *)) {
    if (pool.nfns) {
        const fn_pair *f = fn_of(pool.last_fn);
        if (f->invoke == invoke && f->free == free_fn)
            return pool.last_fn;
    }
    uint32_t hole = UINT32_MAX;
    for (uint32_t i = 0; i < pool.nfns; i++) {
        const fn_pair *f = fn_of(i);
        if (f->invoke == invoke && f->free == free_fn)
            return pool.last_fn = i;
        if (!f->invoke && hole == UINT32_MAX)
            hole = i;
    }
    if (hole != UINT32_MAX) {
        pool.fns[hole / FN_CHUNK][hole % FN_CHUNK] = (fn_pair){invoke, free_fn};
        return pool.last_fn = hole;
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

void edrv__async_forget_code(bool (*in_code)(const void *fn, void *arg), void *arg) {
    EDRV_ASSERT_EMULATOR();
    /* The driver has no job left (it stays loaded while it has one), so no
     * job names these slots: they are free for the next pairs. Without
     * this, a driver loaded again at another address would add its pairs
     * anew each time, until the table is full and driver_async fails. */
    for (uint32_t i = 0; i < pool.nfns; i++) {
        fn_pair *f = &pool.fns[i / FN_CHUNK][i % FN_CHUNK];
        if (f->invoke && (in_code((const void *)f->invoke, arg) ||
                          (f->free && in_code((const void *)f->free, arg))))
            *f = (fn_pair){NULL, NULL};
    }
}

/* Ends a job that will not run again: its port and driver let go of it. */
static void release(edrv_port_t *pt) {
    pool.pending--;
    edrv__driver_job_done(pt->drv);
    edrv__port_unref(pt);
}

bool edrv__async_has_done(void) {
    for (int i = 0; i < pool.n; i++) {
        lane *l = &pool.lanes[i];
        if (atomic_load_explicit(&l->done, memory_order_relaxed) != l->ended)
            return true;
    }
    return false;
}

/* Ends one finished (or cancelled) job. A job ends under its port's unit,
 * which ready_async needs, and the port's end too (a closing port ends with
 * its last job). The drain keeps the unit of the last job's port (*held)
 * for the next job of the same port, so that a stream of one port's jobs
 * takes the lock once; it lets one unit go before it takes another, never
 * waiting for a unit while it holds one. */
static void end_job(job *j, edrv_port_t **held) {
    if (atomic_load_explicit(&j->state, memory_order_relaxed) == JOB_CANCELLED)
        return; /* ended when it was cancelled */
    /* Counted before the callback runs, so that a host that saw the
     * callback's message also sees the count. */
    edrv_port_t *pt = j->port;
    if (*held != pt) {
        if (*held)
            edrv__port_unlock(*held);
        *held = pt;
        edrv__port_lock(pt);
        edrv__unit_settle(pt->unit); /* its calls come here too (loop.c) */
    }
    if (edrv__port_ready_async_ok(pt)) {
        bump(&pool.ready);
        edrv__port_ready_async(pt, j->data);
    } else {
        bump(&pool.freed);
        const fn_pair *f = fn_of(j->fn);
        if (f->free)
            f->free(j->data);
    }
    release(pt);
}

size_t edrv__async_drain(void) {
    EDRV_ASSERT_EMULATOR();
    /* Each lane's finished jobs in the order they ran, DRAIN_TURN at a time
     * from each lane in turn: across lanes, jobs end close to the order they
     * were submitted in, so a driver frees its job data close to the order it
     * allocated it, and one busy lane does not hold back the others. */
    size_t ended = 0;
    edrv_port_t *held = NULL; /* end_job */
    for (bool more = true; more;) {
        more = false;
        for (int i = 0; i < pool.n; i++) {
            lane *l = &pool.lanes[i];
            /* `done` is read again only once the jobs it showed have ended:
             * its line is the pool thread's, written after every job. */
            if (l->ended == l->seen_done)
                l->seen_done = atomic_load_explicit(&l->done, memory_order_acquire);
            uint64_t done = l->seen_done;
            uint64_t stop = done - l->ended > DRAIN_TURN ? l->ended + DRAIN_TURN : done;
            for (uint64_t p = l->ended; p < stop; p++) {
                size_t k = p % SEG_JOBS;
                if (k == 0 && p) /* the thread is past the old segment */
                    lane_shrink(l);
                if (k + PREFETCH_AHEAD < SEG_JOBS && p + PREFETCH_AHEAD < done)
                    __builtin_prefetch(l->end_seg->jobs[k + PREFETCH_AHEAD].data);
                job *j = &l->end_seg->jobs[k];
                if (atomic_load_explicit(&j->state, memory_order_relaxed) != JOB_CANCELLED)
                    ended++;
                l->ended = p + 1; /* first: a callback may cancel, which searches */
                end_job(j, &held);
                more = true;
            }
        }
    }
    if (held)
        edrv__port_unlock(held);
    return ended;
}

size_t edrv__async_pending(void) {
    return pool.pending;
}

size_t edrv__async_queued(void) {
    size_t n = 0;
    for (int i = 0; i < pool.n; i++) {
        lane *l = &pool.lanes[i];
        n += l->tail - atomic_load_explicit(&l->done, memory_order_relaxed);
    }
    return n;
}

EDRV_API long driver_async(ErlDrvPort port, unsigned int *key, void (*async_invoke)(void *),
                           void *async_data, void (*async_free)(void *)) {
    if (!edrv__emulator_enter()) {
        edrv__warn("driver_async called outside the emulator thread");
        return -1;
    }
    if (!port || !async_invoke || !edrv__port_accepts_jobs(port) || !pool.n)
        return -1;
    uint32_t fn = fn_index(async_invoke, async_free);
    if (fn == UINT32_MAX)
        return -1;
    /* Ids are positive and never 0, from one counter, as in ERTS. */
    long id = pool.next_id == LONG_MAX ? 1 : pool.next_id + 1;
    unsigned int qix;
    if (key) {
        qix = *key % (unsigned)pool.n;
        *key = qix; /* ERTS writes the lane back */
    } else {
        qix = pool.id_lane; /* id % N, kept without a division */
    }
    lane *l = &pool.lanes[qix];
    uint64_t p = l->tail;
    size_t k = p % SEG_JOBS;
    if (k == 0 && lane_grow(l) < 0)
        return -1;
    pool.next_id = id;
    pool.id_lane = id == LONG_MAX ? 1 % (unsigned)pool.n
                   : pool.id_lane + 1 == (unsigned)pool.n ? 0
                                                          : pool.id_lane + 1;
    job *j = &l->tail_seg->jobs[k];
    /* The slots ahead were last written long ago, or by another lane: ask
     * for their lines now, not when the jobs come. */
    if (k + PREFETCH_AHEAD < SEG_JOBS)
        __builtin_prefetch(&l->tail_seg->jobs[k + PREFETCH_AHEAD], 1);
    j->data = async_data;
    j->port = port;
    j->id = id;
    j->fn = fn;
    atomic_store_explicit(&j->state, JOB_QUEUED, memory_order_relaxed);
    edrv__port_ref(port);
    edrv__driver_job_added(port->drv);
    pool.pending++;
    bump(&pool.submitted);
    l->tail = p + 1;
    if (pool.membarrier) {
        atomic_store_explicit(&l->pushed, p + 1, memory_order_release);
        atomic_signal_fence(memory_order_seq_cst); /* the processor's barrier: membarrier */
    } else {
        atomic_store_explicit(&l->pushed, p + 1, memory_order_seq_cst);
    }
    if (atomic_load_explicit(&l->sleeping, memory_order_relaxed) &&
        atomic_exchange(&l->sleeping, 0))
        futex_wake(&l->sleeping);
    return id;
}

EDRV_API int driver_async_cancel(long id) {
    if (!edrv__emulator_enter()) {
        edrv__warn("driver_async_cancel called outside the emulator thread");
        return 0;
    }
    job *j = id > 0 ? job_find(id) : NULL;
    if (!j)
        return 0; /* ended, or never was */
    uint32_t queued = JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &queued, JOB_CANCELLED))
        return 0; /* running, done and waiting to be ended, or cancelled */
    /* The job stays in its slot, which its thread skips; its fields are the
     * emulator thread's to read. */
    const fn_pair *f = fn_of(j->fn);
    if (f->free)
        f->free(j->data);
    bump(&pool.cancelled);
    /* Its port lets go of it under the port's unit: the caller's own, or
     * (a job of another unit's port) taken now. */
    edrv_port_t *pt = j->port;
    edrv__port_lock(pt);
    release(pt);
    edrv__port_unlock(pt);
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
    st->sleeping = 0;
    pthread_mutex_lock(&lanes_lock);
    for (int i = 0; i < pool.n; i++) {
        st->started += atomic_load(&pool.lanes[i].started);
        st->sleeping += atomic_load_explicit(&pool.lanes[i].sleeping, memory_order_relaxed) != 0;
    }
    pthread_mutex_unlock(&lanes_lock);
    st->ready_async = atomic_load(&pool.ready);
    st->freed = atomic_load(&pool.freed);
    st->cancelled = atomic_load(&pool.cancelled);
}
