/* idmap.h: a map from 64-bit numbers to pointers (see idmap.c). */
#ifndef EDRV_IDMAP_H
#define EDRV_IDMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t key;
    void *val; /* NULL: empty; a tombstone marker: removed */
} idmap_slot;

typedef struct {
    idmap_slot *slots;
    size_t cap;  /* a power of two, or 0 */
    size_t used; /* slots taken, tombstones included */
    size_t live; /* entries */
} idmap;

void *edrv__idmap_get(const idmap *m, uint64_t key);
/* Adds key (not already there); -1 when out of memory. val must not be NULL. */
int edrv__idmap_put(idmap *m, uint64_t key, void *val);
/* Removes key and returns its value, or NULL. The table keeps its size (a
 * busy map empties and fills again); edrv__idmap_free gives it back. */
void *edrv__idmap_del(idmap *m, uint64_t key);
/* Iteration: for i in [0, m->cap), the entry in slot i or NULL. */
void *edrv__idmap_at(const idmap *m, size_t i);
void edrv__idmap_free(idmap *m);

#endif
