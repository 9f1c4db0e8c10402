/*
 * pending.c: the functions erl_driver.h declares that this version of edrv
 * does not implement yet. They are exported so that every driver built for
 * OTP loads (the dynamic linker resolves each symbol at load time), and each
 * returns the value ERTS returns on failure, after one line on stderr naming
 * the function, so a driver that needs one fails visibly instead of
 * misbehaving quietly.
 *
 * Still to come: I/O events (driver_select),
 * erl_drv_init_ack.
 */
#include "internal.h"

#include <string.h>

#define NOT_YET(fn)                                                                  \
    do {                                                                             \
        static _Atomic bool told;                                                    \
        if (!atomic_exchange(&told, true))                                           \
            edrv__warn("%s is not implemented in this version of edrv", fn);         \
    } while (0)

EDRV_API int driver_select(ErlDrvPort port, ErlDrvEvent event, int mode, int on) {
    NOT_YET("driver_select");
    return -1;
}

EDRV_API void erl_drv_init_ack(ErlDrvPort ix, ErlDrvData res) {
    NOT_YET("erl_drv_init_ack");
}
