/*
 * port_table.c: the port table, its indexes, and busy ports. Any thread.
 *
 * Any thread holding only a port's number (a host thread checking before
 * port_command, a pool thread in erl_drv_output_term, a fast path) finds the
 * port here, asks whether it is alive and who owns it, or waits while it is
 * busy. What a port is and does (its callbacks, state and end) is port.c's,
 * under the port's unit; this file changes no port but its place in the
 * table and its busy counts, and calls no driver. Each function says which
 * locks it takes; the table's writers also hold the emulator lock, which
 * this file asserts.
 */
#include "internal.h"
#include "idmap.h"

#include <stdio.h>

/* ---- the table ----------------------------------------------------------------
 * The map from number to port is in shards, by number, each with its lock on
 * a cache line of its own. Writers hold the emulator lock, ports.lock and the
 * shard's lock; readers hold any of them: admission and a pool thread
 * resolving a port term take ports.lock, and calls to a port (the fast paths,
 * edrv__table_ref) take only the shard's lock, so that two threads on two
 * ports share no lock's line.
 * Besides the map from number to port, two indexes, changed with the map:
 * every port in a list (for edrv_stop and unloading, which end them all),
 * and the ports of each owner (for the owner's exit, which must not cost
 * what other processes' ports cost): a map from pid to the oldest of its
 * ports, the others following it on a ring (owner_link). A port's owner
 * never changes once it is in the table. Only the emulator lock's holder
 * reads the indexes. */

#define PORT_SHARDS 16 /* a power of two */

static struct {
    _Alignas(64) pthread_mutex_t lock;
    idmap map; /* port number -> port, for the numbers of this shard */
} port_shards[PORT_SHARDS] = {[0 ... PORT_SHARDS - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

static inline unsigned shard_of(uint64_t id) {
    return (unsigned)(id & (PORT_SHARDS - 1));
}

static struct {
    pthread_mutex_t lock;
    idmap by_owner;   /* owner pid -> its oldest port */
    edrv_lnode all;    /* every port in the table, oldest first (all_link) */
    uint64_t next_id; /* never reused, even across restarts */
} ports = {.lock = PTHREAD_MUTEX_INITIALIZER, .all = {&ports.all, &ports.all}, .next_id = 1};

static edrv_port_t *lookup_locked(uint64_t id) {
    return edrv__idmap_get(&port_shards[shard_of(id)].map, id);
}


/* Adds pt at the end of its owner's ring (ports.lock held). */
static bool owner_add(edrv_port_t *pt) {
    uint64_t owner = atomic_load(&pt->owner);
    edrv_port_t *first = edrv__idmap_get(&ports.by_owner, owner);
    if (first) {
        edrv__list_append(&first->owner_link, &pt->owner_link);
        return true;
    }
    if (edrv__idmap_put(&ports.by_owner, owner, pt) < 0)
        return false;
    edrv__list_init(&pt->owner_link);
    return true;
}

/* Takes pt out of its owner's ring, or of the list its owner's exit is
 * walking (ports.lock held). */
static void owner_remove(edrv_port_t *pt) {
    uint64_t owner = atomic_load(&pt->owner);
    if (pt->owner_link.next && edrv__idmap_get(&ports.by_owner, owner) == pt) {
        if (pt->owner_link.next == &pt->owner_link)
            edrv__idmap_del(&ports.by_owner, owner);
        else /* the next oldest heads the ring now */
            edrv__idmap_set(&ports.by_owner, owner,
                            EDRV_LINKED(pt->owner_link.next, edrv_port_t, owner_link));
        if (!ports.by_owner.live)
            edrv__idmap_free(&ports.by_owner);
    }
    edrv__list_remove(&pt->owner_link);
}

/* Gives pt its number and puts it in the table and its indexes; false when
 * out of memory. */
bool edrv__table_insert(edrv_port_t *pt) {
    pthread_mutex_lock(&ports.lock);
    pt->id = ports.next_id;
    unsigned sh = shard_of(pt->id);
    pthread_mutex_lock(&port_shards[sh].lock);
    bool ok = edrv__idmap_put(&port_shards[sh].map, pt->id, pt) == 0;
    if (ok && !owner_add(pt)) {
        edrv__idmap_del(&port_shards[sh].map, pt->id);
        ok = false;
    }
    pthread_mutex_unlock(&port_shards[sh].lock);
    if (ok) {
        ports.next_id++;
        edrv__list_append(&ports.all, &pt->all_link);
    }
    pthread_mutex_unlock(&ports.lock);
    return ok;
}

void edrv__table_remove(edrv_port_t *pt) {
    pthread_mutex_lock(&ports.lock);
    unsigned sh = shard_of(pt->id);
    pthread_mutex_lock(&port_shards[sh].lock);
    edrv__idmap_del(&port_shards[sh].map, pt->id);
    if (!port_shards[sh].map.live) /* the shard's last port: give its table back */
        edrv__idmap_free(&port_shards[sh].map);
    pthread_mutex_unlock(&port_shards[sh].lock);
    owner_remove(pt);
    edrv__list_remove(&pt->all_link);
    pthread_mutex_unlock(&ports.lock);
    edrv__busy_changed(); /* senders waiting for it learn that it is gone */
}

/* ---- busy ports -------------------------------------------------------------
 * A sender (a host thread) waits in edrv__port_admit while the port is busy:
 * set busy by its driver (set_busy_port), or by command data sent to it and
 * not yet taken by the driver reaching the high limit of the busy message
 * queue (until it drops below the low limit). Every change that may end a
 * wait broadcasts on busy_cond. Lock order: busy_lock -> ports.lock. */

static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t busy_cond = PTHREAD_COND_INITIALIZER;

void edrv__busy_changed(void) {
    pthread_mutex_lock(&busy_lock);
    pthread_cond_broadcast(&busy_cond);
    pthread_mutex_unlock(&busy_lock);
}

int edrv__port_admit(edrv_port id, size_t len, unsigned opts, _Atomic int *suspended) {
    EDRV_ASSERT_NOT_EMULATOR(); /* it may wait for the emulator thread */
    int rc = 0;
    bool waited = false;
    pthread_mutex_lock(&busy_lock);
    for (;;) {
        pthread_mutex_lock(&ports.lock);
        edrv_port_t *pt = lookup_locked(id);
        if (!pt || atomic_load(&pt->state) != PORT_ALIVE) {
            pthread_mutex_unlock(&ports.lock);
            rc = edrv__port_check(id);
            break;
        }
        bool soft = pt->drv->entry->driver_flags & ERL_DRV_FLAG_SOFT_BUSY;
        bool busy = edrv__port_busy(pt);
        if ((opts & EDRV_CMD_FORCE) && !soft) {
            pthread_mutex_unlock(&ports.lock);
            rc = edrv__fail(EDRV_ENOTSUP, "force needs a driver with ERL_DRV_FLAG_SOFT_BUSY");
            break;
        }
        if (!busy || (opts & (EDRV_CMD_FORCE | EDRV_CMD_QUEUE))) {
            size_t q = atomic_fetch_add(&pt->msgq_bytes, len) + len;
            size_t high = atomic_load(&pt->msgq_high);
            if (high && q > high) /* above high, as ERTS: reaching it is not busy */
                atomic_store(&pt->msgq_busy, true);
            pthread_mutex_unlock(&ports.lock);
            break;
        }
        pthread_mutex_unlock(&ports.lock);
        if (opts & EDRV_CMD_NOSUSPEND) {
            rc = edrv__fail(EDRV_EBUSY, "#Port<0.%llu> is busy", (unsigned long long)id);
            break;
        }
        if (suspended && !waited) /* process_info's `suspended` (edrv_proc_info) */
            atomic_fetch_add(suspended, 1);
        waited = true;
        pthread_cond_wait(&busy_cond, &busy_lock);
    }
    if (suspended && waited)
        atomic_fetch_sub(suspended, 1);
    pthread_mutex_unlock(&busy_lock);
    return rc;
}

EDRV_API int edrv_port_busy(edrv_port port) {
    pthread_mutex_lock(&ports.lock);
    edrv_port_t *pt = lookup_locked(port);
    bool alive = pt && atomic_load(&pt->state) == PORT_ALIVE;
    bool busy = alive && edrv__port_busy(pt);
    pthread_mutex_unlock(&ports.lock);
    return alive ? busy : edrv__port_check(port);
}

void edrv__port_unadmit(edrv_port id, size_t len) {
    if (!len)
        return;
    bool freed = false;
    pthread_mutex_lock(&ports.lock);
    edrv_port_t *pt = lookup_locked(id);
    if (pt) {
        size_t q = atomic_fetch_sub(&pt->msgq_bytes, len) - len;
        if (atomic_load(&pt->msgq_busy) && q < atomic_load(&pt->msgq_low)) {
            atomic_store(&pt->msgq_busy, false);
            freed = true;
        }
    }
    pthread_mutex_unlock(&ports.lock);
    if (freed)
        edrv__busy_changed();
}

EDRV_API void set_busy_port(ErlDrvPort port, int on) {
    if (!port)
        return;
    atomic_store(&port->busy, on != 0);
    if (!on)
        edrv__busy_changed();
}

/* As ERTS (erl_port_task.c): a limit of 0 (or a NULL pointer) reads it,
 * other values set it; a low limit above the high one raises the high one,
 * and a high limit below the low one lowers the low one. Setting a limit
 * re-decides busy from the bytes queued now. ERL_DRV_BUSY_MSGQ_DISABLED in
 * either turns the queue off for good (and the values passed are written
 * back as they are); on a port whose queue is off both read DISABLED. */
EDRV_API void erl_drv_busy_msgq_limits(ErlDrvPort port, ErlDrvSizeT *lowp, ErlDrvSizeT *highp) {
    if (!port || !atomic_load(&port->msgq_high)) { /* off: by the driver flag, or a call */
        if (lowp)
            *lowp = ERL_DRV_BUSY_MSGQ_DISABLED;
        if (highp)
            *highp = ERL_DRV_BUSY_MSGQ_DISABLED;
        return;
    }
    ErlDrvSizeT low = lowp ? *lowp : 0, high = highp ? *highp : 0;
    if (low == ERL_DRV_BUSY_MSGQ_DISABLED || high == ERL_DRV_BUSY_MSGQ_DISABLED) {
        atomic_store(&port->msgq_high, 0);
        atomic_store(&port->msgq_busy, false);
    } else {
        bool written = false;
        if (!low) {
            low = atomic_load(&port->msgq_low);
        } else {
            if (atomic_load(&port->msgq_high) < low)
                atomic_store(&port->msgq_high, low);
            atomic_store(&port->msgq_low, low);
            written = true;
        }
        if (!high) {
            high = atomic_load(&port->msgq_high);
        } else {
            if (low > high) {
                low = high;
                atomic_store(&port->msgq_low, low);
            }
            atomic_store(&port->msgq_high, high);
            written = true;
        }
        if (written) {
            size_t q = atomic_load(&port->msgq_bytes);
            if (q > high)
                atomic_store(&port->msgq_busy, true);
            else if (q < low)
                atomic_store(&port->msgq_busy, false);
        }
    }
    edrv__busy_changed();
    if (lowp)
        *lowp = low;
    if (highp)
        *highp = high;
}

void edrv__ports_reset(void) {
    pthread_mutex_lock(&ports.lock);
    for (int i = 0; i < PORT_SHARDS; i++) {
        pthread_mutex_lock(&port_shards[i].lock);
        edrv__idmap_free(&port_shards[i].map);
        pthread_mutex_unlock(&port_shards[i].lock);
    }
    edrv__idmap_free(&ports.by_owner);
    edrv__list_init(&ports.all);
    pthread_mutex_unlock(&ports.lock);
}

int edrv__port_check(edrv_port id) {
    pthread_mutex_lock(&ports.lock);
    edrv_port_t *pt = lookup_locked(id);
    bool ever = id > 0 && id < ports.next_id;
    port_state st = pt ? atomic_load(&pt->state) : PORT_DEAD;
    pthread_mutex_unlock(&ports.lock);
    if (st == PORT_ALIVE)
        return 0;
    if (!ever)
        return edrv__fail(EDRV_ENOPORT, "#Port<0.%llu> does not exist", (unsigned long long)id);
    return edrv__fail(EDRV_ECLOSED, "#Port<0.%llu> is closed", (unsigned long long)id);
}

/* ---- lookups and passes ---------------------------------------------------------- */

/* For a thread that holds neither the emulator lock nor a unit (a fast
 * path): the live port with this number, its unit taken if that was free
 * and no request is queued for the port (edrv__port_unlock lets it go);
 * NULL otherwise: the caller takes the
 * ordinary way, which says why. Under the shard's lock, which keeps the port
 * in the table while the unit is tried; once its unit is held, the port cannot
 * end but by this thread. */
edrv_port_t *edrv__table_take_fast(edrv_port id) {
    pthread_mutex_t *lock = &port_shards[shard_of(id)].lock;
    pthread_mutex_lock(lock);
    edrv_port_t *pt = lookup_locked(id);
    if (pt && atomic_load_explicit(&pt->state, memory_order_relaxed) == PORT_ALIVE &&
        !EDRV_QUEUED(atomic_load_explicit(&pt->queued, memory_order_acquire)) &&
        edrv__unit_try(pt->unit)) {
        atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
        pthread_mutex_unlock(lock);
        if (atomic_load(&pt->state) == PORT_ALIVE)
            return pt;
        edrv__port_unlock(pt);
        return NULL;
    }
    pthread_mutex_unlock(lock);
    return NULL;
}

edrv_port_t *edrv__table_ref(edrv_port id) {
    pthread_mutex_t *lock = &port_shards[shard_of(id)].lock;
    pthread_mutex_lock(lock);
    edrv_port_t *pt = lookup_locked(id);
    if (pt && atomic_load(&pt->state) != PORT_DEAD)
        atomic_fetch_add_explicit(&pt->refs, 1, memory_order_relaxed);
    else
        pt = NULL;
    pthread_mutex_unlock(lock);
    return pt;
}

/* The first link of a list of ports that ports.lock guards, taken out of
 * it and put at the end of `to` (when given); NULL once the list is empty. */
edrv_lnode *edrv__table_pop(edrv_lnode *from, edrv_lnode *to) {
    pthread_mutex_lock(&ports.lock);
    edrv_lnode *l = edrv__list_empty(from) ? NULL : from->next;
    if (l) {
        edrv__list_remove(l);
        if (to)
            edrv__list_append(to, l);
    }
    pthread_mutex_unlock(&ports.lock);
    return l;
}


void edrv__table_take_all(edrv_lnode *to) {
    EDRV_ASSERT_EMULATOR();
    pthread_mutex_lock(&ports.lock);
    edrv__list_move(&ports.all, to);
    pthread_mutex_unlock(&ports.lock);
}

void edrv__table_put_back_all(edrv_lnode *from) {
    EDRV_ASSERT_EMULATOR();
    /* Oldest first, before the ports opened meanwhile. */
    pthread_mutex_lock(&ports.lock);
    edrv__list_move(&ports.all, from);
    edrv__list_move(from, &ports.all);
    pthread_mutex_unlock(&ports.lock);
}

void edrv__table_take_owned(uint64_t pid, edrv_lnode *to) {
    EDRV_ASSERT_EMULATOR();
    pthread_mutex_lock(&ports.lock);
    edrv_port_t *first = edrv__idmap_del(&ports.by_owner, pid);
    if (first)
        edrv__list_append(&first->owner_link, to);
    if (!ports.by_owner.live)
        edrv__idmap_free(&ports.by_owner);
    pthread_mutex_unlock(&ports.lock);
}

uint64_t edrv__port_owner_of(uint64_t port_id, bool *closing) {
    pthread_mutex_lock(&ports.lock);
    edrv_port_t *pt = lookup_locked(port_id);
    uint64_t owner = 0;
    if (pt) {
        *closing = !edrv__port_outputs(pt);
        owner = atomic_load(&pt->owner);
    }
    pthread_mutex_unlock(&ports.lock);
    return owner;
}
