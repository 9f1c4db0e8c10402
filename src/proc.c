/*
 * proc.c: processes and their mailboxes.
 *
 * A process is a pid and a FIFO of ETF messages. The table maps pids to
 * processes so that any thread holding only a pid (a driver on a pool thread
 * with the ErlDrvTermData of driver_caller, say) can deliver to it, and so that
 * a message to a process that has ended is dropped rather than touching freed
 * memory: delivery holds the table's read lock, and edrv_proc_free removes the
 * process under the write lock before freeing it. The table is in shards,
 * by pid, each with its own lock on its own cache line, so that threads
 * delivering to different processes do not pass one lock's line between
 * their cores.
 *
 * Freeing: edrv_proc_free marks the process exiting and wakes the threads
 * that wait in edrv_receive, which return EDRV_ENOPROC; it frees the struct
 * once the last of them has left. Requests already queued carry the pid, not
 * the struct. A call that starts after edrv_proc_free has begun is the
 * caller's error (edrv.h): one that finds the struct still there gets
 * EDRV_ENOPROC, one that finds it freed reads freed memory (ASan reports it;
 * the magic number catches many such calls in other builds).
 *
 * Exit signals (edrv__exit_signal): a process that traps exits gets them as
 * messages; one that does not drops those with reason normal and is ended by
 * the others: `ended_by` keeps the signal, calls with the process fail with
 * EDRV_EEXITED from then on (waiting receivers wake to it), messages to it
 * are dropped, and its ports close later on the emulator thread
 * (edrv__proc_ended), as an Erlang process's links get its exit.
 *
 * Lock order: a shard's lock (read or write) -> proc->lock.
 */
#include "internal.h"
#include "idmap.h"

#include <ei.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROC_LIVE 0x70726f63u /* "proc" */

#define SHARDS 16 /* a power of two */

static struct {
    _Alignas(64) pthread_rwlock_t lock;
    idmap map; /* pid -> edrv_proc, for the pids of this shard */
} shards[SHARDS] = {[0 ... SHARDS - 1] = {.lock = PTHREAD_RWLOCK_INITIALIZER}};
static _Atomic uint64_t next_pid = 1;

static inline unsigned shard_of(uint64_t pid) {
    return (unsigned)(pid & (SHARDS - 1));
}

void edrv__cond_init_monotonic(pthread_cond_t *c) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

void edrv__deadline_in(long ms, struct timespec *at) {
    clock_gettime(CLOCK_MONOTONIC, at);
    at->tv_sec += ms / 1000;
    at->tv_nsec += (ms % 1000) * 1000000L;
    if (at->tv_nsec >= 1000000000L) {
        at->tv_sec++;
        at->tv_nsec -= 1000000000L;
    }
}

static edrv_proc *proc_new(uint64_t flag) {
    edrv_proc *p = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *p);
    if (!p) {
        edrv__fail(EDRV_ENOMEM, "out of memory creating a process");
        return NULL;
    }
    p->magic = PROC_LIVE;
    pthread_mutex_init(&p->lock, NULL);
    edrv__cond_init_monotonic(&p->cond);
    p->pid = atomic_fetch_add(&next_pid, 1) | flag;
    return p;
}

/* Puts p in the table, or frees it (out of memory). */
static edrv_proc *proc_publish(edrv_proc *p) {
    unsigned sh = shard_of(p->pid);
    pthread_rwlock_wrlock(&shards[sh].lock);
    bool ok = edrv__idmap_put(&shards[sh].map, p->pid, p) == 0;
    pthread_rwlock_unlock(&shards[sh].lock);
    if (!ok) {
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->cond);
        edrv__free(p->remote);
        edrv__free(p);
        edrv__fail(EDRV_ENOMEM, "out of memory creating a process");
        return NULL;
    }
    return p;
}

EDRV_API edrv_proc *edrv_proc_new(void) {
    edrv_proc *p = proc_new(0);
    return p ? proc_publish(p) : NULL;
}

EDRV_API edrv_proc *edrv_proc_new_forward(const void *pid, size_t pid_len, edrv_forward_fn fn,
                                          void *ctx) {
    const unsigned char *b = pid;
    if (!fn || !b || pid_len < 2 || pid_len > EDRV_REMOTE_PID_MAX || b[0] != 131 ||
        (b[1] != ERL_NEW_PID_EXT && b[1] != ERL_PID_EXT) ||
        edrv__etf_measure(pid, pid_len) != (ssize_t)pid_len) {
        edrv__fail(EDRV_EINVAL, "edrv_proc_new_forward: %s", fn ? "pid is not one pid in external "
                   "term format of at most 300 bytes" : "NULL function");
        return NULL;
    }
    edrv_proc *p = proc_new(EDRV_PID_REMOTE);
    if (!p)
        return NULL;
    p->remote = edrv__alloc(EDRV_MEM_SYSTEM, pid_len - 1);
    if (!p->remote) {
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->cond);
        edrv__free(p);
        edrv__fail(EDRV_ENOMEM, "out of memory creating a process");
        return NULL;
    }
    memcpy(p->remote, b + 1, pid_len - 1);
    p->remote_len = pid_len - 1;
    p->fwd = fn;
    p->fwd_ctx = ctx;
    p->trap_exit = true; /* its exit signals go to fn as messages */
    return proc_publish(p);
}

size_t edrv__proc_remote_etf(uint64_t pid, char *buf, size_t cap) {
    unsigned sh = shard_of(pid);
    size_t n = 0;
    pthread_rwlock_rdlock(&shards[sh].lock);
    edrv_proc *p = edrv__idmap_get(&shards[sh].map, pid);
    if (p && p->remote && p->remote_len <= cap) {
        memcpy(buf, p->remote, p->remote_len); /* set at creation, never changed */
        n = p->remote_len;
    }
    pthread_rwlock_unlock(&shards[sh].lock);
    return n;
}

int edrv__exit_reason_at(const mbox_msg *m) {
    int at = 0, version, arity;
    if (ei_decode_version(m->data, &at, &version) < 0 ||
        ei_decode_tuple_header(m->data, &at, &arity) < 0 || arity != 3 ||
        ei_skip_term(m->data, &at) < 0 || ei_skip_term(m->data, &at) < 0)
        return -1;
    return at;
}

/* EDRV_EEXITED for a call with p, ended by an exit signal, and its reason
 * in the detail. ended_by is set before `ended`, and never changes after. */
static int ended_error(const edrv_proc *p, const char *fn) {
    const mbox_msg *m = p->ended_by;
    int at = edrv__exit_reason_at(m);
    char *text = NULL;
    if (at > 0) {
        /* the reason as a term of its own: a version byte, then its bytes */
        size_t len = m->len - (size_t)at + 1;
        char *etf = malloc(len);
        if (etf) {
            etf[0] = (char)131;
            memcpy(etf + 1, m->data + at, len - 1);
            if (edrv_term_format(etf, len, &text) < 0)
                text = NULL;
            free(etf);
        }
    }
    int rc = edrv__fail(EDRV_EEXITED, "%s: <0.%llu.0> was ended by an exit signal: %s", fn,
                        (unsigned long long)p->pid, text ? text : "(its reason)");
    free(text);
    return rc;
}

int edrv__proc_caller(const edrv_proc *p, const char *fn, uint64_t *pid) {
    if (!p || p->magic != PROC_LIVE)
        return edrv__fail(EDRV_EINVAL, "%s: %s", fn, p ? "not a live process (freed?)"
                                                       : "NULL process");
    /* exiting is only ever set: a relaxed look suffices for a call that
     * races with edrv_proc_free, which is the caller's error anyway. */
    if (__atomic_load_n(&p->exiting, __ATOMIC_RELAXED))
        return edrv__fail(EDRV_ENOPROC, "%s: <0.%llu.0> is being freed", fn,
                          (unsigned long long)p->pid);
    if (atomic_load_explicit(&p->ended, memory_order_acquire))
        return ended_error(p, fn);
    *pid = p->pid;
    return 0;
}

/* Marks p exiting and waits until no thread is inside edrv_receive(p). */
static int proc_exit_receivers(edrv_proc *p) {
    pthread_mutex_lock(&p->lock);
    if (p->exiting) {
        pthread_mutex_unlock(&p->lock);
        return edrv__fail(EDRV_EINVAL, "edrv_proc_free: <0.%llu.0> is already being freed",
                          (unsigned long long)p->pid);
    }
    __atomic_store_n(&p->exiting, true, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&p->cond);
    while (p->receivers)
        pthread_cond_wait(&p->cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int edrv__proc_free_with(edrv_proc *p, const char *reason, size_t len) {
    if (!p)
        return 0;
    if (p->magic != PROC_LIVE)
        return edrv__fail(EDRV_EINVAL, "edrv_proc_free: not a live process (freed twice?)");
    int rc = proc_exit_receivers(p);
    if (rc < 0)
        return rc;
    /* Its links, monitors and name, taken before it leaves the table: a
     * link made meanwhile finds it dead. */
    void *end = edrv__proc_die(p, reason, len);
    unsigned sh = shard_of(p->pid);
    pthread_rwlock_wrlock(&shards[sh].lock);
    edrv__idmap_del(&shards[sh].map, p->pid);
    if (shards[sh].map.live == 0) /* the shard's last process: give its table back */
        edrv__idmap_free(&shards[sh].map);
    pthread_rwlock_unlock(&shards[sh].lock);
    /* Ports linked to it die with it, as ports die with their owner; then
     * linked processes get its exit signal and monitors fire. */
    edrv__proc_exited(p);
    edrv__proc_die_run(end);
    for (mbox_msg *m = p->head, *n; m; m = n) {
        n = m->next;
        edrv__msg_drop(m);
    }
    if (p->ended_by)
        edrv__msg_drop(p->ended_by);
    edrv__free(p->links.v);
    edrv__free(p->mons_in.v);
    edrv__free(p->mons_out.v);
    edrv__free(p->name);
    edrv__free(p->remote);
    p->magic = 0;
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    edrv__free(p);
    return 0;
}

EDRV_API int edrv_proc_free(edrv_proc *p) {
    return edrv__proc_free_with(p, NULL, 0);
}

EDRV_API int edrv_proc_info(edrv_proc *p, edrv_proc_status *st) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_proc_info", &pid);
    if (rc < 0)
        return rc;
    if (!st)
        return edrv__fail(EDRV_EINVAL, "edrv_proc_info: NULL status");
    pthread_mutex_lock(&p->lock);
    /* A receiver counted here waits: it counted itself and went to sleep
     * under this lock, and must take it again to leave. */
    *st = (edrv_proc_status){pid, p->count, p->head ? 0 : p->receivers,
                             atomic_load(&p->suspended)};
    pthread_mutex_unlock(&p->lock);
    return 0;
}

EDRV_API uint64_t edrv_proc_pid(const edrv_proc *p) {
    return p ? p->pid : 0;
}

EDRV_API ErlDrvTermData edrv_proc_term(const edrv_proc *p) {
    return p ? TD_MAKE(TD_PID, p->pid) : 0;
}

bool edrv__proc_alive(uint64_t pid) {
    unsigned sh = shard_of(pid);
    pthread_rwlock_rdlock(&shards[sh].lock);
    edrv_proc *p = edrv__idmap_get(&shards[sh].map, pid);
    bool alive = p && !atomic_load(&p->ended) && !__atomic_load_n(&p->dead, __ATOMIC_RELAXED);
    pthread_rwlock_unlock(&shards[sh].lock);
    return alive;
}

mbox_msg *edrv__msg_new(size_t len) {
    mbox_msg *m = edrv__alloc(EDRV_MEM_MESSAGE, sizeof *m + len);
    if (m) {
        m->next = NULL;
        m->len = len;
    }
    return m;
}

void edrv__msg_drop(mbox_msg *m) {
    edrv__free(m);
}

edrv_proc *edrv__proc_acquire(uint64_t pid) {
    unsigned sh = shard_of(pid);
    pthread_rwlock_rdlock(&shards[sh].lock);
    edrv_proc *p = edrv__idmap_get(&shards[sh].map, pid);
    if (!p) {
        pthread_rwlock_unlock(&shards[sh].lock);
        return NULL;
    }
    pthread_mutex_lock(&p->lock);
    return p;
}

void edrv__proc_release(edrv_proc *p) {
    unsigned sh = shard_of(p->pid);
    pthread_mutex_unlock(&p->lock);
    pthread_rwlock_unlock(&shards[sh].lock);
}

static void forward(edrv_proc *p, mbox_msg *m, edrv_fwd_kind kind) {
    p->fwd(p->fwd_ctx, kind, m->data, m->len);
    edrv__msg_drop(m);
}

void edrv__mbox_append_exit(edrv_proc *p, mbox_msg *m) {
    if (p->fwd)
        forward(p, m, EDRV_FWD_EXIT);
    else
        edrv__mbox_append(p, m);
}

void edrv__mbox_append(edrv_proc *p, mbox_msg *m) {
    if (p->fwd) {
        forward(p, m, EDRV_FWD_MESSAGE);
        return;
    }
    m->next = NULL;
    if (p->tail)
        p->tail->next = m;
    else
        p->head = m;
    p->tail = m;
    p->count++;
    pthread_cond_signal(&p->cond);
    edrv__ws_notify(p);
}

int edrv__deliver(uint64_t pid, mbox_msg *m) {
    unsigned sh = shard_of(pid);
    pthread_rwlock_rdlock(&shards[sh].lock);
    edrv_proc *p = edrv__idmap_get(&shards[sh].map, pid);
    if (!p) {
        pthread_rwlock_unlock(&shards[sh].lock);
        edrv__msg_drop(m);
        return 0;
    }
    pthread_mutex_lock(&p->lock);
    if (atomic_load_explicit(&p->ended, memory_order_relaxed)) {
        pthread_mutex_unlock(&p->lock);
        pthread_rwlock_unlock(&shards[sh].lock);
        edrv__msg_drop(m); /* a dead process's message, as in Erlang */
        return 0;
    }
    edrv__mbox_append(p, m);
    pthread_mutex_unlock(&p->lock);
    pthread_rwlock_unlock(&shards[sh].lock);
    return 1;
}

EDRV_API int edrv_process_flag(edrv_proc *p, edrv_proc_flag flag, int value) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_process_flag", &pid);
    if (rc < 0)
        return rc;
    if (flag != EDRV_TRAP_EXIT || (value != 0 && value != 1))
        return edrv__fail(EDRV_EINVAL, "edrv_process_flag: flag %d, value %d", (int)flag, value);
    if (p->fwd && !value)
        return edrv__fail(EDRV_EINVAL, "edrv_process_flag: a forwarding process traps exits");
    pthread_mutex_lock(&p->lock);
    int old = p->trap_exit;
    p->trap_exit = value;
    pthread_mutex_unlock(&p->lock);
    return old;
}

EDRV_API int edrv_proc_exit_reason(edrv_proc *p, edrv_msg *reason) {
    if (!p || p->magic != PROC_LIVE || !reason)
        return edrv__fail(EDRV_EINVAL, "edrv_proc_exit_reason: %s",
                          reason ? "not a live process" : "NULL reason");
    reason->data = NULL;
    reason->len = 0;
    if (!atomic_load_explicit(&p->ended, memory_order_acquire))
        return edrv__fail(EDRV_EINVAL, "edrv_proc_exit_reason: <0.%llu.0> was not ended by an "
                          "exit signal", (unsigned long long)p->pid);
    const mbox_msg *e = p->ended_by;
    int at = edrv__exit_reason_at(e);
    if (at < 0)
        return edrv__fail(EDRV_EBADTERM, "edrv_proc_exit_reason: a malformed exit signal");
    mbox_msg *m = edrv__msg_new(e->len - (size_t)at + 1);
    if (!m)
        return edrv__fail(EDRV_ENOMEM, "edrv_proc_exit_reason: out of memory");
    m->data[0] = (char)131;
    memcpy(m->data + 1, e->data + at, e->len - (size_t)at);
    reason->data = m->data;
    reason->len = m->len;
    return 0;
}

EDRV_API int edrv_receive(edrv_proc *p, long timeout_ms, edrv_msg *msg) {
    uint64_t pid = 0;
    int rc = edrv__proc_caller(p, "edrv_receive", &pid);
    if (rc < 0)
        return rc;
    if (!msg || p->fwd)
        return edrv__fail(EDRV_EINVAL, "edrv_receive: %s", msg ? "a forwarding process has no "
                          "mailbox" : "NULL message");
    msg->data = NULL;
    msg->len = 0;
    struct timespec deadline;
    bool timed = false; /* the deadline is set: only once the mailbox is found empty */
    pthread_mutex_lock(&p->lock);
    p->receivers++;
    while (!p->head && timeout_ms != 0 && !p->exiting && !atomic_load(&p->ended)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&p->cond, &p->lock);
            continue;
        }
        if (!timed) {
            edrv__deadline_in(timeout_ms, &deadline);
            timed = true;
        }
        if (pthread_cond_timedwait(&p->cond, &p->lock, &deadline) == ETIMEDOUT)
            break;
    }
    if (--p->receivers == 0 && p->exiting)
        pthread_cond_broadcast(&p->cond); /* edrv_proc_free waits for this */
    if (p->exiting) {
        pthread_mutex_unlock(&p->lock);
        return edrv__fail(EDRV_ENOPROC, "edrv_receive: <0.%llu.0> was freed meanwhile",
                          (unsigned long long)pid);
    }
    if (atomic_load(&p->ended)) {
        pthread_mutex_unlock(&p->lock);
        return ended_error(p, "edrv_receive");
    }
    mbox_msg *m = p->head;
    if (m) {
        p->head = m->next;
        if (!p->head)
            p->tail = NULL;
        p->count--;
    }
    pthread_mutex_unlock(&p->lock);
    if (!m)
        return edrv__fail(EDRV_ETIMEDOUT, "no message within %ld ms", timeout_ms);
    /* The message's bytes are handed out in place: data points into the block,
     * and edrv_msg_free finds the block again from it. */
    msg->data = m->data;
    msg->len = m->len;
    return 0;
}

EDRV_API void edrv_msg_free(edrv_msg *msg) {
    if (!msg || !msg->data)
        return;
    edrv__msg_drop((mbox_msg *)(msg->data - offsetof(mbox_msg, data)));
    msg->data = NULL;
    msg->len = 0;
}
