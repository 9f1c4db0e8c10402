/*
 * fuzz_common.h: what the libFuzzer targets share: a fenced copy of the
 * input, a running runtime with a port of a tiny static driver, and the check
 * that turns a broken property into a crash that libFuzzer reports.
 *
 * Threads: each target runs its inputs on libFuzzer's one thread, which acts
 * for the one process made here; the runtime's emulator thread runs the
 * driver's callbacks.
 */
#ifndef EDRV_FUZZ_COMMON_H
#define EDRV_FUZZ_COMMON_H

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property that must hold for every input: abort, so that libFuzzer keeps
 * the input as a crash. */
#define FUZZ_CHECK(cond, ...)                                                    \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            abort();                                                             \
        }                                                                        \
    } while (0)

/* ---- the fence --------------------------------------------------------------
 * libei is not instrumented: ASan cannot see it read past the end of a
 * buffer. So the bytes under test are copied to the very end of a readable
 * region followed by an inaccessible page, where any read past them faults. */

#define FENCE_ROOM ((size_t)16 << 20)

static inline const char *fuzz_fence(const void *data, size_t size) {
    static char *region;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (!region) {
        region = mmap(NULL, FENCE_ROOM + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        FUZZ_CHECK(region != MAP_FAILED, "mmap");
        FUZZ_CHECK(mprotect(region + FENCE_ROOM, page, PROT_NONE) == 0, "mprotect");
    }
    if (size > FENCE_ROOM)
        return data; /* larger than any fuzzer input: unfenced */
    char *at = region + FENCE_ROOM - size;
    if (size)
        memcpy(at, data, size);
    return at;
}

/* ---- the runtime --------------------------------------------------------------
 * Started once per fuzzer process and never stopped: every input runs against
 * the same runtime, process and port, as a long-running host would. */

static EDRV_UNUSED edrv_proc *fuzz_proc;
static EDRV_UNUSED edrv_port fuzz_port;
static EDRV_UNUSED ErlDrvPort fuzz_drv_port; /* the port, as the driver sees it */

static ErlDrvData fd_start(ErlDrvPort port, char *cmd) {
    fuzz_drv_port = port;
    return (ErlDrvData)port;
}

/* port_call: the reply is the argument itself (op 0), one byte short of it
 * (op 1), or the argument followed by one byte (op 2), so that the check of
 * the reply sees whole terms, cut terms and terms with bytes after them. */
static ErlDrvSSizeT fd_call(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                            char **rbuf, ErlDrvSizeT rlen, unsigned int *flags) {
    ErlDrvSizeT n = op == 1 ? (len ? len - 1 : 0) : op == 2 ? len + 1 : len;
    char *out = n <= rlen ? *rbuf : driver_alloc(n ? n : 1);
    if (!out)
        return -1;
    memcpy(out, buf, n <= len ? n : len);
    if (n > len)
        out[len] = 'x';
    *rbuf = out;
    return (ErlDrvSSizeT)n;
}

static EDRV_UNUSED ErlDrvEntry fuzz_entry = {
    .start = fd_start,
    .call = fd_call,
    .driver_name = "fuzz_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

/* Starts the runtime (one pool thread, no spinning: the fuzzer owns the
 * CPU), registers the driver and opens its port, owned by fuzz_proc. */
static inline void fuzz_runtime(void) {
    edrv_options o = {.async_threads = 1, .spin_us = -1};
    FUZZ_CHECK(edrv_start(&o) == 0, "%s", edrv_last_error());
    FUZZ_CHECK(edrv_register_driver(&fuzz_entry) == 0, "%s", edrv_last_error());
    FUZZ_CHECK((fuzz_proc = edrv_proc_new()) != NULL, "%s", edrv_last_error());
    FUZZ_CHECK(edrv_open_port(fuzz_proc, "fuzz_drv", EDRV_PORT_BINARY, &fuzz_port) == 0, "%s",
               edrv_last_error());
    FUZZ_CHECK(fuzz_drv_port != NULL, "start did not run");
}

#endif
