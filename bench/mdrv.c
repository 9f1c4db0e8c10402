/*
 * mdrv: the message path benchmark's driver. A plain OTP driver (built
 * against erl_driver.h alone), so the same .so runs in edrv (bench_msg, the
 * `edrv` command with bench_msg.lua) and in erl (bench_msg_erts.erl).
 *
 * It is built twice from this file: mdrv.so, whose ports ERTS serializes per
 * driver (no flags), and mdrvp.so, with ERL_DRV_FLAG_USE_PORT_LOCKING, whose
 * ports ERTS serializes one by one (MDRV_PORT_LOCKING names which).
 *
 *   output      echoes the command data to the port's owner:
 *               {Port, {data, Bytes}} (a binary for a binary port)
 *   control 1   the argument upper-cased (as examples/echo_drv.c)
 *   control 2   the OS thread id (decimal) of the thread running this
 *               callback: a host compares it with its own to see whether its
 *               calls ran in its own thread (immediate) or in another one
 *   call 1      the argument's term unchanged: the reply is the input bytes
 *
 * Every callback does as little as it can, so that what is measured is the
 * runtime's path to the driver and back.
 */
#include <ctype.h>
#include <erl_driver.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef MDRV_PORT_LOCKING
#define MDRV_NAME "mdrvp"
#define MDRV_FLAGS ERL_DRV_FLAG_USE_PORT_LOCKING
#else
#define MDRV_NAME "mdrv"
#define MDRV_FLAGS 0
#endif

static ErlDrvData m_start(ErlDrvPort port, char *command) {
    (void)command;
    return (ErlDrvData)port; /* no state beyond the port */
}

static void m_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    driver_output((ErlDrvPort)d, buf, len);
}

/* A reply of len bytes: the runtime's buffer when it is big enough, else one
 * of our own that the runtime frees (driver_alloc, as the API asks). */
static char *reply_buf(char **rbuf, ErlDrvSizeT rlen, ErlDrvSizeT len) {
    if (len > rlen)
        *rbuf = driver_alloc(len);
    return *rbuf;
}

static ErlDrvSSizeT m_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    (void)d;
    char *out;
    switch (op) {
    case 1:
        if (!(out = reply_buf(rbuf, rlen, len)))
            return -1;
        for (ErlDrvSizeT i = 0; i < len; i++)
            out[i] = (char)toupper((unsigned char)buf[i]);
        return (ErlDrvSSizeT)len;
    case 2: /* rlen is at least 64 in ERTS and in edrv */
        return snprintf(*rbuf, rlen, "%ld", (long)syscall(SYS_gettid));
    default:
        return -1;
    }
}

static ErlDrvSSizeT m_call(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                           char **rbuf, ErlDrvSizeT rlen, unsigned int *flags) {
    (void)d;
    (void)flags;
    char *out;
    if (op != 1 || !(out = reply_buf(rbuf, rlen, len)))
        return -1;
    memcpy(out, buf, len); /* the term in ETF, version byte and all */
    return (ErlDrvSSizeT)len;
}

static ErlDrvEntry m_entry = {
    .start = m_start,
    .output = m_output,
    .driver_name = MDRV_NAME,
    .control = m_control,
    .call = m_call,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
    .driver_flags = MDRV_FLAGS,
};

DRIVER_INIT(mdrv) {
    return &m_entry;
}
