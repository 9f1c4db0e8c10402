/*
 * bench_index: what a port's end, a process's exit and edrv_proc_free cost
 * while many unrelated ports, monitors or selected fds exist. Each of these
 * should cost the same whether there are ten others or a million (issue 12,
 * item 7). Prints CPU microseconds (see now_us); asserts nothing about time.
 *
 *   bench_index [monitors [ports [fds]]]   defaults: 50000 1000000 10000
 *
 * A count of 0 leaves that case out (to run each in a process of its own).
 * Run it on one core (taskset -c 1 bench_index): a request's round trip from
 * the host thread to the emulator thread costs several times more CPU when
 * the scheduler puts the two threads on different cores (in a VM, each
 * wake-up is an interrupt), and which it does changes from run to run.
 * The driver is linked in (edrv_register_driver): its control ops monitor
 * the caller, create ports for the caller, and select or deselect a range
 * of fds.
 */
#include "edrv.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { OP_MONITOR = 1, OP_CREATE = 2, OP_SELECT = 3, OP_DESELECT = 4 };

static ErlDrvData ix_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    return (ErlDrvData)port;
}

static void ix_stop(ErlDrvData d) {
    (void)d;
}

static void ix_process_exit(ErlDrvData d, ErlDrvMonitor *m) {
    (void)d;
    (void)m;
}

static void ix_ready(ErlDrvData d, ErlDrvEvent ev) {
    (void)d;
    (void)ev;
}

/* Two 32-bit numbers in the control data: (a, b). */
static void args(const char *buf, ErlDrvSizeT len, uint32_t *a, uint32_t *b) {
    *a = *b = 0;
    if (len >= 8) {
        memcpy(a, buf, 4);
        memcpy(b, buf + 4, 4);
    }
}

static ErlDrvSSizeT ix_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    ErlDrvPort port = (ErlDrvPort)d;
    uint32_t a, b;
    args(buf, len, &a, &b);
    (void)rbuf;
    (void)rlen;
    switch (op) {
    case OP_MONITOR: {
        ErlDrvMonitor mon;
        return driver_monitor_process(port, driver_caller(port), &mon) == 0 ? 0 : -1;
    }
    case OP_CREATE: /* a ports for the caller */
        for (uint32_t i = 0; i < a; i++)
            if (!driver_create_port(port, driver_caller(port), "ixdrv", (ErlDrvData)0))
                return -1;
        return 0;
    case OP_SELECT: /* fds a .. a+b-1, for reading */
    case OP_DESELECT:
        for (uint32_t fd = a; fd < a + b; fd++)
            driver_select(port, (ErlDrvEvent)(intptr_t)fd, ERL_DRV_READ, op == OP_SELECT);
        return 0;
    }
    return -1;
}

static ErlDrvEntry ix_entry = {
    .start = ix_start,
    .stop = ix_stop,
    .driver_name = "ixdrv",
    .control = ix_control,
    .ready_input = ix_ready,
    .process_exit = ix_process_exit,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

/* CPU time of the whole process (host and emulator threads), in us. With
 * no thread spinning while it waits, that is the work done, and it does not
 * count the time other programs had the cores: a shared machine gives
 * steadier numbers than with the wall clock. */
static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const char *what) {
    fprintf(stderr, "bench_index: %s: %s\n", what, edrv_last_error());
    exit(1);
}

static void control(edrv_proc *p, edrv_port port, unsigned op, uint32_t a, uint32_t b) {
    uint32_t arg[2] = {a, b};
    edrv_reply r;
    if (edrv_port_control(p, port, op, arg, sizeof arg, &r) != 0)
        die("control");
    edrv_reply_free(&r);
}

static edrv_port open_port(edrv_proc *p) {
    edrv_port port;
    if (edrv_open_port(p, "ixdrv", 0, &port) != 0)
        die("open");
    return port;
}

/* us per port close, and per exit of a monitored process, while `mons`
 * ports each monitor a process of their own. */
static void monitors(int mons) {
    enum { N = 1000 };
    if (mons < 2 * N)
        mons = 2 * N;
    edrv_proc *owner = edrv_proc_new();
    edrv_proc **watched = malloc((size_t)mons * sizeof *watched);
    edrv_port *ports = malloc((size_t)mons * sizeof *ports);
    if (!owner || !watched || !ports)
        die("memory");
    for (int i = 0; i < mons; i++) {
        ports[i] = open_port(owner);
        if (!(watched[i] = edrv_proc_new()))
            die("proc");
        control(watched[i], ports[i], OP_MONITOR, 0, 0);
    }
    double t0 = now_us();
    for (int i = 0; i < N; i++) /* a port with a monitor ends */
        if (edrv_port_close(owner, ports[i]) != 0)
            die("close");
    double t1 = now_us();
    for (int i = N; i < 2 * N; i++) /* a monitored process exits: one monitor fires */
        edrv_proc_free(watched[i]);
    double t2 = now_us();
    printf("%d monitoring ports: %.1f us per port close, %.1f us per monitored process exit "
           "(CPU)\n",
           mons, (t1 - t0) / N, (t2 - t1) / N);
    for (int i = 0; i < mons; i++)
        if (i < N || i >= 2 * N)
            edrv_proc_free(watched[i]);
    edrv_proc_free(owner);
    free(watched);
    free(ports);
}

/* us per edrv_proc_free of a process that owns nothing, while another owns
 * `nports` ports. */
static void owners(int nports) {
    enum { N = 1000 };
    edrv_proc *owner = edrv_proc_new();
    if (!owner)
        die("proc");
    edrv_port creator = open_port(owner);
    control(owner, creator, OP_CREATE, (uint32_t)nports, 0);
    double t0 = now_us();
    for (int i = 0; i < N; i++) {
        edrv_proc *p = edrv_proc_new();
        if (!p)
            die("proc");
        edrv_proc_free(p);
    }
    double t1 = now_us();
    edrv_proc_free(owner); /* its ports end */
    double t2 = now_us();
    printf("%d ports of another process: %.1f us per edrv_proc_new+free; "
           "the owner's exit closed them in %.0f ms (CPU)\n",
           nports, (t1 - t0) / N, (t2 - t1) / 1e3);
}

static double open_close_us(edrv_proc *p) {
    enum { N = 10000 };
    double t0 = now_us();
    for (int i = 0; i < N; i++)
        if (edrv_port_close(p, open_port(p)) != 0)
            die("close");
    return (now_us() - t0) / N;
}

/* us per port open+close, before and after `nfds` fds were selected once. */
static void selects(int nfds) {
    edrv_proc *p = edrv_proc_new();
    if (!p)
        die("proc");
    double before = open_close_us(p);
    int base = eventfd(0, EFD_CLOEXEC);
    if (base < 0)
        die("eventfd");
    /* Consecutive numbers past the ones in use: fds first .. first+n-1. */
    int first = 4096, n = 0;
    while (n < nfds && fcntl(first + n, F_GETFD) < 0 && dup2(base, first + n) == first + n)
        n++;
    edrv_port port = open_port(p);
    control(p, port, OP_SELECT, (uint32_t)first, (uint32_t)n);
    control(p, port, OP_DESELECT, (uint32_t)first, (uint32_t)n);
    edrv_port_close(p, port);
    for (int i = 0; i < n; i++)
        close(first + i);
    close(base);
    double after = open_close_us(p);
    printf("port open+close: %.1f us before, %.1f us after %d fds were selected once (CPU)\n",
           before, after, n);
    edrv_proc_free(p);
}

int main(int argc, char **argv) {
    int mons = argc > 1 ? atoi(argv[1]) : 50000;
    int nports = argc > 2 ? atoi(argv[2]) : 1000000;
    int nfds = argc > 3 ? atoi(argv[3]) : 10000;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    edrv_options o = {.async_threads = 1, .spin_us = -1}; /* see now_us */
    if (edrv_start(&o) != 0 || edrv_register_driver(&ix_entry) != 0)
        die("start");
    if (mons > 0)
        monitors(mons);
    if (nports > 0)
        owners(nports);
    if (nfds > 0)
        selects(nfds);
    edrv_stop();
    return 0;
}
