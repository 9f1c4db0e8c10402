/* idmap.h: the indexes of libedrv: a map from 64-bit numbers to pointers
 * (see idmap.c), and intrusive lists. */
#ifndef EDRV_IDMAP_H
#define EDRV_IDMAP_H

#include <stdbool.h>
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
/* Gives key, which is there, another value (not NULL). Never allocates. */
void edrv__idmap_set(idmap *m, uint64_t key, void *val);
/* Removes key and returns its value, or NULL. The table keeps its size (a
 * busy map empties and fills again); edrv__idmap_free gives it back. */
void *edrv__idmap_del(idmap *m, uint64_t key);
/* Iteration: for i in [0, m->cap), the entry in slot i or NULL. */
void *edrv__idmap_at(const idmap *m, size_t i);
void edrv__idmap_free(idmap *m);

/* ---- intrusive lists ----------------------------------------------------------
 * A circular doubly linked list through an edrv_lnode inside each element, so
 * that an element leaves its list in O(1) and no list operation allocates:
 * the paths that end ports and processes use them and cannot fail. A list
 * has a head of its own (an edrv_lnode that is no element), or, where a map
 * holds an index's lists, none: the map holds the first element and the
 * ring of elements closes on itself. A link that is in no list has next
 * NULL (as calloc leaves it). */

typedef struct edrv_lnode {
    struct edrv_lnode *next, *prev;
} edrv_lnode;

/* The element whose `field` is the link l. */
#define EDRV_LINKED(l, type, field) ((type *)(void *)((char *)(l) - offsetof(type, field)))

/* An empty list (a head), or a ring of one element. */
static inline void edrv__list_init(edrv_lnode *h) {
    h->next = h->prev = h;
}

static inline bool edrv__list_empty(const edrv_lnode *h) {
    return h->next == h;
}

/* Inserts l before at: at the end of the list whose head is `at`, or at the
 * end of the ring whose first element is `at`. */
static inline void edrv__list_append(edrv_lnode *at, edrv_lnode *l) {
    l->next = at;
    l->prev = at->prev;
    at->prev->next = l;
    at->prev = l;
}

/* Takes l out of its list, if it is in one. */
static inline void edrv__list_remove(edrv_lnode *l) {
    if (!l->next)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->next = l->prev = NULL;
}

/* Moves every element of the list `from` to the end of the list `to`. */
static inline void edrv__list_move(edrv_lnode *from, edrv_lnode *to) {
    if (edrv__list_empty(from))
        return;
    from->next->prev = to->prev;
    from->prev->next = to;
    to->prev->next = from->next;
    to->prev = from->prev;
    edrv__list_init(from);
}

#endif
