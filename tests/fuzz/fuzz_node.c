/*
 * fuzz_node: the edrv node's packet handler (node/node.c, compiled into this
 * target) with any bytes, as packets from a connected BEAM node: requests of
 * the module edrv, casts, acknowledgements, links, exits, monitors, sends.
 * The input is a sequence of packets, each a 2-byte big-endian length and
 * that many bytes (the last one takes what is left). After each input the
 * callers it made end, as when the connection goes, so that every input
 * starts from the same state. What must hold: no crash, no leak, and every
 * byte the node writes back is a sequence of well-formed packets (ticks, or
 * 'p' and a control term and maybe a message, each one whole term).
 *
 * Drivers: the static driver of fuzz_common.h, "fuzz_drv", and "echo_drv"
 * here, whose output, control and call echo; no --drivers folder, so
 * load_driver is always refused. A port of echo_drv, #Port<fuzz@127.0.0.1.1>,
 * lives across inputs (the seeds use it), opened again when an input
 * closes it (with another id then).
 */
#include "fuzz_common.h"

#include "../../node/node.c"

static conn *fc;     /* the connection the packets come on */
static int peer_fd;  /* its other end: what the node writes */
static char *out;    /* written bytes not yet checked (a packet cut by a read) */
static edrv_proc *self_proc; /* the node's own process */
static edrv_proc *owner;     /* the long-lived port's */
static edrv_port echo_port;

static ErlDrvData e_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    return (ErlDrvData)port;
}

static void e_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    driver_output((ErlDrvPort)d, buf, len);
}

static ErlDrvSSizeT e_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    (void)d, (void)op;
    char *o = len <= rlen ? *rbuf : driver_alloc(len ? len : 1);
    if (!o)
        return -1;
    if (len)
        memcpy(o, buf, len);
    *rbuf = o;
    return (ErlDrvSSizeT)len;
}

static ErlDrvEntry echo_entry = {
    .start = e_start,
    .output = e_output,
    .control = e_control,
    .call = fd_call,
    .driver_name = "echo_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

static void drivers_and_port(void) {
    edrv_register_driver(&fuzz_entry); /* again, if an input unloaded it */
    edrv_register_driver(&echo_entry);
    edrv_port_status st;
    if (echo_port && edrv_port_info(echo_port, &st) == 0)
        return;
    FUZZ_CHECK(edrv_open_port(owner, "echo_drv", EDRV_PORT_BINARY, &echo_port) == 0, "%s",
               edrv_last_error());
}
static size_t out_len, out_cap;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    edrv_options o = {.async_threads = 1, .spin_us = -1, .node = "fuzz@127.0.0.1",
                      .creation = 1};
    FUZZ_CHECK(edrv_start(&o) == 0, "%s", edrv_last_error());
    FUZZ_CHECK((owner = edrv_proc_new()) != NULL, "%s", edrv_last_error());
    drivers_and_port();
    strcpy(node.node, "fuzz@127.0.0.1");
    node.creation = 1;
    self_proc = edrv_proc_new();
    FUZZ_CHECK(self_proc != NULL, "%s", edrv_last_error());
    uint64_t sp = edrv_proc_pid(self_proc);
    node.self = (erlang_pid){.num = (unsigned)sp, .serial = (unsigned)(sp >> 32),
                             .creation = node.creation};
    strcpy(node.self.node, node.node);
    relay_init();
    node.trace = getenv("EDRV_NODE_TRACE") != NULL;
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
    /* big buffers: what one input makes the node write fits, unread */
    int big = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    fc = calloc(1, sizeof *fc);
    FUZZ_CHECK(fc != NULL, "calloc");
    fc->fd = sv[0];
    peer_fd = sv[1];
    strcpy(fc->peer, "beam@127.0.0.1");
    pthread_mutex_init(&fc->wlock, NULL);
    fc->reader = pthread_self();
    return 0;
}

/* Checks the node's output so far, whole packets only; keeps a cut one. */
static void check_output(void) {
    char buf[1 << 16];
    ssize_t n;
    while ((n = recv(peer_fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        if (out_len + (size_t)n > out_cap) {
            out_cap = (out_len + (size_t)n) * 2;
            out = realloc(out, out_cap);
            FUZZ_CHECK(out != NULL, "realloc");
        }
        memcpy(out + out_len, buf, (size_t)n);
        out_len += (size_t)n;
    }
    size_t at = 0;
    while (out_len - at >= 4) {
        const unsigned char *h = (const unsigned char *)out + at;
        size_t len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
        if (out_len - at - 4 < len)
            break;
        const char *p = out + at + 4;
        if (len) {
            FUZZ_CHECK(len >= 2 && p[0] == PASS_THROUGH, "a packet of %zu bytes, type %d", len,
                       (unsigned char)p[0]);
            ssize_t ctl = edrv__etf_measure(p + 1, len - 1);
            FUZZ_CHECK(ctl > 0, "the control term does not measure");
            size_t rest = len - 1 - (size_t)ctl;
            FUZZ_CHECK(rest == 0 || edrv__etf_measure(p + 1 + ctl, rest) == (ssize_t)rest,
                       "%zu bytes after the control term are not one term", rest);
        }
        at += 4 + len;
    }
    if (at) {
        memmove(out, out + at, out_len - at);
        out_len -= at;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    drivers_and_port();
    size_t at = 0;
    while (at + 2 <= size) { /* the lengths are read here, under ASan */
        size_t want = (size_t)data[at] << 8 | data[at + 1];
        at += 2;
        size_t len = want < size - at ? want : size - at;
        fc->hold = at + len < size; /* more to come: answers wait, as the reader's */
        packet(fc, fuzz_fence(data + at, len), len);
        if (fc->parked) /* as the reader does after each packet */
            unpark(fc);
        at += len;
    }
    fc->hold = false;
    conn_flush(fc);
    /* the callers end, as when the connection goes */
    static const char noconnection[] = "\x83\x77\x0cnoconnection";
    while (fc->by_key)
        remote_end(fc, *(remote **)fc->by_key, noconnection, sizeof noconnection - 1);
    /* what the input sent the node's own process, and the port's output */
    edrv_msg m;
    while (edrv_receive(self_proc, 0, &m) == 0)
        edrv_msg_free(&m);
    while (edrv_receive(owner, 0, &m) == 0)
        edrv_msg_free(&m);
    check_output();
    return 0;
}
