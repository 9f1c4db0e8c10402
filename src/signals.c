/*
 * signals.c: what passes between processes: exit signals, links, monitors,
 * registered names, and wait sets.
 *
 * Each process keeps, under its own lock, the pids it is linked to, the
 * monitors others hold on it (mons_in: watcher and reference) and the ones
 * it holds (mons_out: reference and target). A link is kept at both ends,
 * a monitor too. Nothing here ever holds two processes' locks at once: a
 * change at both ends is made one end after the other, in an order that
 * makes every race come out as in Erlang:
 *
 *   - link(A, B) puts B in A's set first, then A in B's (unless B is dead:
 *     then B leaves A's set again and A gets noproc). B's end takes its set
 *     under its lock and marks it dead in the same hold, so A either is in
 *     the set B takes, or sees B dead.
 *   - A signal that comes over a link is delivered only if the receiver
 *     still has the link (and it leaves the set then), so that once
 *     unlink(A, B) has taken B out of A's set, no signal of that link
 *     reaches A, as unlink/1 promises. A DOWN is delivered only if its
 *     watcher still holds the monitor (demonitor/1's promise).
 *
 * A process's end (edrv__proc_die for one that exits or is freed, or an
 * exit signal that ends it) takes its links, monitors and name in one hold
 * of its lock into an end record, which run_ends then carries out with no
 * lock held: each linked process gets the exit signal, each watcher its
 * DOWN, each target of its own monitors forgets them, and its name is
 * freed. A signal may end another process in turn; its record joins the
 * running thread's queue rather than the C stack, so a chain of 100 000
 * linked processes costs no stack.
 *
 * A wait set (edrv_waitset) lets one thread wait for many processes: a
 * process in a set is put on the set's ready list when a message comes to
 * it or an exit signal ends it, unless it is on the list already. Lock
 * order: a shard's lock -> a process's lock -> its set's lock; the
 * registry's lock comes before all of them.
 */
#include "internal.h"
#include "idmap.h"

#include <ei.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- small vectors ---------------------------------------------------------- */

/* Room for one more element in a vector of `size`-byte elements; -1 when
 * out of memory. */
static int grow(void **v, uint32_t n, uint32_t *cap, size_t size) {
    if (n < *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 4;
    void *nv = edrv__realloc(EDRV_MEM_SYSTEM, *v, (size_t)ncap * size);
    if (!nv)
        return -1;
    *v = nv;
    *cap = ncap;
    return 0;
}

static bool link_has(const edrv_proc *p, uint64_t pid) {
    for (uint32_t i = 0; i < p->links.n; i++)
        if (p->links.v[i] == pid)
            return true;
    return false;
}

/* Adds pid to p's links (p->lock held): 0, or -1 when out of memory. */
static int link_add(edrv_proc *p, uint64_t pid) {
    if (link_has(p, pid))
        return 0;
    if (grow((void **)&p->links.v, p->links.n, &p->links.cap, sizeof *p->links.v) < 0)
        return -1;
    p->links.v[p->links.n++] = pid;
    return 0;
}

/* Takes pid out of p's links (p->lock held); whether it was there. */
static bool link_del(edrv_proc *p, uint64_t pid) {
    for (uint32_t i = 0; i < p->links.n; i++)
        if (p->links.v[i] == pid) {
            p->links.v[i] = p->links.v[--p->links.n];
            return true;
        }
    return false;
}

static int mon_add(edrv_mons *s, uint64_t ref, uint64_t pid) {
    if (grow((void **)&s->v, s->n, &s->cap, sizeof *s->v) < 0)
        return -1;
    s->v[s->n++] = (edrv_mon){ref, pid};
    return 0;
}

/* Takes the entry of ref out of s; its pid, or 0 if none. */
static uint64_t mon_del(edrv_mons *s, uint64_t ref) {
    for (uint32_t i = 0; i < s->n; i++)
        if (s->v[i].ref == ref) {
            uint64_t pid = s->v[i].pid;
            s->v[i] = s->v[--s->n];
            return pid;
        }
    return 0;
}

/* ---- reasons and messages --------------------------------------------------- */

/* A reason: one term's ETF bytes, without the version byte. */
typedef struct {
    const char *p;
    size_t len;
} reason_t;

static const char normal_etf[] = {(char)ERL_SMALL_ATOM_UTF8_EXT, 6, 'n', 'o', 'r', 'm', 'a', 'l'};
static const char killed_etf[] = {(char)ERL_SMALL_ATOM_UTF8_EXT, 6, 'k', 'i', 'l', 'l', 'e', 'd'};
static const char noproc_etf[] = {(char)ERL_SMALL_ATOM_UTF8_EXT, 6, 'n', 'o', 'p', 'r', 'o', 'c'};
#define REASON(a) ((reason_t){a, sizeof a})

/* Whether r is the atom `name` (in any of ETF's atom encodings). */
static bool reason_is(reason_t r, const char *name) {
    unsigned char t = r.len ? (unsigned char)r.p[0] : 0;
    if (t != ERL_ATOM_EXT && t != ERL_SMALL_ATOM_EXT && t != ERL_ATOM_UTF8_EXT &&
        t != ERL_SMALL_ATOM_UTF8_EXT)
        return false;
    char a[MAXATOMLEN_UTF8];
    int i = 0;
    return ei_decode_atom_as(r.p, &i, a, sizeof a, ERLANG_UTF8, NULL, NULL) == 0 &&
           strcmp(a, name) == 0;
}

typedef struct {
    const char *tag; /* "EXIT" or "DOWN" */
    uint64_t from;   /* the pid the signal is from */
    uint64_t ref;    /* DOWN: the monitor's reference */
    reason_t r;
} signal_msg;

static void write_signal(etf_w *w, const signal_msg *s) {
    edrv__etf_version(w);
    if (s->tag[0] == 'E') { /* {'EXIT', From, Reason} */
        edrv__etf_tuple(w, 3);
        edrv__etf_atom(w, "EXIT");
    } else { /* {'DOWN', Ref, process, Pid, Reason} */
        edrv__etf_tuple(w, 5);
        edrv__etf_atom(w, "DOWN");
        edrv__etf_ref(w, s->ref);
        edrv__etf_atom(w, "process");
    }
    edrv__etf_pid(w, s->from);
    edrv__etf_raw(w, s->r.p, s->r.len);
}

/* The signal's message, or NULL (warned) when out of memory. */
static mbox_msg *signal_msg_new(const signal_msg *s, uint64_t to) {
    etf_w w = {0};
    write_signal(&w, s);
    mbox_msg *m = edrv__msg_new(w.idx);
    if (!m) {
        edrv__warn("out of memory: the %s message from <0.%llu.0> to <0.%llu.0> is lost", s->tag,
                   (unsigned long long)s->from, (unsigned long long)to);
        return NULL;
    }
    w = (etf_w){.buf = m->data};
    write_signal(&w, s);
    return m;
}

/* ---- a process's end -------------------------------------------------------- */

typedef struct proc_end {
    struct proc_end *next;
    uint64_t pid;
    uint64_t *links;
    uint32_t nlinks;
    edrv_mons in, out;
    char *name;
    size_t rlen;
    char r[]; /* the reason */
} proc_end;

/* Marks p dead and takes what its end must carry out (p->lock held): NULL
 * when there is nothing to do, or no memory (warned). */
static proc_end *take_end(edrv_proc *p, reason_t r) {
    __atomic_store_n(&p->dead, true, __ATOMIC_RELAXED); /* edrv__proc_alive reads it unlocked */
    if (!p->links.n && !p->mons_in.n && !p->mons_out.n && !p->name)
        return NULL;
    proc_end *e = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *e + r.len);
    if (e) {
        *e = (proc_end){.pid = p->pid, .links = p->links.v, .nlinks = p->links.n,
                        .in = p->mons_in, .out = p->mons_out, .name = p->name, .rlen = r.len};
        memcpy(e->r, r.p, r.len);
    } else {
        edrv__warn("out of memory: the end of <0.%llu.0> reaches none of its links and "
                   "monitors", (unsigned long long)p->pid);
        edrv__free(p->links.v);
        edrv__free(p->mons_in.v);
        edrv__free(p->mons_out.v);
        edrv__free(p->name); /* its entry is dropped when the name is next registered */
    }
    p->links = (edrv_pids){0};
    p->mons_in = p->mons_out = (edrv_mons){0};
    p->name = NULL;
    return e;
}

static void run_ends(proc_end *e);
static void unregister_dead(char *name, uint64_t pid);

typedef enum {
    SIG_LINK, /* from a linked process that ended */
    SIG_EXIT  /* exit/2 */
} sig_kind;

/* Ends p, which does not trap exits, with the signal m (its reason at
 * r): p->lock held. Its end record, if any, comes back in *e. */
static void end_by(edrv_proc *p, mbox_msg *m, reason_t r, proc_end **e) {
    p->ended_by = m;
    atomic_store_explicit(&p->ended, true, memory_order_release);
    pthread_cond_broadcast(&p->cond); /* receivers wake to EDRV_EEXITED */
    edrv__ws_notify(p);
    *e = take_end(p, r);
}

/* Sends the exit signal of kind k from `from` with reason r to the process
 * `to`. Returns the end record of `to` if the signal ended it. */
static proc_end *signal_to(uint64_t to, uint64_t from, sig_kind k, reason_t r, bool *ended) {
    bool kill = k == SIG_EXIT && reason_is(r, "kill");
    bool normal = reason_is(r, "normal");
    proc_end *e = NULL;
    *ended = false;
    edrv_proc *p = edrv__proc_acquire(to);
    if (!p)
        return NULL;
    if (p->dead || atomic_load_explicit(&p->ended, memory_order_relaxed) ||
        (k == SIG_LINK && !link_del(p, from))) {
        edrv__proc_release(p); /* dead, or no longer linked: dropped */
        return NULL;
    }
    if (kill || (!p->trap_exit && (!normal || (k == SIG_EXIT && from == to)))) {
        reason_t er = kill ? REASON(killed_etf) : r;
        mbox_msg *m = signal_msg_new(&(signal_msg){"EXIT", from, 0, er}, to);
        if (m) {
            end_by(p, m, (reason_t){m->data + m->len - er.len, er.len}, &e);
            *ended = true;
        }
    } else if (p->trap_exit) {
        mbox_msg *m = signal_msg_new(&(signal_msg){"EXIT", from, 0, r}, to);
        if (m)
            edrv__mbox_append_exit(p, m);
    }
    edrv__proc_release(p);
    return e;
}

/* A DOWN message to the watcher of monitor ref, if it still holds it. */
static void down_to(uint64_t watcher, uint64_t ref, uint64_t from, reason_t r) {
    edrv_proc *p = edrv__proc_acquire(watcher);
    if (!p)
        return;
    if (!p->dead && !atomic_load_explicit(&p->ended, memory_order_relaxed) &&
        mon_del(&p->mons_out, ref)) {
        mbox_msg *m = signal_msg_new(&(signal_msg){"DOWN", from, ref, r}, watcher);
        if (m)
            edrv__mbox_append(p, m);
    }
    edrv__proc_release(p);
}

/* The monitor ref, which watcher held on target, is gone: target forgets it. */
static void forget_mon(uint64_t target, uint64_t ref) {
    edrv_proc *p = edrv__proc_acquire(target);
    if (!p)
        return;
    mon_del(&p->mons_in, ref);
    edrv__proc_release(p);
}

/* The ends queued on this thread: a signal that ends a process queues its
 * end here rather than carrying it out inside the signal's own. */
static _Thread_local struct {
    proc_end *head, *tail;
    bool running;
} ends;

static void run_ends(proc_end *e) {
    if (!e)
        return;
    e->next = NULL;
    if (ends.tail)
        ends.tail->next = e;
    else
        ends.head = e;
    ends.tail = e;
    if (ends.running)
        return;
    ends.running = true;
    while ((e = ends.head)) {
        reason_t r = {e->r, e->rlen};
        for (uint32_t i = 0; i < e->nlinks; i++) {
            bool ended;
            proc_end *next = signal_to(e->links[i], e->pid, SIG_LINK, r, &ended);
            if (ended)
                edrv__proc_ended(e->links[i]); /* its ports close */
            if (next) {
                next->next = NULL;
                ends.tail->next = next;
                ends.tail = next;
            }
        }
        for (uint32_t i = 0; i < e->in.n; i++)
            down_to(e->in.v[i].pid, e->in.v[i].ref, e->pid, r);
        for (uint32_t i = 0; i < e->out.n; i++)
            forget_mon(e->out.v[i].pid, e->out.v[i].ref);
        if (e->name)
            unregister_dead(e->name, e->pid);
        ends.head = e->next;
        if (!ends.head)
            ends.tail = NULL;
        edrv__free(e->links);
        edrv__free(e->in.v);
        edrv__free(e->out.v);
        edrv__free(e);
    }
    ends.running = false;
}

void *edrv__proc_die(edrv_proc *p, const char *reason, size_t len) {
    pthread_mutex_lock(&p->lock);
    proc_end *e = NULL;
    if (!p->dead)
        e = take_end(p, reason ? (reason_t){reason, len} : REASON(normal_etf));
    edrv__ws_leave(p);
    pthread_mutex_unlock(&p->lock);
    return e;
}

void edrv__proc_die_run(void *end) {
    run_ends(end);
}

void edrv__exit_signal(uint64_t pid, mbox_msg *m, bool normal) {
    edrv_proc *p = edrv__proc_acquire(pid);
    proc_end *e = NULL;
    bool ends_now = false;
    if (p) {
        if (p->dead || atomic_load_explicit(&p->ended, memory_order_relaxed)) {
            /* dead already: dropped */
        } else if (p->trap_exit) {
            edrv__mbox_append_exit(p, m);
            m = NULL;
        } else if (!normal) {
            int at = edrv__exit_reason_at(m);
            end_by(p, m, (reason_t){m->data + at, m->len - (size_t)at}, &e);
            m = NULL;
            ends_now = true;
        }
        edrv__proc_release(p);
    }
    if (m)
        edrv__msg_drop(m);
    if (ends_now)
        edrv__proc_ended(pid);
    run_ends(e);
}

/* ---- links, exit/2, monitors: the API --------------------------------------- */

/* The ETF term etf (version byte first) as a reason, or EDRV_EBADTERM. */
static int reason_arg(const void *etf, size_t len, const char *fn, reason_t *r) {
    if (!etf || len < 2 || edrv__etf_measure(etf, len) != (ssize_t)len)
        return edrv__fail(EDRV_EBADTERM, "%s: the reason is not one term in external term "
                          "format", fn);
    *r = (reason_t){(const char *)etf + 1, len - 1};
    return 0;
}

EDRV_API int edrv_link(edrv_proc *p, uint64_t pid) {
    uint64_t self;
    int rc = edrv__proc_caller(p, "edrv_link", &self);
    if (rc < 0 || pid == self)
        return rc;
    pthread_mutex_lock(&p->lock);
    bool dead = p->dead;
    rc = dead ? 0 : link_add(p, pid);
    pthread_mutex_unlock(&p->lock);
    if (dead) /* ended by a signal since the check above */
        return edrv__proc_caller(p, "edrv_link", &self);
    if (rc < 0)
        return edrv__fail(EDRV_ENOMEM, "edrv_link: out of memory");
    edrv_proc *t = edrv__proc_acquire(pid);
    bool gone = !t || t->dead || atomic_load_explicit(&t->ended, memory_order_relaxed);
    if (!gone && link_add(t, self) < 0)
        rc = edrv__fail(EDRV_ENOMEM, "edrv_link: out of memory");
    if (t)
        edrv__proc_release(t);
    if (!gone && rc == 0) {
        /* An exit signal that ended p between its two halves of the link
         * took p's set before pid was linked at pid's end: pid gets p's exit
         * here (once: signal_to delivers only while pid has the link). */
        pthread_mutex_lock(&p->lock);
        mbox_msg *why = p->dead ? p->ended_by : NULL;
        int at = why ? edrv__exit_reason_at(why) : -1;
        reason_t r = at > 0 ? (reason_t){why->data + at, why->len - (size_t)at} : (reason_t){0};
        char *copy = at > 0 ? edrv__alloc(EDRV_MEM_SYSTEM, r.len) : NULL;
        if (copy)
            memcpy(copy, r.p, r.len);
        else if (at > 0)
            edrv__warn("out of memory: the exit of <0.%llu.0> does not reach <0.%llu.0>",
                       (unsigned long long)self, (unsigned long long)pid);
        pthread_mutex_unlock(&p->lock);
        if (copy) {
            bool ended;
            proc_end *e = signal_to(pid, self, SIG_LINK, (reason_t){copy, r.len}, &ended);
            if (ended)
                edrv__proc_ended(pid);
            run_ends(e);
            edrv__free(copy);
        }
        return 0;
    }
    pthread_mutex_lock(&p->lock);
    link_del(p, pid);
    bool trap = p->trap_exit;
    if (gone && trap) {
        /* as link/1 in a process that traps exits: {'EXIT', Pid, noproc} */
        mbox_msg *m = signal_msg_new(&(signal_msg){"EXIT", pid, 0, REASON(noproc_etf)}, self);
        if (m)
            edrv__mbox_append_exit(p, m);
    }
    pthread_mutex_unlock(&p->lock);
    if (rc < 0)
        return rc;
    return trap ? 0 : edrv__fail(EDRV_ENOPROC, "edrv_link: <0.%llu.0> is not alive",
                                 (unsigned long long)pid);
}

EDRV_API int edrv_unlink(edrv_proc *p, uint64_t pid) {
    uint64_t self;
    int rc = edrv__proc_caller(p, "edrv_unlink", &self);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&p->lock);
    link_del(p, pid);
    pthread_mutex_unlock(&p->lock);
    edrv_proc *t = edrv__proc_acquire(pid);
    if (t) {
        link_del(t, self);
        edrv__proc_release(t);
    }
    return 0;
}

EDRV_API int edrv_exit(edrv_proc *p, uint64_t pid, const void *reason, size_t len) {
    uint64_t self;
    reason_t r = {NULL, 0};
    int rc = edrv__proc_caller(p, "edrv_exit", &self);
    if (rc < 0 || (rc = reason_arg(reason, len, "edrv_exit", &r)) < 0)
        return rc;
    bool ended;
    proc_end *e = signal_to(pid, self, SIG_EXIT, r, &ended);
    if (ended)
        edrv__proc_ended(pid);
    run_ends(e);
    return 0;
}

EDRV_API int edrv_proc_exit(edrv_proc *p, const void *reason, size_t len) {
    reason_t r = {NULL, 0};
    if (!p)
        return edrv__fail(EDRV_EINVAL, "edrv_proc_exit: NULL process");
    int rc = reason_arg(reason, len, "edrv_proc_exit", &r);
    if (rc < 0)
        return rc;
    return edrv__proc_free_with(p, r.p, r.len);
}

static _Atomic uint64_t next_ref = 1;

EDRV_API int edrv_monitor(edrv_proc *p, uint64_t pid, uint64_t *ref) {
    uint64_t self;
    int rc = edrv__proc_caller(p, "edrv_monitor", &self);
    if (rc < 0)
        return rc;
    if (!ref)
        return edrv__fail(EDRV_EINVAL, "edrv_monitor: NULL ref");
    uint64_t id = atomic_fetch_add(&next_ref, 1);
    pthread_mutex_lock(&p->lock);
    bool dead = p->dead;
    rc = dead ? 0 : mon_add(&p->mons_out, id, pid);
    pthread_mutex_unlock(&p->lock);
    if (dead)
        return edrv__proc_caller(p, "edrv_monitor", &self);
    if (rc < 0)
        return edrv__fail(EDRV_ENOMEM, "edrv_monitor: out of memory");
    edrv_proc *t = edrv__proc_acquire(pid);
    bool gone = !t || t->dead || atomic_load_explicit(&t->ended, memory_order_relaxed);
    if (!gone && mon_add(&t->mons_in, id, self) < 0)
        rc = edrv__fail(EDRV_ENOMEM, "edrv_monitor: out of memory");
    if (t)
        edrv__proc_release(t);
    if (!gone && rc == 0) {
        /* p ended meanwhile: its end missed this monitor at the target */
        pthread_mutex_lock(&p->lock);
        dead = p->dead;
        pthread_mutex_unlock(&p->lock);
        if (dead)
            forget_mon(pid, id);
    }
    if (rc < 0) {
        pthread_mutex_lock(&p->lock);
        mon_del(&p->mons_out, id);
        pthread_mutex_unlock(&p->lock);
        return rc;
    }
    if (gone) /* as monitor/2 of a process that is not alive: DOWN with noproc */
        down_to(self, id, pid, REASON(noproc_etf));
    *ref = id;
    return 0;
}

EDRV_API int edrv_demonitor(edrv_proc *p, uint64_t ref) {
    uint64_t self;
    int rc = edrv__proc_caller(p, "edrv_demonitor", &self);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&p->lock);
    uint64_t target = mon_del(&p->mons_out, ref);
    pthread_mutex_unlock(&p->lock);
    if (target)
        forget_mon(target, ref);
    return target != 0;
}

EDRV_API int edrv_send(uint64_t pid, const void *etf, size_t len) {
    if (!etf || len < 2 || edrv__etf_measure(etf, len) != (ssize_t)len)
        return edrv__fail(EDRV_EBADTERM, "edrv_send: the message is not one term in external "
                          "term format");
    mbox_msg *m = edrv__msg_new(len);
    if (!m)
        return edrv__fail(EDRV_ENOMEM, "edrv_send: out of memory for %zu bytes", len);
    memcpy(m->data, etf, len);
    edrv__deliver(pid, m);
    return 0;
}

EDRV_API int edrv_is_process_alive(uint64_t pid) {
    return edrv__proc_alive(pid);
}

/* ---- registered names ------------------------------------------------------- */

typedef struct name_entry {
    struct name_entry *next; /* same hash */
    uint64_t pid;
    char name[];
} name_entry;

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static idmap names; /* hash of the name -> its chain */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a; 0 is never a key of idmap's */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h ? h : 1;
}

/* The entry of name, and the one before it on its chain (NULL for the
 * first); names_lock held. */
static name_entry *name_find(const char *name, uint64_t h, name_entry **prev) {
    *prev = NULL;
    for (name_entry *e = edrv__idmap_get(&names, h); e; *prev = e, e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static void name_remove(uint64_t h, name_entry *prev, name_entry *e) {
    if (prev)
        prev->next = e->next;
    else if (e->next)
        edrv__idmap_set(&names, h, e->next);
    else
        edrv__idmap_del(&names, h);
    if (names.live == 0) /* the last name: give the table back */
        edrv__idmap_free(&names);
    edrv__free(e);
}

static bool name_ok(const char *name) {
    size_t n = name ? strnlen(name, 256) : 0;
    return n > 0 && n < 256 && strcmp(name, "undefined") != 0;
}

EDRV_API int edrv_register(const char *name, uint64_t pid) {
    if (!name_ok(name))
        return edrv__fail(EDRV_EBADARG, "edrv_register: %s",
                          name && *name && strnlen(name, 256) < 256 ? "'undefined' is not a name"
                                                                    : "a name is 1 to 255 bytes");
    uint64_t h = name_hash(name);
    size_t len = strlen(name);
    pthread_mutex_lock(&names_lock);
    name_entry *prev, *old = name_find(name, h, &prev);
    if (old && edrv__proc_alive(old->pid)) {
        uint64_t other = old->pid;
        pthread_mutex_unlock(&names_lock);
        return edrv__fail(EDRV_EBADARG, "edrv_register: '%s' is the name of <0.%llu.0>", name,
                          (unsigned long long)other);
    }
    if (old) /* the name of a process that ended, not yet taken away */
        name_remove(h, prev, old);
    int rc = 0;
    edrv_proc *p = edrv__proc_acquire(pid);
    name_entry *e = NULL;
    char *copy = NULL;
    if (!p || p->dead || atomic_load_explicit(&p->ended, memory_order_relaxed))
        rc = edrv__fail(EDRV_EBADARG, "edrv_register: <0.%llu.0> is not alive",
                        (unsigned long long)pid);
    else if (p->name)
        rc = edrv__fail(EDRV_EBADARG, "edrv_register: <0.%llu.0> is registered as '%s'",
                        (unsigned long long)pid, p->name);
    else if (!(e = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *e + len + 1)) ||
             !(copy = edrv__alloc(EDRV_MEM_SYSTEM, len + 1)))
        rc = edrv__fail(EDRV_ENOMEM, "edrv_register: out of memory");
    if (rc == 0) {
        e->pid = pid;
        memcpy(e->name, name, len + 1);
        e->next = edrv__idmap_get(&names, h);
        if (e->next) {
            edrv__idmap_set(&names, h, e);
        } else if (edrv__idmap_put(&names, h, e) < 0) {
            rc = edrv__fail(EDRV_ENOMEM, "edrv_register: out of memory");
        }
        if (rc == 0) {
            memcpy(copy, name, len + 1);
            p->name = copy;
            e = NULL;
            copy = NULL;
        }
    }
    if (p)
        edrv__proc_release(p);
    pthread_mutex_unlock(&names_lock);
    edrv__free(e);
    edrv__free(copy);
    return rc;
}

EDRV_API int edrv_unregister(const char *name) {
    if (!name)
        return edrv__fail(EDRV_EBADARG, "edrv_unregister: NULL name");
    uint64_t h = name_hash(name);
    pthread_mutex_lock(&names_lock);
    name_entry *prev, *e = name_find(name, h, &prev);
    edrv_proc *p = e ? edrv__proc_acquire(e->pid) : NULL;
    if (!p || p->dead || atomic_load_explicit(&p->ended, memory_order_relaxed)) {
        if (p)
            edrv__proc_release(p);
        pthread_mutex_unlock(&names_lock);
        return edrv__fail(EDRV_EBADARG, "edrv_unregister: '%s' is not a registered name", name);
    }
    edrv__free(p->name);
    p->name = NULL;
    edrv__proc_release(p);
    name_remove(h, prev, e);
    pthread_mutex_unlock(&names_lock);
    return 0;
}

EDRV_API uint64_t edrv_whereis(const char *name) {
    if (!name)
        return 0;
    uint64_t h = name_hash(name);
    pthread_mutex_lock(&names_lock);
    name_entry *prev, *e = name_find(name, h, &prev);
    uint64_t pid = e && edrv__proc_alive(e->pid) ? e->pid : 0;
    pthread_mutex_unlock(&names_lock);
    return pid;
}

/* The name of a process that ended goes, unless another process has it now
 * (it can only have been taken after this one's end took it). */
static void unregister_dead(char *name, uint64_t pid) {
    uint64_t h = name_hash(name);
    pthread_mutex_lock(&names_lock);
    name_entry *prev, *e = name_find(name, h, &prev);
    if (e && e->pid == pid)
        name_remove(h, prev, e);
    pthread_mutex_unlock(&names_lock);
    edrv__free(name);
}

/* ---- wait sets --------------------------------------------------------------- */

struct edrv_waitset {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    edrv_proc *head, *tail; /* ready, in the order they became so */
    size_t members;
};

EDRV_API edrv_waitset *edrv_waitset_new(void) {
    edrv_waitset *w = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *w);
    if (!w) {
        edrv__fail(EDRV_ENOMEM, "edrv_waitset_new: out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->lock, NULL);
    edrv__cond_init_monotonic(&w->cond);
    return w;
}

EDRV_API int edrv_waitset_free(edrv_waitset *w) {
    if (!w)
        return 0;
    pthread_mutex_lock(&w->lock);
    size_t n = w->members;
    pthread_mutex_unlock(&w->lock);
    if (n)
        return edrv__fail(EDRV_EINVAL, "edrv_waitset_free: %zu processes are still in the set", n);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    edrv__free(w);
    return 0;
}

/* p's set hears of p (p->lock held). */
void edrv__ws_notify(edrv_proc *p) {
    edrv_waitset *w = p->ws;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    if (!p->ws_ready) {
        p->ws_ready = true;
        p->ws_next = NULL;
        p->ws_prev = w->tail;
        if (w->tail)
            w->tail->ws_next = p;
        else
            w->head = p;
        w->tail = p;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

static void ws_unready(edrv_waitset *w, edrv_proc *p) {
    if (!p->ws_ready)
        return;
    if (p->ws_prev)
        p->ws_prev->ws_next = p->ws_next;
    else
        w->head = p->ws_next;
    if (p->ws_next)
        p->ws_next->ws_prev = p->ws_prev;
    else
        w->tail = p->ws_prev;
    p->ws_ready = false;
}

/* p leaves its set (p->lock held). */
void edrv__ws_leave(edrv_proc *p) {
    edrv_waitset *w = p->ws;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    ws_unready(w, p);
    w->members--;
    p->ws_tag = NULL;
    pthread_mutex_unlock(&w->lock);
    p->ws = NULL;
}

EDRV_API int edrv_waitset_add(edrv_waitset *w, edrv_proc *p, void *tag) {
    uint64_t self;
    int rc = edrv__proc_caller(p, "edrv_waitset_add", &self);
    if (rc < 0 && rc != EDRV_EEXITED)
        return rc;
    pthread_mutex_lock(&p->lock);
    if (p->ws != w)
        edrv__ws_leave(p);
    if (w) {
        pthread_mutex_lock(&w->lock); /* the tag: read by edrv_waitset_wait */
        if (p->ws != w)
            w->members++;
        p->ws_tag = tag;
        pthread_mutex_unlock(&w->lock);
        p->ws = w;
    }
    /* what is there already counts as news */
    if (w && (p->head || atomic_load_explicit(&p->ended, memory_order_relaxed)))
        edrv__ws_notify(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

EDRV_API int edrv_waitset_wait(edrv_waitset *w, long timeout_ms, void **tags, int max) {
    if (!w || !tags || max < 1)
        return edrv__fail(EDRV_EINVAL, "edrv_waitset_wait: %s", !w ? "NULL set"
                                                                : "no room for a tag");
    struct timespec deadline;
    if (timeout_ms > 0)
        edrv__deadline_in(timeout_ms, &deadline);
    pthread_mutex_lock(&w->lock);
    while (!w->head && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&w->cond, &w->lock);
        else if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT)
            break;
    }
    int n = 0;
    while (w->head && n < max) {
        edrv_proc *p = w->head;
        ws_unready(w, p);
        tags[n++] = p->ws_tag;
    }
    pthread_mutex_unlock(&w->lock);
    return n;
}
