/*
 * sys.c: system information, time, the environment, dynamic libraries, and the
 * small functions of the driver interface that belong to no other subsystem.
 * All are safe on any thread.
 */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef EDRV_ERTS_VERSION
#define EDRV_ERTS_VERSION "13.1.5"
#endif
#ifndef EDRV_OTP_RELEASE
#define EDRV_OTP_RELEASE "25"
#endif

/* ERTS ignores SIGPIPE, so a driver that writes to a pipe or socket whose
 * reader has gone gets EPIPE and goes on. edrv is a library and leaves the
 * process's signal actions to its program: it blocks SIGPIPE in the threads
 * that run driver code (the emulator thread, pool threads, driver threads),
 * which has the same effect there. The kernel then leaves the signal
 * pending on the thread, where it does nothing. */
void edrv__thread_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

EDRV_API void driver_system_info(ErlDrvSysInfo *sip, size_t si_size) {
    if (!sip)
        return;
    /* Drivers built against an older header pass a smaller struct: fill only
     * the fields that fit, as ERTS does. */
    ErlDrvSysInfo si = {
        .driver_major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
        .driver_minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
        .erts_version = EDRV_ERTS_VERSION,
        .otp_release = EDRV_OTP_RELEASE,
        .thread_support = 1,
        .smp_support = 1,
        .async_threads = edrv__async_threads(),
        .scheduler_threads = edrv__schedulers(),
        .nif_major_version = 2,
        .nif_minor_version = 16,
        .dirty_scheduler_support = 0,
    };
    memcpy(sip, &si, si_size < sizeof si ? si_size : sizeof si);
}

EDRV_API int null_func(void) {
    return 0;
}

/* ---- time ---------------------------------------------------------------------- */

static const ErlDrvTime per_sec[] = {
    [ERL_DRV_SEC] = 1, [ERL_DRV_MSEC] = 1000, [ERL_DRV_USEC] = 1000000,
    [ERL_DRV_NSEC] = 1000000000,
};

static bool valid_unit(ErlDrvTimeUnit u) {
    return u >= ERL_DRV_SEC && u <= ERL_DRV_NSEC;
}

static ErlDrvTime ns_of(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (ErlDrvTime)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Floor division, as ERTS converts time units (towards minus infinity). */
static ErlDrvTime floor_div(ErlDrvTime a, ErlDrvTime b) {
    ErlDrvTime q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

EDRV_API ErlDrvTime erl_drv_convert_time_unit(ErlDrvTime val, ErlDrvTimeUnit from,
                                              ErlDrvTimeUnit to) {
    if (!valid_unit(from) || !valid_unit(to))
        return ERL_DRV_TIME_ERROR;
    if (per_sec[to] >= per_sec[from])
        return val * (per_sec[to] / per_sec[from]);
    return floor_div(val, per_sec[from] / per_sec[to]);
}

EDRV_API ErlDrvTime erl_drv_monotonic_time(ErlDrvTimeUnit unit) {
    if (!valid_unit(unit))
        return ERL_DRV_TIME_ERROR;
    return erl_drv_convert_time_unit(ns_of(CLOCK_MONOTONIC), ERL_DRV_NSEC, unit);
}

EDRV_API ErlDrvTime erl_drv_time_offset(ErlDrvTimeUnit unit) {
    if (!valid_unit(unit))
        return ERL_DRV_TIME_ERROR;
    ErlDrvTime off = ns_of(CLOCK_REALTIME) - ns_of(CLOCK_MONOTONIC);
    return erl_drv_convert_time_unit(off, ERL_DRV_NSEC, unit);
}

EDRV_API int driver_get_now(ErlDrvNowData *now) {
    /* erlang:now/0: wall clock, strictly increasing across calls. */
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static ErlDrvTime last_us;
    if (!now)
        return -1;
    ErlDrvTime us = ns_of(CLOCK_REALTIME) / 1000;
    pthread_mutex_lock(&lock);
    if (us <= last_us)
        us = last_us + 1;
    last_us = us;
    pthread_mutex_unlock(&lock);
    now->megasecs = (unsigned long)(us / 1000000000000LL);
    now->secs = (unsigned long)(us / 1000000 % 1000000);
    now->microsecs = (unsigned long)(us % 1000000);
    return 0;
}

/* ---- environment ------------------------------------------------------------------ */

static pthread_mutex_t env_lock = PTHREAD_MUTEX_INITIALIZER;

EDRV_API int erl_drv_putenv(const char *key, char *value) {
    if (!key || !value || !key[0] || strchr(key, '='))
        return -1;
    pthread_mutex_lock(&env_lock);
    int rc = setenv(key, value, 1) == 0 ? 0 : -1;
    pthread_mutex_unlock(&env_lock);
    return rc;
}

EDRV_API int erl_drv_getenv(const char *key, char *value, size_t *value_size) {
    /* 0: found and copied; 1: found but *value_size too small (it is set to
     * the size needed); -1: not set. */
    if (!key || !value_size)
        return -1;
    pthread_mutex_lock(&env_lock);
    const char *v = getenv(key);
    int rc = -1;
    if (v) {
        size_t need = strlen(v) + 1;
        if (need > *value_size || !value) {
            *value_size = need;
            rc = 1;
        } else {
            memcpy(value, v, need);
            *value_size = need - 1;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&env_lock);
    return rc;
}

/* ---- dynamic libraries ------------------------------------------------------------- */

static _Thread_local const char *dl_err;

EDRV_API void *driver_dl_open(char *path) {
    void *h = dlopen(path, RTLD_NOW);
    dl_err = h ? NULL : dlerror();
    return h;
}

EDRV_API void *driver_dl_sym(void *handle, char *name) {
    dlerror();
    void *s = dlsym(handle, name);
    dl_err = s ? NULL : dlerror();
    return s;
}

EDRV_API int driver_dl_close(void *handle) {
    int rc = dlclose(handle);
    dl_err = rc ? dlerror() : NULL;
    return rc;
}

EDRV_API char *driver_dl_error(void) {
    return (char *)(dl_err ? dl_err : "no error");
}
