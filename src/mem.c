/*
 * mem.c: every allocation of libedrv and of its drivers, and driver binaries.
 *
 * One choke point (edrv__alloc) puts a small header in front of each block that
 * records its size and type, so that the per-type statistics of edrv_memory()
 * are exact and cheap (two relaxed atomic adds per call), and so that tests can
 * fail the Nth allocation (edrv_testing_fail_alloc). driver_alloc and the
 * binary functions are thin layers over it.
 *
 * Binaries: ERTS hands drivers a pointer to an ErlDrvBinary that sits inside a
 * larger, reference-counted object. edrv does the same: `bin_obj` holds the
 * count, then the ErlDrvBinary whose orig_bytes run to the end of the block.
 *
 * All functions here are safe on any thread.
 */
#include "internal.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    size_t size;
    uint32_t type;
    uint32_t magic;
} alloc_hdr;

/* The header is padded to max_align_t so that blocks keep malloc's alignment. */
#define HDR_SIZE ((sizeof(alloc_hdr) + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1))
#define HDR_MAGIC 0xed5a110cu
#define HDR_OF(p) ((alloc_hdr *)((char *)(p) - HDR_SIZE))

static _Atomic size_t stat_bytes[EDRV_MEM_TYPES];
static _Atomic size_t stat_blocks[EDRV_MEM_TYPES];
static _Atomic long fail_countdown;

static const char *const type_names[EDRV_MEM_TYPES] = {
    "driver", "binary", "port", "message", "system", "async",
};

static bool injected_failure(void) {
    long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &n, n - 1))
            return n == 1;
    }
    return false;
}

static void account(unsigned type, ptrdiff_t bytes, int blocks) {
    atomic_fetch_add_explicit(&stat_bytes[type], (size_t)bytes, memory_order_relaxed);
    atomic_fetch_add_explicit(&stat_blocks[type], (size_t)blocks, memory_order_relaxed);
}

void *edrv__alloc(edrv_mem_type type, size_t size) {
    if (size > SIZE_MAX - HDR_SIZE || injected_failure())
        return NULL;
    alloc_hdr *h = malloc(HDR_SIZE + size);
    if (!h)
        return NULL;
    h->size = size;
    h->type = (uint32_t)type;
    h->magic = HDR_MAGIC;
    account(type, (ptrdiff_t)size, 1);
    return (char *)h + HDR_SIZE;
}

void *edrv__calloc(edrv_mem_type type, size_t size) {
    void *p = edrv__alloc(type, size);
    if (p)
        memset(p, 0, size);
    return p;
}

void *edrv__realloc(edrv_mem_type type, void *ptr, size_t size) {
    if (!ptr)
        return edrv__alloc(type, size);
    alloc_hdr *h = HDR_OF(ptr);
    if (h->magic != HDR_MAGIC)
        abort(); /* not ours: a broken invariant, not bad input */
    if (size > SIZE_MAX - HDR_SIZE || injected_failure())
        return NULL;
    size_t old = h->size;
    unsigned t = h->type;
    alloc_hdr *n = realloc(h, HDR_SIZE + size);
    if (!n)
        return NULL;
    n->size = size;
    account(t, (ptrdiff_t)size - (ptrdiff_t)old, 0);
    return (char *)n + HDR_SIZE;
}

void edrv__free(void *ptr) {
    if (!ptr)
        return;
    alloc_hdr *h = HDR_OF(ptr);
    if (h->magic != HDR_MAGIC)
        abort();
    h->magic = 0;
    account(h->type, -(ptrdiff_t)h->size, -1);
    free(h);
}

char *edrv__strdup(edrv_mem_type type, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = edrv__alloc(type, n);
    if (d)
        memcpy(d, s, n);
    return d;
}

EDRV_API void edrv_memory(edrv_mem_stats *st) {
    if (!st)
        return;
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        st->bytes[i] = atomic_load_explicit(&stat_bytes[i], memory_order_relaxed);
        st->blocks[i] = atomic_load_explicit(&stat_blocks[i], memory_order_relaxed);
    }
}

EDRV_API const char *edrv_mem_type_name(edrv_mem_type type) {
    return (unsigned)type < EDRV_MEM_TYPES ? type_names[type] : "unknown";
}

EDRV_API void edrv_testing_fail_alloc(long nth) {
    atomic_store(&fail_countdown, nth > 0 ? nth : 0);
}

/* ---- the driver interface -------------------------------------------------- */

EDRV_API void *driver_alloc(ErlDrvSizeT size) {
    return edrv__alloc(EDRV_MEM_DRIVER, size);
}

EDRV_API void *driver_realloc(void *ptr, ErlDrvSizeT size) {
    return edrv__realloc(EDRV_MEM_DRIVER, ptr, size);
}

EDRV_API void driver_free(void *ptr) {
    edrv__free(ptr);
}

typedef struct {
    _Atomic ErlDrvSInt refc;
    ErlDrvBinary bin; /* orig_bytes runs to the end of the block */
} bin_obj;

#define BIN_OBJ(b) ((bin_obj *)((char *)(b) - offsetof(bin_obj, bin)))
#define BIN_BYTES_OFF (offsetof(bin_obj, bin) + offsetof(ErlDrvBinary, orig_bytes))

EDRV_API ErlDrvBinary *driver_alloc_binary(ErlDrvSizeT size) {
    if (size > (ErlDrvSizeT)INTPTR_MAX - BIN_BYTES_OFF)
        return NULL;
    size_t total = BIN_BYTES_OFF + size;
    if (total < sizeof(bin_obj))
        total = sizeof(bin_obj);
    bin_obj *o = edrv__alloc(EDRV_MEM_BINARY, total);
    if (!o)
        return NULL;
    atomic_init(&o->refc, 1);
    o->bin.orig_size = (ErlDrvSInt)size;
    return &o->bin;
}

ErlDrvBinary *edrv__binary_new(const void *bytes, size_t size) {
    ErlDrvBinary *b = driver_alloc_binary(size);
    if (b && size)
        memcpy(b->orig_bytes, bytes, size);
    return b;
}

EDRV_API ErlDrvBinary *driver_realloc_binary(ErlDrvBinary *bin, ErlDrvSizeT size) {
    if (!bin)
        return driver_alloc_binary(size);
    if (size > (ErlDrvSizeT)INTPTR_MAX - BIN_BYTES_OFF)
        return NULL;
    bin_obj *o = BIN_OBJ(bin);
    if (atomic_load(&o->refc) > 1) {
        /* Shared: ERTS copies rather than moving a binary others still hold.
         * The caller's reference moves to the copy. */
        ErlDrvBinary *n = driver_alloc_binary(size);
        if (!n)
            return NULL;
        size_t keep = (size_t)bin->orig_size < size ? (size_t)bin->orig_size : size;
        memcpy(n->orig_bytes, bin->orig_bytes, keep);
        driver_free_binary(bin);
        return n;
    }
    size_t total = BIN_BYTES_OFF + size;
    if (total < sizeof(bin_obj))
        total = sizeof(bin_obj);
    bin_obj *n = edrv__realloc(EDRV_MEM_BINARY, o, total);
    if (!n)
        return NULL;
    n->bin.orig_size = (ErlDrvSInt)size;
    return &n->bin;
}

EDRV_API void driver_free_binary(ErlDrvBinary *bin) {
    if (!bin)
        return;
    bin_obj *o = BIN_OBJ(bin);
    if (atomic_fetch_sub_explicit(&o->refc, 1, memory_order_acq_rel) == 1)
        edrv__free(o);
}

EDRV_API ErlDrvSInt driver_binary_get_refc(ErlDrvBinary *bin) {
    return atomic_load(&BIN_OBJ(bin)->refc);
}

EDRV_API ErlDrvSInt driver_binary_inc_refc(ErlDrvBinary *bin) {
    return atomic_fetch_add_explicit(&BIN_OBJ(bin)->refc, 1, memory_order_relaxed) + 1;
}

EDRV_API ErlDrvSInt driver_binary_dec_refc(ErlDrvBinary *bin) {
    /* As in ERTS, this only counts: the driver frees at zero with
     * driver_free_binary, which drops the last reference. */
    return atomic_fetch_sub_explicit(&BIN_OBJ(bin)->refc, 1, memory_order_acq_rel) - 1;
}
