/*
 * monitor.c: ports monitoring processes (driver_monitor_process and friends).
 *
 * A monitor is a number, kept in the driver's opaque ErlDrvMonitor, and a
 * record of (port, pid). When a process ends, every monitor of it fires: the
 * port's process_exit(drv_data, &monitor) runs, as in ERTS, in the order the
 * monitors were made, and the monitor is gone. A port's monitors end with the
 * port.
 *
 * Three indexes find a monitor, so that nothing scans monitors of other ports
 * or processes: a map from its number (demonitor and friends get only the
 * ErlDrvMonitor), its port's list (port->monitors), and its process's: a map
 * from pid to the oldest of its monitors, the others following it on a ring
 * in the order they were made. Adding a monitor may allocate (a map grows);
 * ending a port's monitors or firing a process's never does, so a port's end
 * and a process's exit cannot fail half-way.
 *
 * Threads: the emulator thread only. Drivers monitor from their callbacks,
 * and a process's end reaches the emulator thread as a request
 * (edrv__proc_exited).
 */
#include "internal.h"
#include "idmap.h"

#include <string.h>

typedef struct {
    uint64_t id;
    edrv_port_t *port;
    uint64_t pid;
    edrv_lnode by_port; /* in port->monitors */
    edrv_lnode by_pid;  /* in the ring of pid's monitors, oldest first */
} monitor;

static idmap monitors;  /* id -> monitor, the active ones */
static idmap by_pid;    /* pid -> its oldest active monitor */
static uint64_t next_id = 1;

static uint64_t id_of(const ErlDrvMonitor *m) {
    uint64_t id;
    memcpy(&id, m->data, sizeof id);
    return id;
}

static void set_id(ErlDrvMonitor *m, uint64_t id) {
    memset(m, 0, sizeof *m);
    memcpy(m->data, &id, sizeof id);
}

/* Adds m at the end of its pid's ring; -1 when out of memory. */
static int pid_add(monitor *m) {
    monitor *first = edrv__idmap_get(&by_pid, m->pid);
    if (first) {
        edrv__list_append(&first->by_pid, &m->by_pid);
        return 0;
    }
    if (edrv__idmap_put(&by_pid, m->pid, m) < 0)
        return -1;
    edrv__list_init(&m->by_pid);
    return 0;
}

static void pid_remove(monitor *m) {
    if (edrv__idmap_get(&by_pid, m->pid) == m) {
        if (m->by_pid.next == &m->by_pid)
            edrv__idmap_del(&by_pid, m->pid);
        else /* the next oldest heads the ring now */
            edrv__idmap_set(&by_pid, m->pid, EDRV_LINKED(m->by_pid.next, monitor, by_pid));
    }
    edrv__list_remove(&m->by_pid);
}

/* The maps go back to nothing once empty: a runtime with no monitors holds
 * no memory for them (and the tests' leak check sees none). */
static void tidy(void) {
    if (!monitors.live)
        edrv__idmap_free(&monitors);
    if (!by_pid.live)
        edrv__idmap_free(&by_pid);
}

/* Takes an active monitor out of every index and frees it. */
static void forget(monitor *m) {
    edrv__idmap_del(&monitors, m->id);
    pid_remove(m);
    edrv__list_remove(&m->by_port);
    edrv__free(m);
}

EDRV_API int driver_monitor_process(ErlDrvPort port, ErlDrvTermData process,
                                    ErlDrvMonitor *mon) {
    /* A dead port's monitors were ended already: a new one would outlive
     * it, on its list. */
    if (!port || !mon || !edrv__emulator_enter() || atomic_load(&port->state) == PORT_DEAD)
        return -1;
    if (!port->drv->entry->process_exit)
        return -1; /* nothing could be told of the process's end */
    if (TD_TAG(process) != TD_PID || !edrv__proc_alive(TD_VAL(process)))
        return 1;  /* the process is gone already */
    monitor *m = edrv__alloc(EDRV_MEM_PORT, sizeof *m);
    if (!m)
        return -1;
    *m = (monitor){.id = next_id, .port = port, .pid = TD_VAL(process)};
    if (edrv__idmap_put(&monitors, m->id, m) < 0) {
        edrv__free(m);
        tidy();
        return -1;
    }
    if (pid_add(m) < 0) {
        edrv__idmap_del(&monitors, m->id);
        edrv__free(m);
        tidy();
        return -1;
    }
    next_id++;
    edrv__list_append(&port->monitors, &m->by_port);
    set_id(mon, m->id);
    return 0;
}

EDRV_API int driver_demonitor_process(ErlDrvPort port, const ErlDrvMonitor *mon) {
    if (!port || !mon || !edrv__emulator_enter())
        return -1;
    monitor *m = edrv__idmap_get(&monitors, id_of(mon));
    if (!m || m->port != port)
        return 1; /* no longer active */
    forget(m);
    tidy();
    return 0;
}

EDRV_API ErlDrvTermData driver_get_monitored_process(ErlDrvPort port, const ErlDrvMonitor *mon) {
    monitor *m = port && mon && edrv__emulator_enter()
                     ? edrv__idmap_get(&monitors, id_of(mon)) : NULL;
    return m && m->port == port ? TD_MAKE(TD_PID, m->pid) : driver_term_nil;
}

EDRV_API int driver_compare_monitors(const ErlDrvMonitor *a, const ErlDrvMonitor *b) {
    uint64_t x = id_of(a), y = id_of(b);
    return x < y ? -1 : x > y;
}

void edrv__monitors_process_exited(uint64_t pid) {
    EDRV_ASSERT_EMULATOR();
    monitor *first = edrv__idmap_del(&by_pid, pid);
    if (!first) {
        tidy();
        return;
    }
    /* The ring becomes a list of its own, headed by `fired`, and each
     * monitor leaves the other indexes: none is active any more (a
     * demonitor from a process_exit gets 1, and the port's end leaves
     * them alone). Each holds its port until it has fired, since a
     * callback may end any port. */
    edrv_lnode fired;
    edrv__list_append(&first->by_pid, &fired);
    for (edrv_lnode *l = fired.next; l != &fired; l = l->next) {
        monitor *m = EDRV_LINKED(l, monitor, by_pid);
        edrv__idmap_del(&monitors, m->id);
        edrv__list_remove(&m->by_port);
        edrv__port_ref(m->port);
    }
    tidy();
    while (!edrv__list_empty(&fired)) {
        monitor *m = EDRV_LINKED(fired.next, monitor, by_pid);
        edrv__list_remove(&m->by_pid);
        ErlDrvMonitor mon;
        set_id(&mon, m->id);
        edrv__port_lock(m->port); /* fired already: nothing to check again */
        edrv__port_process_exit(m->port, &mon);
        edrv__port_unref(m->port);
        edrv__port_unlock(m->port);
        edrv__free(m);
    }
}

void edrv__monitors_port_gone(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    while (!edrv__list_empty(&pt->monitors))
        forget(EDRV_LINKED(pt->monitors.next, monitor, by_port));
    tidy();
}
