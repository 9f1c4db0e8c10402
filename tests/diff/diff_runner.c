/*
 * diff_runner: the edrv side of the differential tests (see diff.escript).
 *
 * Usage: diff_runner DRIVERS_DIR, started by diff.escript with {packet, 4}.
 * Reads one packet from stdin: term_to_binary of the scenario's steps, with
 * every name, command and data as a binary (command data may also be a list
 * of binaries, the pieces of an iolist, for edrv_port_commandv) and every
 * call term already in ETF (term_to_binary(Term) as a binary):
 *   {load, Name} | {unload, Name} | {open, Command, Opts} | {close, Idx} |
 *   {command, Idx, Data} | {control, Idx, Op, Data} | {call, Idx, Op, Etf} |
 *   {sleep, Ms} | {msg_wait, Ms}
 * Runs them in one edrv process (started with 2 async threads, as erl +A 2),
 * collecting after each step every message that arrives within 50 ms (or the
 * last msg_wait's Ms) of the step's end or of the message before, and writes
 * one packet back:
 *   {SelfPid, [{Result, [Msg, ...]}, ...]}
 * with Result {ok, Value} or {error, Reason} shaped as erl's results are.
 * Every open step takes the next port index (1, 2, ...), failed or not.
 * An unload that leaves the driver pending (its async jobs still running)
 * waits, as erl_ddll:unload_driver/1 does, until the pool has no job left.
 */
#include <edrv.h>
#include <ei.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG_WAIT_MS 50 /* until a msg_wait step sets msg_wait_ms */
#define ASYNC_THREADS 2
#define UNLOAD_WAIT_MS 60000

static long msg_wait_ms = MSG_WAIT_MS;

typedef struct {
    edrv_port *v;
    size_t n, cap;
} port_list;

static void die(const char *what) {
    fprintf(stderr, "diff_runner: %s\n", what);
    exit(2);
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t r = read(fd, p, len);
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t r = write(fd, p, len);
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* One {packet, 4} frame from stdin; the caller frees it. */
static char *read_packet(size_t *len) {
    unsigned char hdr[4];
    if (read_all(0, hdr, 4) < 0)
        die("no input packet");
    *len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
    char *buf = malloc(*len ? *len : 1);
    if (!buf || read_all(0, buf, *len) < 0)
        die("short input packet");
    return buf;
}

static void write_packet(const char *buf, size_t len) {
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};
    if (write_all(1, hdr, 4) < 0 || write_all(1, buf, len) < 0)
        die("cannot write the result");
}

/* A binary at *idx, NUL-terminated, in a buffer the caller frees. */
static char *decode_bin(const char *buf, int *idx, long *len) {
    int type, size;
    if (ei_get_type(buf, idx, &type, &size) < 0 || type != ERL_BINARY_EXT)
        die("expected a binary");
    char *b = malloc((size_t)size + 1);
    if (!b || ei_decode_binary(buf, idx, b, len) < 0)
        die("bad binary");
    b[*len] = '\0';
    return b;
}

static unsigned long decode_ulong(const char *buf, int *idx) {
    unsigned long v;
    if (ei_decode_ulong(buf, idx, &v) < 0)
        die("expected an integer");
    return v;
}

/* The port behind a 1-based index; 0 (no port) for an unknown index. */
static edrv_port port_at(const port_list *ports, unsigned long i) {
    return i >= 1 && i <= ports->n ? ports->v[i - 1] : 0;
}

static void encode_port(ei_x_buff *x, edrv_port port) {
    erlang_port p = {.node = "nonode@nohost", .id = port, .creation = 0};
    ei_x_encode_port(x, &p);
}

/* The pid as edrv encodes it (term.c): num and serial from the pid number. */
static void encode_pid(ei_x_buff *x, uint64_t pid) {
    erlang_pid p = {.node = "nonode@nohost", .num = (unsigned)pid,
                    .serial = (unsigned)(pid >> 32), .creation = 0};
    ei_x_encode_pid(x, &p);
}

static void encode_error(ei_x_buff *x, int rc) {
    ei_x_encode_tuple_header(x, 2);
    ei_x_encode_atom(x, "error");
    ei_x_encode_atom(x, edrv_err_name(rc));
}

static void encode_ok_atom(ei_x_buff *x, const char *atom) {
    ei_x_encode_tuple_header(x, 2);
    ei_x_encode_atom(x, "ok");
    ei_x_encode_atom(x, atom);
}

/* {ok, Reply} for control and call. */
static void encode_reply(ei_x_buff *x, const edrv_reply *r) {
    ei_x_encode_tuple_header(x, 2);
    ei_x_encode_atom(x, "ok");
    switch (r->kind) {
    case EDRV_REPLY_LIST:
        ei_x_encode_string_len(x, r->data, (int)r->len);
        break;
    case EDRV_REPLY_BINARY:
        ei_x_encode_binary(x, r->data, (long)r->len);
        break;
    case EDRV_REPLY_TERM:
        ei_x_append_buf(x, r->data + 1, (int)r->len - 1);
        break;
    case EDRV_REPLY_NIL:
    case EDRV_REPLY_NONE:
        ei_x_encode_empty_list(x);
        break;
    }
}

/* Opts: a list of atoms; only `binary` is known. */
static unsigned decode_open_flags(const char *buf, int *idx) {
    int n;
    unsigned flags = 0;
    if (ei_decode_list_header(buf, idx, &n) < 0)
        die("open: expected a list of options");
    for (int i = 0; i < n; i++) {
        char atom[MAXATOMLEN_UTF8];
        if (ei_decode_atom(buf, idx, atom) < 0)
            die("open: options must be atoms");
        if (strcmp(atom, "binary") == 0)
            flags |= EDRV_PORT_BINARY;
        else
            die("open: unknown option");
    }
    if (n && ei_decode_list_header(buf, idx, &n) < 0)
        die("open: improper option list");
    return flags;
}

/* Command data: a binary goes to edrv_port_command, a list of binaries (the
 * pieces of an iolist) to edrv_port_commandv. */
static int run_command(const char *buf, int *idx, edrv_proc *self, edrv_port port) {
    int type, size, n;
    long len;
    if (ei_get_type(buf, idx, &type, &size) < 0)
        die("command: bad data");
    if (type == ERL_BINARY_EXT) {
        char *data = decode_bin(buf, idx, &len);
        int rc = edrv_port_command(self, port, data, (size_t)len);
        free(data);
        return rc;
    }
    if (ei_decode_list_header(buf, idx, &n) < 0)
        die("command: data must be a binary or a list of binaries");
    struct iovec *iov = calloc(n ? (size_t)n : 1, sizeof *iov);
    if (!iov)
        die("out of memory");
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = decode_bin(buf, idx, &len);
        iov[i].iov_len = (size_t)len;
    }
    if (n && ei_decode_list_header(buf, idx, &size) < 0)
        die("command: improper list");
    int rc = edrv_port_commandv(self, port, iov, n);
    for (int i = 0; i < n; i++)
        free(iov[i].iov_base);
    free(iov);
    return rc;
}

static void sleep_ms(unsigned long ms) {
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* erl_ddll:unload_driver/1 returns once the driver is unloaded, after its
 * last async job; edrv_unload_driver returns 1 at once. Waits until no job
 * of any driver is pending: the pool's counters say so once the last job has
 * ended, and the unload that ending triggers happens on the emulator thread
 * before it serves the next step. */
static void wait_pool_idle(void) {
    for (unsigned long waited = 0; waited < UNLOAD_WAIT_MS; waited++) {
        edrv_pool_stats st;
        edrv_pool(&st);
        if (st.ready_async + st.freed + st.cancelled == st.submitted)
            return;
        sleep_ms(1);
    }
    die("unload: async jobs still pending after 60 s");
}

/* Runs the step at *idx and encodes its result into x. */
static void run_step(const char *buf, int *idx, const char *dir, edrv_proc *self,
                     port_list *ports, ei_x_buff *x) {
    int arity;
    char what[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(buf, idx, &arity) < 0 || ei_decode_atom(buf, idx, what) < 0)
        die("a step must be a tuple with an atom first");
    long len;
    int rc;
    if (strcmp(what, "load") == 0 || strcmp(what, "unload") == 0) {
        char *name = decode_bin(buf, idx, &len);
        rc = what[0] == 'l' ? edrv_load_driver(dir, name) : edrv_unload_driver(name);
        free(name);
        if (what[0] == 'u' && rc == 1)
            wait_pool_idle();
        if (rc < 0)
            encode_error(x, rc);
        else
            encode_ok_atom(x, "ok"); /* 1 (unload pending) included */
    } else if (strcmp(what, "open") == 0) {
        char *cmd = decode_bin(buf, idx, &len);
        unsigned flags = decode_open_flags(buf, idx);
        edrv_port port = 0;
        rc = edrv_open_port(self, cmd, flags, &port);
        free(cmd);
        if (ports->n == ports->cap) {
            ports->cap = ports->cap ? ports->cap * 2 : 8;
            ports->v = realloc(ports->v, ports->cap * sizeof *ports->v);
            if (!ports->v)
                die("out of memory");
        }
        ports->v[ports->n++] = rc < 0 ? 0 : port;
        if (rc < 0) {
            encode_error(x, rc);
        } else {
            ei_x_encode_tuple_header(x, 2);
            ei_x_encode_atom(x, "ok");
            encode_port(x, port);
        }
    } else if (strcmp(what, "close") == 0) {
        rc = edrv_port_close(self, port_at(ports, decode_ulong(buf, idx)));
        if (rc < 0)
            encode_error(x, rc);
        else
            encode_ok_atom(x, "true");
    } else if (strcmp(what, "command") == 0) {
        edrv_port port = port_at(ports, decode_ulong(buf, idx));
        rc = run_command(buf, idx, self, port);
        if (rc < 0)
            encode_error(x, rc);
        else
            encode_ok_atom(x, "true");
    } else if (strcmp(what, "control") == 0 || strcmp(what, "call") == 0) {
        edrv_port port = port_at(ports, decode_ulong(buf, idx));
        unsigned op = (unsigned)decode_ulong(buf, idx);
        char *data = decode_bin(buf, idx, &len);
        edrv_reply reply = {0};
        rc = what[1] == 'o' ? edrv_port_control(self, port, op, data, (size_t)len, &reply)
                            : edrv_port_call(self, port, op, data, (size_t)len, &reply);
        free(data);
        if (rc < 0)
            encode_error(x, rc);
        else
            encode_reply(x, &reply);
        edrv_reply_free(&reply);
    } else if (strcmp(what, "sleep") == 0) {
        sleep_ms(decode_ulong(buf, idx));
        encode_ok_atom(x, "ok");
    } else if (strcmp(what, "msg_wait") == 0) {
        msg_wait_ms = (long)decode_ulong(buf, idx);
        encode_ok_atom(x, "ok");
    } else {
        die("unknown step");
    }
}

/* Encodes, as a list, every message that arrives within msg_wait_ms. */
static void collect_messages(edrv_proc *self, ei_x_buff *x) {
    edrv_msg *msgs = NULL;
    size_t n = 0, cap = 0;
    edrv_msg m;
    while (edrv_receive(self, msg_wait_ms, &m) == 0) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            msgs = realloc(msgs, cap * sizeof *msgs);
            if (!msgs)
                die("out of memory");
        }
        msgs[n++] = m;
    }
    if (n)
        ei_x_encode_list_header(x, (long)n);
    for (size_t i = 0; i < n; i++) {
        ei_x_append_buf(x, msgs[i].data + 1, (int)msgs[i].len - 1);
        edrv_msg_free(&msgs[i]);
    }
    ei_x_encode_empty_list(x);
    free(msgs);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DRIVERS_DIR (steps on stdin, {packet, 4})\n", argv[0]);
        return 2;
    }
    size_t in_len;
    char *in = read_packet(&in_len);
    int idx = 0, ver, nsteps;
    if (ei_decode_version(in, &idx, &ver) < 0 || ei_decode_list_header(in, &idx, &nsteps) < 0)
        die("the input is not a list of steps in ETF");

    int rc = edrv_start(&(edrv_options){.async_threads = ASYNC_THREADS});
    if (rc < 0)
        die(edrv_strerror(rc));
    edrv_proc *self = edrv_proc_new();
    if (!self)
        die("edrv_proc_new failed");
    port_list ports = {0};
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    encode_pid(&x, edrv_proc_pid(self));
    if (nsteps)
        ei_x_encode_list_header(&x, nsteps);
    for (int i = 0; i < nsteps; i++) {
        ei_x_encode_tuple_header(&x, 2);
        run_step(in, &idx, argv[1], self, &ports, &x);
        collect_messages(self, &x);
    }
    ei_x_encode_empty_list(&x);

    write_packet(x.buff, (size_t)x.index);
    ei_x_free(&x);
    free(ports.v);
    free(in);
    edrv_proc_free(self);
    rc = edrv_stop();
    return rc < 0 ? 1 : 0;
}
