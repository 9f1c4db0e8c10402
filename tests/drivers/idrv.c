/*
 * idrv: the test driver of immediate execution and of locking levels
 * (tests/test_immediate.c): who runs each callback, and whether two callbacks
 * ever overlap. Every callback goes through enter/leave, which count the
 * callbacks that found another one of the same port running (overlaps: the
 * runtime never lets that happen) and those that found one of another port of
 * the driver running (driver overlaps: never for idrv, whose ports the runtime
 * serializes; possible for idrvp, built from this file with
 * ERL_DRV_FLAG_USE_PORT_LOCKING, whose ports run side by side).
 *
 * Control ops (numbers big-endian):
 *   1 TID      -> reply the calling thread's id (gettid), in decimal
 *   2 GATE     -> blocks inside the callback until the test calls
 *                 idrv_open_gate (the emulator lock stays held meanwhile, so
 *                 every call must queue: the gate cannot be opened by a call)
 *   4 FAIL     -> driver_failure_atom(port, "closed_by_itself"); reply "ok"
 *   5 TIMER    ms:4 -> driver_set_timer; each timeout outputs "tick" and, while
 *                 ticking is on, sets a new timer of 0 ms
 *   6 TICKING  on:1 -> turn the re-arming off (0) or on (1)
 *   7 STATS    -> reply "calls=C,overlaps=O,ticks=T,doverlaps=D"
 *   8 BUSY     on:1 -> set_busy_port
 *  10 NAME     -> reply the calling thread's name (pthread_getname_np)
 *   9 SEND     proc:8 port:8 data -> sends data to another port with the host
 *                 API's edrv_port_command (found with dlsym: edrv only), from
 *                 inside this callback; reply its return
 *  11 MEET     -> blocks inside the callback until a MEET callback of
 *                 another port is inside too (two ports' callbacks at once:
 *                 never returns for ports that are serialized); reply "met"
 *  12 SCHEDS   -> reply driver_system_info's scheduler_threads
 *  13 TICKNAME -> reply the name of the thread that ran the port's last
 *                 timeout ("" before the first)
 * Output: the command data comes back as {Port, {data, Data}}.
 */
#define _GNU_SOURCE /* gettid, RTLD_DEFAULT */
#include <dlfcn.h>
#include <erl_driver.h>
#include <stdint.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifdef IDRV_PORT_LOCKING
#define IDRV_NAME "idrvp"
#define IDRV_FLAGS ERL_DRV_FLAG_USE_PORT_LOCKING
#define IDRV_INIT idrvp
#else
#define IDRV_NAME "idrv"
#define IDRV_FLAGS 0
#define IDRV_INIT idrv
#endif

typedef struct {
    ErlDrvPort port;
    atomic_int inside; /* callbacks of this port running */
    char tick_name[16]; /* the thread of its last timeout */
} idrv;

static atomic_int inside; /* callbacks of any port running */
static atomic_long calls, overlaps, doverlaps, ticks;
static atomic_int ticking;

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_open, gate_waiting;
static int meeting; /* MEET callbacks inside (gate_lock) */

static void enter(idrv *d) {
    atomic_fetch_add(&calls, 1);
    if (atomic_fetch_add(&d->inside, 1))
        atomic_fetch_add(&overlaps, 1);
    if (atomic_fetch_add(&inside, 1))
        atomic_fetch_add(&doverlaps, 1);
}

static void leave(idrv *d) {
    atomic_fetch_sub(&inside, 1);
    atomic_fetch_sub(&d->inside, 1);
}

static ErlDrvData i_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    idrv *d = driver_alloc(sizeof *d);
    if (!d)
        return ERL_DRV_ERROR_GENERAL;
    d->port = port;
    atomic_init(&d->inside, 0);
    d->tick_name[0] = 0;
    return (ErlDrvData)d;
}

static void i_stop(ErlDrvData d) {
    driver_free(d);
}

static void i_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    enter((idrv *)d);
    driver_output(((idrv *)d)->port, buf, len);
    leave((idrv *)d);
}

static void i_timeout(ErlDrvData d) {
    idrv *i = (idrv *)d;
    enter(i);
    atomic_fetch_add(&ticks, 1);
    pthread_getname_np(pthread_self(), i->tick_name, sizeof i->tick_name);
    driver_output(i->port, "tick", 4);
    if (atomic_load(&ticking))
        driver_set_timer(i->port, 0);
    leave(i);
}

static unsigned get32(const char *p) {
    const unsigned char *u = (const unsigned char *)p;
    return (unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3];
}

#define REPLY(...) (ErlDrvSSizeT) snprintf(*rbuf, (size_t)rlen, __VA_ARGS__)

static ErlDrvSSizeT control(idrv *i, unsigned op, char *buf, ErlDrvSizeT len, char **rbuf,
                            ErlDrvSizeT rlen) {
    switch (op) {
    case 1:
        return REPLY("%ld", (long)gettid());
    case 2:
        pthread_mutex_lock(&gate_lock);
        gate_waiting = 1;
        pthread_cond_broadcast(&gate_cond);
        while (!gate_open)
            pthread_cond_wait(&gate_cond, &gate_lock);
        gate_open = 0;
        gate_waiting = 0;
        pthread_mutex_unlock(&gate_lock);
        return 0;
    case 4:
        driver_failure_atom(i->port, "closed_by_itself");
        return REPLY("ok");
    case 5:
        if (len < 4)
            return -1;
        atomic_store(&ticking, 1);
        return driver_set_timer(i->port, get32(buf)) == 0 ? 0 : -1;
    case 6:
        if (len < 1)
            return -1;
        atomic_store(&ticking, buf[0] != 0);
        return 0;
    case 7:
        return REPLY("calls=%ld,overlaps=%ld,ticks=%ld,doverlaps=%ld", atomic_load(&calls),
                     atomic_load(&overlaps), atomic_load(&ticks), atomic_load(&doverlaps));
    case 8:
        if (len < 1)
            return -1;
        set_busy_port(i->port, buf[0] != 0);
        return 0;
    case 9: {
        int (*send)(void *, uint64_t, const void *, size_t);
        *(void **)&send = dlsym(RTLD_DEFAULT, "edrv_port_command");
        if (len < 16 || !send)
            return -1;
        void *proc;
        uint64_t to;
        memcpy(&proc, buf, sizeof proc);
        memcpy(&to, buf + 8, sizeof to);
        return REPLY("%d", send(proc, to, buf + 16, len - 16));
    }
    case 11:
        pthread_mutex_lock(&gate_lock);
        meeting++;
        pthread_cond_broadcast(&gate_cond);
        while (meeting < 2)
            pthread_cond_wait(&gate_cond, &gate_lock);
        pthread_mutex_unlock(&gate_lock);
        return REPLY("met");
    case 13:
        return REPLY("%s", i->tick_name);
    case 12: {
        ErlDrvSysInfo si;
        driver_system_info(&si, sizeof si);
        return REPLY("%d", si.scheduler_threads);
    }
    case 10: {
        char name[16] = "";
        pthread_getname_np(pthread_self(), name, sizeof name);
        return REPLY("%s", name);
    }
    default:
        return -1;
    }
}

static ErlDrvSSizeT i_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    enter((idrv *)d);
    ErlDrvSSizeT n = control((idrv *)d, op, buf, len, rbuf, rlen);
    leave((idrv *)d);
    return n;
}

/* For the test, through dlsym: whether a GATE callback waits inside, the
 * gate's opening, and the callbacks run so far (none of which a call made
 * while the gate holds the lock can give). */
int idrv_gate_waiting(void);
void idrv_open_gate(void);
long idrv_calls(void);

long idrv_calls(void) {
    return atomic_load(&calls);
}

int idrv_gate_waiting(void) {
    pthread_mutex_lock(&gate_lock);
    int w = gate_waiting;
    pthread_mutex_unlock(&gate_lock);
    return w;
}

void idrv_open_gate(void) {
    pthread_mutex_lock(&gate_lock);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static ErlDrvEntry idrv_entry = {
    .start = i_start,
    .stop = i_stop,
    .output = i_output,
    .driver_name = IDRV_NAME,
    .driver_flags = IDRV_FLAGS,
    .control = i_control,
    .timeout = i_timeout,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

DRIVER_INIT(IDRV_INIT) {
    return &idrv_entry;
}
