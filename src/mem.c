/*
 * mem.c: every allocation of libedrv and of its drivers, and driver binaries.
 *
 * One choke point (edrv__alloc) puts a small header in front of each block that
 * records its size and type, so that the per-type statistics of edrv_memory()
 * are exact and cheap, and so that tests can fail the Nth allocation
 * (edrv_testing_fail_alloc). driver_alloc and the binary functions are thin
 * layers over it.
 *
 * The statistics: every thread counts into counters of its own, with plain
 * adds (one writer each): the emulator thread and the pool threads keep them
 * on their stack, other threads (hosts, driver threads) get them on their
 * first allocation, and give their counts to the shared ones when they exit.
 * A locked add costs little in itself but waits for every store before it,
 * here the header of a block that is often not in the cache: on the emulator
 * thread, that was a tenth of an async job's cost; and host threads that run
 * callbacks side by side would pass a shared counter's line between their
 * cores on every message. edrv_memory adds them all up; a block freed by
 * another thread than the one that allocated it makes one thread's counter go
 * down and another's up, and the sum is right. A thread's counts outlive its
 * counters only in the shared ones (relaxed atomic adds), which also take the
 * counts of a thread that allocates while it exits.
 *
 * The blocks come from mimalloc or from glibc's malloc (edrv_allocator in
 * edrv.h), chosen once when the library loads. mimalloc keeps free blocks per
 * thread and per page: an empty async job, with the driver's allocation and
 * free of its job record, costs the emulator thread about 30% less than with
 * glibc's bins (bench/README.md). glibc's malloc stays for the memory
 * checkers, which see its blocks and not mimalloc's.
 *
 * Binaries: ERTS hands drivers a pointer to an ErlDrvBinary that sits inside a
 * larger, reference-counted object. edrv does the same: `bin_obj` holds the
 * count, then the ErlDrvBinary whose orig_bytes run to the end of the block.
 *
 * All functions here are safe on any thread.
 */
#include "internal.h"

#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if EDRV_MIMALLOC
#include <mimalloc.h>
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#else /* valgrind preloads its own libraries into every program it runs */
#define UNDER_VALGRIND() (getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "vgpreload"))
#endif
#endif

static bool use_mimalloc;

/* Before any allocation: libedrv's constructors run before those of the
 * programs and libraries that use it. */
__attribute__((constructor)) static void choose_allocator(void) {
    const char *env = getenv("EDRV_MALLOC");
    if (env && *env && strcmp(env, "system") != 0 && strcmp(env, "mimalloc") != 0) {
        fprintf(stderr, "edrv: EDRV_MALLOC=%s: not 'system' or 'mimalloc'; ignored\n", env);
        env = NULL;
    }
#if EDRV_MIMALLOC
    use_mimalloc = env && *env ? strcmp(env, "mimalloc") == 0 : !UNDER_VALGRIND();
    /* Freed pages go back to the system a second after they were freed, as
     * the pool's spare segments do, not mimalloc's 25 ms: a driver that
     * works in bursts would take its job records' page faults again on
     * every burst. (The environment's MIMALLOC_DECOMMIT_DELAY still wins.) */
    if (use_mimalloc)
        mi_option_set_default(mi_option_decommit_delay, 1000);
#else
    if (env && strcmp(env, "mimalloc") == 0)
        fprintf(stderr, "edrv: EDRV_MALLOC=mimalloc: this libedrv is built without mimalloc "
                        "(a sanitizer build, or -DEDRV_MIMALLOC=OFF); using glibc's malloc\n");
#endif
}

#if EDRV_MIMALLOC
static inline void *raw_malloc(size_t n) {
    return use_mimalloc ? mi_malloc(n) : malloc(n);
}

static inline void *raw_realloc(void *p, size_t n) {
    return use_mimalloc ? mi_realloc(p, n) : realloc(p, n);
}

static inline void raw_free(void *p) {
    if (use_mimalloc)
        mi_free(p);
    else
        free(p);
}
#else
#define raw_malloc malloc
#define raw_realloc realloc
#define raw_free free
#endif

EDRV_API const char *edrv_allocator(void) {
    return use_mimalloc ? "mimalloc" : "system";
}

typedef struct {
    size_t size;
    uint32_t type;
    uint32_t magic;
} alloc_hdr;

/* The header is padded to max_align_t so that blocks keep malloc's alignment. */
#define HDR_SIZE ((sizeof(alloc_hdr) + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1))
#define HDR_MAGIC 0xed5a110cu
#define HDR_OF(p) ((alloc_hdr *)((char *)(p) - HDR_SIZE))

static edrv_mem_counters shared;
/* Initial-exec: no __tls_get_addr call on every allocation. */
static _Thread_local edrv_mem_counters *mine __attribute__((tls_model("initial-exec")));
/* The threads' own counters, for edrv_memory. */
static pthread_mutex_t counters_lock = PTHREAD_MUTEX_INITIALIZER;
static edrv_mem_counters *threads_counters;
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

static edrv_mem_counters *host_counters(void);

static inline void account(unsigned type, ptrdiff_t bytes, int blocks) {
    edrv_mem_counters *c = mine;
    if (!c)
        c = host_counters();
    if (c) {
        EDRV_ONE_WRITER_ADD(&c->bytes[type], (size_t)bytes);
        EDRV_ONE_WRITER_ADD(&c->blocks[type], (size_t)blocks);
    } else {
        atomic_fetch_add_explicit(&shared.bytes[type], (size_t)bytes, memory_order_relaxed);
        atomic_fetch_add_explicit(&shared.blocks[type], (size_t)blocks, memory_order_relaxed);
    }
}

void edrv__mem_thread_begin(edrv_mem_counters *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_lock(&counters_lock);
    c->next = threads_counters;
    threads_counters = c;
    pthread_mutex_unlock(&counters_lock);
    mine = c;
}

void edrv__mem_thread_end(edrv_mem_counters *c) {
    mine = NULL;
    pthread_mutex_lock(&counters_lock);
    for (edrv_mem_counters **p = &threads_counters; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        atomic_fetch_add_explicit(&shared.bytes[i], atomic_load(&c->bytes[i]),
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&shared.blocks[i], atomic_load(&c->blocks[i]),
                                  memory_order_relaxed);
    }
    pthread_mutex_unlock(&counters_lock);
}

/* ---- a host thread's counters: made on its first allocation, and merged into
 * the shared ones by the thread key's destructor when it exits. Plain calloc:
 * they are not counted themselves. */
static pthread_key_t host_key;
static pthread_once_t host_key_once = PTHREAD_ONCE_INIT;
static bool host_key_ok;
static _Thread_local bool host_exiting __attribute__((tls_model("initial-exec")));

static void host_counters_end(void *arg) {
    edrv_mem_counters *c = arg;
    host_exiting = true; /* later allocations of this thread count as shared */
    edrv__mem_thread_end(c);
    free(c);
}

static void host_key_make(void) {
    host_key_ok = pthread_key_create(&host_key, host_counters_end) == 0;
}

static edrv_mem_counters *host_counters(void) {
    if (host_exiting)
        return NULL;
    pthread_once(&host_key_once, host_key_make);
    /* Whole cache lines of its own: the thread writes them on every
     * allocation. */
    edrv_mem_counters *c =
        host_key_ok ? aligned_alloc(64, (sizeof *c + 63) / 64 * 64) : NULL;
    if (!c)
        return NULL;
    if (pthread_setspecific(host_key, c) != 0) {
        free(c);
        return NULL;
    }
    edrv__mem_thread_begin(c);
    return c;
}

void *edrv__alloc(edrv_mem_type type, size_t size) {
    if (size > SIZE_MAX - HDR_SIZE || injected_failure())
        return NULL;
    alloc_hdr *h = raw_malloc(HDR_SIZE + size);
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
    alloc_hdr *n = raw_realloc(h, HDR_SIZE + size);
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
    raw_free(h);
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
    /* Under the lock, so that no thread's counts move to the shared ones
     * between the two reads. */
    pthread_mutex_lock(&counters_lock);
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        size_t bytes = atomic_load_explicit(&shared.bytes[i], memory_order_relaxed);
        size_t blocks = atomic_load_explicit(&shared.blocks[i], memory_order_relaxed);
        for (const edrv_mem_counters *c = threads_counters; c; c = c->next) {
            bytes += atomic_load_explicit(&c->bytes[i], memory_order_relaxed);
            blocks += atomic_load_explicit(&c->blocks[i], memory_order_relaxed);
        }
        st->bytes[i] = bytes;
        st->blocks[i] = blocks;
    }
    pthread_mutex_unlock(&counters_lock);
}

EDRV_API const char *edrv_mem_type_name(edrv_mem_type type) {
    return (unsigned)type < EDRV_MEM_TYPES ? type_names[type] : "unknown";
}

EDRV_API long edrv_testing_fail_alloc(long nth) {
    return atomic_exchange(&fail_countdown, nth > 0 ? nth : 0);
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
