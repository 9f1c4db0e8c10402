/*
 * idmap.c: the one hash map of libedrv, from a 64-bit number to a pointer.
 * Processes, ports, driver_select's fds and monitors are found by number (a
 * pid, a port number, an fd, a monitor id) through it. Async jobs are not:
 * driver_async_cancel searches the lanes, along which ids are sorted (see
 * async.c). Open addressing with linear probing; removed entries leave a
 * tombstone until the next growth. Not thread-safe: each user
 * guards its map with its own lock, or keeps it on one thread.
 */
#include "idmap.h"

#include "internal.h"

#define TOMB ((void *)1)

/* The keys are counters (pids, port numbers, monitor ids) or small numbers
 * (fds): taken as they are, consecutive keys fall in consecutive slots, which
 * keeps a busy map's accesses sequential in memory and free of collisions
 * until it wraps. */
static size_t slot_of(uint64_t key, size_t cap) {
    return (size_t)key & (cap - 1);
}

/* The slot that holds key, or NULL. */
static idmap_slot *find(const idmap *m, uint64_t key) {
    if (!m->cap)
        return NULL;
    for (size_t j = slot_of(key, m->cap);; j = (j + 1) & (m->cap - 1)) {
        idmap_slot *s = &m->slots[j];
        if (!s->val)
            return NULL;
        if (s->val != TOMB && s->key == key)
            return s;
    }
}

void *edrv__idmap_get(const idmap *m, uint64_t key) {
    idmap_slot *s = find(m, key);
    return s ? s->val : NULL;
}

void edrv__idmap_set(idmap *m, uint64_t key, void *val) {
    idmap_slot *s = find(m, key);
    if (s)
        s->val = val;
}

/* Rebuilds the table without tombstones, sized so that it is at most a
 * quarter full: it grows, and shrinks after many removals. */
static int rehash(idmap *m) {
    size_t cap = 16;
    while (cap < (m->live + 1) * 4)
        cap *= 2;
    idmap_slot *t = edrv__calloc(EDRV_MEM_SYSTEM, cap * sizeof *t);
    if (!t)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        idmap_slot *s = &m->slots[i];
        if (s->val && s->val != TOMB) {
            size_t j = slot_of(s->key, cap);
            while (t[j].val)
                j = (j + 1) & (cap - 1);
            t[j] = *s;
        }
    }
    edrv__free(m->slots);
    m->slots = t;
    m->cap = cap;
    m->used = m->live;
    return 0;
}

int edrv__idmap_put(idmap *m, uint64_t key, void *val) {
    if ((m->used + 1) * 2 > m->cap && rehash(m) < 0)
        return -1;
    size_t j = slot_of(key, m->cap);
    while (m->slots[j].val && m->slots[j].val != TOMB)
        j = (j + 1) & (m->cap - 1);
    if (!m->slots[j].val)
        m->used++;
    m->slots[j] = (idmap_slot){key, val};
    m->live++;
    return 0;
}

void *edrv__idmap_del(idmap *m, uint64_t key) {
    idmap_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *v = s->val;
    s->val = TOMB;
    m->live--;
    return v;
}

void *edrv__idmap_at(const idmap *m, size_t i) {
    void *v = m->slots[i].val;
    return v == TOMB ? NULL : v;
}

void edrv__idmap_free(idmap *m) {
    edrv__free(m->slots);
    *m = (idmap){0};
}
