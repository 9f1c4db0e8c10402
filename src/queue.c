/*
 * queue.c: the driver queue (driver_enq, driver_deq, driver_peekq, ...).
 *
 * Each port may hold a queue of bytes, kept as reference-counted binaries:
 * the iov and binv arrays that driver_peekq and driver_peekqv hand out are
 * the queue itself, from `head` to `tail`, so a peek costs nothing and stays
 * valid until the next change to the queue. driver_deq trims the head in
 * place. Bytes given by pointer are copied into a new binary; binaries given
 * by the driver (driver_enq_bin, driver_enqv) are referenced, not copied.
 *
 * Threads: the driver's; a driver that touches the queue from a pool thread
 * holds the port data lock, as in ERTS, and so does the runtime when it reads
 * the queue's size or frees it (port.c: queue_bytes, queue_drop). The port
 * data lock keeps the port's struct alive, so a pool thread may call these
 * functions with a port that has died: they see it dead and fail. The queue's
 * end matters to the port: a port closing with a non-empty queue terminates
 * once it empties (port.c).
 */
#include "internal.h"

#include <string.h>

struct edrv_queue {
    SysIOVec *iov;
    ErlDrvBinary **binv;
    int head, tail, cap; /* entries [head, tail) */
    size_t size;         /* bytes */
};

static edrv_queue *queue_of(ErlDrvPort port, bool create) {
    if (!port || atomic_load(&port->state) == PORT_DEAD)
        return NULL;
    if (!port->queue && create)
        port->queue = edrv__calloc(EDRV_MEM_PORT, sizeof *port->queue);
    return port->queue;
}

void edrv__queue_free(edrv_queue *q) {
    if (!q)
        return;
    for (int i = q->head; i < q->tail; i++)
        driver_free_binary(q->binv[i]);
    edrv__free(q->iov);
    edrv__free(q);
}

size_t edrv__queue_size(const edrv_queue *q) {
    return q ? q->size : 0;
}

/* Room for n more entries at the end (front == false) or the start. */
static bool make_room(edrv_queue *q, int n, bool front) {
    int used = q->tail - q->head;
    if (front ? q->head >= n : q->cap - q->tail >= n)
        return true;
    int cap = q->cap ? q->cap : 8;
    while (cap < used + n + 1)
        cap *= 2;
    /* One block for both arrays; entries start in the middle of it when
     * pushing to the front, so that pushes on both ends stay cheap. */
    SysIOVec *iov = edrv__alloc(EDRV_MEM_PORT, (size_t)cap * (sizeof *iov + sizeof(ErlDrvBinary *)));
    if (!iov)
        return false;
    ErlDrvBinary **binv = (ErlDrvBinary **)(iov + cap);
    int start = front ? cap - used - (cap - used - n) / 2 : (cap - used - n) / 2;
    if (front && start < n)
        start = n;
    if (used) {
        memcpy(iov + start, q->iov + q->head, (size_t)used * sizeof *iov);
        memcpy(binv + start, q->binv + q->head, (size_t)used * sizeof *binv);
    }
    edrv__free(q->iov);
    q->iov = iov;
    q->binv = binv;
    q->cap = cap;
    q->head = start;
    q->tail = start + used;
    return true;
}

/* Adds one entry referring to bin (the queue takes a reference). */
static int add(ErlDrvPort port, ErlDrvBinary *bin, const char *base, size_t len, bool front) {
    edrv_queue *q = queue_of(port, true);
    if (!q || !make_room(q, 1, front))
        return -1;
    if (!len)
        return 0;
    driver_binary_inc_refc(bin);
    int at = front ? --q->head : q->tail++;
    q->iov[at] = (SysIOVec){(char *)base, len};
    q->binv[at] = bin;
    q->size += len;
    return 0;
}

static int add_copy(ErlDrvPort port, const char *buf, size_t len, bool front) {
    if (!len)
        return queue_of(port, false) || (port && atomic_load(&port->state) != PORT_DEAD) ? 0 : -1;
    ErlDrvBinary *bin = edrv__binary_new(buf, len);
    if (!bin)
        return -1;
    int rc = add(port, bin, bin->orig_bytes, len, front);
    driver_free_binary(bin);
    return rc;
}

static int add_bin(ErlDrvPort port, ErlDrvBinary *bin, ErlDrvSizeT offset, ErlDrvSizeT len,
                   bool front) {
    if (!bin || offset > (ErlDrvSizeT)bin->orig_size || len > (ErlDrvSizeT)bin->orig_size - offset)
        return -1;
    return add(port, bin, bin->orig_bytes + offset, len, front);
}

/* The vector's bytes after `skip`, each element referenced (or copied when it
 * has no binary). Pushed to the front in reverse, so that order is kept. */
static int add_vec(ErlDrvPort port, ErlIOVec *ev, ErlDrvSizeT skip, bool front) {
    if (!ev || !port || atomic_load(&port->state) == PORT_DEAD)
        return -1;
    int first = 0;
    for (; first < ev->vsize && skip >= ev->iov[first].iov_len; first++)
        skip -= ev->iov[first].iov_len;
    for (int k = 0; k < ev->vsize - first; k++) {
        int i = front ? ev->vsize - 1 - k : first + k;
        size_t off = i == first ? skip : 0;
        const char *base = (const char *)ev->iov[i].iov_base + off;
        size_t len = ev->iov[i].iov_len - off;
        if (!len)
            continue;
        ErlDrvBinary *bin = ev->binv ? ev->binv[i] : NULL;
        int rc = bin ? add(port, bin, base, len, front) : add_copy(port, base, len, front);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ---- the driver interface --------------------------------------------------------- */

EDRV_API int driver_enq(ErlDrvPort port, char *buf, ErlDrvSizeT len) {
    return add_copy(port, buf, len, false);
}

EDRV_API int driver_pushq(ErlDrvPort port, char *buf, ErlDrvSizeT len) {
    return add_copy(port, buf, len, true);
}

EDRV_API int driver_enq_bin(ErlDrvPort port, ErlDrvBinary *bin, ErlDrvSizeT offset,
                            ErlDrvSizeT len) {
    return add_bin(port, bin, offset, len, false);
}

EDRV_API int driver_pushq_bin(ErlDrvPort port, ErlDrvBinary *bin, ErlDrvSizeT offset,
                              ErlDrvSizeT len) {
    return add_bin(port, bin, offset, len, true);
}

EDRV_API int driver_enqv(ErlDrvPort port, ErlIOVec *ev, ErlDrvSizeT skip) {
    return add_vec(port, ev, skip, false);
}

EDRV_API int driver_pushqv(ErlDrvPort port, ErlIOVec *ev, ErlDrvSizeT skip) {
    return add_vec(port, ev, skip, true);
}

EDRV_API ErlDrvSizeT driver_deq(ErlDrvPort port, ErlDrvSizeT size) {
    edrv_queue *q = queue_of(port, false);
    if (!port || atomic_load(&port->state) == PORT_DEAD)
        return (ErlDrvSizeT)-1;
    if (!q)
        return size ? (ErlDrvSizeT)-1 : 0;
    if (size > q->size)
        return (ErlDrvSizeT)-1;
    q->size -= size;
    while (size) {
        SysIOVec *v = &q->iov[q->head];
        if (size < v->iov_len) {
            v->iov_base = (char *)v->iov_base + size;
            v->iov_len -= size;
            break;
        }
        size -= v->iov_len;
        driver_free_binary(q->binv[q->head++]);
    }
    if (q->head == q->tail)
        q->head = q->tail = q->cap / 2;
    /* A closing port whose queue this emptied ends after the callback (or
     * the async job) that emptied it: port.c, end_if_flushed. */
    return q->size;
}

EDRV_API ErlDrvSizeT driver_sizeq(ErlDrvPort port) {
    if (!port || atomic_load(&port->state) == PORT_DEAD)
        return (ErlDrvSizeT)-1;
    return edrv__queue_size(port->queue);
}

EDRV_API SysIOVec *driver_peekq(ErlDrvPort port, int *vlen) {
    edrv_queue *q = queue_of(port, false);
    if (!port || atomic_load(&port->state) == PORT_DEAD) {
        if (vlen)
            *vlen = -1;
        return NULL;
    }
    if (vlen)
        *vlen = q ? q->tail - q->head : 0;
    return q && q->tail > q->head ? &q->iov[q->head] : NULL;
}

EDRV_API ErlDrvSizeT driver_peekqv(ErlDrvPort port, ErlIOVec *ev) {
    edrv_queue *q = queue_of(port, false);
    if (!ev || !port || atomic_load(&port->state) == PORT_DEAD)
        return (ErlDrvSizeT)-1;
    if (!q || q->tail == q->head) {
        *ev = (ErlIOVec){0, 0, NULL, NULL};
        return 0;
    }
    *ev = (ErlIOVec){q->tail - q->head, q->size, &q->iov[q->head], &q->binv[q->head]};
    return q->size;
}
