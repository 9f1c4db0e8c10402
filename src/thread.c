/*
 * thread.c: the driver interface's threads and locks, on pthreads.
 *
 * Each object carries the name the driver gave it (erl_drv_*_name returns it),
 * as ERTS does for its lock checker. All functions may be called from any
 * thread, as the driver documentation says.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct ErlDrvMutex_ {
    pthread_mutex_t m;
    char *name;
};

struct ErlDrvCond_ {
    pthread_cond_t c;
    char *name;
};

struct ErlDrvRWLock_ {
    pthread_rwlock_t l;
    char *name;
};

static char *name_copy(const char *name) {
    return edrv__strdup(EDRV_MEM_SYSTEM, name ? name : "unnamed");
}

EDRV_API ErlDrvMutex *erl_drv_mutex_create(char *name) {
    ErlDrvMutex *m = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *m);
    if (!m || !(m->name = name_copy(name))) {
        edrv__free(m);
        return NULL;
    }
    pthread_mutex_init(&m->m, NULL);
    return m;
}

EDRV_API void erl_drv_mutex_destroy(ErlDrvMutex *m) {
    if (!m)
        return;
    pthread_mutex_destroy(&m->m);
    edrv__free(m->name);
    edrv__free(m);
}

EDRV_API int erl_drv_mutex_trylock(ErlDrvMutex *m) {
    return pthread_mutex_trylock(&m->m) == 0 ? 0 : EBUSY;
}

EDRV_API void erl_drv_mutex_lock(ErlDrvMutex *m) {
    pthread_mutex_lock(&m->m);
}

EDRV_API void erl_drv_mutex_unlock(ErlDrvMutex *m) {
    pthread_mutex_unlock(&m->m);
}

EDRV_API char *erl_drv_mutex_name(ErlDrvMutex *m) {
    return m ? m->name : NULL;
}

EDRV_API ErlDrvCond *erl_drv_cond_create(char *name) {
    ErlDrvCond *c = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *c);
    if (!c || !(c->name = name_copy(name))) {
        edrv__free(c);
        return NULL;
    }
    pthread_cond_init(&c->c, NULL);
    return c;
}

EDRV_API void erl_drv_cond_destroy(ErlDrvCond *c) {
    if (!c)
        return;
    pthread_cond_destroy(&c->c);
    edrv__free(c->name);
    edrv__free(c);
}

EDRV_API void erl_drv_cond_signal(ErlDrvCond *c) {
    pthread_cond_signal(&c->c);
}

EDRV_API void erl_drv_cond_broadcast(ErlDrvCond *c) {
    pthread_cond_broadcast(&c->c);
}

EDRV_API void erl_drv_cond_wait(ErlDrvCond *c, ErlDrvMutex *m) {
    pthread_cond_wait(&c->c, &m->m);
}

EDRV_API char *erl_drv_cond_name(ErlDrvCond *c) {
    return c ? c->name : NULL;
}

EDRV_API ErlDrvRWLock *erl_drv_rwlock_create(char *name) {
    ErlDrvRWLock *l = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *l);
    if (!l || !(l->name = name_copy(name))) {
        edrv__free(l);
        return NULL;
    }
    pthread_rwlock_init(&l->l, NULL);
    return l;
}

EDRV_API void erl_drv_rwlock_destroy(ErlDrvRWLock *l) {
    if (!l)
        return;
    pthread_rwlock_destroy(&l->l);
    edrv__free(l->name);
    edrv__free(l);
}

EDRV_API int erl_drv_rwlock_tryrlock(ErlDrvRWLock *l) {
    return pthread_rwlock_tryrdlock(&l->l) == 0 ? 0 : EBUSY;
}

EDRV_API void erl_drv_rwlock_rlock(ErlDrvRWLock *l) {
    pthread_rwlock_rdlock(&l->l);
}

EDRV_API void erl_drv_rwlock_runlock(ErlDrvRWLock *l) {
    pthread_rwlock_unlock(&l->l);
}

EDRV_API int erl_drv_rwlock_tryrwlock(ErlDrvRWLock *l) {
    return pthread_rwlock_trywrlock(&l->l) == 0 ? 0 : EBUSY;
}

EDRV_API void erl_drv_rwlock_rwlock(ErlDrvRWLock *l) {
    pthread_rwlock_wrlock(&l->l);
}

EDRV_API void erl_drv_rwlock_rwunlock(ErlDrvRWLock *l) {
    pthread_rwlock_unlock(&l->l);
}

EDRV_API char *erl_drv_rwlock_name(ErlDrvRWLock *l) {
    return l ? l->name : NULL;
}

/* ---- thread-specific data ----------------------------------------------------- */

EDRV_API int erl_drv_tsd_key_create(char *name, ErlDrvTSDKey *key) {
    (void)name;
    pthread_key_t k;
    int rc = pthread_key_create(&k, NULL);
    if (rc == 0)
        *key = (ErlDrvTSDKey)k;
    return rc;
}

EDRV_API void erl_drv_tsd_key_destroy(ErlDrvTSDKey key) {
    pthread_key_delete((pthread_key_t)key);
}

EDRV_API void erl_drv_tsd_set(ErlDrvTSDKey key, void *data) {
    pthread_setspecific((pthread_key_t)key, data);
}

EDRV_API void *erl_drv_tsd_get(ErlDrvTSDKey key) {
    return pthread_getspecific((pthread_key_t)key);
}

/* ---- threads -------------------------------------------------------------------- */

/* A driver thread: its pthread, its name, and what it runs. The record is
 * freed by erl_drv_thread_join. Threads created by edrv itself (the emulator
 * thread, the host's threads) have no record, so erl_drv_thread_self gives
 * them a per-thread one that lives as long as the thread. */
typedef struct ErlDrvTid_ {
    pthread_t thread;
    char *name;
    void *(*func)(void *);
    void *arg;
} drv_thread;

static _Thread_local drv_thread *self_rec;
static _Thread_local drv_thread foreign_rec;

EDRV_API ErlDrvThreadOpts *erl_drv_thread_opts_create(char *name) {
    (void)name;
    ErlDrvThreadOpts *o = edrv__alloc(EDRV_MEM_SYSTEM, sizeof *o);
    if (o)
        o->suggested_stack_size = -1;
    return o;
}

EDRV_API void erl_drv_thread_opts_destroy(ErlDrvThreadOpts *opts) {
    edrv__free(opts);
}

static void *thread_main(void *arg) {
    drv_thread *t = arg;
    edrv__thread_signals();
    self_rec = t;
    return t->func(t->arg);
}

EDRV_API int erl_drv_thread_create(char *name, ErlDrvTid *tid, void *(*func)(void *), void *arg,
                                   ErlDrvThreadOpts *opts) {
    drv_thread *t = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *t);
    if (!t || !(t->name = name_copy(name))) {
        edrv__free(t);
        return ENOMEM;
    }
    t->func = func;
    t->arg = arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (opts && opts->suggested_stack_size > 0) /* in kilowords, as in ERTS */
        pthread_attr_setstacksize(&attr, (size_t)opts->suggested_stack_size * 1024 * sizeof(void *));
    int rc = pthread_create(&t->thread, &attr, thread_main, t);
    pthread_attr_destroy(&attr);
    if (rc) {
        edrv__free(t->name);
        edrv__free(t);
        return rc;
    }
    char short_name[16];
    snprintf(short_name, sizeof short_name, "%s", t->name);
    pthread_setname_np(t->thread, short_name);
    *tid = t;
    return 0;
}

EDRV_API ErlDrvTid erl_drv_thread_self(void) {
    if (self_rec)
        return self_rec;
    foreign_rec.thread = pthread_self();
    foreign_rec.name = edrv__on_emulator_thread() ? "emulator" : "unknown";
    return &foreign_rec;
}

EDRV_API int erl_drv_equal_tids(ErlDrvTid a, ErlDrvTid b) {
    return a && b && pthread_equal(a->thread, b->thread);
}

EDRV_API void erl_drv_thread_exit(void *resp) {
    pthread_exit(resp);
}

EDRV_API int erl_drv_thread_join(ErlDrvTid tid, void **respp) {
    if (!tid || tid == &foreign_rec)
        return EINVAL;
    int rc = pthread_join(tid->thread, respp);
    if (rc == 0) {
        edrv__free(tid->name);
        edrv__free(tid);
    }
    return rc;
}

EDRV_API char *erl_drv_thread_name(ErlDrvTid tid) {
    return tid ? tid->name : NULL;
}
