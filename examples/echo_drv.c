/*
 * echo_drv: the smallest useful driver. It echoes command data back to the
 * port's owner, and answers two controls: 1 upper-cases its argument, 2 tells
 * how many bytes the port has echoed. Built against OTP's erl_driver.h alone,
 * it loads in erl as it does in edrv:
 *
 *   erl_ddll:load_driver("build/drivers", "echo_drv"),
 *   P = open_port({spawn_driver, "echo_drv"}, [binary]),
 *   port_command(P, <<"hi">>), receive {P, {data, D}} -> D end.
 */
#include <ctype.h>
#include <erl_driver.h>
#include <stdio.h>

typedef struct {
    ErlDrvPort port;
    unsigned long echoed;
} echo;

static ErlDrvData echo_start(ErlDrvPort port, char *command) {
    echo *e = driver_alloc(sizeof *e);
    if (!e)
        return ERL_DRV_ERROR_GENERAL;
    e->port = port;
    e->echoed = 0;
    return (ErlDrvData)e;
}

static void echo_stop(ErlDrvData d) {
    driver_free(d);
}

static void echo_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    echo *e = (echo *)d;
    e->echoed += len;
    driver_output(e->port, buf, len);
}

static ErlDrvSSizeT echo_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                                 char **rbuf, ErlDrvSizeT rlen) {
    echo *e = (echo *)d;
    switch (op) {
    case 1: /* upper-case the argument */
        if (len > rlen && !(*rbuf = driver_alloc(len)))
            return -1;
        for (ErlDrvSizeT i = 0; i < len; i++)
            (*rbuf)[i] = (char)toupper((unsigned char)buf[i]);
        return (ErlDrvSSizeT)len;
    case 2: /* bytes echoed so far */
        return snprintf(*rbuf, rlen, "%lu", e->echoed);
    default:
        return -1; /* badarg */
    }
}

static ErlDrvEntry echo_entry = {
    .start = echo_start,
    .stop = echo_stop,
    .output = echo_output,
    .driver_name = "echo_drv",
    .control = echo_control,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

DRIVER_INIT(echo_drv) {
    return &echo_entry;
}
