/*
 * loaddrv: one source, many .so files, one for each outcome of loading a
 * driver (see tests/CMakeLists.txt for the variants). LD_NAME is the name the
 * entry gives; the file name is set by the build. init and finish append a
 * line to the file named by $LOADDRV_LOG, so tests can see that they ran.
 */
#include <erl_driver.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef LD_NAME
#error LD_NAME must be defined
#endif
#ifndef LD_MAJOR
#define LD_MAJOR ERL_DRV_EXTENDED_MAJOR_VERSION
#endif
#ifndef LD_MINOR
#define LD_MINOR ERL_DRV_EXTENDED_MINOR_VERSION
#endif
#ifndef LD_MARKER
#define LD_MARKER ERL_DRV_EXTENDED_MARKER
#endif

static void log_line(const char *what) {
    const char *path = getenv("LOADDRV_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%s %s\n", LD_NAME, what);
        fclose(f);
    }
}

static int ld_init(void) {
    log_line("init");
#ifdef LD_INITFAIL
    return -1;
#else
    return 0;
#endif
}

static void ld_finish(void) {
    log_line("finish");
}

static ErlDrvData ld_start(ErlDrvPort port, char *cmd) {
    return (ErlDrvData)port;
}

static void ld_stop(ErlDrvData d) {
    log_line("stop");
}

static ErlDrvEntry ld_entry = {
    .init = ld_init,
    .start = ld_start,
    .stop = ld_stop,
    .driver_name = LD_NAME,
    .finish = ld_finish,
    .extended_marker = (int)LD_MARKER,
    .major_version = LD_MAJOR,
    .minor_version = LD_MINOR,
};

#ifndef LD_NOINIT
DRIVER_INIT(loaddrv) {
#ifdef LD_NULLINIT
    (void)ld_entry;
    return NULL;
#else
    return &ld_entry;
#endif
}
#else
/* No driver_init: keep the entry referenced so the file is a plausible driver. */
ErlDrvEntry *not_driver_init(void);
ErlDrvEntry *not_driver_init(void) {
    return &ld_entry;
}
#endif
