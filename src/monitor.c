/*
 * monitor.c: ports monitoring processes (driver_monitor_process and friends).
 *
 * A monitor is a number, kept in the driver's opaque ErlDrvMonitor, and an
 * entry in one map from that number to (port, pid). When a process ends, every
 * monitor of it fires: the port's process_exit(drv_data, &monitor) runs, as in
 * ERTS, and the monitor is gone. A port's monitors end with the port.
 *
 * Emulator thread only: drivers monitor from their callbacks, and a process's
 * end reaches the emulator thread as a request (edrv__proc_exited).
 */
#include "internal.h"
#include "idmap.h"

#include <string.h>

typedef struct {
    uint64_t id;
    edrv_port_t *port;
    uint64_t pid;
} monitor;

static idmap monitors; /* id -> monitor */
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

EDRV_API int driver_monitor_process(ErlDrvPort port, ErlDrvTermData process,
                                    ErlDrvMonitor *mon) {
    if (!port || !mon || !edrv__on_emulator_thread())
        return -1;
    if (!port->drv->entry->process_exit)
        return -1; /* nothing could be told of the process's end */
    if (TD_TAG(process) != TD_PID || !edrv__proc_alive(TD_VAL(process)))
        return 1;  /* the process is gone already */
    monitor *m = edrv__alloc(EDRV_MEM_PORT, sizeof *m);
    if (!m)
        return -1;
    *m = (monitor){next_id++, port, TD_VAL(process)};
    if (edrv__idmap_put(&monitors, m->id, m) < 0) {
        edrv__free(m);
        return -1;
    }
    set_id(mon, m->id);
    return 0;
}

EDRV_API int driver_demonitor_process(ErlDrvPort port, const ErlDrvMonitor *mon) {
    if (!port || !mon || !edrv__on_emulator_thread())
        return -1;
    monitor *m = edrv__idmap_get(&monitors, id_of(mon));
    if (!m || m->port != port)
        return 1; /* no longer active */
    edrv__idmap_del(&monitors, m->id);
    edrv__free(m);
    return 0;
}

EDRV_API ErlDrvTermData driver_get_monitored_process(ErlDrvPort port, const ErlDrvMonitor *mon) {
    monitor *m = port && mon && edrv__on_emulator_thread()
                     ? edrv__idmap_get(&monitors, id_of(mon)) : NULL;
    return m && m->port == port ? TD_MAKE(TD_PID, m->pid) : driver_term_nil;
}

EDRV_API int driver_compare_monitors(const ErlDrvMonitor *a, const ErlDrvMonitor *b) {
    uint64_t x = id_of(a), y = id_of(b);
    return x < y ? -1 : x > y;
}

/* The monitors matching pid (or port), taken out of the map. The caller
 * frees the array and the monitors. */
static monitor **take(uint64_t pid, const edrv_port_t *port, size_t *n) {
    *n = 0;
    if (!monitors.live)
        return NULL;
    monitor **out = edrv__alloc(EDRV_MEM_SYSTEM, monitors.live * sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < monitors.cap; i++) {
        monitor *m = edrv__idmap_at(&monitors, i);
        if (m && (port ? m->port == port : m->pid == pid))
            out[(*n)++] = m;
    }
    for (size_t i = 0; i < *n; i++)
        edrv__idmap_del(&monitors, out[i]->id);
    /* In the order they were made. */
    for (size_t i = 1; i < *n; i++)
        for (size_t j = i; j > 0 && out[j - 1]->id > out[j]->id; j--) {
            monitor *t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return out;
}

void edrv__monitors_process_exited(uint64_t pid) {
    size_t n;
    monitor **fired = take(pid, NULL, &n);
    /* A callback may end its port: each port is held until all have run. */
    for (size_t i = 0; i < n; i++)
        edrv__port_ref(fired[i]->port);
    for (size_t i = 0; i < n; i++) {
        ErlDrvMonitor mon;
        set_id(&mon, fired[i]->id);
        edrv__port_process_exit(fired[i]->port, &mon);
    }
    for (size_t i = 0; i < n; i++) {
        edrv__port_unref(fired[i]->port);
        edrv__free(fired[i]);
    }
    edrv__free(fired);
    if (!monitors.live)
        edrv__idmap_free(&monitors);
}

void edrv__monitors_port_gone(edrv_port_t *pt) {
    size_t n;
    monitor **gone = take(0, pt, &n);
    for (size_t i = 0; i < n; i++)
        edrv__free(gone[i]);
    edrv__free(gone);
    if (!monitors.live)
        edrv__idmap_free(&monitors);
}
