/*
 * loop.c: the runtime's life, the emulator lock, units, the emulator thread
 * and the other schedulers.
 *
 * A port's callbacks run under its unit (below, "units"): its driver's lock,
 * or its own for a driver with ERL_DRV_FLAG_USE_PORT_LOCKING, as ERTS's
 * driver-level and port-level locking. What ports share runs under one more
 * lock, the emulator lock (below): its holder acts as the emulator. A host
 * thread's edrv.h call runs in the calling thread when it can: a port's call
 * (command, control, call, close, info) under the port's unit alone, when
 * nothing is queued for the port (port.c's operations, with `try`), the
 * others under the emulator lock. Otherwise the call becomes a request in a
 * FIFO queue: a port's request in its unit's scheduler's (below,
 * "schedulers"), any other in the emulator thread's, which is woken through
 * an eventfd registered in its epoll set (timers and driver_select events
 * share the same epoll set). A synchronous call answered by another thread
 * waits on a semaphore in its request, which lives on the caller's stack; an
 * asynchronous one (port_command) is allocated and freed by whoever runs it.
 *
 * The queue lock is held only to link or unlink requests, never while one runs.
 * Lock order: unit -> the emulator lock -> the queue lock (rt.lock).
 *
 * Idle: with nothing to do, the emulator thread spins for a while (spin_us)
 * watching the request queue and the pool's lanes (a lane whose `done` cursor
 * is ahead of the jobs ended has finished jobs: edrv__async_has_done), then
 * parks: it sets `parked`, looks at both once more, and sleeps in epoll_wait. Producers
 * (enqueue, finished jobs) publish their work, then write the eventfd only if
 * they find it parked, so a busy emulator thread costs them no system call.
 * Each side writes before it reads (sequentially consistent), so work is never
 * left waiting for a thread that sleeps.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

typedef enum {
    R_LOAD, R_REGISTER, R_UNLOAD, R_OPEN, R_COMMAND, R_CONTROL, R_CALL, R_CLOSE, R_INFO,
    R_PROC_EXIT, R_STOP, R_FENCE, R_TIMEOUT
} req_type;

#define DETAIL_MAX 256

typedef struct request {
    struct request *next;
    req_type type;
    uint64_t pid;      /* the caller, or R_PROC_EXIT's process */
    edrv_port port;
    edrv_port_t *pt;   /* a port's request: the port, held until it has run */
    _Atomic long *proc_queued; /* R_COMMAND: the sender's count (edrv_proc.queued) */
    const char *s1, *s2;
    unsigned u;
    uint64_t gen;      /* R_TIMEOUT: the timer's generation when it was due */
    char *data;
    size_t len;
    ErlDrvBinary *bin; /* R_COMMAND: the data, owned by the request */
    bool whole;        /* R_COMMAND: one binary (port_command), not a vector */
    bool admitted;     /* R_COMMAND: counted in the port's message queue */
    int npieces;       /* R_COMMAND: the vector's pieces, in pieces[] */
    ErlDrvEntry *entry;
    edrv_reply *reply;
    edrv_port *out_port;
    edrv_port_status *status;
    int result;
    sem_t *done; /* NULL: asynchronous, freed by the emulator thread */
    char *detail; /* a waiting caller's copy of a failure's text, or NULL */
    size_t pieces[]; /* R_COMMAND: the length of each piece of the vector */
} request;

enum { ST_STOPPED, ST_RUNNING };

static struct {
    pthread_mutex_t lock; /* guards queue, accepting, and start/stop */
    request *head, *tail;
    bool accepting;
    bool quit; /* emulator thread only */
    int epfd, wakefd;
    pthread_t thread;
    int async_threads;
    long spin_ns; /* the emulator thread's spin before it parks */
    _Atomic bool requests; /* the queue may hold requests */
    _Atomic long inflight; /* requests queued and not yet run to their end */
    _Atomic bool parked;   /* the emulator thread sleeps, or is about to */
    _Atomic bool napping;  /* it naps through a backlog: only requests wake it */
    _Atomic bool timers_changed; /* a host thread set a timer (edrv__timers_changed) */
    long nap_ns;           /* the next backlog nap (wait_events) */
    /* Set by edrv_start, then the emulator thread's (nap): */
    bool pwait2;     /* naps use epoll_pwait2, not yet found missing */
    bool pwait2_off; /* EDRV_TESTING_EPOLL_PWAIT2=off: act as if it were missing */
} rt = {.lock = PTHREAD_MUTEX_INITIALIZER, .epfd = -1, .wakefd = -1};

static _Atomic int state = ST_STOPPED;

/* ---- the emulator lock -------------------------------------------------------
 * What ports share runs under one lock, whichever thread runs it: the
 * emulator thread, for queued requests, finished jobs, timers and fd events;
 * a host thread, for its own call, when it finds the lock free and no request
 * in flight (immediate execution, as ERTS's try_imm_drv_call runs a port's
 * callback in the calling scheduler); or a fast path's thread, once its
 * callback asks for shared state (edrv__emulator_enter). `on_emulator` says
 * that the calling thread holds it, and so acts as the emulator: every
 * "emulator thread only" rule of libedrv means "holds the emulator lock".
 *
 * Order: a host's call under this lock runs in its thread only when no
 * request of the emulator thread's queue is in flight (queued, or running:
 * `inflight` counts one from its enqueue until it has run), so it never
 * overtakes a call it queued there before; a port's call looks at its
 * port's `queued` instead (schedulers).
 *
 * Fairness: the emulator thread announces that it waits for the lock
 * (`wanted`); host threads then queue their calls instead of taking it, so
 * that a host calling in a loop cannot keep finished jobs, timers and fd
 * events waiting. */
static struct {
    pthread_mutex_t lock;
    _Atomic bool wanted;    /* the emulator thread waits for the lock */
    _Atomic bool immediate; /* hosts may take it (running, and not turned off) */
} emu = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Initial-exec: driver_async asks on every call. */
static _Thread_local bool on_emulator __attribute__((tls_model("initial-exec")));
/* The emulator thread itself (it needs no wake-up for what it changes). */
static _Thread_local bool is_loop_thread __attribute__((tls_model("initial-exec")));

bool edrv__on_emulator_thread(void) {
    return on_emulator;
}

/* The emulator thread takes the lock, before any host that tries it now. */
static void emu_lock(void) {
    atomic_store(&emu.wanted, true);
    pthread_mutex_lock(&emu.lock);
    atomic_store(&emu.wanted, false);
    on_emulator = true;
}

static void emu_unlock(void) {
    on_emulator = false;
    pthread_mutex_unlock(&emu.lock);
}

/* Driver code must not die of SIGPIPE: ERTS ignores it, and edrv blocks it
 * in the threads it starts. A host thread runs driver callbacks itself only
 * where SIGPIPE cannot kill it (ignored, handled, or blocked in the thread);
 * otherwise its calls go through the emulator thread. Looked at on the
 * thread's first call (edrv.h says so). */
static _Thread_local signed char sigpipe_safe __attribute__((tls_model("initial-exec")));
/* sigpipe_safe: 0 not looked at yet, 1 safe, -1 not */

static bool thread_sigpipe_safe(void) {
    if (!sigpipe_safe) {
        sigset_t mask;
        struct sigaction sa;
        bool blocked = pthread_sigmask(SIG_SETMASK, NULL, &mask) == 0 &&
                       sigismember(&mask, SIGPIPE) == 1;
        bool caught = sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL;
        sigpipe_safe = blocked || caught ? 1 : -1;
    }
    return sigpipe_safe > 0;
}

/* A host thread takes the lock if it is free, no request waits or runs, and
 * the emulator thread does not want it; never waits. */
static bool emu_trylock(void) {
    if (!thread_sigpipe_safe() ||
        !atomic_load_explicit(&emu.immediate, memory_order_relaxed) ||
        atomic_load_explicit(&emu.wanted, memory_order_relaxed) ||
        atomic_load_explicit(&rt.inflight, memory_order_relaxed) ||
        pthread_mutex_trylock(&emu.lock) != 0)
        return false;
    /* Under the lock: a request counts in `inflight` from its enqueue until
     * it has run, so 0 is exact: none is queued, and none runs (the
     * emulator thread lets the lock go while it waits for a unit). */
    if (atomic_load(&rt.inflight) || !atomic_load(&emu.immediate)) {
        pthread_mutex_unlock(&emu.lock);
        return false;
    }
    on_emulator = true;
    return true;
}

/* ---- units: the locks that serialize ports' callbacks -------------------------
 * A port's callbacks run one at a time under its unit's lock: its driver's
 * unit (all the driver's ports, as ERTS's driver-level locking), or its own
 * (ERL_DRV_FLAG_USE_PORT_LOCKING). Whoever changes a port's state or calls
 * its driver holds its unit. The emulator lock guards what ports share (the
 * table's indexes, timers, selected fds, monitors, drivers, the pool's
 * lanes): it is held for everything but the fast paths, where a host thread
 * holds only the port's unit and takes the emulator lock when the driver asks
 * for shared state (edrv__emulator_enter), so that ports of different units
 * run their control, call and command callbacks side by side.
 *
 * Lock order: unit -> emulator lock. A holder of the emulator lock that wants
 * a unit held by another thread lets the emulator lock go while it waits
 * (edrv__unit_enter), and then re-checks what it found; so every blocking
 * wait for a unit is made without the emulator lock, and only units can form
 * a cycle: a callback whose synchronous edrv.h call targets a port of
 * another unit waits for that unit (edrv.h says so). A unit is recursive for
 * the thread that holds it. */
struct edrv_unit {
    pthread_mutex_t mtx;
    _Atomic uintptr_t owner; /* the holder's mark (thread_mark), 0 when free */
    int depth;               /* the holder's nesting */
    _Atomic int waiters;     /* threads blocked for it: fast paths stand back */
    _Atomic int refs;
    unsigned sched; /* its home scheduler, modulo their number (schedulers) */
    _Atomic int last; /* where its ports' calls go (edrv__unit_settle), or -1: home */
    /* Units are allocated one after another: this keeps the next unit's
     * words off the cache line of this one's, which its holder writes on
     * every call (two threads on two ports would pass it between cores). */
    char pad[64];
};

/* Units this thread holds, and whether it took the emulator lock because a
 * callback it runs without it asked for shared state. */
static _Thread_local int units_held __attribute__((tls_model("initial-exec")));
static _Thread_local bool emu_taken __attribute__((tls_model("initial-exec")));
static _Thread_local char thread_mark __attribute__((tls_model("initial-exec")));

/* The scheduler this thread is (0: the emulator thread), or -1. */
static _Thread_local int sched_index __attribute__((tls_model("initial-exec"))) = -1;

static inline uintptr_t self_mark(void) {
    return (uintptr_t)&thread_mark;
}

edrv_unit *edrv__unit_new(void) {
    static _Atomic unsigned next_sched;
    edrv_unit *u = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *u);
    if (u) {
        pthread_mutex_init(&u->mtx, NULL);
        atomic_init(&u->refs, 1);
        atomic_init(&u->last, -1);
        u->sched = atomic_fetch_add_explicit(&next_sched, 1, memory_order_relaxed);
    }
    return u;
}

void edrv__unit_ref(edrv_unit *u) {
    atomic_fetch_add_explicit(&u->refs, 1, memory_order_relaxed);
}

void edrv__unit_unref(edrv_unit *u) {
    if (u && atomic_fetch_sub_explicit(&u->refs, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_destroy(&u->mtx);
        edrv__free(u);
    }
}

bool edrv__unit_held(const edrv_unit *u) {
    return atomic_load_explicit(&u->owner, memory_order_relaxed) == self_mark();
}

static void unit_taken(edrv_unit *u) {
    atomic_store_explicit(&u->owner, self_mark(), memory_order_relaxed);
    u->depth = 1;
    units_held++;
}

static void unit_block(edrv_unit *u) {
    atomic_fetch_add(&u->waiters, 1);
    pthread_mutex_lock(&u->mtx);
    atomic_fetch_sub(&u->waiters, 1);
    unit_taken(u);
}

static void emu_relock(bool loop) {
    if (loop) {
        emu_lock();
    } else {
        pthread_mutex_lock(&emu.lock);
        on_emulator = true;
    }
}

bool edrv__unit_enter(edrv_unit *u) {
    if (edrv__unit_held(u)) {
        u->depth++;
        return false;
    }
    if (pthread_mutex_trylock(&u->mtx) == 0) {
        unit_taken(u);
        return false;
    }
    if (!on_emulator) {
        unit_block(u);
        return false;
    }
    emu_unlock();
    unit_block(u);
    emu_relock(is_loop_thread);
    return true;
}

void edrv__unit_settle(edrv_unit *u) {
    EDRV_ASSERT_OWNER(edrv__unit_held(u), "the unit's holder only");
    if (sched_index >= 0 && atomic_load_explicit(&u->last, memory_order_relaxed) != sched_index)
        atomic_store_explicit(&u->last, sched_index, memory_order_relaxed);
}

bool edrv__unit_try(edrv_unit *u) {
    if (atomic_load_explicit(&u->waiters, memory_order_relaxed) ||
        pthread_mutex_trylock(&u->mtx) != 0)
        return false;
    unit_taken(u);
    return true;
}

void edrv__unit_exit(edrv_unit *u) {
    EDRV_ASSERT_OWNER(edrv__unit_held(u), "the unit's holder only");
    if (--u->depth > 0)
        return;
    atomic_store_explicit(&u->owner, 0, memory_order_relaxed);
    pthread_mutex_unlock(&u->mtx);
    if (--units_held == 0 && emu_taken) {
        emu_taken = false;
        emu_unlock();
    }
}

bool edrv__emulator_enter(void) {
    if (on_emulator)
        return true;
    if (!units_held)
        return false;
    /* A callback run on a fast path asks for shared state: this thread
     * takes the emulator lock (unit -> emulator lock is the order) and
     * keeps it until it lets its last unit go. */
    pthread_mutex_lock(&emu.lock);
    on_emulator = true;
    emu_taken = true;
    return true;
}

bool edrv__in_callback_thread(void) {
    return on_emulator || units_held;
}

bool edrv__running(void) {
    return atomic_load(&state) == ST_RUNNING;
}

int edrv__async_threads(void) {
    return rt.async_threads;
}

int edrv__epoll_fd(void) {
    return rt.epfd;
}

/* More jobs than this per pool thread waiting: a backlog (wait_events). */
#define BACKLOG_PER_THREAD 16
/* A backlog nap: at least and at most this long (wait_events). */
#define BACKLOG_NAP_MIN_NS 100000
#define BACKLOG_NAP_MAX_NS 1000000
/* An idle thread's spin before it sleeps, when edrv_options.spin_us is 0. */
#define DEFAULT_SPIN_US 50

static bool work_waiting(void) {
    return atomic_load(&rt.requests) || edrv__async_has_done() ||
           atomic_load(&rt.timers_changed);
}

_Atomic int edrv__emulator_cpu = -1;

/* Spins until a request or a finished job comes, or spin_ns pass; whether
 * one came. While it spins, edrv__emulator_cpu says where, and it still
 * does while the thread works on what came; when the spin ends without
 * work (the thread sleeps next), it says -1. */
static bool spin_for_work(void) {
    if (rt.spin_ns <= 0)
        return false;
    int64_t until = edrv__now_ns() + rt.spin_ns;
    for (;;) {
        if (atomic_load_explicit(&rt.requests, memory_order_relaxed) ||
            edrv__async_has_done() ||
            atomic_load_explicit(&rt.timers_changed, memory_order_relaxed))
            return true;
        int cpu = sched_getcpu();
        if (atomic_load_explicit(&edrv__emulator_cpu, memory_order_relaxed) != cpu)
            atomic_store_explicit(&edrv__emulator_cpu, cpu, memory_order_relaxed);
        sched_yield(); /* as the pool threads do (async.c) */
        if (edrv__now_ns() >= until) {
            atomic_store_explicit(&edrv__emulator_cpu, -1, memory_order_relaxed);
            return false;
        }
    }
}

static void handle_events(const struct epoll_event *ev, int n);
static void wake_write(void);

/* Backlog naps since edrv_start, for the tests (edrv__testing_naps): how many,
 * how many found epoll_pwait2 missing, how many failed. Written by the
 * emulator thread, read by any. */
static struct {
    _Atomic uint64_t naps, enosys, failed;
} nap_count;

static void count(_Atomic uint64_t *c) {
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static int pwait2(struct epoll_event *ev, int max, const struct timespec *t) {
    if (rt.pwait2_off) {
        errno = ENOSYS;
        return -1;
    }
    return epoll_pwait2(rt.epfd, ev, max, t, NULL);
}

/* One backlog nap of ns nanoseconds in the epoll set. epoll_pwait2 takes the
 * time in nanoseconds, but Linux has it only since 5.11, and valgrind (3.19)
 * does not know it: there it fails with ENOSYS, and the nap falls back to
 * epoll_wait, in whole milliseconds, rounded up: a nap of 0 would return at
 * once and the thread would spin through the backlog. A kernel does not gain
 * the call while the process runs, so the first ENOSYS switches for the rest
 * of the run, without a word: naps are then a little longer (the next nap's
 * length, computed from the asked one, stays within its bounds), nothing
 * else changes. */
static int nap(struct epoll_event *ev, int max, long ns) {
    count(&nap_count.naps);
    int n = -1;
    if (rt.pwait2) {
        struct timespec t = {ns / 1000000000, ns % 1000000000};
        n = pwait2(ev, max, &t);
        if (n < 0 && errno == ENOSYS) {
            rt.pwait2 = false;
            count(&nap_count.enosys);
        }
    }
    if (!rt.pwait2)
        n = epoll_wait(rt.epfd, ev, max, (int)((ns + 999999) / 1000000));
    if (n < 0 && errno != EINTR)
        count(&nap_count.failed);
    return n;
}

/* For tests only: tests/test_nap.c links libedrv.a and declares it itself. */
void edrv__testing_naps(uint64_t *naps, uint64_t *enosys, uint64_t *failed);
void edrv__testing_naps(uint64_t *naps, uint64_t *enosys, uint64_t *failed) {
    *naps = atomic_load(&nap_count.naps);
    *enosys = atomic_load(&nap_count.enosys);
    *failed = atomic_load(&nap_count.failed);
}

/* Waits for events: at most timeout_ms (-1: no limit; 0: only looks), and
 * only as long as no request and no finished job is waiting. Handles the fd
 * events it gets (driver_select) and drains the wake-up eventfd. Called and
 * returns with the emulator lock held; lets it go while it waits, so that
 * host threads may run their calls meanwhile. */
static void wait_events(int timeout_ms) {
    struct epoll_event ev[32];
    int n;
    static bool idle_nap; /* the last nap found nothing to do */
    if (timeout_ms != 0 && !idle_nap &&
        edrv__async_pending() > BACKLOG_PER_THREAD * (size_t)rt.async_threads) {
        /* A backlog: jobs wait behind others on the lanes, and finished ones
         * come in a stream. Collect them every nap_ns rather than take a
         * wake-up for each, or spin on a core the pool needs. A nap lasts
         * half as long as the queued jobs still need at the pace of the
         * last one: long naps through a long backlog, and none that
         * outlasts the work by much (a driver that submits from
         * ready_async must not find its pool idle). A request wakes the
         * thread at once (`napping`); finished jobs do not. A nap that finds
         * nothing (jobs that block) ends the napping until the next normal
         * wait. */
        long ns = rt.nap_ns;
        if (timeout_ms > 0 && ns > (long)timeout_ms * 1000000)
            ns = (long)timeout_ms * 1000000;
        size_t before = edrv__async_queued();
        emu_unlock();
        atomic_store(&rt.napping, true);
        n = atomic_load(&rt.requests) || atomic_load(&rt.timers_changed) ? 0 : nap(ev, 32, ns);
        atomic_store(&rt.napping, false);
        emu_lock();
        idle_nap = n <= 0 && !work_waiting();
        /* The next nap: half the time the queued jobs still need at the
         * pace of this one, within the bounds. */
        size_t after = edrv__async_queued();
        double need = after && after < before ? (double)after * (double)ns / (double)(before - after) : 0;
        rt.nap_ns = need / 2 > BACKLOG_NAP_MAX_NS   ? BACKLOG_NAP_MAX_NS
                    : need / 2 < BACKLOG_NAP_MIN_NS ? BACKLOG_NAP_MIN_NS
                                                    : (long)(need / 2);
        handle_events(ev, n);
        return;
    }
    idle_nap = false;
    bool parked = false;
    if (timeout_ms != 0) {
        emu_unlock();
        bool came = spin_for_work();
        emu_lock();
        if (came) {
            timeout_ms = 0;
        } else {
            int trim_ms = edrv__async_trim_ms((uint64_t)edrv__now_ns());
            if (trim_ms >= 0 && (timeout_ms < 0 || trim_ms < timeout_ms))
                timeout_ms = trim_ms;
            parked = true;
        }
    }
    emu_unlock();
    if (parked) {
        /* Parked before the last look: a producer that publishes after it
         * finds the flag set and writes the eventfd (edrv__wake). */
        atomic_store(&rt.parked, true);
        if (work_waiting())
            timeout_ms = 0;
    }
    n = epoll_wait(rt.epfd, ev, 32, timeout_ms);
    if (parked)
        atomic_store(&rt.parked, false);
    emu_lock();
    handle_events(ev, n);
}

static void handle_events(const struct epoll_event *ev, int n) {
    if (n < 0 && errno != EINTR)
        edrv__warn("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u64 == EDRV_EV_WAKE) {
            uint64_t v;
            while (read(rt.wakefd, &v, sizeof v) < 0 && errno == EINTR)
                ;
        } else {
            edrv__select_ready(ev[i].data.u64, ev[i].events); /* driver_select */
        }
    }
}

/* Every port closes (stop runs), every async job ends (queued ones still run,
 * and end with free, as for any closed port), then every driver unloads. */
static void shutdown(void) {
    edrv__ports_close_all();
    edrv__select_reset(); /* fds that a port whose start failed left selected */
    while (edrv__async_pending()) {
        if (!edrv__async_drain())
            wait_events(-1);
    }
    edrv__drivers_unload_all();
    rt.quit = true;
}

static void execute(request *r) {
    edrv__clear_error();
    switch (r->type) {
    case R_LOAD:
        r->result = edrv__driver_load(r->s1, r->s2);
        break;
    case R_REGISTER:
        r->result = edrv__driver_register(r->entry);
        break;
    case R_UNLOAD:
        r->result = edrv__driver_unload(r->s1);
        break;
    case R_OPEN:
        r->result = edrv__port_open(r->pid, r->s1, r->u, r->out_port, r->done ? r : NULL);
        break;
    case R_COMMAND:
        r->result = edrv__port_command(r->pid, r->pt, r->bin, r->pieces, r->npieces, r->whole,
                                       false, r->admitted ? (size_t)r->bin->orig_size : 0);
        r->bin = NULL; /* the port took it */
        break;
    case R_CONTROL:
        r->result = edrv__port_control(r->pid, r->pt, false, r->u, r->data, r->len, r->reply);
        break;
    case R_CALL:
        r->result = edrv__port_call(r->pid, r->pt, false, r->u, r->data, r->len, r->reply);
        break;
    case R_CLOSE:
        r->result = edrv__port_close(r->pid, r->pt, false);
        break;
    case R_INFO:
        r->result = edrv__port_info(r->pt, false, r->status);
        break;
    case R_FENCE:
        r->result = 0;
        break;
    case R_TIMEOUT:
        edrv__timer_fire(r->pt, r->gen);
        r->result = 0;
        break;
    case R_PROC_EXIT:
        edrv__ports_of_proc_exit(r->pid);
        r->result = 0;
        break;
    case R_STOP:
        shutdown();
        r->result = 0;
        break;
    }
    if (r->result < 0 && r->detail)
        snprintf(r->detail, DETAIL_MAX, "%s", edrv_last_error());
}

/* After a request has run: its counts drop before the answer, so that the
 * caller's next call finds it run; then the answer, or (asynchronous) its
 * end. */
static void request_done(request *r) {
    if (r->pt) {
        atomic_fetch_sub_explicit(&r->pt->queued, 1, memory_order_release); /* the count */
        edrv__port_put(r->pt);
    }
    if (r->proc_queued)
        atomic_fetch_sub(r->proc_queued, 1);
    if (r->type == R_OPEN && r->result == EDRV__PENDING) {
        /* answered later, through edrv__request_finish */
    } else if (r->done) {
        sem_post(r->done);
    } else {
        driver_free_binary(r->bin);
        edrv__free(r);
    }
}

void edrv__request_finish(void *req, int result) {
    request *r = req;
    r->result = result;
    if (result < 0)
        snprintf(r->detail, DETAIL_MAX, "%s", edrv_last_error());
    sem_post(r->done);
}

/* Runs the queued requests; whether there were any. */
static bool drain_requests(void) {
    if (!atomic_load_explicit(&rt.requests, memory_order_relaxed))
        return false;
    atomic_store(&rt.requests, false);
    pthread_mutex_lock(&rt.lock);
    request *r = rt.head;
    rt.head = rt.tail = NULL;
    pthread_mutex_unlock(&rt.lock);
    bool any = r != NULL;
    while (r) {
        request *next = r->next; /* r may be gone once done is posted */
        execute(r);
        /* Before the answer: the caller's next call finds it run. */
        atomic_fetch_sub(&rt.inflight, 1);
        request_done(r);
        r = next;
    }
    return any;
}

static void *emulator_main(void *arg) {
    (void)arg;
    edrv__thread_signals();
    is_loop_thread = true;
    sched_index = 0;
    edrv_mem_counters counters;
    edrv__mem_thread_begin(&counters);
    emu_lock();
    while (!rt.quit) {
        /* The timers are looked at below (and their next deadline when it
         * waits): a host's change before this point is seen. */
        atomic_store(&rt.timers_changed, false);
        bool busy = drain_requests();
        busy |= edrv__async_drain() != 0;
        edrv__timers_run();
        if (rt.quit)
            break;
        /* Busy: only a look at the fds (when any is selected) before the next
         * turn. Idle: wait, until the next timer at most. */
        if (!busy)
            wait_events((int)edrv__timers_next_ms());
        else if (edrv__select_count())
            wait_events(0);
    }
    emu_unlock();
    atomic_store_explicit(&edrv__emulator_cpu, -1, memory_order_relaxed);
    edrv__mem_thread_end(&counters);
    return NULL;
}

/* ---- schedulers -------------------------------------------------------------
 * edrv_options.schedulers threads run queued work. The first is the
 * emulator thread: it runs the host's requests that are not a port's
 * (loading, opening, a process's exit, stopping), finished async jobs and
 * fd events, under the emulator lock, and keeps the timers. A port's request
 * (command, control, call, close, info) and its due timer (R_TIMEOUT, from
 * edrv__sched_timeout) go to one scheduler (sched_route): behind the
 * port's queued requests, else where its unit settled, else the unit's home,
 * fixed when the unit is made (round robin). So a port's requests are run in
 * the order they came, one at a time, and ports of different units run side
 * by side on different schedulers. The others (sched[1..]) run port requests
 * only, under the port's unit and without the emulator lock, which a
 * callback takes when it asks for shared state, as on a fast path. Each has
 * its own FIFO, and spins (spin_ns) then sleeps on a semaphore when idle;
 * producers post it only when they find it parked, as for the emulator
 * thread's eventfd.
 *
 * Order: a port's request queued to any scheduler counts in the port's
 * `queued` from its enqueue until it has run; a call that finds requests
 * queued for its port is queued behind them rather than run at once. A
 * command also counts in its sender's `queued`: a process's exit waits for
 * its commands (edrv__proc_exited), and edrv_stop and unloading wait for
 * every scheduler's queue (fence). */
static int enqueue_first(request *r);
static int enqueue(request *r);
static void scheds_stop(void);

typedef struct {
    pthread_mutex_t lock; /* guards head, tail, accepting, quit */
    request *head, *tail;
    bool accepting, quit;
    _Atomic bool requests; /* the queue may hold requests */
    _Atomic bool parked;   /* it sleeps on `wake`, or is about to */
    sem_t wake;
    pthread_t thread;
    char pad[64]; /* the next scheduler's words off this one's line */
} sched_t;

#define MAX_SCHEDULERS 1024

/* Static, so that a host's late call during edrv_stop finds a queue that
 * refuses it rather than freed memory. */
static struct {
    _Atomic int n; /* schedulers, the emulator thread included */
    sched_t s[MAX_SCHEDULERS]; /* s[1..n-1]; s[0] unused (rt holds the first's queue) */
} scheds = {.n = 1};

int edrv__schedulers(void) {
    return atomic_load_explicit(&scheds.n, memory_order_relaxed);
}

/* The home scheduler of pt's unit. */
static int sched_home(const edrv_port_t *pt) {
    int n = atomic_load_explicit(&scheds.n, memory_order_relaxed);
    return n > 1 ? (int)(pt->unit->sched % (unsigned)n) : 0;
}

/* Counts one more request queued for pt, and says to which scheduler it
 * goes: behind the port's queued requests, on their scheduler; with none,
 * to the one its unit settled on (edrv__unit_settle), else to the unit's
 * home. A unit settles on the emulator thread once that ends one of its
 * ports' async jobs: from then on its calls run where its jobs end, where
 * its data and its allocator's pages are (a port's calls on one scheduler
 * and its jobs' ends on another passed its unit, the emulator lock and the
 * jobs' memory between them: the pool's bursts ran 5 to 10 times slower).
 * Count and scheduler change in one step, so that two requests of one
 * sender never go to two schedulers. */
static int sched_route(edrv_port_t *pt) {
    uint64_t old = atomic_load_explicit(&pt->queued, memory_order_relaxed), new;
    int k;
    do {
        if (EDRV_QUEUED(old)) {
            k = (int)(old >> 32);
        } else {
            int last = atomic_load_explicit(&pt->unit->last, memory_order_relaxed);
            k = last >= 0 && last < atomic_load_explicit(&scheds.n, memory_order_relaxed)
                    ? last : sched_home(pt);
        }
        new = (uint64_t)k << 32 | (uint64_t)(EDRV_QUEUED(old) + 1);
    } while (!atomic_compare_exchange_weak(&pt->queued, &old, new));
    return k;
}

static void sched_wake(sched_t *s) {
    if (atomic_load(&s->parked) && atomic_exchange(&s->parked, false))
        sem_post(&s->wake);
}

static int sched_enqueue(sched_t *s, request *r) {
    pthread_mutex_lock(&s->lock);
    if (!s->accepting) {
        pthread_mutex_unlock(&s->lock);
        return edrv__fail(EDRV_ENOTRUNNING, "the runtime is not running");
    }
    r->next = NULL;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    atomic_store(&s->requests, true);
    pthread_mutex_unlock(&s->lock);
    sched_wake(s);
    return 0;
}

/* The next batch of s's requests, waiting for one: spins for spin_ns, then
 * parks (it sets `parked`, looks once more, sleeps). NULL once told to quit
 * with nothing left. */
static request *sched_take(sched_t *s) {
    for (;;) {
        if (atomic_exchange(&s->requests, false)) {
            pthread_mutex_lock(&s->lock);
            request *r = s->head;
            s->head = s->tail = NULL;
            bool quit = s->quit;
            pthread_mutex_unlock(&s->lock);
            if (r)
                return r;
            if (quit)
                return NULL;
        }
        int64_t until = rt.spin_ns > 0 ? edrv__now_ns() + rt.spin_ns : 0;
        while (!atomic_load_explicit(&s->requests, memory_order_relaxed) && until &&
               edrv__now_ns() < until)
            sched_yield(); /* as the emulator thread spins */
        if (atomic_load(&s->requests))
            continue;
        atomic_store(&s->parked, true);
        if (atomic_load(&s->requests)) {
            atomic_store(&s->parked, false); /* a post meanwhile wakes it once more, harmlessly */
            continue;
        }
        while (sem_wait(&s->wake) < 0 && errno == EINTR)
            ;
        atomic_store(&s->parked, false);
    }
}

static void *sched_main(void *arg) {
    sched_t *s = arg;
    sched_index = (int)(s - scheds.s);
    edrv__thread_signals();
    edrv_mem_counters counters;
    edrv__mem_thread_begin(&counters);
    for (request *r; (r = sched_take(s));) {
        while (r) {
            request *next = r->next; /* r may be gone once done is posted */
            execute(r);
            request_done(r);
            r = next;
        }
    }
    edrv__mem_thread_end(&counters);
    return NULL;
}

/* Starts schedulers 2..n (the emulator thread is the first). */
static int scheds_start(int n) {
    static bool made[MAX_SCHEDULERS]; /* made once, for the process's life */
    for (int i = 1; i < n; i++) {
        sched_t *s = &scheds.s[i];
        if (!made[i]) {
            pthread_mutex_init(&s->lock, NULL);
            sem_init(&s->wake, 0, 0);
            made[i] = true;
        }
        s->head = s->tail = NULL;
        s->accepting = true;
        s->quit = false;
        atomic_store(&s->requests, false);
        atomic_store(&s->parked, false);
        int err = pthread_create(&s->thread, NULL, sched_main, s);
        if (err) {
            s->accepting = false;
            scheds_stop();
            return -err;
        }
        char name[32]; /* "scheduler 1024" fits a thread's name (15 bytes) */
        snprintf(name, sizeof name, "scheduler %d", i + 1);
        pthread_setname_np(s->thread, name);
        atomic_store(&scheds.n, i + 1);
    }
    return 0;
}

/* Stops schedulers 2..n once they have run what they hold. */
static void scheds_stop(void) {
    int n = atomic_load(&scheds.n);
    for (int i = 1; i < n; i++) {
        sched_t *s = &scheds.s[i];
        pthread_mutex_lock(&s->lock);
        s->accepting = false;
        s->quit = true;
        atomic_store(&s->requests, true);
        pthread_mutex_unlock(&s->lock);
        sched_wake(s);
        pthread_join(s->thread, NULL);
    }
    atomic_store(&scheds.n, 1);
    /* Their locks stay: a late caller may still take one, and find the
     * queue refusing. */
}

/* Returns once every request queued to schedulers 2..n before the call has
 * run. Not from a callback, which may hold what they wait for. */
static void fence(void) {
    int n = atomic_load(&scheds.n);
    for (int i = 1; i < n; i++) {
        sem_t done;
        sem_init(&done, 0, 0);
        request r = {.type = R_FENCE, .done = &done};
        if (sched_enqueue(&scheds.s[i], &r) == 0)
            while (sem_wait(&done) < 0 && errno == EINTR)
                ;
        sem_destroy(&done);
    }
}

bool edrv__sched_timeout(edrv_port_t *pt, uint64_t gen) {
    EDRV_ASSERT_EMULATOR();
    int last = atomic_load_explicit(&pt->unit->last, memory_order_relaxed);
    if ((last < 0 ? sched_home(pt) : last) == 0 && !EDRV_QUEUED(atomic_load(&pt->queued)))
        return false; /* the emulator thread's port: run it here, now */
    request *r = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *r);
    if (!r)
        return false; /* then the emulator thread runs it */
    r->type = R_TIMEOUT;
    r->pt = pt;
    r->gen = gen;
    atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
    if (enqueue(r) < 0) {
        edrv__port_put(pt);
        edrv__free(r);
        return false;
    }
    return true;
}

/* Queues r: a port's request to its port's scheduler, any other to the
 * emulator thread, which it wakes if its queue was empty. Fails after stop
 * began, so that no request is ever left behind in a queue. */
static int enqueue(request *r) {
    if (r->pt) {
        int k = sched_route(r->pt);
        if (r->proc_queued)
            atomic_fetch_add(r->proc_queued, 1);
        int rc = k ? sched_enqueue(&scheds.s[k], r) : enqueue_first(r);
        if (rc < 0) {
            atomic_fetch_sub(&r->pt->queued, 1);
            if (r->proc_queued)
                atomic_fetch_sub(r->proc_queued, 1);
        }
        return rc;
    }
    return enqueue_first(r);
}

static int enqueue_first(request *r) {
    pthread_mutex_lock(&rt.lock);
    if (!rt.accepting) {
        pthread_mutex_unlock(&rt.lock);
        return edrv__fail(EDRV_ENOTRUNNING, "the runtime is not running");
    }
    bool was_empty = rt.head == NULL;
    r->next = NULL;
    if (rt.tail)
        rt.tail->next = r;
    else
        rt.head = r;
    rt.tail = r;
    /* Counted under the lock, on every request of this queue: a host
     * holding the emulator lock that finds none in flight knows that none is
     * queued or running (emu_trylock). */
    atomic_fetch_add(&rt.inflight, 1);
    atomic_store(&rt.requests, true);
    if (r->type == R_STOP) {
        rt.accepting = false;
        atomic_store(&emu.immediate, false); /* stopping: every call queues */
    }
    pthread_mutex_unlock(&rt.lock);
    if (was_empty) {
        if (atomic_load(&rt.napping) && atomic_exchange(&rt.napping, false))
            wake_write();
        else
            edrv__wake();
    }
    return 0;
}

static void wake_write(void) {
    uint64_t one = 1;
    while (write(rt.wakefd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void edrv__timers_changed(void) {
    if (is_loop_thread)
        return; /* it computes its next wait after this turn */
    atomic_store(&rt.timers_changed, true);
    edrv__wake();
}

void edrv__wake(void) {
    if (!atomic_load(&rt.parked) || !atomic_exchange(&rt.parked, false))
        return; /* running or spinning: it will see the work */
    wake_write();
}

/* Whether a host thread's call to a port may run in the calling thread (a
 * fast path, edrv__port_*_fast, or a try): it runs no driver code now, and
 * may run some (SIGPIPE). The port must have no request queued, so that
 * the thread's calls to it keep their order (the fast paths look). */
static bool fast_ok(void) {
    return !on_emulator && !units_held && thread_sigpipe_safe() &&
           atomic_load_explicit(&emu.immediate, memory_order_relaxed);
}

static bool nothing_queued(const edrv_port_t *pt) {
    return !EDRV_QUEUED(atomic_load_explicit(&pt->queued, memory_order_acquire));
}

/* Runs a port's request (r->pt) in the calling thread: waiting for the
 * port's unit, or (try) only if it is free. */
static int run_port_request(request *r, bool try) {
    switch (r->type) {
    case R_CONTROL:
        return edrv__port_control(r->pid, r->pt, try, r->u, r->data, r->len, r->reply);
    case R_CALL:
        return edrv__port_call(r->pid, r->pt, try, r->u, r->data, r->len, r->reply);
    case R_CLOSE:
        return edrv__port_close(r->pid, r->pt, try);
    default:
        return edrv__port_info(r->pt, try, r->status);
    }
}

static bool port_request(const request *r) {
    return r->type == R_CONTROL || r->type == R_CALL || r->type == R_CLOSE || r->type == R_INFO;
}

/* Waits for r, queued (enqueue) with `done` and `detail` set; its result. */
static int wait_answer(request *r, int rc) {
    if (rc == 0) {
        while (sem_wait(r->done) < 0 && errno == EINTR)
            ;
        rc = r->result;
        if (rc < 0)
            edrv__fail(rc, "%s", r->detail);
    }
    sem_destroy(r->done);
    return rc;
}

/* A synchronous call to a port: run in the calling thread when it can, else
 * queued to the port's scheduler, and waited for. */
static int call_port(request *r) {
    if (!edrv__running())
        return edrv__fail(EDRV_ENOTRUNNING, "the runtime is not running");
    r->pt = edrv__table_ref(r->port);
    if (!r->pt)
        return edrv__port_check(r->port);
    int rc;
    if (edrv__in_callback_thread()) {
        /* A driver callback calling edrv.h: run in place; queued requests
         * may wait for this very thread. */
        rc = run_port_request(r, false);
    } else if (fast_ok() && nothing_queued(r->pt) &&
               (rc = run_port_request(r, true)) != EDRV__NOT_FAST) {
        /* run here */
    } else {
        char detail[DETAIL_MAX] = "";
        sem_t done;
        sem_init(&done, 0, 0);
        r->done = &done;
        r->detail = detail;
        rc = enqueue(r);
        if (rc == 0)
            return wait_answer(r, rc); /* the scheduler let the port go */
        sem_destroy(&done);
    }
    edrv__port_put(r->pt);
    return rc;
}

/* Runs r (the calling thread when it can, else the emulator thread or the
 * port's scheduler) and returns its result. */
static int call_sync(request *r) {
    if ((r->type == R_CONTROL || r->type == R_CALL) && fast_ok()) {
        edrv__clear_error();
        int rc = r->type == R_CONTROL
                     ? edrv__port_control_fast(r->pid, r->port, r->u, r->data, r->len, r->reply)
                     : edrv__port_call_fast(r->pid, r->port, r->u, r->data, r->len, r->reply);
        if (rc != EDRV__NOT_FAST)
            return rc;
    }
    if (port_request(r))
        return call_port(r);
    if (edrv__in_callback_thread()) {
        /* A driver callback calling edrv.h: run in place; queued requests
         * would wait for this very thread. */
        if (r->type == R_STOP)
            return edrv__fail(EDRV_EINVAL, "edrv_stop from a driver callback");
        edrv__emulator_enter();
        execute(r);
        return r->result;
    }
    bool immediate = r->type != R_STOP && emu_trylock();
    if (immediate && r->type != R_OPEN) {
        /* This thread runs the call itself; a failure's text is its own. */
        execute(r);
        emu_unlock();
        return r->result;
    }
    /* Answered by another thread: the emulator thread, or (an init-ack
     * open) the port, later. */
    char detail[DETAIL_MAX] = "";
    sem_t done;
    sem_init(&done, 0, 0);
    r->done = &done;
    r->detail = detail;
    int rc = 0;
    if (immediate) {
        execute(r);
        /* Read under the lock: once it goes, an init ack may answer (and
         * write r->result) from another thread. */
        int result = r->result;
        emu_unlock();
        if (result != EDRV__PENDING) {
            sem_destroy(&done);
            return result;
        }
    } else {
        rc = enqueue(r);
    }
    return wait_answer(r, rc);
}

/* ---- the runtime ------------------------------------------------------------- */

/* edrv_options.schedulers 0: $EDRV_SCHEDULERS if set, else 1. Not one per
 * core, as ERTS: immediate execution runs most calls in their callers, and a
 * second scheduler changed nothing on the message path (bench_msg) nor on the
 * main job, but cost the async pool's first burst after start (bench_edrv,
 * bench/README.md). */
static int default_schedulers(void) {
    const char *env = getenv("EDRV_SCHEDULERS");
    if (env && *env) {
        char *end;
        long n = strtol(env, &end, 10);
        if (*end || n < 1 || n > MAX_SCHEDULERS)
            return -1;
        return (int)n;
    }
    return 1;
}

EDRV_API int edrv_start(const edrv_options *opts) {
    /* A reference to every driver API function (internal.h), which a
     * program linked with libedrv.a must have for the drivers it loads. */
    __asm__ volatile("" : : "r"(edrv__driver_api), "r"(edrv__driver_api_data));
    int threads = opts && opts->async_threads ? opts->async_threads : 0;
    int spin_us = opts ? opts->spin_us : 0;
    if (spin_us > 1000000)
        return edrv__fail(EDRV_EINVAL, "spin_us must be at most 1000000 (1 s), not %d", spin_us);
    if (threads < 0 || threads > 1024)
        return edrv__fail(EDRV_EINVAL, "async_threads must be 1..1024, not %d", threads);
    int nsched = opts ? opts->schedulers : 0;
    if (nsched < 0 || nsched > MAX_SCHEDULERS)
        return edrv__fail(EDRV_EINVAL, "schedulers must be 1..%d, not %d", MAX_SCHEDULERS, nsched);
    if (!nsched && (nsched = default_schedulers()) < 0)
        return edrv__fail(EDRV_EINVAL, "EDRV_SCHEDULERS must be 1..%d, not '%s'", MAX_SCHEDULERS,
                          getenv("EDRV_SCHEDULERS"));
    const char *node = opts ? opts->node : NULL;
    if (node) {
        size_t n = strlen(node);
        const char *at = strchr(node, '@');
        bool ascii = true;
        for (size_t i = 0; i < n; i++)
            ascii = ascii && (unsigned char)node[i] > ' ' && (unsigned char)node[i] < 127;
        if (n > 255 || !at || at == node || !at[1] || !ascii)
            return edrv__fail(EDRV_EINVAL, "node must be name@host (at most 255 printable ASCII "
                              "characters), not '%s'", node);
    }
    if (!threads) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cpus < 1 ? 1 : cpus > 1024 ? 1024 : (int)cpus;
    }
    pthread_mutex_lock(&rt.lock);
    if (atomic_load(&state) != ST_STOPPED) {
        pthread_mutex_unlock(&rt.lock);
        return edrv__fail(EDRV_ERUNNING, "edrv_start: the runtime is already running");
    }
    int err = 0;
    edrv__term_set_node(node, node ? opts->creation : 0);
    rt.epfd = epoll_create1(EPOLL_CLOEXEC);
    rt.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EDRV_EV_WAKE};
    if (rt.epfd < 0 || rt.wakefd < 0 || epoll_ctl(rt.epfd, EPOLL_CTL_ADD, rt.wakefd, &ev) < 0)
        err = -errno;
    rt.async_threads = threads;
    rt.quit = false;
    rt.head = rt.tail = NULL;
    rt.spin_ns = spin_us < 0 ? 0 : (long)(spin_us ? spin_us : DEFAULT_SPIN_US) * 1000;
    atomic_store(&rt.requests, false);
    atomic_store(&rt.inflight, 0);
    atomic_store(&rt.parked, false);
    atomic_store(&rt.napping, false);
    rt.nap_ns = BACKLOG_NAP_MIN_NS;
    rt.pwait2 = true;
    const char *pw = getenv("EDRV_TESTING_EPOLL_PWAIT2");
    rt.pwait2_off = pw && strcmp(pw, "off") == 0;
    atomic_store(&nap_count.naps, 0);
    atomic_store(&nap_count.enosys, 0);
    atomic_store(&nap_count.failed, 0);
    if (!err)
        err = edrv__async_start(threads, rt.spin_ns); /* the pool spins as long */
    if (!err) {
        rt.accepting = true;
        err = scheds_start(nsched);
        if (!err)
            err = -pthread_create(&rt.thread, NULL, emulator_main, NULL);
        if (err) {
            scheds_stop();
            edrv__async_stop();
        }
    }
    if (err) {
        rt.accepting = false;
        if (rt.epfd >= 0)
            close(rt.epfd);
        if (rt.wakefd >= 0)
            close(rt.wakefd);
        rt.epfd = rt.wakefd = -1;
        pthread_mutex_unlock(&rt.lock);
        return edrv__fail(err, "edrv_start: %s", edrv_strerror(err));
    }
    pthread_setname_np(rt.thread, "emulator");
    atomic_store(&state, ST_RUNNING);
    atomic_store(&emu.immediate, !(opts && opts->no_immediate));
    pthread_mutex_unlock(&rt.lock);
    return 0;
}

EDRV_API int edrv_stop(void) {
    if (edrv__in_callback_thread())
        return edrv__fail(EDRV_EINVAL, "edrv_stop called from a driver callback");
    fence(); /* what was queued before the call runs before it */
    request r = {.type = R_STOP};
    int rc = call_sync(&r);
    if (rc < 0)
        return rc; /* not running, or another thread is stopping it */
    pthread_join(rt.thread, NULL);
    scheds_stop(); /* their queues hold only requests to dead ports */
    edrv__async_stop(); /* every job has ended: the pool threads are idle */
    pthread_mutex_lock(&rt.lock);
    close(rt.epfd);
    close(rt.wakefd);
    rt.epfd = rt.wakefd = -1;
    edrv__ports_reset();
    edrv__atoms_reset();
    atomic_store(&state, ST_STOPPED);
    pthread_mutex_unlock(&rt.lock);
    return 0;
}

/* ---- requests from host threads ------------------------------------------------ */

EDRV_API int edrv_load_driver(const char *dir, const char *name) {
    if (!dir || !name)
        return edrv__fail(EDRV_EINVAL, "edrv_load_driver: NULL directory or name");
    request r = {.type = R_LOAD, .s1 = dir, .s2 = name};
    return call_sync(&r);
}

EDRV_API int edrv_register_driver(ErlDrvEntry *entry) {
    if (!entry)
        return edrv__fail(EDRV_EINVAL, "edrv_register_driver: NULL entry");
    request r = {.type = R_REGISTER, .entry = entry};
    return call_sync(&r);
}

EDRV_API int edrv_unload_driver(const char *name) {
    if (!name)
        return edrv__fail(EDRV_EINVAL, "edrv_unload_driver: NULL name");
    if (!edrv__in_callback_thread())
        fence(); /* commands queued to its ports before the call reach them */
    request r = {.type = R_UNLOAD, .s1 = name};
    return call_sync(&r);
}

EDRV_API int edrv_open_port(edrv_proc *p, const char *command, unsigned flags, edrv_port *port) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_open_port", &pid);
    if (rc < 0)
        return rc;
    if (!command || !port)
        return edrv__fail(EDRV_EINVAL, "edrv_open_port: NULL command or port");
    if (flags & ~(EDRV_PORT_BINARY | EDRV_PORT_EOF))
        return edrv__fail(EDRV_EINVAL, "edrv_open_port: unknown flags 0x%x", flags);
    request r = {.type = R_OPEN, .pid = pid, .s1 = command, .u = flags, .out_port = port};
    return call_sync(&r);
}

/* Copies the data into one binary and queues it; `whole` sends it as one
 * binary (port_command/2 with a binary), otherwise as the vector's pieces (as
 * an iolist: an outputv driver gets one element per non-empty piece). */
static int port_command(edrv_proc *p, edrv_port port, const struct iovec *iov, int iovcnt,
                        bool whole, unsigned opts) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_port_command", &pid);
    if (rc < 0)
        return rc;
    if ((iovcnt && !iov) || iovcnt < 0)
        return edrv__fail(EDRV_EINVAL, "edrv_port_command: NULL vector");
    if (!edrv__running())
        return edrv__fail(EDRV_ENOTRUNNING, "the runtime is not running");
    /* Fail early, as port_command/2 raises badarg at once for a dead port; a
     * port that dies after this check drops the data, as in ERTS. */
    if (opts & ~(EDRV_CMD_NOSUSPEND | EDRV_CMD_FORCE | EDRV_CMD_QUEUE | EDRV_CMD_BINARY))
        return edrv__fail(EDRV_EINVAL, "edrv_port_command: unknown options 0x%x", opts);
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (!iov[i].iov_base && iov[i].iov_len)
            return edrv__fail(EDRV_EINVAL, "edrv_port_command: NULL buffer with a length");
        if (iov[i].iov_len > (size_t)INTPTR_MAX - total)
            return edrv__fail(EDRV_EINVAL, "edrv_port_command: data too large");
        total += iov[i].iov_len;
    }
    /* Immediate, to a port that is not busy, of a driver with `output`, in
     * one piece: the bytes go to the driver at once, so they never count in
     * the port's message queue (no admission), and no binary is made. */
    if (iovcnt <= 1 && !(opts & EDRV_CMD_FORCE) && fast_ok()) {
        edrv__clear_error();
        rc = edrv__port_command_fast(pid, port, iovcnt ? iov[0].iov_base : NULL, total);
        if (rc != EDRV__NOT_FAST)
            return rc;
    }
    /* A busy port suspends the sender here; a driver callback sending to a
     * port is never suspended (it may hold what the port waits for). */
    bool in_place = edrv__in_callback_thread();
    rc = in_place ? edrv__port_check(port) : edrv__port_admit(port, total, opts, &p->suspended);
    if (rc < 0)
        return rc;
    size_t admitted = in_place ? 0 : total;
    request *r = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *r + (size_t)iovcnt * sizeof r->pieces[0]);
    ErlDrvBinary *bin = r ? driver_alloc_binary(total) : NULL;
    if (!bin) {
        edrv__free(r);
        edrv__port_unadmit(port, admitted);
        return edrv__fail(EDRV_ENOMEM, "out of memory for %zu bytes of command data", total);
    }
    size_t off = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len)
            memcpy(bin->orig_bytes + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
        r->pieces[i] = iov[i].iov_len;
    }
    r->type = R_COMMAND;
    r->pid = pid;
    r->port = port;
    r->bin = bin;
    r->whole = whole;
    r->npieces = iovcnt;
    r->admitted = !in_place;
    r->proc_queued = &p->queued;
    r->pt = edrv__table_ref(port);
    if (!r->pt) {
        /* It died after the check: dropped, as in ERTS. */
        edrv__port_unadmit(port, admitted);
        driver_free_binary(bin);
        edrv__free(r);
        return 0;
    }
    /* Run now when nothing is queued for the port and its unit is free (or,
     * from a callback, this thread's own); queued otherwise: a command never
     * waits for a unit. */
    if ((in_place || fast_ok()) && nothing_queued(r->pt)) {
        edrv__clear_error();
        rc = edrv__port_command(pid, r->pt, bin, r->pieces, iovcnt, whole, true, admitted);
        if (rc != EDRV__NOT_FAST) {
            edrv__port_put(r->pt);
            edrv__free(r);
            return 0;
        }
    }
    rc = enqueue(r);
    if (rc < 0) {
        edrv__port_unadmit(port, admitted);
        driver_free_binary(bin);
        edrv__port_put(r->pt);
        edrv__free(r);
    }
    return rc;
}

EDRV_API int edrv_port_commandv(edrv_proc *p, edrv_port port, const struct iovec *iov,
                                int iovcnt) {
    return port_command(p, port, iov, iovcnt, false, 0);
}

EDRV_API int edrv_port_command(edrv_proc *p, edrv_port port, const void *data, size_t len) {
    struct iovec v = {(void *)data, len};
    return port_command(p, port, &v, 1, true, 0);
}

EDRV_API int edrv_port_command_opts(edrv_proc *p, edrv_port port, const struct iovec *iov,
                                    int iovcnt, unsigned opts) {
    return port_command(p, port, iov, iovcnt, opts & EDRV_CMD_BINARY, opts & ~EDRV_CMD_BINARY);
}

EDRV_API int edrv_port_control(edrv_proc *p, edrv_port port, unsigned int op, const void *data,
                               size_t len, edrv_reply *reply) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_port_control", &pid);
    if (rc < 0)
        return rc;
    if (!reply || (!data && len))
        return edrv__fail(EDRV_EINVAL, "edrv_port_control: NULL reply or data");
    *reply = (edrv_reply){0};
    request r = {.type = R_CONTROL, .pid = pid, .port = port, .u = op,
                 .data = (char *)data, .len = len, .reply = reply};
    return call_sync(&r);
}

EDRV_API int edrv_port_call(edrv_proc *p, edrv_port port, unsigned int op, const void *etf,
                            size_t len, edrv_reply *reply) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_port_call", &pid);
    if (rc < 0)
        return rc;
    if (!reply || !etf)
        return edrv__fail(EDRV_EINVAL, "edrv_port_call: NULL reply or term");
    *reply = (edrv_reply){0};
    request r = {.type = R_CALL, .pid = pid, .port = port, .u = op,
                 .data = (char *)etf, .len = len, .reply = reply};
    return call_sync(&r);
}

EDRV_API int edrv_port_close(edrv_proc *p, edrv_port port) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_port_close", &pid);
    if (rc < 0)
        return rc;
    request r = {.type = R_CLOSE, .pid = pid, .port = port};
    return call_sync(&r);
}

EDRV_API int edrv_port_info(edrv_port port, edrv_port_status *status) {
    if (!status)
        return edrv__fail(EDRV_EINVAL, "edrv_port_info: NULL status");
    request r = {.type = R_INFO, .port = port, .status = status};
    return call_sync(&r);
}

void edrv__proc_ended(uint64_t pid) {
    /* Its ports close on the emulator thread, later: the signal comes from
     * inside a callback, which may hold the unit of one of them. A request
     * of its own, asynchronous; edrv_proc_free closes them if it cannot be
     * made (they end with it then). */
    request *r = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *r);
    if (!r) {
        edrv__warn("out of memory: the ports of <0.%llu.0>, ended by an exit signal, close "
                   "when it is freed", (unsigned long long)pid);
        return;
    }
    r->type = R_PROC_EXIT;
    r->pid = pid;
    if (enqueue_first(r) < 0)
        edrv__free(r); /* stopping: every port closes anyway */
}

/* Called by edrv_proc_free: the process's ports end with it. */
void edrv__proc_exited(edrv_proc *p) {
    /* Its commands queued to schedulers reach their ports first, as its
     * exit signal follows them in ERTS (a callback cannot wait for them:
     * they may wait for the unit it holds). */
    if (atomic_load(&p->queued) && !edrv__in_callback_thread())
        fence();
    request r = {.type = R_PROC_EXIT, .pid = p->pid};
    (void)call_sync(&r); /* not running: no ports to close */
}
