/*
 * timer.c: driver timers (driver_set_timer and friends).
 *
 * One timer per port, as in ERTS: setting a new one replaces the old, 0 means
 * "call me back soon" (on the next turn of the loop), and a port's timer is
 * cancelled when the port ends. The ports with a timer sit in one binary
 * min-heap ordered by deadline; the emulator thread sleeps in epoll until the
 * earliest deadline and then runs the `timeout` callbacks that are due, or
 * hands each to the scheduler of the port's unit (loop.c), which runs it
 * under that unit alone.
 *
 * Emulator thread only, but edrv__timer_fire: timers are set from driver
 * callbacks.
 */
#include "internal.h"

#include <time.h>

static struct {
    edrv_port_t **heap;
    size_t n, cap;
} timers;

static void place(size_t i, edrv_port_t *pt) {
    timers.heap[i] = pt;
    pt->timer_slot = (long)i;
}

static void sift_up(size_t i) {
    edrv_port_t *pt = timers.heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (timers.heap[parent]->timer_deadline <= pt->timer_deadline)
            break;
        place(i, timers.heap[parent]);
        i = parent;
    }
    place(i, pt);
}

static void sift_down(size_t i) {
    edrv_port_t *pt = timers.heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= timers.n)
            break;
        if (c + 1 < timers.n && timers.heap[c + 1]->timer_deadline < timers.heap[c]->timer_deadline)
            c++;
        if (pt->timer_deadline <= timers.heap[c]->timer_deadline)
            break;
        place(i, timers.heap[c]);
        i = c;
    }
    place(i, pt);
}

void edrv__timer_cancel(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    if (pt->timer_slot < 0)
        return;
    size_t i = (size_t)pt->timer_slot;
    pt->timer_slot = -1;
    edrv_port_t *last = timers.heap[--timers.n];
    if (i < timers.n) {
        place(i, last);
        sift_down(i);
        sift_up((size_t)last->timer_slot);
    }
    if (timers.n == 0) { /* nothing left: give the heap back */
        edrv__free(timers.heap);
        timers.heap = NULL;
        timers.cap = 0;
    }
}

long edrv__timers_next_ms(void) {
    EDRV_ASSERT_EMULATOR();
    if (!timers.n)
        return -1;
    int64_t left = timers.heap[0]->timer_deadline - edrv__now_ns();
    return left <= 0 ? 0 : (long)((left + 999999) / 1000000);
}

void edrv__timers_run(void) {
    EDRV_ASSERT_EMULATOR();
    int64_t now = edrv__now_ns();
    while (timers.n && timers.heap[0]->timer_deadline <= now) {
        edrv_port_t *pt = timers.heap[0];
        uint64_t gen = atomic_load(&pt->timer_gen);
        edrv__timer_cancel(pt);
        if (!edrv__sched_timeout(pt, gen))
            edrv__timer_fire(pt, gen);
    }
}

void edrv__timer_fire(edrv_port_t *pt, uint64_t gen) {
    /* A driver that set or cancelled the timer after it was due (while this
     * thread waited for the port's unit, or the timer for its scheduler)
     * has the last word. */
    edrv__port_lock(pt);
    if (atomic_load(&pt->timer_gen) == gen)
        edrv__port_timeout(pt);
    edrv__port_unlock(pt);
}

/* ---- the driver interface -------------------------------------------------------- */

EDRV_API int driver_set_timer(ErlDrvPort port, unsigned long time) {
    if (!port || !edrv__port_accepts_jobs(port) || !edrv__emulator_enter())
        return -1;
    atomic_fetch_add(&port->timer_gen, 1);
    edrv__timer_cancel(port);
    if (timers.n == timers.cap) {
        size_t cap = timers.cap ? timers.cap * 2 : 16;
        edrv_port_t **h = edrv__realloc(EDRV_MEM_SYSTEM, timers.heap, cap * sizeof *h);
        if (!h)
            return -1;
        timers.heap = h;
        timers.cap = cap;
    }
    port->timer_deadline = edrv__now_ns() + (int64_t)time * 1000000;
    timers.heap[timers.n++] = port;
    sift_up(timers.n - 1);
    edrv__timers_changed();
    return 0;
}

EDRV_API int driver_cancel_timer(ErlDrvPort port) {
    if (!port || !edrv__emulator_enter())
        return -1;
    atomic_fetch_add(&port->timer_gen, 1);
    edrv__timer_cancel(port);
    return 0;
}

EDRV_API int driver_read_timer(ErlDrvPort port, unsigned long *time_left) {
    if (!port || !time_left || !edrv__emulator_enter())
        return -1;
    if (port->timer_slot < 0) {
        *time_left = 0;
        return 0;
    }
    int64_t left = port->timer_deadline - edrv__now_ns();
    *time_left = left <= 0 ? 0 : (unsigned long)(left / 1000000);
    return 0;
}
