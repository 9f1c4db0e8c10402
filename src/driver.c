/*
 * driver.c: loading drivers and the registry of loaded ones.
 *
 * Loading follows erl_ddll:load_driver/2 step by step, and each way it can fail
 * is its own error, as in OTP 25: the file will not open (EDRV_EOPEN, with
 * dlerror's text), it has no driver_init (EDRV_ENODRVINIT), driver_init returns
 * NULL or the entry's init fails (EDRV_EDRVINIT), the entry was built for
 * another driver API (EDRV_EVERSION), or its name is not the one asked for
 * (EDRV_EBADNAME, also when another file of that name is loaded).
 *
 * A driver is unloaded when its last user unloads it and no port uses it; if
 * ports remain, it goes when the last of them closes. finish runs first, for
 * dynamically loaded drivers only, as in ERTS.
 *
 * Emulator thread only, except where noted.
 */
#include "internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

static edrv_driver *drivers;

edrv_driver *edrv__driver_find(const char *name, size_t len) {
    EDRV_ASSERT_EMULATOR();
    for (edrv_driver *d = drivers; d; d = d->next)
        if (strncmp(d->name, name, len) == 0 && d->name[len] == '\0')
            return d;
    return NULL;
}

/* The entry's version: a 3.x entry with x <= our minor, or any 2.x entry. */
static int check_entry(const ErlDrvEntry *e, const char *name) {
    if (e->extended_marker != (int)ERL_DRV_EXTENDED_MARKER)
        return edrv__fail(EDRV_EVERSION, "%s: the entry has no extended marker (built for a "
                          "pre-R13 erl_driver.h?)", name);
    if (e->major_version < 2 || e->major_version > ERL_DRV_EXTENDED_MAJOR_VERSION ||
        (e->major_version == ERL_DRV_EXTENDED_MAJOR_VERSION &&
         e->minor_version > ERL_DRV_EXTENDED_MINOR_VERSION))
        return edrv__fail(EDRV_EVERSION, "%s: built for driver API %d.%d; edrv supports 2.x "
                          "and 3.0 to %d.%d", name, e->major_version, e->minor_version,
                          ERL_DRV_EXTENDED_MAJOR_VERSION, ERL_DRV_EXTENDED_MINOR_VERSION);
    if (!e->driver_name || strcmp(e->driver_name, name) != 0)
        return edrv__fail(EDRV_EBADNAME, "the driver in %s.so calls itself '%s'", name,
                          e->driver_name ? e->driver_name : "(NULL)");
    return 0;
}

static int add(const char *name, ErlDrvEntry *e, void *dl) {
    edrv_driver *d = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *d);
    if (d) {
        d->name = edrv__strdup(EDRV_MEM_SYSTEM, name);
        d->unit = edrv__unit_new();
    }
    if (!d || !d->name || !d->unit) {
        if (d) {
            edrv__free(d->name);
            edrv__unit_unref(d->unit);
        }
        edrv__free(d);
        return edrv__fail(EDRV_ENOMEM, "out of memory loading %s", name);
    }
    /* init runs last: a driver whose init succeeded is always finished. */
    if (e->init && e->init() != 0) {
        edrv__unit_unref(d->unit);
        edrv__free(d->name);
        edrv__free(d);
        return edrv__fail(EDRV_EDRVINIT, "%s: the entry's init returned non-zero", name);
    }
    d->entry = e;
    d->dl = dl;
    d->users = 1;
    e->handle = d;
    d->next = drivers;
    drivers = d;
    return 0;
}

static bool valid_name(const char *name) {
    return name[0] && !strchr(name, '/') && strlen(name) < NAME_MAX - 3;
}

int edrv__driver_load(const char *dir, const char *name) {
    EDRV_ASSERT_EMULATOR();
    if (!valid_name(name))
        return edrv__fail(EDRV_EINVAL, "'%s' is not a driver name", name);
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s.so", dir, name) >= (int)sizeof path)
        return edrv__fail(EDRV_EINVAL, "driver path too long");
    edrv_driver *d = edrv__driver_find(name, strlen(name));
    if (d) {
        /* Loading the same file again adds a user; another file of the same
         * name is refused, as erl_ddll does. */
        char have[PATH_MAX] = "";
        Dl_info info;
        void *sym = d->dl ? dlsym(d->dl, "driver_init") : NULL;
        if (sym && dladdr(sym, &info) && info.dli_fname)
            snprintf(have, sizeof have, "%s", info.dli_fname);
        char *a = realpath(path, NULL), *b = have[0] ? realpath(have, NULL) : NULL;
        bool same = a && b && strcmp(a, b) == 0;
        free(a);
        free(b);
        if (!same)
            return edrv__fail(EDRV_EBADNAME, "a driver named '%s' is already loaded from %s",
                              name, have[0] ? have : "the host program");
        d->unload_pending = false; /* loading again cancels a pending unload */
        d->users++;
        return 0;
    }
    dlerror();
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return edrv__fail(EDRV_EOPEN, "%s", dlerror());
    ErlDrvEntry *(*init)(void) = (ErlDrvEntry * (*)(void)) dlsym(dl, "driver_init");
    int rc;
    ErlDrvEntry *e;
    if (!init)
        rc = edrv__fail(EDRV_ENODRVINIT, "%s has no driver_init function", path);
    else if (!(e = init()))
        rc = edrv__fail(EDRV_EDRVINIT, "%s: driver_init returned NULL", path);
    else if ((rc = check_entry(e, name)) == 0)
        rc = add(name, e, dl);
    if (rc < 0)
        dlclose(dl);
    return rc;
}

int edrv__driver_register(ErlDrvEntry *e) {
    EDRV_ASSERT_EMULATOR();
    const char *name = e->driver_name ? e->driver_name : "";
    if (!valid_name(name))
        return edrv__fail(EDRV_EINVAL, "'%s' is not a driver name", name);
    edrv_driver *d = edrv__driver_find(name, strlen(name));
    if (d) {
        if (d->entry != e || d->unload_pending)
            return edrv__fail(EDRV_ELOADED, "a driver named '%s' is already loaded", name);
        d->users++;
        return 0;
    }
    int rc = check_entry(e, name);
    return rc < 0 ? rc : add(name, e, NULL);
}

/* Whether fn lies in the shared object whose base address is *base. */
static bool in_object(const void *fn, void *base) {
    Dl_info info;
    return dladdr(fn, &info) && info.dli_fbase == base;
}

static void unload(edrv_driver *d) {
    for (edrv_driver **pp = &drivers; *pp; pp = &(*pp)->next) {
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    }
    if (d->dl && d->entry->finish)
        d->entry->finish();
    d->entry->handle = NULL;
    if (d->dl) {
        Dl_info info;
        if (dladdr(d->entry, &info) && info.dli_fbase)
            edrv__async_forget_code(in_object, info.dli_fbase);
        dlclose(d->dl);
    }
    edrv__unit_unref(d->unit); /* ports' structs may still hold it */
    edrv__free(d->name);
    edrv__free(d);
}

/* As erl_ddll:unload_driver/1 after load_driver/2: the last user's unload
 * kills the driver's ports with reason driver_unloaded; the driver goes once
 * they are gone and its async jobs have ended. */
int edrv__driver_unload(const char *name) {
    EDRV_ASSERT_EMULATOR();
    size_t len = strlen(name);
    edrv_driver *d = edrv__driver_find(name, len);
    if (!d || d->unload_pending)
        return edrv__fail(EDRV_ENODRIVER, "no driver named '%s' is loaded", name);
    if (--d->users > 0)
        return 0;
    if (d->locked) { /* driver_lock_driver: stays until edrv_stop */
        d->users = 0;
        return 0;
    }
    d->unload_pending = true;
    if (!d->ports && !d->jobs) {
        unload(d);
        return 0;
    }
    edrv__ports_kill_driver(d); /* the last port to go may unload d */
    return edrv__driver_find(name, len) == d ? 1 : 0;
}

void edrv__driver_port_gone(edrv_driver *d) {
    EDRV_ASSERT_EMULATOR();
    if (--d->ports == 0 && !d->jobs && d->unload_pending)
        unload(d);
}

void edrv__driver_job_added(edrv_driver *d) {
    EDRV_ASSERT_EMULATOR();
    d->jobs++;
}

/* The driver stays loaded while a job of its is pending, as in ERTS. */
void edrv__driver_job_done(edrv_driver *d) {
    EDRV_ASSERT_EMULATOR();
    if (--d->jobs == 0 && !d->ports && d->unload_pending)
        unload(d);
}

void edrv__drivers_unload_all(void) {
    while (drivers)
        unload(drivers);
}

/* ---- the driver interface ------------------------------------------------------------ */

EDRV_API int driver_lock_driver(ErlDrvPort ix) {
    /* The driver stays loaded, and its ports open, until the runtime stops. */
    if (!ix || !edrv__emulator_enter())
        return -1;
    ix->drv->locked = true;
    return 0;
}

EDRV_API void add_driver_entry(ErlDrvEntry *de) {
    if (!de || !edrv__emulator_enter()) {
        edrv__warn("add_driver_entry: only from a driver callback, with an entry");
        return;
    }
    if (edrv__driver_register(de) < 0)
        edrv__warn("add_driver_entry: %s", edrv_last_error());
}

EDRV_API int remove_driver_entry(ErlDrvEntry *de) {
    if (!de || !edrv__emulator_enter() || !de->driver_name)
        return -1;
    edrv_driver *d = edrv__driver_find(de->driver_name, strlen(de->driver_name));
    if (!d || d->entry != de || d->ports || d->jobs)
        return -1;
    unload(d);
    return 0;
}
