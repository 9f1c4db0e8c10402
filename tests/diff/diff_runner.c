/*
 * diff_runner: the edrv side of the differential tests (see diff.escript).
 *
 * Usage: diff_runner DRIVERS_DIR, started by diff.escript with {packet, 4}.
 * Reads one packet from stdin: term_to_binary of the scenario's steps, with
 * every name, command and data as a binary (command data may also be a list
 * of binaries, the pieces of an iolist, for edrv_port_commandv; with options
 * it is always such a list) and every call term already in ETF
 * (term_to_binary(Term) as a binary):
 *   {load, Name} | {unload, Name} | {open, Command, Opts} | {close, Idx} |
 *   {command, Idx, Data} | {command, Idx, Pieces, Opts} |
 *   {control, Idx, Op, Data} | {call, Idx, Op, Etf} | {sleep, Ms} |
 *   {msg_wait, Ms} | {spawn, P} | {as, P, Step} | {async, P, Step} |
 *   {exit, P} | {adopt, Who} | {expect, [{Who, N | result}], Step} |
 *   {await, Step, WantEtf}
 * Runs them in one edrv process (started with 2 async threads, as erl +A 2),
 * the main one, and in helpers: each helper is a process with its own
 * thread, which runs the steps (load, unload, open, close, command, control,
 * call, sleep) that `as` (the main thread waits for the result) and `async`
 * (it does not) hand it, collects its mailbox when asked, and ends with
 * edrv_proc_free at `exit`. After each step it collects, as diff.escript
 * describes: the main process's messages until none and no async step's end
 * came for 50 ms (or the last msg_wait's Ms), then each idle helper's
 * messages (by name, collected at once, with the same wait) as {P, Msg},
 * then the results of async steps that ended, as {P, result, R}. An expect
 * step first waits (up to EXPECT_MS) for the messages and async steps' ends
 * it names, and then as any step; an await step runs its control or call
 * every AWAIT_POLL_MS until the result prints as WantEtf does. It writes
 * one packet back:
 *   {SelfPid, [{HelperPid, P}, ...], [{Result, [Msg, ...]}, ...]}
 * with Result {ok, Value} or {error, Reason} shaped as erl's results are.
 * Every open step (also in a helper) and every adopt step takes the next port
 * index (1, 2, ...), failed or not; adopt takes the first port that came in a
 * message to Who (self or a helper) and has no index yet.
 * An unload that leaves the driver pending (its async jobs still running)
 * waits, as erl_ddll:unload_driver/1 does, until the pool has no job left.
 *
 * A command step returns once its output is in the mailbox, as erl's
 * port_command does for a port that runs the command at once: edrv runs a
 * host's call in the host's thread when it can (then the output is there),
 * or queues it (in a host where SIGPIPE could kill, or when the emulator
 * lock is busy); so after a command the runner makes a synchronous call on
 * the same port, which queues behind the command when the command was
 * queued (a call runs at once only when no request is queued). erl starts
 * the runner with SIGPIPE ignored, so edrv may run its calls at once; with
 * EDRV_DIFF_SIGPIPE_DEFAULT set, the runner sets SIGPIPE back to its default
 * and so every call goes through the emulator thread's queue: the scenarios
 * must give the same results both ways.
 */
#include <edrv.h>
#include <ei.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MSG_WAIT_MS 50 /* until a msg_wait step sets msg_wait_ms */
#define EXPECT_MS 30000   /* expect and await: a bound for a broken build */
#define AWAIT_POLL_MS 5
#define ASYNC_THREADS 2
#define UNLOAD_WAIT_MS 60000
#define POLL_MS 5       /* how often the main thread looks for async steps' ends */
#define MAX_HELPERS 16

static long msg_wait_ms = MSG_WAIT_MS; /* the main thread's */
static const char *drivers_dir;

/* The ports by index (1-based; 0 for a failed open). Helpers open ports and
 * resolve indices too, so the list has a lock. */
static struct {
    pthread_mutex_t lock;
    edrv_port *v;
    size_t n, cap;
} ports = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The ports that came in messages to one process, each once, in order. */
typedef struct {
    edrv_port *v;
    size_t n, cap;
} port_set;

typedef struct {
    edrv_msg *v;
    size_t n, cap;
} msg_list;

typedef enum { JOB_NONE, JOB_STEP, JOB_COLLECT, JOB_EXIT } job_kind;

/* A helper process and its thread. The main thread posts a job under the
 * lock and sets busy; the helper takes it, runs it and clears busy. While
 * busy the job's fields (buf, idx, wait, result, msgs) are the helper's,
 * otherwise the main thread's; `async` (the main thread has not waited for
 * the step) and `seen` are only the main thread's. */
typedef struct {
    char name[MAXATOMLEN_UTF8];
    edrv_proc *proc;
    uint64_t pid;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job_kind job; /* posted, not yet taken */
    bool busy;    /* a job is posted or running */
    bool async;   /* an async step, its end not yet reported */
    bool dead;
    const char *buf; /* JOB_STEP: the step at buf + idx */
    int idx;
    long wait;        /* JOB_COLLECT */
    size_t want;      /* JOB_COLLECT: messages to wait for first */
    ei_x_buff result; /* JOB_STEP: {ok, V} or {error, R} */
    msg_list msgs;    /* JOB_COLLECT */
    port_set seen;
} helper;

static helper helpers[MAX_HELPERS];
static int nhelpers;
static port_set main_seen;

/* What the current step's messages must include (an expect step); the main
 * thread's. */
static struct {
    size_t self;                /* the main process's messages */
    size_t want[MAX_HELPERS];   /* each helper's messages */
    bool result[MAX_HELPERS];   /* the end of the helper's async step */
} expected;

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
static edrv_port port_at(unsigned long i) {
    pthread_mutex_lock(&ports.lock);
    edrv_port port = i >= 1 && i <= ports.n ? ports.v[i - 1] : 0;
    pthread_mutex_unlock(&ports.lock);
    return port;
}

/* Gives port (0: none) the next index. */
static void index_port(edrv_port port) {
    pthread_mutex_lock(&ports.lock);
    if (ports.n == ports.cap) {
        ports.cap = ports.cap ? ports.cap * 2 : 8;
        ports.v = realloc(ports.v, ports.cap * sizeof *ports.v);
        if (!ports.v)
            die("out of memory");
    }
    ports.v[ports.n++] = port;
    pthread_mutex_unlock(&ports.lock);
}

static bool port_indexed(edrv_port port) {
    pthread_mutex_lock(&ports.lock);
    bool found = false;
    for (size_t i = 0; i < ports.n && !found; i++)
        found = ports.v[i] == port;
    pthread_mutex_unlock(&ports.lock);
    return found;
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

/* The pieces of command data, a list of binaries, as a vector; the caller
 * frees it with free_iov. */
static struct iovec *decode_pieces(const char *buf, int *idx, int *n) {
    int size;
    long len;
    if (ei_decode_list_header(buf, idx, n) < 0)
        die("command: data must be a binary or a list of binaries");
    struct iovec *iov = calloc(*n ? (size_t)*n : 1, sizeof *iov);
    if (!iov)
        die("out of memory");
    for (int i = 0; i < *n; i++) {
        iov[i].iov_base = decode_bin(buf, idx, &len);
        iov[i].iov_len = (size_t)len;
    }
    if (*n && ei_decode_list_header(buf, idx, &size) < 0)
        die("command: improper list");
    return iov;
}

static void free_iov(struct iovec *iov, int n) {
    for (int i = 0; i < n; i++)
        free(iov[i].iov_base);
    free(iov);
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
    struct iovec *iov = decode_pieces(buf, idx, &n);
    int rc = edrv_port_commandv(self, port, iov, n);
    free_iov(iov, n);
    return rc;
}

/* port_command/3: the pieces, then the options (nosuspend, force). */
static int run_command_opts(const char *buf, int *idx, edrv_proc *self, edrv_port port) {
    int n, nopts;
    struct iovec *iov = decode_pieces(buf, idx, &n);
    unsigned opts = 0;
    if (ei_decode_list_header(buf, idx, &nopts) < 0)
        die("command: expected a list of options");
    for (int i = 0; i < nopts; i++) {
        char atom[MAXATOMLEN_UTF8];
        if (ei_decode_atom(buf, idx, atom) < 0)
            die("command: options must be atoms");
        if (strcmp(atom, "nosuspend") == 0)
            opts |= EDRV_CMD_NOSUSPEND;
        else if (strcmp(atom, "force") == 0)
            opts |= EDRV_CMD_FORCE;
        else
            die("command: unknown option");
    }
    if (nopts && ei_decode_list_header(buf, idx, &nopts) < 0)
        die("command: improper option list");
    int rc = edrv_port_command_opts(self, port, iov, n, opts);
    free_iov(iov, n);
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

/* Runs the step at *idx as self and encodes its result into x. A helper
 * runs only some steps (main_only false). */
static void run_step(const char *buf, int *idx, edrv_proc *self, bool main_only, ei_x_buff *x) {
    int arity;
    char what[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(buf, idx, &arity) < 0 || ei_decode_atom(buf, idx, what) < 0)
        die("a step must be a tuple with an atom first");
    long len;
    int rc;
    if (strcmp(what, "load") == 0 || strcmp(what, "unload") == 0) {
        char *name = decode_bin(buf, idx, &len);
        rc = what[0] == 'l' ? edrv_load_driver(drivers_dir, name) : edrv_unload_driver(name);
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
        index_port(rc < 0 ? 0 : port);
        if (rc < 0) {
            encode_error(x, rc);
        } else {
            ei_x_encode_tuple_header(x, 2);
            ei_x_encode_atom(x, "ok");
            encode_port(x, port);
        }
    } else if (strcmp(what, "close") == 0) {
        rc = edrv_port_close(self, port_at(decode_ulong(buf, idx)));
        if (rc < 0)
            encode_error(x, rc);
        else
            encode_ok_atom(x, "true");
    } else if (strcmp(what, "command") == 0) {
        edrv_port port = port_at(decode_ulong(buf, idx));
        rc = arity == 4 ? run_command_opts(buf, idx, self, port)
                        : run_command(buf, idx, self, port);
        /* The output is in the mailbox once a call queued behind the
         * command has run (see the top of the file). */
        edrv_port_status st;
        (void)edrv_port_info(port, &st);
        if (rc == EDRV_EBUSY)
            encode_ok_atom(x, "false"); /* nosuspend: port_command/3 returns false */
        else if (rc < 0)
            encode_error(x, rc);
        else
            encode_ok_atom(x, "true");
    } else if (strcmp(what, "control") == 0 || strcmp(what, "call") == 0) {
        edrv_port port = port_at(decode_ulong(buf, idx));
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
    } else if (strcmp(what, "msg_wait") == 0 && main_only) {
        msg_wait_ms = (long)decode_ulong(buf, idx);
        encode_ok_atom(x, "ok");
    } else {
        fprintf(stderr, "diff_runner: step %s\n", what);
        die(main_only ? "unknown step" : "not a step for a helper");
    }
}

/* ---- messages ---------------------------------------------------------------- */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void msg_push(msg_list *l, edrv_msg m) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v)
            die("out of memory");
    }
    l->v[l->n++] = m;
}

/* Encodes the messages (the version byte left out) and frees them. */
static void msgs_encode(ei_x_buff *x, msg_list *l, const char *tag) {
    for (size_t i = 0; i < l->n; i++) {
        if (tag) {
            ei_x_encode_tuple_header(x, 2);
            ei_x_encode_atom(x, tag);
        }
        ei_x_append_buf(x, l->v[i].data + 1, (int)l->v[i].len - 1);
        edrv_msg_free(&l->v[i]);
    }
    l->n = 0;
}

/* The time left until deadline (ns), in ms rounded up; 0 once past. */
static long ms_until(int64_t deadline) {
    int64_t left = deadline - now_ns();
    return left <= 0 ? 0 : (long)((left + 999999) / 1000000);
}

/* The first want messages (waiting up to EXPECT_MS), then every message
 * that arrives within wait ms of the last. */
static void receive_all(edrv_proc *p, long wait, size_t want, msg_list *l) {
    int64_t deadline = now_ns() + (int64_t)EXPECT_MS * 1000000;
    edrv_msg m;
    while (l->n < want && edrv_receive(p, ms_until(deadline), &m) == 0)
        msg_push(l, m);
    while (edrv_receive(p, wait, &m) == 0)
        msg_push(l, m);
}

static void see_port(port_set *s, edrv_port port) {
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] == port)
            return;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            die("out of memory");
    }
    s->v[s->n++] = port;
}

/* Notes every port in the term at *idx, in order (depth first, as
 * diff.escript's ports_in). */
static void scan_ports(const char *buf, int *idx, port_set *s) {
    int type, size, n;
    if (ei_get_type(buf, idx, &type, &size) < 0)
        die("a message is not a term");
    switch (type) {
    case ERL_PORT_EXT:
    case ERL_NEW_PORT_EXT:
    case ERL_V4_PORT_EXT: {
        erlang_port p;
        ei_decode_port(buf, idx, &p);
        see_port(s, (edrv_port)p.id);
        return;
    }
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT:
        ei_decode_tuple_header(buf, idx, &n);
        for (int i = 0; i < n; i++)
            scan_ports(buf, idx, s);
        return;
    case ERL_LIST_EXT:
        ei_decode_list_header(buf, idx, &n);
        for (int i = 0; i < n; i++)
            scan_ports(buf, idx, s);
        scan_ports(buf, idx, s); /* the tail */
        return;
    case ERL_MAP_EXT:
        /* diff.escript walks a map in key order: only the order of ports in
         * one map could differ, and no scenario sends such a map. */
        ei_decode_map_header(buf, idx, &n);
        for (int i = 0; i < 2 * n; i++)
            scan_ports(buf, idx, s);
        return;
    default:
        if (ei_skip_term(buf, idx) < 0)
            die("a message is not a term");
    }
}

static void scan_msgs(const msg_list *l, port_set *s) {
    for (size_t i = 0; i < l->n; i++) {
        int idx = 1;
        scan_ports(l->v[i].data, &idx, s);
    }
}

/* ---- helpers ------------------------------------------------------------------- */

static void *helper_main(void *arg) {
    helper *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->lock);
        while (h->job == JOB_NONE)
            pthread_cond_wait(&h->cond, &h->lock);
        job_kind job = h->job;
        h->job = JOB_NONE;
        pthread_mutex_unlock(&h->lock);
        if (job == JOB_EXIT)
            break;
        if (job == JOB_STEP) {
            int idx = h->idx;
            h->result.index = 0;
            run_step(h->buf, &idx, h->proc, false, &h->result);
        } else {
            receive_all(h->proc, h->wait, h->want, &h->msgs);
        }
        pthread_mutex_lock(&h->lock);
        h->busy = false;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
    }
    edrv_proc_free(h->proc); /* its ports close: erl's exit with reason normal */
    h->proc = NULL;
    return NULL;
}

static helper *helper_named(const char *name) {
    for (int i = 0; i < nhelpers; i++)
        if (strcmp(helpers[i].name, name) == 0)
            return &helpers[i];
    return NULL;
}

static void helper_post(helper *h, job_kind job) {
    pthread_mutex_lock(&h->lock);
    h->job = job;
    h->busy = true;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

static void helper_wait(helper *h) {
    pthread_mutex_lock(&h->lock);
    while (h->busy)
        pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
}

/* The helper named by the atom at *idx, alive and not in an async step. */
static helper *idle_helper(const char *buf, int *idx) {
    char name[MAXATOMLEN_UTF8];
    if (ei_decode_atom(buf, idx, name) < 0)
        die("a helper's name must be an atom");
    helper *h = helper_named(name);
    if (!h || h->dead || h->async) {
        fprintf(stderr, "diff_runner: helper %s\n", name);
        die("no such helper, or it is not idle");
    }
    return h;
}

static void spawn_helper(const char *buf, int *idx, bool trap) {
    char name[MAXATOMLEN_UTF8];
    if (ei_decode_atom(buf, idx, name) < 0 || strcmp(name, "self") == 0 || helper_named(name))
        die("spawn: a helper needs a new name (an atom, not self)");
    if (nhelpers == MAX_HELPERS)
        die("spawn: too many helpers");
    helper *h = &helpers[nhelpers];
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name);
    h->proc = edrv_proc_new();
    if (h->proc && trap)
        edrv_process_flag(h->proc, EDRV_TRAP_EXIT, 1); /* as diff.escript's processes */
    if (!h->proc)
        die("edrv_proc_new failed");
    h->pid = edrv_proc_pid(h->proc);
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->cond, NULL);
    ei_x_new(&h->result);
    if (pthread_create(&h->thread, NULL, helper_main, h) != 0)
        die("pthread_create failed");
    nhelpers++;
}

/* Ends a helper's process; waits until its ports are closed. */
static void helper_exit(helper *h) {
    helper_post(h, JOB_EXIT);
    pthread_join(h->thread, NULL);
    h->dead = true;
}

/* An expect step's list of {Who, N} and {P, result}, into `expected`. */
static void decode_expected(const char *buf, int *idx) {
    int n, arity;
    if (ei_decode_list_header(buf, idx, &n) < 0)
        die("expect: expected a list");
    for (int i = 0; i < n; i++) {
        char who[MAXATOMLEN_UTF8], atom[MAXATOMLEN_UTF8];
        unsigned long count = 0;
        if (ei_decode_tuple_header(buf, idx, &arity) < 0 || arity != 2 ||
            ei_decode_atom(buf, idx, who) < 0)
            die("expect: expected {Who, N} or {P, result}");
        bool result = ei_decode_atom(buf, idx, atom) == 0;
        if (result ? strcmp(atom, "result") != 0 : ei_decode_ulong(buf, idx, &count) < 0)
            die("expect: expected {Who, N} or {P, result}");
        helper *h = strcmp(who, "self") == 0 ? NULL : helper_named(who);
        if (!h && (result || strcmp(who, "self") != 0))
            die("expect: no such helper");
        if (result)
            expected.result[h - helpers] = true;
        else if (h)
            expected.want[h - helpers] += count;
        else
            expected.self += count;
    }
    if (n && ei_decode_list_header(buf, idx, &n) < 0)
        die("expect: improper list");
}

/* A term as text, as ei prints it; the caller frees it. */
static char *term_text(const char *buf, int idx) {
    char *s = NULL;
    if (ei_s_print_term(&s, buf, &idx) < 0)
        die("await: a result that ei cannot print");
    return s;
}

/* {await, Step, WantEtf}: runs the control or call at *idx until its
 * result prints as Want does (both are terms, in ETF), or EXPECT_MS have
 * passed; encodes the last result. */
static void run_await(const char *buf, int *idx, edrv_proc *self, ei_x_buff *x) {
    int step = *idx, at = *idx, arity, ver, widx = 0;
    char what[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(buf, &at, &arity) < 0 || ei_decode_atom(buf, &at, what) < 0 ||
        (strcmp(what, "control") != 0 && strcmp(what, "call") != 0))
        die("await: only a control or a call");
    at = *idx;
    if (ei_skip_term(buf, &at) < 0)
        die("await: bad step");
    long len;
    char *want = decode_bin(buf, &at, &len);
    if (ei_decode_version(want, &widx, &ver) < 0)
        die("await: Want must be in ETF");
    char *want_text = term_text(want, widx);
    int64_t deadline = now_ns() + (int64_t)EXPECT_MS * 1000000;
    ei_x_buff r;
    ei_x_new(&r);
    for (;;) {
        int i = step;
        r.index = 0;
        run_step(buf, &i, self, true, &r);
        char *got = term_text(r.buff, 0);
        bool same = strcmp(got, want_text) == 0;
        free(got);
        if (same || now_ns() >= deadline)
            break;
        sleep_ms(AWAIT_POLL_MS);
    }
    ei_x_append_buf(x, r.buff, r.index);
    ei_x_free(&r);
    free(want_text);
    free(want);
    *idx = at;
}

/* Runs the steps that involve processes, or any other step as the main
 * process, and encodes the result into x. */
static void run_top_step(const char *buf, int *idx, edrv_proc *self, ei_x_buff *x) {
    int at = *idx, arity;
    char what[MAXATOMLEN_UTF8];
    if (ei_decode_tuple_header(buf, &at, &arity) < 0 || ei_decode_atom(buf, &at, what) < 0)
        die("a step must be a tuple with an atom first");
    if (strcmp(what, "expect") == 0) {
        decode_expected(buf, &at);
        run_top_step(buf, &at, self, x);
    } else if (strcmp(what, "await") == 0) {
        run_await(buf, &at, self, x);
    } else if (strcmp(what, "spawn") == 0 || strcmp(what, "spawn_notrap") == 0) {
        spawn_helper(buf, &at, strcmp(what, "spawn") == 0);
        encode_ok_atom(x, "ok");
    } else if (strcmp(what, "wait_exit") == 0) {
        helper *h = idle_helper(buf, &at);
        /* until an exit signal has ended it (a bound for a broken build) */
        int64_t deadline = now_ns() + (int64_t)EXPECT_MS * 1000000;
        edrv_msg why = {0};
        while (edrv_proc_exit_reason(h->proc, &why) != 0 && now_ns() < deadline)
            usleep(POLL_MS * 1000);
        ei_x_encode_tuple_header(x, 2);
        if (why.data) {
            ei_x_encode_atom(x, "ok");
            ei_x_append_buf(x, why.data + 1, (int)why.len - 1);
            edrv_msg_free(&why);
        } else {
            ei_x_encode_atom(x, "error");
            ei_x_encode_atom(x, "timeout");
        }
    } else if (strcmp(what, "alive") == 0) {
        helper *h = idle_helper(buf, &at);
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, "ok");
        ei_x_encode_atom(x, edrv_is_process_alive(h->pid) ? "true" : "false");
    } else if (strcmp(what, "as") == 0 || strcmp(what, "async") == 0) {
        helper *h = idle_helper(buf, &at);
        h->buf = buf;
        h->idx = at;
        if (ei_skip_term(buf, &at) < 0)
            die("as/async: bad step");
        if (strcmp(what, "as") == 0) {
            helper_post(h, JOB_STEP);
            helper_wait(h);
            ei_x_append_buf(x, h->result.buff, h->result.index);
        } else {
            int t = h->idx, a;
            char inner[MAXATOMLEN_UTF8];
            if (ei_decode_tuple_header(buf, &t, &a) < 0 || ei_decode_atom(buf, &t, inner) < 0 ||
                strcmp(inner, "open") == 0)
                die("async: not a step for async (open takes an index)");
            h->async = true;
            helper_post(h, JOB_STEP);
            encode_ok_atom(x, "started");
        }
    } else if (strcmp(what, "exit") == 0) {
        helper_exit(idle_helper(buf, &at));
        encode_ok_atom(x, "ok");
    } else if (strcmp(what, "adopt") == 0) {
        char who[MAXATOMLEN_UTF8];
        if (ei_decode_atom(buf, &at, who) < 0)
            die("adopt: expected an atom");
        helper *h = strcmp(who, "self") == 0 ? NULL : helper_named(who);
        if (!h && strcmp(who, "self") != 0)
            die("adopt: no such process");
        port_set *seen = h ? &h->seen : &main_seen;
        edrv_port port = 0;
        for (size_t i = 0; i < seen->n && !port; i++)
            if (!port_indexed(seen->v[i]))
                port = seen->v[i];
        index_port(port);
        if (port) {
            ei_x_encode_tuple_header(x, 2);
            ei_x_encode_atom(x, "ok");
            encode_port(x, port);
        } else {
            ei_x_encode_tuple_header(x, 2);
            ei_x_encode_atom(x, "error");
            ei_x_encode_atom(x, "no_port");
        }
    } else {
        at = *idx;
        run_step(buf, &at, self, true, x);
    }
    *idx = at;
}

/* The helpers' indices in name order. */
static int by_name(const void *a, const void *b) {
    return strcmp(helpers[*(const int *)a].name, helpers[*(const int *)b].name);
}

/* Whether every async step's end that the expect step names has come. */
static bool results_came(const bool *ended) {
    for (int i = 0; i < nhelpers; i++)
        if (expected.result[i] && !ended[i])
            return false;
    return true;
}

/* After a step: encodes, as a list, the main process's messages (first
 * those the expect step names, and the async steps' ends it names, up to
 * EXPECT_MS; then until none and no async step's end came for msg_wait_ms),
 * each idle helper's messages as {P, Msg}, and the results of the async
 * steps that ended as {P, result, R}; helpers by name. */
static void collect_all(edrv_proc *self, ei_x_buff *x) {
    msg_list own = {0};
    bool ended[MAX_HELPERS] = {false};
    int64_t last = now_ns(), deadline = last + (int64_t)EXPECT_MS * 1000000;
    for (;;) {
        bool waiting = false; /* for an async step's end: poll */
        for (int i = 0; i < nhelpers; i++) {
            helper *h = &helpers[i];
            pthread_mutex_lock(&h->lock);
            if (h->async && !h->busy) {
                h->async = false;
                ended[i] = true;
                last = now_ns();
            }
            waiting |= h->async;
            pthread_mutex_unlock(&h->lock);
        }
        bool came = own.n >= expected.self && results_came(ended);
        long left = ms_until(came ? last + (int64_t)msg_wait_ms * 1000000 : deadline);
        if (left == 0)
            break;
        edrv_msg m;
        if (edrv_receive(self, waiting && left > POLL_MS ? POLL_MS : left, &m) == 0) {
            msg_push(&own, m);
            last = now_ns();
        } else if (!waiting && came) {
            break; /* a whole wait without a message */
        }
    }
    int order[MAX_HELPERS];
    for (int i = 0; i < nhelpers; i++)
        order[i] = i;
    qsort(order, (size_t)nhelpers, sizeof order[0], by_name);
    /* The idle helpers collect at once, each in its own thread. */
    for (int i = 0; i < nhelpers; i++) {
        helper *h = &helpers[i];
        if (!h->dead && !h->async) {
            h->wait = msg_wait_ms;
            h->want = expected.want[i];
            helper_post(h, JOB_COLLECT);
        } else if (expected.want[i]) {
            die("expect: messages of a helper that is not idle");
        }
    }
    size_t total = own.n;
    for (int i = 0; i < nhelpers; i++) {
        helper *h = &helpers[i];
        if (!h->dead && !h->async) {
            helper_wait(h);
            total += h->msgs.n;
        }
        total += ended[i];
    }
    scan_msgs(&own, &main_seen);
    if (total)
        ei_x_encode_list_header(x, (long)total);
    msgs_encode(x, &own, NULL);
    for (int k = 0; k < nhelpers; k++) {
        helper *h = &helpers[order[k]];
        scan_msgs(&h->msgs, &h->seen);
        msgs_encode(x, &h->msgs, h->name);
    }
    for (int k = 0; k < nhelpers; k++) {
        if (!ended[order[k]])
            continue;
        helper *h = &helpers[order[k]];
        ei_x_encode_tuple_header(x, 3);
        ei_x_encode_atom(x, h->name);
        ei_x_encode_atom(x, "result");
        ei_x_append_buf(x, h->result.buff, h->result.index);
    }
    ei_x_encode_empty_list(x);
    free(own.v);
    memset(&expected, 0, sizeof expected);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DRIVERS_DIR (steps on stdin, {packet, 4})\n", argv[0]);
        return 2;
    }
    drivers_dir = argv[1];
    if (getenv("EDRV_DIFF_SIGPIPE_DEFAULT"))
        signal(SIGPIPE, SIG_DFL); /* before any thread: every call is queued */
    size_t in_len;
    char *in = read_packet(&in_len);
    int idx = 0, ver, nsteps;
    if (ei_decode_version(in, &idx, &ver) < 0 || ei_decode_list_header(in, &idx, &nsteps) < 0)
        die("the input is not a list of steps in ETF");

    int rc = edrv_start(&(edrv_options){.async_threads = ASYNC_THREADS});
    if (rc < 0)
        die(edrv_strerror(rc));
    edrv_proc *self = edrv_proc_new();
    if (self)
        edrv_process_flag(self, EDRV_TRAP_EXIT, 1); /* as diff.escript's main process */
    if (!self)
        die("edrv_proc_new failed");
    ei_x_buff steps;
    ei_x_new(&steps);
    if (nsteps)
        ei_x_encode_list_header(&steps, nsteps);
    for (int i = 0; i < nsteps; i++) {
        ei_x_encode_tuple_header(&steps, 2);
        run_top_step(in, &idx, self, &steps);
        collect_all(self, &steps);
    }
    ei_x_encode_empty_list(&steps);

    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 3);
    encode_pid(&x, edrv_proc_pid(self));
    if (nhelpers)
        ei_x_encode_list_header(&x, nhelpers);
    for (int i = 0; i < nhelpers; i++) {
        ei_x_encode_tuple_header(&x, 2);
        encode_pid(&x, helpers[i].pid);
        ei_x_encode_atom(&x, helpers[i].name);
    }
    ei_x_encode_empty_list(&x);
    ei_x_append_buf(&x, steps.buff, steps.index);
    write_packet(x.buff, (size_t)x.index);
    ei_x_free(&x);
    ei_x_free(&steps);

    /* Helpers still alive end now; one still blocked in an async step (on a
     * busy port) is released when edrv_stop closes every port. */
    for (int i = 0; i < nhelpers; i++)
        if (!helpers[i].dead)
            helper_post(&helpers[i], JOB_EXIT);
    edrv_proc_free(self);
    rc = edrv_stop();
    for (int i = 0; i < nhelpers; i++) {
        helper *h = &helpers[i];
        if (!h->dead)
            pthread_join(h->thread, NULL);
        ei_x_free(&h->result);
        free(h->msgs.v);
        free(h->seen.v);
        pthread_mutex_destroy(&h->lock);
        pthread_cond_destroy(&h->cond);
    }
    free(main_seen.v);
    free(ports.v);
    free(in);
    return rc < 0 ? 1 : 0;
}
