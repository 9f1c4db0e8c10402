/*
 * port.c: ports, their callbacks, and the messages they send.
 *
 * Who runs what: a port's callbacks, and every change of its state, run
 * under its unit (loop.c "units"), which this file asserts
 * (EDRV_ASSERT_UNIT): everything below but the driver interface's
 * any-thread functions (output from a pool thread, the port data locks, the
 * identity functions). What ports share (the table's indexes, timers, fds,
 * monitors, the driver registry) needs the emulator lock too: the request
 * operations hold it throughout, and a callback run on a fast path takes it
 * when its driver first asks for shared state. The table itself, busy ports
 * and admission are any thread's, in port_table.c.
 *
 * Life of a port, as ERTS does it (checked against OTP 25):
 *   STARTING  in `start`; output is delivered.
 *   ALIVE     callbacks run; output is delivered.
 *   CLOSING   port_close, or the owner's exit, found data in the driver
 *             queue: `flush` ran, output is dropped, timers, ready_async,
 *             port_control and port_call still run (port_command and
 *             port_close do not), and the port ends (as EXITING) once a
 *             callback empties the queue, or unloading or edrv_stop end it.
 *   EXITING   a failure or close was decided; output is dropped, a second
 *             driver_failure returns -1. Linked processes get the exit signal.
 *   STOPPING  in `stop`; output is delivered again (ERTS delivers it, after the
 *             exit signal).
 *   DEAD      gone from the table.
 * A failure decided inside a callback is applied when the callback returns, so
 * that `stop` never runs inside another callback of the same port.
 *
 * Messages: every message is written by one of the writers below through
 * send_built, which sizes it, allocates it once and delivers it.
 */
#include "internal.h"
#include "idmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void port_unhold(edrv_port_t *pt);

bool edrv__port_lock(edrv_port_t *pt) {
    atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
    return edrv__unit_enter(pt->unit);
}

void edrv__port_unlock(edrv_port_t *pt) {
    edrv__unit_exit(pt->unit);
    port_unhold(pt); /* the last reference frees it, and then its unit */
}

void edrv__port_put(edrv_port_t *pt) {
    port_unhold(pt);
}

static bool state_ok(const edrv_port_t *pt, bool closing_ok) {
    port_state st = atomic_load(&pt->state);
    return st == PORT_ALIVE || (closing_ok && st == PORT_CLOSING);
}

/* Takes the unit of pt (which the caller holds a reference to) for one of
 * the operations below: waiting for it, or, with `try`, only if it is free
 * or already the caller's (EDRV__NOT_FAST otherwise). 0 when the port is
 * alive (or, with closing_ok, closing): the caller runs, then lets the unit
 * go (edrv__port_unlock); else the error, the unit let go. OTP 25 still
 * serves port_control, port_call and port_info on a port that waits for its
 * driver queue to empty (checked in erl), while port_command and port_close
 * raise badarg. */
static int port_enter(edrv_port_t *pt, bool try, bool closing_ok) {
    if (try && !edrv__unit_held(pt->unit)) {
        if (!edrv__unit_try(pt->unit))
            return EDRV__NOT_FAST;
        atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
    } else {
        edrv__port_lock(pt); /* waits, or nests in the caller's own hold */
    }
    if (state_ok(pt, closing_ok))
        return 0;
    edrv__port_unlock(pt);
    int err = edrv__port_check(pt->id);
    return err ? err : edrv__fail(EDRV_ECLOSED, "#Port<0.%llu> is closed",
                                  (unsigned long long)pt->id);
}

/* ---- messages ------------------------------------------------------------------ */

typedef void (*msg_writer)(etf_w *w, const void *ctx);

/* Writes a message with fn, sizing it first, for pid. `what` names it in
 * warnings. NULL if it could not be built: a part too big for the term
 * format, or no memory (both with a warning on stderr). */
static mbox_msg *build_msg(const char *what, uint64_t pid, msg_writer fn, const void *ctx) {
    etf_w w = {0};
    edrv__etf_version(&w);
    fn(&w, ctx);
    if (w.refused) {
        /* ERTS builds the message in memory and sends it; in ETF it cannot be
         * one term, and a cut or lost message would be worse than none. */
        edrv__warn("%s: a %s of %llu %s is more than one term in external term format holds "
                   "(%u): the message to <0.%llu.0> is not sent", what, w.refused,
                   (unsigned long long)w.refused_size,
                   strcmp(w.refused, "binary") == 0 ? "bytes" : "elements", EDRV_ETF_MAX_COUNT,
                   (unsigned long long)pid);
        return NULL;
    }
    mbox_msg *m = edrv__msg_new(w.idx);
    if (!m) {
        edrv__warn("%s: out of memory for %zu bytes: the message to <0.%llu.0> is lost", what,
                   w.idx, (unsigned long long)pid);
        return NULL;
    }
    w = (etf_w){.buf = m->data};
    edrv__etf_version(&w);
    fn(&w, ctx);
    return m;
}

/* build_msg, then delivers it to pid. Returns 1 if delivered, 0 if pid is
 * gone, -1 if it could not be built. */
static int send_built_as(const char *what, uint64_t pid, msg_writer fn, const void *ctx) {
    mbox_msg *m = build_msg(what, pid, fn, ctx);
    return m ? edrv__deliver(pid, m) : -1;
}

static int send_built(uint64_t pid, msg_writer fn, const void *ctx) {
    return send_built_as("a message", pid, fn, ctx);
}

/* {Port, {data, D}}: the bytes of the pieces (the header first, then the
 * data segments) as one list on a list port, or on a binary port as
 * [H1, ..., Hn, <<S1>>, ... | <<Slast>>] (just the binary when there is
 * nothing in front of it). With the header alone (no data buffer at all),
 * D is a list on either port. */
typedef struct {
    uint64_t port;
    bool binary;
    const etf_piece *pieces; /* pieces[0] is the header, maybe empty */
    size_t n;
} data_msg;

static void write_data_msg(etf_w *w, const void *ctx) {
    const data_msg *d = ctx;
    edrv__etf_tuple(w, 2);
    edrv__etf_port(w, d->port);
    edrv__etf_tuple(w, 2);
    edrv__etf_atom(w, "data");
    if (!d->binary || d->n == 1) {
        edrv__etf_string(w, d->pieces, d->n);
        return;
    }
    uint64_t front = d->pieces[0].len + (d->n - 2);
    if (front) {
        edrv__etf_list(w, front);
        edrv__etf_byte_elements(w, d->pieces, 1);
    }
    for (size_t i = 1; i < d->n; i++)
        edrv__etf_binary(w, d->pieces[i].p, d->pieces[i].len);
}

/* Exit reasons: an atom or an integer. */
typedef struct {
    const char *atom; /* NULL: the integer */
    long n;
} reason;

typedef struct {
    uint64_t port;
    reason r;
} exit_msg;

static void write_exit_msg(etf_w *w, const void *ctx) {
    const exit_msg *e = ctx;
    edrv__etf_tuple(w, 3);
    edrv__etf_atom(w, "EXIT");
    edrv__etf_port(w, e->port);
    if (e->r.atom)
        edrv__etf_atom(w, e->r.atom);
    else
        edrv__etf_int(w, e->r.n);
}

/* The exit signal of pt, to its owner (linked): a message, or the owner's
 * end, as the owner traps exits or not (edrv__exit_signal). */
static void send_exit(edrv_port_t *pt, reason r) {
    exit_msg e = {pt->id, r};
    uint64_t owner = atomic_load(&pt->owner);
    mbox_msg *m = build_msg("an exit signal", owner, write_exit_msg, &e);
    if (m)
        edrv__exit_signal(owner, m, r.atom && strcmp(r.atom, "normal") == 0);
}

/* Sends {Port, {data, D}} from pieces (see data_msg). Returns 0, also when
 * the port drops output; -1 when the message could not be built (fn has
 * warned). */
/* The size of the common data messages, found without the sizing pass:
 * {Port, {data, <<Data>>}} (a binary port, no header) and {Port, {data,
 * "Data"}} (a list port, at most 65535 bytes in all); 0 for the others.
 * Every piece the sizes below stand for is written by write_data_msg. */
#define QUICK_DATA_MAX 0xffff
static size_t data_msg_size(const data_msg *d) {
    size_t head = 1 + 2 + edrv__etf_port_size(d->port) + 2 + 2 + 4; /* 131, {P, {data, */
    if (d->binary && d->n == 2 && d->pieces[0].len == 0 && d->pieces[1].len <= QUICK_DATA_MAX)
        return head + 5 + d->pieces[1].len; /* BINARY_EXT */
    if (!d->binary) {
        size_t total = 0;
        for (size_t i = 0; i < d->n; i++)
            total += d->pieces[i].len;
        if (total <= QUICK_DATA_MAX)
            return head + (total ? 3 + total : 1); /* STRING_EXT, or NIL_EXT */
    }
    return 0;
}

static int output_data(edrv_port_t *pt, const char *fn, const etf_piece *pieces, size_t n) {
    if (!pt || !edrv__port_outputs(pt))
        return 0;
    data_msg d = {pt->id, pt->binary, pieces, n};
    uint64_t owner = atomic_load(&pt->owner);
    size_t size = data_msg_size(&d);
    if (!size)
        return send_built_as(fn, owner, write_data_msg, &d) < 0 ? -1 : 0;
    /* One pass: the size is known. */
    mbox_msg *m = edrv__msg_new(size);
    if (!m) {
        edrv__warn("%s: out of memory for %zu bytes: the message to <0.%llu.0> is lost", fn,
                   size, (unsigned long long)owner);
        return -1;
    }
    etf_w w = {.buf = m->data};
    edrv__etf_version(&w);
    write_data_msg(&w, &d);
#ifdef EDRV_CHECK_OWNERSHIP /* Debug and sanitizer builds (ASan sees an overrun first) */
    if (w.idx != size) {
        fprintf(stderr, "edrv: %s:%d: data_msg_size said %zu bytes, write_data_msg wrote %zu\n",
                __FILE__, __LINE__, size, w.idx);
        abort();
    }
#endif
    edrv__deliver(owner, m);
    return 0;
}

/* ---- termination ------------------------------------------------------------------ */

static void enter(edrv_port_t *pt, uint64_t caller) {
    EDRV_ASSERT_UNIT(pt);
    pt->in_callback++;
    pt->caller = caller;
}

static void finish_exit(edrv_port_t *pt);

static int port_exit(edrv_port_t *pt, reason r, bool unlink_owner, bool signal);
static void port_release(edrv_port_t *pt);
static void end_if_flushed(edrv_port_t *pt);
static size_t queue_bytes(edrv_port_t *pt);

/* After a callback: a failure decided inside it takes effect, and a closing
 * port whose queue the callback emptied ends. */
static void leave(edrv_port_t *pt) {
    EDRV_ASSERT_UNIT(pt);
    if (--pt->in_callback > 0)
        return;
    port_state st = atomic_load(&pt->state);
    if (st == PORT_ALIVE && !pt->exit_pending)
        return; /* the common case, which needs no shared state */
    edrv__emulator_enter(); /* the port's end touches shared state */
    if (st == PORT_DEAD) { /* it ended inside the callback */
        port_release(pt);
        return;
    }
    if (pt->exit_pending)
        finish_exit(pt);
    else
        end_if_flushed(pt);
}

/* A closing port ends once its driver queue is empty: checked after each of
 * its callbacks, and after each of its async jobs, whose invoke may have
 * emptied the queue under the port data lock (the job's end is the port's
 * next event, as ERTS checks after each port task). */
static void end_if_flushed(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    if (pt->in_callback == 0 && atomic_load(&pt->state) == PORT_CLOSING && !queue_bytes(pt))
        port_exit(pt, (reason){"normal", 0}, false, true);
}

/* Decides the end of a port. The exit signal goes out at once (ERTS sends it
 * before stop runs); stop runs now, or when the current callback returns. */
static int port_exit(edrv_port_t *pt, reason r, bool unlink_owner, bool signal) {
    if (!edrv__emulator_enter() || !edrv__unit_held(pt->unit))
        return -1; /* not from a callback of the port */
    port_state st = atomic_load(&pt->state);
    if (st != PORT_ALIVE && st != PORT_STARTING && st != PORT_CLOSING)
        return -1;
    atomic_store(&pt->state, PORT_EXITING);
    edrv__busy_changed(); /* senders waiting on it fail now, as in ERTS */
    edrv__timer_cancel(pt);
    if (unlink_owner)
        pt->linked = false;
    if (signal && pt->linked)
        send_exit(pt, r);
    pt->exit_pending = true;
    if (pt->in_callback == 0)
        finish_exit(pt);
    return 0;
}

/* ---- port data locks ------------------------------------------------------------ */

/* A port data lock guards a port's data where pool threads share it, the
 * driver queue included (queue.c). The port holds one reference to the lock
 * from driver_pdl_create until it dies; drivers take more (any thread), and
 * the last one frees the lock. The lock in turn holds a reference to the
 * port's struct, as in ERTS, so that a pool thread holding the lock may still
 * pass the port to the queue functions after the port died: they see it dead
 * and fail. */
struct erl_drv_port_data_lock {
    pthread_mutex_t mtx;
    _Atomic ErlDrvSInt refc;
    edrv_port_t *port;
};

EDRV_API ErlDrvPDL driver_pdl_create(ErlDrvPort port) {
    if (!port || port->pdl || atomic_load(&port->state) == PORT_DEAD)
        return NULL; /* one per port, as in ERTS */
    ErlDrvPDL pdl = edrv__alloc(EDRV_MEM_PORT, sizeof *pdl);
    if (!pdl)
        return NULL;
    pthread_mutex_init(&pdl->mtx, NULL);
    atomic_init(&pdl->refc, 1);
    pdl->port = port;
    atomic_fetch_add_explicit(&port->refs, 1, memory_order_relaxed);
    port->pdl = pdl;
    return pdl;
}

EDRV_API void driver_pdl_lock(ErlDrvPDL pdl) {
    pthread_mutex_lock(&pdl->mtx);
}

EDRV_API void driver_pdl_unlock(ErlDrvPDL pdl) {
    pthread_mutex_unlock(&pdl->mtx);
}

EDRV_API ErlDrvSInt driver_pdl_get_refc(ErlDrvPDL pdl) {
    return atomic_load(&pdl->refc);
}

EDRV_API ErlDrvSInt driver_pdl_inc_refc(ErlDrvPDL pdl) {
    return atomic_fetch_add(&pdl->refc, 1) + 1;
}

EDRV_API ErlDrvSInt driver_pdl_dec_refc(ErlDrvPDL pdl) {
    ErlDrvSInt n = atomic_fetch_sub(&pdl->refc, 1) - 1;
    if (n == 0) {
        edrv_port_t *pt = pdl->port;
        pthread_mutex_destroy(&pdl->mtx);
        edrv__free(pdl);
        port_unhold(pt);
    }
    return n;
}

/* The bytes in the port's driver queue. Pool threads may change the queue
 * under the port data lock, so the runtime reads it under that lock too. Not
 * for the queue functions themselves: their caller holds the lock. */
static size_t queue_bytes(edrv_port_t *pt) {
    if (!pt->pdl)
        return edrv__queue_size(pt->queue);
    driver_pdl_lock(pt->pdl);
    size_t n = edrv__queue_size(pt->queue);
    driver_pdl_unlock(pt->pdl);
    return n;
}

/* ---- the end of a port ------------------------------------------------------------ */

static void port_free(edrv_port_t *pt) {
    edrv__unit_unref(pt->unit);
    edrv__free(pt->name);
    edrv__free(pt);
}

/* Drops one of the struct's references; any thread. */
static void port_unhold(edrv_port_t *pt) {
    if (atomic_fetch_sub_explicit(&pt->refs, 1, memory_order_acq_rel) == 1)
        port_free(pt);
}

/* The emulator thread lets a dead port's struct go once no callback of it
 * runs (an init-ack failure ends a port from its own timeout) and nothing
 * uses it; a port data lock may still hold it. */
static void port_release(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    if (!pt->released && pt->uses == 0 && pt->in_callback == 0 &&
        atomic_load(&pt->state) == PORT_DEAD) {
        pt->released = true;
        port_unhold(pt);
    }
}

/* Empties the driver queue of a port that has died. The lock orders this
 * after any pool thread's use of the queue; one that takes the lock later
 * finds the port dead and the queue functions fail. */
static void queue_drop(edrv_port_t *pt) {
    if (pt->pdl)
        driver_pdl_lock(pt->pdl);
    edrv_queue *q = pt->queue;
    pt->queue = NULL;
    if (pt->pdl)
        driver_pdl_unlock(pt->pdl);
    edrv__queue_free(q);
}

/* The one way out for a port, stopped or never started: it is dead, out of
 * the table, and everything it held goes (timer, fds, queue, monitors, its
 * reference to its data lock); then its driver may unload. Needs no memory,
 * so that no failure can leave a half-ended port. */
static void port_dispose(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    atomic_store(&pt->state, PORT_DEAD);
    edrv__timer_cancel(pt); /* stop may have set one */
    edrv__select_port_gone(pt);
    queue_drop(pt);
    edrv__table_remove(pt);
    edrv__monitors_port_gone(pt);
    ErlDrvPDL pdl = pt->pdl;
    pt->pdl = NULL;
    if (pdl) /* the port's reference */
        driver_pdl_dec_refc(pdl);
    edrv_driver *d = pt->drv;
    port_release(pt);
    edrv__driver_port_gone(d);
}

/* Runs stop, then disposes of the port. The port was started (it has driver
 * data), unless it is an init-ack port that ends unanswered. */
static void finish_exit(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    pt->exit_pending = false;
    bool started = !pt->open_req;
    if (pt->open_req) {
        void *req = pt->open_req;
        pt->open_req = NULL;
        edrv__request_finish(req, edrv__fail(EDRV_ECLOSED, "%s: the port ended before "
                                             "erl_drv_init_ack", pt->drv->name));
    }
    atomic_store(&pt->state, PORT_STOPPING);
    if (started && pt->drv->entry->stop) {
        pt->in_callback++;
        pt->drv->entry->stop(pt->data);
        pt->in_callback--;
    }
    port_dispose(pt);
}

void edrv__port_ref(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    pt->uses++;
}

void edrv__port_unref(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    pt->uses--;
    end_if_flushed(pt);
    port_release(pt);
}

bool edrv__port_accepts_jobs(const edrv_port_t *pt) {
    /* From start, from any callback, and from stop (a file driver queues its
     * close there); not once the port is dead. */
    return atomic_load(&pt->state) != PORT_DEAD;
}

static bool alive_or_closing(const edrv_port_t *pt) {
    port_state st = atomic_load(&pt->state);
    return st == PORT_ALIVE || st == PORT_CLOSING;
}

void edrv__port_timeout(edrv_port_t *pt) {
    EDRV_ASSERT_UNIT(pt);
    const ErlDrvEntry *e = pt->drv->entry;
    /* STARTING: an init-ack driver waits for its own timer to answer. */
    if (!alive_or_closing(pt) && atomic_load(&pt->state) != PORT_STARTING)
        return;
    if (!e->timeout) {
        edrv__warn("%s: a timer fired, but the driver has no timeout callback", pt->drv->name);
        return;
    }
    enter(pt, 0);
    e->timeout(pt->data);
    leave(pt);
}

void edrv__port_io_ready(edrv_port_t *pt, ErlDrvEvent ev, bool input) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    const ErlDrvEntry *e = pt->drv->entry;
    void (*ready)(ErlDrvData, ErlDrvEvent) = input ? e->ready_input : e->ready_output;
    if (!alive_or_closing(pt))
        return;
    if (!ready) {
        /* As ERTS: reported, the port lives on, and the direction is
         * deselected, so it is reported again only once selected again. */
        edrv__warn("#Port<0.%llu>: %s driver '%s' does not implement the %s() callback",
                   (unsigned long long)pt->id, input ? "Input" : "Output", pt->drv->name,
                   input ? "ready_input" : "ready_output");
        driver_select(pt, ev, input ? ERL_DRV_READ : ERL_DRV_WRITE, 0);
        return;
    }
    enter(pt, 0);
    ready(pt->data, ev);
    leave(pt);
}

void edrv__port_process_exit(edrv_port_t *pt, ErlDrvMonitor *mon) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    if (!alive_or_closing(pt))
        return;
    enter(pt, 0);
    pt->drv->entry->process_exit(pt->data, mon);
    leave(pt);
}

bool edrv__port_ready_async_ok(const edrv_port_t *pt) {
    return alive_or_closing(pt) && pt->drv->entry->ready_async;
}

void edrv__port_ready_async(edrv_port_t *pt, void *data) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    enter(pt, 0);
    pt->drv->entry->ready_async(pt->data, (ErlDrvThreadData)data);
    leave(pt);
}

/* ---- requests from the host (emulator thread) ----------------------------------------- */

/* A new port of driver d in the table, owned by (and linked to) owner. Its
 * unit is d's, or its own for a driver with ERL_DRV_FLAG_USE_PORT_LOCKING. */
static edrv_port_t *port_new(edrv_driver *d, const char *name, uint64_t owner, port_state st) {
    edrv_port_t *pt = edrv__calloc(EDRV_MEM_PORT, sizeof *pt);
    char *copy = edrv__strdup(EDRV_MEM_PORT, name);
    bool own_unit = d->entry->driver_flags & ERL_DRV_FLAG_USE_PORT_LOCKING;
    edrv_unit *unit = own_unit ? edrv__unit_new() : d->unit;
    if (pt) {
        atomic_store(&pt->owner, owner); /* table_insert indexes it */
        edrv__list_init(&pt->monitors);
        edrv__list_init(&pt->sels[0]);
        edrv__list_init(&pt->sels[1]);
    }
    if (!pt || !copy || !unit || !edrv__table_insert(pt)) {
        edrv__free(pt);
        edrv__free(copy);
        if (own_unit)
            edrv__unit_unref(unit);
        return NULL;
    }
    if (!own_unit)
        edrv__unit_ref(unit);
    pt->unit = unit;
    pt->name = copy;
    atomic_init(&pt->refs, 1); /* the emulator thread's */
    pt->timer_slot = -1;
    pt->os_pid = -1;
    if (!(d->entry->driver_flags & ERL_DRV_FLAG_NO_BUSY_MSGQ)) {
        atomic_store(&pt->msgq_low, 4096); /* ERTS's defaults */
        atomic_store(&pt->msgq_high, 8192);
    }
    pt->drv = d;
    pt->linked = true;
    atomic_store(&pt->state, st);
    d->ports++;
    return pt;
}

/* The open's error for a start (or init ack) result that is one of the
 * ERL_DRV_ERROR_* values, 0 for driver data. err is errno after start. */
static int start_error(const edrv_driver *d, ErlDrvData data, int err) {
    if (data == ERL_DRV_ERROR_GENERAL)
        return edrv__fail(-EINVAL, "%s: start failed (ERL_DRV_ERROR_GENERAL)", d->name);
    if (data == ERL_DRV_ERROR_ERRNO)
        return edrv__fail(err > 0 ? -err : -EINVAL, "%s: start failed: %s", d->name,
                          err > 0 ? erl_errno_id(err) : "errno not set");
    if (data == ERL_DRV_ERROR_BADARG)
        return edrv__fail(EDRV_EBADARG, "%s: start failed (ERL_DRV_ERROR_BADARG)", d->name);
    return 0;
}

/* Ends the start of a port with start's result (or erl_drv_init_ack's):
 * the port lives on, or goes as if it never was. Returns 0 or the error. */
static int start_done(edrv_port_t *pt, ErlDrvData data, int err) {
    edrv_driver *d = pt->drv;
    int rc = start_error(d, data, err);
    if (rc < 0) {
        /* Never started, so stop does not run; nothing reaches the owner.
         * Jobs it queued still run, and end with free. */
        port_dispose(pt);
        return rc;
    }
    pt->data = data;
    /* Binary mode starts once start has returned: ERTS delivers output from
     * start as a list even on a binary port. */
    pt->binary = pt->open_flags & EDRV_PORT_BINARY;
    pt->eof = pt->open_flags & EDRV_PORT_EOF;
    port_state starting = PORT_STARTING;
    atomic_compare_exchange_strong(&pt->state, &starting, PORT_ALIVE);
    if (pt->open_id)
        *pt->open_id = pt->id;
    if (pt->exit_pending) /* start called driver_failure */
        finish_exit(pt);
    return 0;
}

static int port_start(edrv_port_t *pt, edrv_driver *d, uint64_t caller, unsigned flags,
                      edrv_port *out, void *req);

int edrv__port_open(uint64_t caller, const char *command, unsigned flags, edrv_port *out,
                    void *req) {
    EDRV_ASSERT_EMULATOR();
    size_t name_len = strcspn(command, " ");
    if (!edrv__proc_alive(caller)) /* freed while its request waited */
        return edrv__fail(EDRV_ENOPROC, "edrv_open_port: <0.%llu.0> has exited",
                          (unsigned long long)caller);
    edrv_driver *d = edrv__driver_find(command, name_len);
    if (!d || d->unload_pending)
        return edrv__fail(EDRV_EBADARG, "no driver named '%.*s' is loaded", (int)name_len,
                          command);
    /* The driver's unit first, for a driver that serializes its ports:
     * while this thread waits for it (without the emulator lock), the
     * driver may have gone, and the opener too (edrv_proc_free from
     * another thread). */
    edrv_unit *du = d->entry->driver_flags & ERL_DRV_FLAG_USE_PORT_LOCKING ? NULL : d->unit;
    if (du) {
        edrv__unit_ref(du);
        if (edrv__unit_enter(du)) {
            int rc = 0;
            if (edrv__driver_find(command, name_len) != d || d->unload_pending || d->unit != du)
                rc = edrv__fail(EDRV_EBADARG, "no driver named '%.*s' is loaded",
                                (int)name_len, command);
            else if (!edrv__proc_alive(caller))
                rc = edrv__fail(EDRV_ENOPROC, "edrv_open_port: <0.%llu.0> has exited",
                                (unsigned long long)caller);
            if (rc < 0) {
                edrv__unit_exit(du);
                edrv__unit_unref(du);
                return rc;
            }
        }
    }
    edrv_port_t *pt = port_new(d, command, caller, PORT_STARTING);
    if (!pt) {
        if (du) {
            edrv__unit_exit(du);
            edrv__unit_unref(du);
        }
        return edrv__fail(EDRV_ENOMEM, "out of memory opening a port");
    }
    /* Held from here by the port's reference (a new unit of its own is
     * free: nobody else knows it yet). */
    atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
    if (du)
        edrv__unit_unref(du);
    else
        edrv__unit_enter(pt->unit);
    int rc = port_start(pt, d, caller, flags, out, req);
    edrv__port_unlock(pt);
    return rc;
}

/* The rest of edrv__port_open, under the new port's unit. */
static int port_start(edrv_port_t *pt, edrv_driver *d, uint64_t caller, unsigned flags,
                      edrv_port *out, void *req) {
    char *cmd = edrv__strdup(EDRV_MEM_PORT, pt->name); /* start may write into it */
    if (!cmd) {
        port_dispose(pt);
        return edrv__fail(EDRV_ENOMEM, "out of memory opening a port");
    }
    pt->open_flags = flags;
    pt->open_id = out;

    enter(pt, caller);
    errno = 0;
    ErlDrvData data = d->entry->start ? d->entry->start(pt, cmd) : NULL;
    int err = errno;
    pt->in_callback--;
    edrv__free(cmd);

    if (d->entry->driver_flags & ERL_DRV_FLAG_USE_INIT_ACK) {
        /* start's return is not the answer, unless it is an error (OTP fails
         * the open then): erl_drv_init_ack's is, now or later; until then the
         * opener waits. (OTP 25 never answers an ack made inside start; edrv
         * takes it.) */
        if (data == ERL_DRV_ERROR_GENERAL || data == ERL_DRV_ERROR_ERRNO ||
            data == ERL_DRV_ERROR_BADARG)
            return start_done(pt, data, err);
        if (pt->acked)
            return start_done(pt, pt->ack_data, 0);
        if (!req) {
            start_done(pt, ERL_DRV_ERROR_GENERAL, 0);
            return edrv__fail(EDRV_ENOTSUP, "%s: an init-ack driver opened from a callback",
                              d->name);
        }
        pt->data = data; /* for callbacks before the ack (a timer that answers) */
        pt->open_req = req;
        return EDRV__PENDING;
    }
    return start_done(pt, data, err);
}

EDRV_API void erl_drv_init_ack(ErlDrvPort port, ErlDrvData res) {
    if (!port || !edrv__emulator_enter() || !edrv__unit_held(port->unit) ||
        atomic_load(&port->state) != PORT_STARTING ||
        !(port->drv->entry->driver_flags & ERL_DRV_FLAG_USE_INIT_ACK) || port->acked)
        return;
    port->acked = true;
    port->ack_data = res;
    if (!port->open_req)
        return; /* inside start: answered when start returns */
    /* start has returned: answer the opener now. */
    void *req = port->open_req;
    port->open_req = NULL;
    int rc = start_error(port->drv, res, errno);
    if (rc == 0) {
        edrv__request_finish(req, start_done(port, res, 0));
        return;
    }
    /* A failure: the open fails, and the port, which start did start, ends
     * as after a driver failure: stop runs with start's data (now, or when
     * the current callback returns). The opener is unlinked first, so no
     * exit signal reaches it. As OTP 25 (checked in erl). */
    edrv__request_finish(req, rc);
    port_exit(port, (reason){"normal", 0}, true, true);
}

/* Gives command data to the driver: to outputv as an ErlIOVec whose first
 * element is left empty (for a header, as ERTS does) and then one element per
 * non-empty piece (one element, even empty, when `whole`); otherwise to
 * output, flat. The port takes the binary. */
static void command_body(edrv_port_t *pt, uint64_t caller, ErlDrvBinary *bin,
                         const size_t *pieces, int npieces, bool whole);

int edrv__port_command(uint64_t caller, edrv_port_t *pt, ErlDrvBinary *bin,
                       const size_t *pieces, int npieces, bool whole, bool try,
                       size_t admitted) {
    int rc = port_enter(pt, try, false);
    if (rc == EDRV__NOT_FAST)
        return rc;
    if (admitted) /* the driver takes them now: they leave the message queue */
        edrv__port_unadmit(pt->id, admitted);
    if (rc < 0) {
        /* The port died after the sender's check: the data is dropped, as in
         * ERTS; the sender was already told it was sent. */
        edrv__clear_error();
        driver_free_binary(bin);
        return 0;
    }
    command_body(pt, caller, bin, pieces, npieces, whole);
    edrv__port_unlock(pt);
    return 0;
}

static void command_body(edrv_port_t *pt, uint64_t caller, ErlDrvBinary *bin,
                         const size_t *pieces, int npieces, bool whole) {
    const ErlDrvEntry *e = pt->drv->entry;
    size_t len = (size_t)bin->orig_size;
    if (e->outputv) {
        SysIOVec iov_small[8];
        ErlDrvBinary *binv_small[8];
        int cap = whole ? 2 : npieces + 1;
        SysIOVec *iov = iov_small;
        ErlDrvBinary **binv = binv_small;
        if (cap > 8) {
            iov = edrv__alloc(EDRV_MEM_SYSTEM, (size_t)cap * (sizeof *iov + sizeof *binv));
            if (!iov) {
                edrv__warn("out of memory: command data to %s dropped", pt->drv->name);
                driver_free_binary(bin);
                return;
            }
            binv = (ErlDrvBinary **)(iov + cap);
        }
        iov[0] = (SysIOVec){NULL, 0};
        binv[0] = NULL;
        int n = 1;
        size_t off = 0;
        for (int i = 0; i < (whole ? 1 : npieces); i++) {
            size_t l = whole ? len : pieces[i];
            if (l || whole) {
                iov[n] = (SysIOVec){bin->orig_bytes + off, l};
                binv[n++] = bin;
            }
            off += l;
        }
        ErlIOVec ev = {n, len, iov, binv};
        enter(pt, caller);
        e->outputv(pt->data, &ev);
        leave(pt);
        if (iov != iov_small)
            edrv__free(iov);
    } else if (e->output) {
        enter(pt, caller);
        e->output(pt->data, bin->orig_bytes, len);
        leave(pt);
    } else {
        edrv__warn("%s: port_command to a driver with neither output nor outputv", pt->drv->name);
    }
    driver_free_binary(bin);
}

/* The driver's own copy of a call's data, which it may write into, as ERTS
 * lets it: in `small` (the caller's stack) when it fits, else allocated;
 * NULL when out of memory. scratch_free gives it back. */
#define SCRATCH_SMALL 256
static char *scratch_copy(char *small, const char *data, size_t len) {
    char *p = len <= SCRATCH_SMALL ? small : edrv__alloc(EDRV_MEM_SYSTEM, len);
    if (p && len)
        memcpy(p, data, len);
    return p;
}

static void scratch_free(char *p, const char *small) {
    if (p != small)
        edrv__free(p);
}

int edrv__port_command_fast(uint64_t caller, edrv_port id, const char *data, size_t len) {
    edrv_port_t *pt = edrv__table_take_fast(id);
    if (!pt)
        return EDRV__NOT_FAST;
    const ErlDrvEntry *e = pt->drv->entry;
    char small[SCRATCH_SMALL];
    char *buf = NULL;
    /* Busy: the ordinary way suspends the sender (or refuses, nosuspend). */
    if (!e->outputv && e->output && !edrv__port_busy(pt))
        buf = scratch_copy(small, data, len);
    if (!buf) { /* no memory: the ordinary way reports it */
        edrv__port_unlock(pt);
        return EDRV__NOT_FAST;
    }
    enter(pt, caller);
    e->output(pt->data, buf, len);
    leave(pt);
    scratch_free(buf, small);
    edrv__port_unlock(pt);
    return 0;
}

/* A synchronous call's callback (control_body, call_body), run under the
 * port's unit; the caller lets the unit go. */
typedef int (*sync_body)(edrv_port_t *pt, uint64_t caller, unsigned op, char *data, size_t len,
                         edrv_reply *reply);

/* body on pt, alive or closing, its unit waited for or (try) tried. */
static int sync_on(sync_body body, uint64_t caller, edrv_port_t *pt, bool try, unsigned op,
                   char *data, size_t len, edrv_reply *reply) {
    int rc = port_enter(pt, try, true);
    if (rc)
        return rc;
    rc = body(pt, caller, op, data, len, reply);
    edrv__port_unlock(pt);
    return rc;
}

/* A fast path: body on the live port if its unit is free, else EDRV__NOT_FAST. */
static int sync_fast(sync_body body, uint64_t caller, edrv_port id, unsigned op, char *data,
                     size_t len, edrv_reply *reply) {
    edrv_port_t *pt = edrv__table_take_fast(id);
    if (!pt)
        return EDRV__NOT_FAST;
    int rc = body(pt, caller, op, data, len, reply);
    edrv__port_unlock(pt);
    return rc;
}

static int control_body(edrv_port_t *pt, uint64_t caller, unsigned op, char *data, size_t len,
                        edrv_reply *reply);
static int call_body(edrv_port_t *pt, uint64_t caller, unsigned op, char *data, size_t len,
                     edrv_reply *reply);

int edrv__port_control(uint64_t caller, edrv_port_t *pt, bool try, unsigned op, char *data,
                       size_t len, edrv_reply *reply) {
    return sync_on(control_body, caller, pt, try, op, data, len, reply);
}

int edrv__port_control_fast(uint64_t caller, edrv_port id, unsigned op, char *data, size_t len,
                            edrv_reply *reply) {
    return sync_fast(control_body, caller, id, op, data, len, reply);
}

int edrv__port_call(uint64_t caller, edrv_port_t *pt, bool try, unsigned op, char *data,
                    size_t len, edrv_reply *reply) {
    if (edrv__etf_measure(data, len) != (ssize_t)len)
        return edrv__fail(EDRV_EBADTERM, "port_call: the argument is not one term in ETF");
    return sync_on(call_body, caller, pt, try, op, data, len, reply);
}

int edrv__port_call_fast(uint64_t caller, edrv_port id, unsigned op, char *data, size_t len,
                         edrv_reply *reply) {
    if (edrv__etf_measure(data, len) != (ssize_t)len)
        return EDRV__NOT_FAST; /* the ordinary way says what is wrong */
    return sync_fast(call_body, caller, id, op, data, len, reply);
}

/* The control callback, under the port's unit; the caller lets it go. */
static int control_body(edrv_port_t *pt, uint64_t caller, unsigned op, char *data, size_t len,
                        edrv_reply *reply) {
    const ErlDrvEntry *e = pt->drv->entry;
    if (!e->control)
        return edrv__fail(EDRV_EBADARG, "%s has no control callback", pt->drv->name);
    char small[SCRATCH_SMALL];
    char *copy = scratch_copy(small, data, len);
    if (!copy)
        return edrv__fail(EDRV_ENOMEM, "out of memory for control data");
    char buf[64];
    char *rbuf = buf;
    enter(pt, caller);
    ErlDrvSSizeT n = e->control(pt->data, op, copy, len, &rbuf, sizeof buf);
    int flags = pt->control_flags;
    char name[64] = ""; /* for errors: leave() may end the port and unload its driver */
    if (n < 0 || (rbuf == buf && (size_t)n > sizeof buf))
        snprintf(name, sizeof name, "%s", pt->drv->name);
    leave(pt); /* the port may be dead from here on, its driver unloaded */
    scratch_free(copy, small);

    if (n < 0) {
        if (rbuf && rbuf != buf)
            (flags & PORT_CONTROL_FLAG_BINARY ? driver_free_binary((ErlDrvBinary *)rbuf)
                                              : driver_free(rbuf));
        return edrv__fail(EDRV_EBADARG, "%s: control %u returned %zd", name, op, (ssize_t)n);
    }
    if (!rbuf) {
        reply->kind = EDRV_REPLY_NIL;
        return 0;
    }
    const char *src = rbuf;
    size_t rlen = (size_t)n;
    if (rbuf == buf && rlen > sizeof buf)
        return edrv__fail(EDRV_EBADARG, "%s: control %u returned %zu bytes in its %zu-byte buffer",
                          name, op, rlen, sizeof buf);
    if (flags & PORT_CONTROL_FLAG_BINARY && rbuf != buf) {
        /* The driver handed over a binary: all of it is the reply. */
        src = ((ErlDrvBinary *)rbuf)->orig_bytes;
        rlen = (size_t)((ErlDrvBinary *)rbuf)->orig_size;
    }
    reply->kind = flags & PORT_CONTROL_FLAG_BINARY ? EDRV_REPLY_BINARY : EDRV_REPLY_LIST;
    reply->data = edrv__alloc(EDRV_MEM_MESSAGE, rlen ? rlen : 1);
    if (reply->data) {
        memcpy(reply->data, src, rlen);
        reply->len = rlen;
    }
    if (rbuf != buf)
        (flags & PORT_CONTROL_FLAG_BINARY ? driver_free_binary((ErlDrvBinary *)rbuf)
                                          : driver_free(rbuf));
    if (!reply->data) {
        reply->kind = EDRV_REPLY_NONE;
        return edrv__fail(EDRV_ENOMEM, "out of memory for a control reply");
    }
    return 0;
}

/* The call callback, under the port's unit; the caller lets it go. */
static int call_body(edrv_port_t *pt, uint64_t caller, unsigned op, char *data, size_t len,
                     edrv_reply *reply) {
    const ErlDrvEntry *e = pt->drv->entry;
    if (!e->call)
        return edrv__fail(EDRV_EBADARG, "%s has no call callback", pt->drv->name);
    char small[SCRATCH_SMALL];
    char *copy = scratch_copy(small, data, len);
    if (!copy)
        return edrv__fail(EDRV_ENOMEM, "out of memory for call data");
    char buf[255];
    char *rbuf = buf;
    unsigned int rflags = 0;
    enter(pt, caller);
    ErlDrvSSizeT n = e->call(pt->data, op, copy, len, &rbuf, sizeof buf, &rflags);
    bool overrun = rbuf == buf && n > 0 && (size_t)n > sizeof buf;
    ssize_t tlen = n > 0 && rbuf && !overrun ? edrv__etf_measure(rbuf, (size_t)n) : -1;
    char name[64] = ""; /* for errors: leave() may end the port and unload its driver */
    if (tlen < 0)
        snprintf(name, sizeof name, "%s", pt->drv->name);
    leave(pt);
    scratch_free(copy, small);

    int rc = 0;
    if (n < 0)
        rc = edrv__fail(EDRV_EBADARG, "%s: call %u returned %zd", name, op, (ssize_t)n);
    else if (overrun)
        rc = edrv__fail(EDRV_EBADARG, "%s: call %u returned %zd bytes in its %zu-byte buffer",
                        name, op, (ssize_t)n, sizeof buf);
    else if (tlen < 0)
        rc = edrv__fail(EDRV_EBADARG, "%s: call %u replied with bytes that are not a term", name,
                        op);
    else if (!(reply->data = edrv__alloc(EDRV_MEM_MESSAGE, (size_t)tlen)))
        rc = edrv__fail(EDRV_ENOMEM, "out of memory for a call reply");
    if (rc == 0) {
        memcpy(reply->data, rbuf, (size_t)tlen);
        reply->len = (size_t)tlen;
        reply->kind = EDRV_REPLY_TERM;
    }
    if (rbuf && rbuf != buf && !(rflags & DRIVER_CALL_KEEP_BUFFER))
        driver_free(rbuf);
    return rc;
}

int edrv__port_info(edrv_port_t *pt, bool try, edrv_port_status *st) {
    int rc = port_enter(pt, try, true);
    if (rc)
        return rc;
    edrv__emulator_enter(); /* `uses` is the emulator lock's */
    *st = (edrv_port_status){
        .id = pt->id,
        .connected = atomic_load(&pt->owner),
        .binary = pt->binary,
        .pending_jobs = (size_t)pt->uses,
        .os_pid = (long long)pt->os_pid,
    };
    snprintf(st->name, sizeof st->name, "%s", pt->name);
    snprintf(st->driver, sizeof st->driver, "%s", pt->drv->name);
    edrv__port_unlock(pt);
    return 0;
}

/* Starts the end of a port with data in its driver queue: the exit signal
 * goes now to a linked owner (as in ERTS), then flush runs (caller is the
 * process behind it, 0 for none), and the port ends when the queue is
 * empty. Meanwhile it is CLOSING: output is dropped, timers, ready_async,
 * control and call still run. */
static void start_closing(edrv_port_t *pt, uint64_t caller) {
    EDRV_ASSERT_EMULATOR();
    EDRV_ASSERT_UNIT(pt);
    atomic_store(&pt->state, PORT_CLOSING);
    edrv__busy_changed(); /* senders waiting on it fail now, as in ERTS */
    if (pt->linked) {
        send_exit(pt, (reason){"normal", 0});
        pt->linked = false;
    }
    if (pt->drv->entry->flush) {
        enter(pt, caller);
        pt->drv->entry->flush(pt->data);
        leave(pt); /* ends the port if flush emptied the queue */
    }
}

int edrv__port_close(uint64_t caller, edrv_port_t *pt, bool try) {
    /* Any process may close a port with port_close/1. */
    int rc = port_enter(pt, try, false);
    if (rc)
        return rc;
    edrv__emulator_enter(); /* the port's end touches shared state */
    if (queue_bytes(pt))
        start_closing(pt, caller);
    else
        port_exit(pt, (reason){"normal", 0}, false, true);
    edrv__port_unlock(pt);
    return 0;
}

/* Ends the ports of driver d (NULL: every port), closing ones too: unloading
 * ends a port that flushes, as in ERTS, and so does edrv_stop. port_exit
 * passes over ports whose end is decided already. Allocates nothing, so it
 * cannot leave ports open. Each port leaves the table's list for a list of
 * its own while the pass walks it one port at a time: a callback may end
 * any port (it leaves whichever list it is in), or open new ones (they go to
 * the table's list, and this pass leaves them open). Runs from a host
 * request (R_UNLOAD, R_STOP), never inside another pass. */
static void close_ports_of(const edrv_driver *d, reason why, bool signal) {
    EDRV_ASSERT_EMULATOR();
    edrv_lnode todo, done;
    edrv__list_init(&todo);
    edrv__list_init(&done);
    edrv__table_take_all(&todo);
    for (edrv_lnode *l; (l = edrv__table_pop(&todo, &done));) {
        edrv_port_t *pt = EDRV_LINKED(l, edrv_port_t, all_link);
        if (d && pt->drv != d)
            continue;
        edrv__port_lock(pt); /* port_exit passes over a port that ended meanwhile */
        port_exit(pt, why, !signal, signal);
        edrv__port_unlock(pt);
    }
    edrv__table_put_back_all(&done);
}

void edrv__ports_of_proc_exit(uint64_t pid) {
    EDRV_ASSERT_EMULATOR();
    edrv__monitors_process_exited(pid);
    /* The owner is gone: the exit signal has no one to reach. A port with
     * data in its driver queue flushes first, as after port_close (OTP 25
     * does so, checked in erl); the others end now. Its ports, oldest
     * first, leave its ring for a list of their own, which this pass takes
     * one port at a time: a callback may end any port, which then leaves
     * the list. Nothing allocates. */
    edrv_lnode todo;
    edrv__list_init(&todo);
    edrv__table_take_owned(pid, &todo);
    for (edrv_lnode *l; (l = edrv__table_pop(&todo, NULL));) {
        edrv_port_t *pt = EDRV_LINKED(l, edrv_port_t, owner_link);
        edrv__port_lock(pt);
        if (pt->linked && atomic_load(&pt->state) == PORT_ALIVE) {
            pt->linked = false;
            if (queue_bytes(pt))
                start_closing(pt, 0);
            else
                port_exit(pt, (reason){"normal", 0}, false, false);
        }
        edrv__port_unlock(pt);
    }
}

void edrv__ports_close_all(void) {
    close_ports_of(NULL, (reason){"normal", 0}, false);
}

void edrv__ports_kill_driver(edrv_driver *d) {
    close_ports_of(d, (reason){"driver_unloaded", 0}, true);
}

/* ---- the driver interface: output ------------------------------------------------------ */

/* A NULL buffer is no data at all, not an empty binary: on a binary port the
 * message is then the header alone, as a list (as ERTS). */
EDRV_API int driver_output(ErlDrvPort port, char *buf, ErlDrvSizeT len) {
    etf_piece p[2] = {{NULL, 0}, {buf, len}};
    return output_data(port, "driver_output", p, buf ? 2 : 1);
}

EDRV_API int driver_output2(ErlDrvPort port, char *hbuf, ErlDrvSizeT hlen, char *buf,
                            ErlDrvSizeT len) {
    etf_piece p[2] = {{hbuf, hbuf ? hlen : 0}, {buf, len}};
    return output_data(port, "driver_output2", p, buf ? 2 : 1);
}

EDRV_API int driver_output_binary(ErlDrvPort port, char *hbuf, ErlDrvSizeT hlen,
                                  ErlDrvBinary *bin, ErlDrvSizeT offset, ErlDrvSizeT len) {
    if (!bin || offset > (ErlDrvSizeT)bin->orig_size || len > (ErlDrvSizeT)bin->orig_size - offset) {
        edrv__warn("driver_output_binary: offset %zu and length %zu outside the binary", offset, len);
        return 0;
    }
    etf_piece p[2] = {{hbuf, hbuf ? hlen : 0}, {bin->orig_bytes + offset, len}};
    return output_data(port, "driver_output_binary", p, 2);
}

EDRV_API int driver_outputv(ErlDrvPort port, char *hbuf, ErlDrvSizeT hlen, ErlIOVec *ev,
                            ErlDrvSizeT skip) {
    if (!ev || ev->vsize < 0)
        return 0;
    etf_piece small[17] = {{hbuf, hbuf ? hlen : 0}};
    if (ev->size <= skip) /* nothing left: the header alone */
        return output_data(port, "driver_outputv", small, 1);
    /* The header, then the segments after `skip` bytes, empty ones left out.
     * As ERTS does, the element that `skip` ends in is trimmed in the
     * caller's vector too. */
    etf_piece *segs = small;
    if (ev->vsize > 16) {
        segs = edrv__alloc(EDRV_MEM_SYSTEM, ((size_t)ev->vsize + 1) * sizeof *segs);
        if (!segs) {
            edrv__warn("driver_outputv: out of memory: the message is lost");
            return -1;
        }
        segs[0] = small[0];
    }
    size_t n = 1;
    for (int i = 0; i < ev->vsize; i++) {
        SysIOVec *v = &ev->iov[i];
        if (skip >= v->iov_len) {
            skip -= v->iov_len;
            continue;
        }
        if (skip) {
            v->iov_base = (char *)v->iov_base + skip;
            v->iov_len -= skip;
            skip = 0;
        }
        if (v->iov_len)
            segs[n++] = (etf_piece){v->iov_base, v->iov_len};
    }
    int rc = output_data(port, "driver_outputv", segs, n);
    if (segs != small)
        edrv__free(segs);
    return rc;
}

EDRV_API ErlDrvSizeT driver_vec_to_buf(ErlIOVec *ev, char *buf, ErlDrvSizeT len) {
    ErlDrvSizeT done = 0;
    for (int i = 0; ev && i < ev->vsize && done < len; i++) {
        size_t l = ev->iov[i].iov_len < len - done ? ev->iov[i].iov_len : len - done;
        if (l)
            memcpy(buf + done, ev->iov[i].iov_base, l);
        done += l;
    }
    return done;
}

/* Term output: erl_drv_output_term/erl_drv_send_term take the port as a term,
 * so they resolve it through the table; any thread may call them. */
static int send_spec(ErlDrvTermData port, bool to_owner, ErlDrvTermData to,
                     ErlDrvTermData *spec, int n) {
    if (TD_TAG(port) != TD_PORT)
        return -1;
    bool closing = false;
    uint64_t owner = edrv__port_owner_of(TD_VAL(port), &closing);
    if (!owner)
        return -1; /* no such port */
    mbox_msg *m;
    if (edrv__spec_to_msg(spec, n, &m) < 0)
        return -1;
    uint64_t pid = to_owner ? owner : TD_TAG(to) == TD_PID ? TD_VAL(to) : 0;
    if (closing || !pid) {
        edrv__msg_drop(m);
        return 0;
    }
    return edrv__deliver(pid, m);
}

EDRV_API int erl_drv_output_term(ErlDrvTermData port, ErlDrvTermData *data, int len) {
    return send_spec(port, true, 0, data, len);
}

EDRV_API int erl_drv_send_term(ErlDrvTermData port, ErlDrvTermData to, ErlDrvTermData *data,
                               int len) {
    return send_spec(port, false, to, data, len);
}

EDRV_API int driver_output_term(ErlDrvPort ix, ErlDrvTermData *data, int len) {
    return ix ? send_spec(TD_MAKE(TD_PORT, ix->id), true, 0, data, len) : -1;
}

EDRV_API int driver_send_term(ErlDrvPort ix, ErlDrvTermData to, ErlDrvTermData *data, int len) {
    return ix ? send_spec(TD_MAKE(TD_PORT, ix->id), false, to, data, len) : -1;
}

/* ---- the driver interface: port identity and flags --------------------------------------- */

EDRV_API ErlDrvTermData driver_mk_port(ErlDrvPort port) {
    return port ? TD_MAKE(TD_PORT, port->id) : 0;
}

EDRV_API ErlDrvTermData driver_connected(ErlDrvPort port) {
    return port ? TD_MAKE(TD_PID, atomic_load(&port->owner)) : 0;
}

EDRV_API ErlDrvTermData driver_caller(ErlDrvPort port) {
    /* No process behind timeouts, I/O and async completions: [] as in OTP. */
    return port && port->caller ? TD_MAKE(TD_PID, port->caller) : driver_term_nil;
}

EDRV_API unsigned int driver_async_port_key(ErlDrvPort port) {
    return port ? (unsigned int)port->id : 0;
}

/* A port of the creator's driver, with drv_data as its data (start does not
 * run), owned by and linked to `connected`. It starts in list mode with no
 * control flags, whatever the creator's: OTP 25 does the same (checked in
 * erl, tests/diff/create_port.scenario). */
EDRV_API ErlDrvPort driver_create_port(ErlDrvPort creator, ErlDrvTermData connected, char *name,
                                       ErlDrvData drv_data) {
    if (!creator || !name || !edrv__emulator_enter() || !edrv__unit_held(creator->unit) ||
        atomic_load(&creator->state) == PORT_DEAD || TD_TAG(connected) != TD_PID ||
        !edrv__proc_alive(TD_VAL(connected)))
        return NULL;
    edrv_port_t *pt = port_new(creator->drv, name, TD_VAL(connected), PORT_ALIVE);
    if (!pt)
        return NULL;
    pt->data = drv_data;
    return pt;
}

EDRV_API void erl_drv_set_os_pid(ErlDrvPort port, ErlDrvSInt pid) {
    if (port)
        port->os_pid = pid;
}

EDRV_API int erl_drv_consume_timeslice(ErlDrvPort port, int percent) {
    /* edrv has no reductions to count: a callback's time slice never ends. */
    return 0;
}

EDRV_API void set_port_control_flags(ErlDrvPort port, int flags) {
    if (port)
        port->control_flags = flags;
}

EDRV_API int get_port_flags(ErlDrvPort port) {
    return port && port->binary ? PORT_FLAG_BINARY : 0;
}

/* ---- the driver interface: failures ------------------------------------------------------- */

EDRV_API int driver_failure_atom(ErlDrvPort port, char *string) {
    ErlDrvTermData a = string ? driver_mk_atom(string) : 0;
    const char *name = a ? edrv__atom_name(a) : "driver_failure_atom";
    return port ? port_exit(port, (reason){name, 0}, false, true) : -1;
}

EDRV_API int driver_failure_posix(ErlDrvPort port, int error) {
    return port ? port_exit(port, (reason){erl_errno_id(error), 0}, false, true) : -1;
}

/* {Port, eof} */
static void write_eof_msg(etf_w *w, const void *ctx) {
    edrv__etf_tuple(w, 2);
    edrv__etf_port(w, *(const uint64_t *)ctx);
    edrv__etf_atom(w, "eof");
}

EDRV_API int driver_failure_eof(ErlDrvPort port) {
    if (!port)
        return -1;
    if (port->eof && edrv__port_outputs(port)) {
        /* Opened with eof: the owner is told, and the port stays open. */
        send_built(atomic_load(&port->owner), write_eof_msg, &port->id);
        return 0;
    }
    return port_exit(port, (reason){"normal", 0}, false, true);
}

EDRV_API int driver_failure(ErlDrvPort port, int error) {
    if (!port)
        return -1;
    return error == 0 ? port_exit(port, (reason){"normal", 0}, false, true)
                      : port_exit(port, (reason){NULL, error}, false, true);
}

EDRV_API int driver_exit(ErlDrvPort port, int err) {
    /* The owner is unlinked first, so no exit signal reaches it. */
    if (!port)
        return -1;
    return port_exit(port, (reason){err ? erl_errno_id(err) : "normal", 0}, true, true);
}

EDRV_API void edrv_reply_free(edrv_reply *reply) {
    if (!reply)
        return;
    edrv__free(reply->data);
    *reply = (edrv_reply){0};
}
