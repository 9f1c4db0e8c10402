/*
 * node.c: edrv as an Erlang node. `edrv --node NAME` registers with epmd and
 * accepts connections from BEAM nodes; their processes load drivers and open
 * ports here through the Erlang module `edrv` (erlang/src/edrv.erl), and the
 * ports' messages reach them as from any remote node. docs/node.md is the
 * user's side of it.
 *
 * libei does the distribution handshake (cookie check included), the epmd
 * registration and every term's encoding and decoding. What it does not do
 * is let several threads write one connection (its receive answers ticks on
 * the socket by itself) or send and take links and monitors, so this file
 * reads and writes the connection's packets itself: after the handshake a
 * packet is a 4-byte length, the pass-through byte 'p', a control tuple and,
 * for a message, the message (each in the external term format).
 *
 * A BEAM process that calls us is mirrored by a forwarding process
 * (edrv_proc_new_forward, one `remote` here): it is the port's owner and
 * driver_caller, and what is delivered to it goes on the wire to the BEAM
 * process. Exit signals from its ports go to the owner's helper process on
 * its node (edrv.erl), which gives them to the owner as ERTS would: a
 * distribution exit signal must come from a pid, and the owner must see the
 * port. We monitor each such BEAM process; when it dies, its forwarding
 * process exits with its reason and its ports close, as an owner's do.
 *
 * Threads: the main thread accepts; one reader thread per connection reads
 * its packets and carries out each request itself, in order (a port_control
 * that blocks in its driver delays that connection's later requests, as a
 * callback delays its scheduler in ERTS). Only the reader touches the
 * connection's tables. A connection is written by its reader (replies) and by
 * any thread that delivers to one of its forwarding processes (a port's
 * callback, the emulator thread), one packet at a time under wlock.
 *
 * Lock order: edrv's own locks (a forwarding process is locked while its
 * function runs) -> remote->hlock -> conn->wlock.
 */
#include "node.h"

#include <edrv.h>
#include <ei.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <search.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Distribution control messages (the protocol's DOP_ numbers). */
enum {
    DOP_LINK = 1, DOP_SEND = 2, DOP_EXIT = 3, DOP_UNLINK = 4, DOP_REG_SEND = 6,
    DOP_EXIT2 = 8, DOP_SEND_TT = 12, DOP_EXIT_TT = 13, DOP_REG_SEND_TT = 16,
    DOP_EXIT2_TT = 18, DOP_MONITOR_P = 19, DOP_DEMONITOR_P = 20, DOP_MONITOR_P_EXIT = 21,
    DOP_SEND_SENDER = 22, DOP_SEND_SENDER_TT = 23, DOP_UNLINK_ID = 35, DOP_UNLINK_ID_ACK = 36
};
#define PASS_THROUGH 'p'
#define MAX_PACKET (1u << 30) /* a bigger packet ends the connection */
#define MAX_DRIVER_DIRS 64

static struct {
    ei_cnode ec;
    char node[MAXNODELEN + 1];
    unsigned creation;
    erlang_pid self;            /* the node's own pid: monitors come from it */
    char *dirs[MAX_DRIVER_DIRS]; /* --drivers, as realpath gives them */
    int ndirs;
    int trace;                  /* EDRV_NODE_TRACE=1: a line per packet on stderr */
    long long spin_ns;          /* --spin: how long a reader spins before it blocks */
} node;

typedef struct conn conn;

/* A BEAM process that called us. */
typedef struct {
    conn *c;
    uint64_t key;         /* its pid's num | serial << 32 */
    unsigned creation;
    edrv_proc *proc;      /* stands for it here */
    uint64_t local;       /* proc's pid number */
    char pid[EDRV_FWD_PID_MAX]; /* its pid in ETF, version byte first */
    size_t pid_len;
    char ctl[EDRV_FWD_PID_MAX + 16]; /* {SEND, '', Pid}: to it */
    size_t ctl_len;
    /* Its helper on its node (edrv.erl), linked to the node's pid: the
     * helper's exit (its owner's end, with the owner's reason) ends proc.
     * hctl is {SEND, '', Helper}; hlock guards it against forward(). */
    uint64_t hkey;
    pthread_mutex_t hlock;
    char hctl[EDRV_FWD_PID_MAX + 16];
    size_t hctl_len;
    /* What went to the process through its helper and the helper has not
     * yet acknowledged ({'$edrv_ack', N}): an exit signal, and the messages
     * that follow one. While it is not 0, messages go that way too, or one
     * sent after an exit could reach the process before the exit does.
     * Raised by forward() alone (its calls are serialized by the proc's
     * lock), lowered by the reader; set under hlock. */
    atomic_uint relayed;
} remote;

struct conn {
    int fd;
    char peer[MAXNODELEN + 1];
    pthread_mutex_t wlock;
    bool dead; /* under wlock: writes fail from then on */
    /* Under wlock: packets written and not yet sent. The reader's own
     * packets wait here while it has more input to go through (a burst of
     * commands gets its answers in few writes); any write sends them first. */
    char *obuf;
    size_t olen, ocap;
    pthread_t reader;
    bool hold; /* the reader's: its packets wait in obuf */
    /* the reader's alone: */
    struct parked *parked, **parked_end; /* commands waiting for busy ports, in order */
    void *told_busy; /* tsearch tree of the ports this node was told are busy */
    void *by_key;   /* tsearch tree of remote, by key */
    void *by_local; /* the same, by local */
    void *by_helper; /* the same, by hkey */
    size_t nremotes;
    conn *prev, *next; /* conns, under its lock */
};

/* The live connections: the main thread shuts them down when it stops. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t gone;
    conn *head;
} conns = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL};

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void trace(const char *fmt, ...) {
    if (!node.trace)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "edrv node: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "edrv node: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- writing packets ----------------------------------------------------------- */

#define OBUF_MAX (256u << 10) /* obuf is sent once it holds this much */

/* Writes iov[0..n) whole, under wlock. 0, or -1 once the connection is dead. */
static int write_locked(conn *c, struct iovec *iov, int n) {
    int at = 0;
    while (!c->dead && at < n) {
        ssize_t w = writev(c->fd, iov + at, n - at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            /* the reader sees the end (shutdown) and takes the connection down */
            trace("write to %s: %s", c->peer, strerror(errno));
            c->dead = true;
            shutdown(c->fd, SHUT_RDWR);
            break;
        }
        while (at < n && (size_t)w >= iov[at].iov_len)
            w -= (ssize_t)iov[at++].iov_len;
        if (at < n) {
            iov[at].iov_base = (char *)iov[at].iov_base + w;
            iov[at].iov_len -= (size_t)w;
        }
    }
    return c->dead ? -1 : 0;
}

/* Room for need bytes in obuf, under wlock: false when out of memory. */
static bool obuf_reserve(conn *c, size_t need) {
    if (need <= c->ocap)
        return true;
    size_t cap = c->ocap ? c->ocap : 4096;
    while (cap < need)
        cap *= 2;
    char *nb = realloc(c->obuf, cap);
    if (!nb)
        return false;
    c->obuf = nb;
    c->ocap = cap;
    return true;
}

/* Sends obuf, then iov[0..n) (n may be 0), under wlock. */
static int flush_locked(conn *c, const struct iovec *iov, int n) {
    struct iovec all[5] = {{c->obuf, c->olen}};
    int k = c->olen ? 1 : 0;
    for (int i = 0; i < n; i++)
        all[k++] = iov[i];
    c->olen = 0;
    return k ? write_locked(c, all, k) : c->dead ? -1 : 0;
}

/* Sends what waits in obuf. Any thread. */
static void conn_flush(conn *c) {
    pthread_mutex_lock(&c->wlock);
    if (c->olen)
        flush_locked(c, NULL, 0);
    pthread_mutex_unlock(&c->wlock);
}

/* Writes one packet: the control term ctl (ETF without its version byte)
 * and, unless msg is NULL, the message msg (ETF, version byte first)
 * followed by more (more_len bytes, maybe 0); a tick (an empty packet)
 * when ctl is NULL. Any thread; the reader's own may wait in obuf (see
 * hold). 0, or -1 once the connection is dead. */
static int conn_write(conn *c, const char *ctl, size_t ctl_len, const char *msg, size_t msg_len,
                      const char *more, size_t more_len) {
    size_t total = ctl ? 2 + ctl_len + msg_len + more_len : 0;
    unsigned char head[6] = {(unsigned char)(total >> 24), (unsigned char)(total >> 16),
                             (unsigned char)(total >> 8), (unsigned char)total, PASS_THROUGH, 131};
    struct iovec iov[4] = {{head, ctl ? sizeof head : 4},
                           {(void *)ctl, ctl_len},
                           {(void *)msg, msg_len},
                           {(void *)more, more_len}};
    int n = !ctl ? 1 : !msg ? 2 : more_len ? 4 : 3, rc;
    bool held = pthread_equal(pthread_self(), c->reader) && c->hold;
    pthread_mutex_lock(&c->wlock);
    size_t size = 0;
    for (int i = 0; i < n; i++)
        size += iov[i].iov_len;
    if (c->dead) {
        rc = -1;
    } else if (held && c->olen + size <= OBUF_MAX && obuf_reserve(c, c->olen + size)) {
        for (int i = 0; i < n; i++) {
            memcpy(c->obuf + c->olen, iov[i].iov_base, iov[i].iov_len);
            c->olen += iov[i].iov_len;
        }
        rc = 0;
    } else {
        rc = flush_locked(c, iov, n);
    }
    pthread_mutex_unlock(&c->wlock);
    return rc;
}

/* An x buffer for a control term, without the version byte. */
static void ctl_begin(ei_x_buff *x, int arity, long op) {
    ei_x_new(x); /* writes no version byte */
    ei_x_encode_tuple_header(x, arity);
    ei_x_encode_long(x, op);
}

static int ctl_send(conn *c, ei_x_buff *x, const char *msg, size_t msg_len) {
    int rc = conn_write(c, x->buff, (size_t)x->index, msg, msg_len, NULL, 0);
    ei_x_free(x);
    return rc;
}

/* The control {SEND, '', Pid} for a pid in ETF without the version byte. */
static size_t send_ctl(char *out, size_t cap, const char *pid, size_t pid_len) {
    int i = 0;
    ei_encode_tuple_header(out, &i, 3);
    ei_encode_long(out, &i, DOP_SEND);
    ei_encode_atom(out, &i, "");
    if ((size_t)i + pid_len > cap)
        return 0;
    memcpy(out + i, pid, pid_len);
    return (size_t)i + pid_len;
}

/* A message to a pid given as ETF bytes without the version byte. */
static int send_to(conn *c, const char *pid, size_t pid_len, const char *msg, size_t msg_len) {
    char ctl[MAXATOMLEN_UTF8 + 32]; /* any pid: its node's name and 12 bytes */
    size_t n = send_ctl(ctl, sizeof ctl, pid, pid_len);
    return n ? conn_write(c, ctl, n, msg, msg_len, NULL, 0) : -1;
}

/* ---- the processes that call us ------------------------------------------------ */

static int by_key_cmp(const void *a, const void *b) {
    uint64_t x = ((const remote *)a)->key, y = ((const remote *)b)->key;
    return x < y ? -1 : x > y;
}

static int by_helper_cmp(const void *a, const void *b) {
    uint64_t x = ((const remote *)a)->hkey, y = ((const remote *)b)->hkey;
    return x < y ? -1 : x > y;
}

static int by_local_cmp(const void *a, const void *b) {
    uint64_t x = ((const remote *)a)->local, y = ((const remote *)b)->local;
    return x < y ? -1 : x > y;
}

static uint64_t pid_key(const erlang_pid *p) {
    return (uint64_t)p->num | (uint64_t)p->serial << 32;
}

/* {'$edrv_relay', Msg} in ETF, up to Msg: the helper gives Msg to its process. */
static char relay_head[32];
static size_t relay_head_len;

static void relay_init(void) {
    int i = 0;
    ei_encode_version(relay_head, &i);
    ei_encode_tuple_header(relay_head, &i, 2);
    ei_encode_atom(relay_head, &i, "$edrv_relay");
    relay_head_len = (size_t)i;
}

/* Runs on any thread that delivers to r's process, with it locked. */
static void forward(void *ctx, edrv_fwd_kind kind, const char *etf, size_t len) {
    remote *r = ctx;
    if (kind == EDRV_FWD_MESSAGE &&
        atomic_load_explicit(&r->relayed, memory_order_acquire) == 0) {
        conn_write(r->c, r->ctl, r->ctl_len, etf, len, NULL, 0);
        return;
    }
    /* An exit signal {'EXIT', Port, Reason}: for the owner's helper, which
     * gives it to the owner as its own exit signal would come. A message
     * that follows one takes the same way, wrapped, until the helper has
     * acknowledged both. A process that owns no port of ours has no
     * helper and is linked to nothing. */
    pthread_mutex_lock(&r->hlock);
    if (!r->hctl_len) {
        if (kind == EDRV_FWD_MESSAGE)
            conn_write(r->c, r->ctl, r->ctl_len, etf, len, NULL, 0);
    } else if (conn_write(r->c, r->hctl, r->hctl_len,
                          kind == EDRV_FWD_MESSAGE ? relay_head : etf,
                          kind == EDRV_FWD_MESSAGE ? relay_head_len : len,
                          kind == EDRV_FWD_MESSAGE ? etf + 1 : NULL,
                          kind == EDRV_FWD_MESSAGE ? len - 1 : 0) == 0) {
        atomic_fetch_add_explicit(&r->relayed, 1, memory_order_release);
    }
    pthread_mutex_unlock(&r->hlock);
}

/* {'$edrv_ack', N} from a helper: N of the things relayed through it have
 * reached its process. Reader thread. */
static void relay_ack(conn *c, const erlang_pid *helper, long n) {
    remote key = {.hkey = pid_key(helper)};
    void *found = tfind(&key, &c->by_helper, by_helper_cmp);
    if (!found || n <= 0)
        return;
    remote *r = *(remote **)found;
    pthread_mutex_lock(&r->hlock);
    unsigned now = atomic_load_explicit(&r->relayed, memory_order_relaxed);
    atomic_store_explicit(&r->relayed, (unsigned long)n >= now ? 0 : now - (unsigned)n,
                          memory_order_release);
    pthread_mutex_unlock(&r->hlock);
}

static remote *remote_find(conn *c, const erlang_pid *pid) {
    remote key = {.key = pid_key(pid)};
    void *n = tfind(&key, &c->by_key, by_key_cmp);
    remote *r = n ? *(remote **)n : NULL;
    return r && r->creation == pid->creation ? r : NULL;
}

/* Makes h (a pid of c's node, ETF without version byte) r's helper, and
 * links the node's pid to it. Reader thread. */
static void remote_helper(conn *c, remote *r, const erlang_pid *h, const char *h_etf,
                          size_t h_len) {
    uint64_t hkey = pid_key(h);
    if (r->hctl_len && hkey == r->hkey)
        return;
    if (r->hctl_len) { /* the old one has died: its entry goes, if it is r's */
        void *old = tfind(r, &c->by_helper, by_helper_cmp);
        if (old && *(remote **)old == r)
            tdelete(r, &c->by_helper, by_helper_cmp);
    }
    pthread_mutex_lock(&r->hlock);
    r->hkey = hkey;
    r->hctl_len = send_ctl(r->hctl, sizeof r->hctl, h_etf, h_len);
    /* what went to an earlier helper, dead, will not be acknowledged */
    atomic_store_explicit(&r->relayed, 0, memory_order_release);
    pthread_mutex_unlock(&r->hlock);
    remote key = {.hkey = hkey};
    void *n = tfind(&key, &c->by_helper, by_helper_cmp);
    if (n && *(remote **)n != r) {
        /* a helper serves one process: a second claim is not its */
        remote *other = *(remote **)n;
        tdelete(other, &c->by_helper, by_helper_cmp);
    }
    tsearch(r, &c->by_helper, by_helper_cmp);
    ei_x_buff x;
    ctl_begin(&x, 3, DOP_LINK);
    ei_x_encode_pid(&x, &node.self);
    ei_x_append_buf(&x, h_etf, (int)h_len);
    ctl_send(c, &x, NULL, 0);
}

/* The remote for a BEAM pid of c's node and its helper, made if new; NULL
 * for a pid of another node, a request with no helper, or when out of
 * memory. Reader thread. */
static remote *remote_get(conn *c, const erlang_pid *pid, const erlang_pid *h,
                          const char *h_etf, size_t h_len) {
    if (!h || strcmp(pid->node, c->peer) != 0 || strcmp(h->node, c->peer) != 0 ||
        h_len > EDRV_FWD_PID_MAX)
        return NULL;
    remote *r = remote_find(c, pid);
    if (r) {
        remote_helper(c, r, h, h_etf, h_len);
        return r;
    }
    remote key = {.key = pid_key(pid)};
    if (tfind(&key, &c->by_key, by_key_cmp))
        return NULL; /* a pid of an earlier incarnation of the node: it is gone */
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->c = c;
    r->key = key.key;
    r->creation = pid->creation;
    int i = 0;
    ei_encode_version(r->pid, &i);
    ei_encode_pid(r->pid, &i, pid);
    r->pid_len = (size_t)i;
    r->ctl_len = send_ctl(r->ctl, sizeof r->ctl, r->pid + 1, r->pid_len - 1);
    pthread_mutex_init(&r->hlock, NULL);
    r->proc = edrv_proc_new_forward(r->pid, r->pid_len, forward, r);
    if (!r->proc || !r->ctl_len) {
        edrv_proc_free(r->proc);
        pthread_mutex_destroy(&r->hlock);
        free(r);
        return NULL;
    }
    r->local = edrv_proc_pid(r->proc);
    if (!tsearch(r, &c->by_key, by_key_cmp) || !tsearch(r, &c->by_local, by_local_cmp)) {
        tdelete(r, &c->by_key, by_key_cmp);
        edrv_proc_free(r->proc);
        pthread_mutex_destroy(&r->hlock);
        free(r);
        return NULL;
    }
    c->nremotes++;
    remote_helper(c, r, h, h_etf, h_len);
    trace("%s: a new caller, here the process %#llx", c->peer, (unsigned long long)r->local);
    return r;
}

static void unpark_caller(conn *c, remote *r);

/* r's process exits with reason (ETF, version byte first), closing its
 * ports as an owner's exit does, and r is freed. Reader thread. */
static void remote_end(conn *c, remote *r, const char *reason, size_t len) {
    unpark_caller(c, r); /* a suspended sender that dies sends nothing */
    tdelete(r, &c->by_key, by_key_cmp);
    tdelete(r, &c->by_local, by_local_cmp);
    remote key = {.hkey = r->hkey};
    void *n = tfind(&key, &c->by_helper, by_helper_cmp);
    if (n && *(remote **)n == r)
        tdelete(r, &c->by_helper, by_helper_cmp);
    c->nremotes--;
    /* Once it returns, no thread runs forward(r) and none will. */
    if (edrv_proc_exit(r->proc, reason, len) < 0)
        edrv_proc_free(r->proc);
    pthread_mutex_destroy(&r->hlock);
    free(r);
}

/* ---- replies ---------------------------------------------------------------- */

typedef struct {
    conn *c;
    const char *from; /* the caller's pid, ETF without version byte */
    size_t from_len;
    const char *tag;  /* the request's tag, ETF without version byte */
    size_t tag_len;
} caller;

/* Sends {Tag, Result}, Result being x's term (x has the version byte). */
static void reply(const caller *k, ei_x_buff *res) {
    ei_x_buff m;
    ei_x_new_with_version(&m);
    ei_x_encode_tuple_header(&m, 2);
    ei_x_append_buf(&m, k->tag, (int)k->tag_len);
    ei_x_append_buf(&m, res->buff + 1, res->index - 1);
    send_to(k->c, k->from, k->from_len, m.buff, (size_t)m.index);
    ei_x_free(&m);
    ei_x_free(res);
}

static void reply_atom(const caller *k, const char *atom) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_atom(&x, atom);
    reply(k, &x);
}

/* {error, Reason} with the reason an edrv error code maps to. */
static void reply_error(const caller *k, int rc) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "error");
    if (rc == EDRV_EOPEN) { /* erl_ddll's {open_error, _}, with dlerror's text */
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "open_error");
        ei_x_encode_string(&x, edrv_last_error());
    } else {
        ei_x_encode_atom(&x, edrv_err_name(rc));
    }
    reply(k, &x);
}

/* ---- decoding requests --------------------------------------------------------- */

static bool is_self(const erlang_pid *p) {
    return p->num == node.self.num && p->serial == node.self.serial &&
           p->creation == node.self.creation && strcmp(p->node, node.node) == 0;
}

/* The ETF (no version byte) of the term at *i, and *i past it. */
/* The end of the packet being read (set by packet(), on the thread that
 * reads it): skip() stays within it. */
static __thread const char *pkt_end;

/* ei_skip_term, bounded by the packet and without its recursion: a peer
 * may nest a term a million levels deep, which would overflow the stack. */
static int skip(const char *b, int *i) {
    long long end = edrv_term_skip(b, (size_t)(pkt_end - b), (size_t)*i);
    if (end < 0 || end > INT_MAX)
        return -1;
    *i = (int)end;
    return 0;
}

static int raw_term(const char *b, int *i, const char **at, size_t *len) {
    int s = *i;
    if (skip(b, i) < 0)
        return -1;
    *at = b + s;
    *len = (size_t)(*i - s);
    return 0;
}


/* A binary or a string (list of bytes) as a NUL-terminated string; NULL if
 * it is neither or holds a NUL. */
static char *decode_text(const char *b, int *i) {
    int type, size;
    if (ei_get_type(b, i, &type, &size) < 0 || size > 65535)
        return NULL;
    char *s = malloc((size_t)size + 1);
    if (!s)
        return NULL;
    long got = 0;
    int rc = -1;
    if (type == ERL_BINARY_EXT)
        rc = ei_decode_binary(b, i, s, &got);
    else if (type == ERL_STRING_EXT || type == ERL_NIL_EXT)
        rc = ei_decode_string(b, i, s), got = size;
    if (rc < 0 || memchr(s, 0, (size_t)got)) {
        free(s);
        return NULL;
    }
    s[got] = 0;
    return s;
}

/* One port of ours, or 0. */
static edrv_port decode_port(const char *b, int *i) {
    erlang_port p;
    if (ei_decode_port(b, i, &p) < 0 || strcmp(p.node, node.node) != 0 ||
        p.creation != node.creation)
        return 0;
    return (edrv_port)p.id;
}

/* iodata as iovecs: binaries and strings in place, the bytes of lists in
 * scratch (which has room for every byte of the packet). */
typedef struct {
    struct iovec *v;
    int n, cap;
    char *scratch;
    size_t used;
    bool last_scratch; /* the last piece is a run of bytes in scratch */
} iovs;

static int iov_add(iovs *o, const char *p, size_t len, bool in_scratch) {
    struct iovec *last = o->n ? &o->v[o->n - 1] : NULL;
    if (in_scratch && last && o->last_scratch && (char *)last->iov_base + last->iov_len == p) {
        last->iov_len += len; /* bytes of a list, one after the other */
        return 0;
    }
    if (o->n == o->cap) {
        int cap = o->cap ? o->cap * 2 : 16;
        if (cap > IOV_MAX * 64)
            return -1;
        struct iovec *v = realloc(o->v, (size_t)cap * sizeof *v);
        if (!v)
            return -1;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = (struct iovec){(void *)p, len};
    o->last_scratch = in_scratch;
    return 0;
}

/* A run of bytes goes to scratch, where it joins the run before it: the
 * pieces are as ERTS makes them (each binary one, even empty; each run of
 * bytes between binaries one). */
static int bytes_add(iovs *o, const char *p, size_t len) {
    char *at = o->scratch + o->used;
    memcpy(at, p, len);
    o->used += len;
    return len ? iov_add(o, at, len, true) : 0;
}

/* Walks the iodata at b + *i into o: with a stack of its own (how many
 * elements each open list has left), as ERTS takes iodata of any depth. */
static int iodata(const char *b, int *i, iovs *o) {
    int *left = NULL, rc = -1;
    size_t top = 0, cap = 0;
    bool started = false;
    for (;;) {
        bool elem = false, tail = false;
        if (top == 0) {
            if (started) {
                rc = 0;
                break;
            }
            started = true;
        } else if (left[top - 1] > 0) {
            left[top - 1]--;
            elem = true;
        } else {
            top--; /* the list's tail: [] or a binary */
            tail = true;
        }
        int type, size;
        if (ei_get_type(b, i, &type, &size) < 0 ||
            (tail && type != ERL_NIL_EXT && type != ERL_BINARY_EXT))
            break;
        if (type == ERL_SMALL_INTEGER_EXT && elem) { /* a byte */
            if (bytes_add(o, b + *i + 1, 1) < 0)
                break;
            *i += 2;
        } else if (type == ERL_BINARY_EXT) {
            *i += 5;
            if (iov_add(o, b + *i, (size_t)size, false) < 0)
                break;
            *i += size;
        } else if (type == ERL_STRING_EXT) {
            *i += 3;
            if (bytes_add(o, b + *i, (size_t)size) < 0)
                break;
            *i += size;
        } else if (type == ERL_NIL_EXT) {
            *i += 1;
        } else if (type == ERL_LIST_EXT) {
            int n;
            if (ei_decode_list_header(b, i, &n) < 0)
                break;
            if (top == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                int *nl = realloc(left, ncap * sizeof *nl);
                if (!nl)
                    break;
                left = nl;
                cap = ncap;
            }
            left[top++] = n;
        } else {
            break; /* not iodata (an integer above 255 is INTEGER_EXT) */
        }
    }
    free(left);
    return rc;
}

/* ---- requests ------------------------------------------------------------------ */

static bool dir_allowed(const char *dir) {
    char *real = realpath(dir, NULL);
    bool ok = false;
    for (int k = 0; real && k < node.ndirs && !ok; k++)
        ok = strcmp(real, node.dirs[k]) == 0;
    free(real);
    return ok;
}

static void req_load_driver(const caller *k, const char *b, int *i) {
    char *dir = decode_text(b, i), *name = dir ? decode_text(b, i) : NULL;
    if (!dir || !name) {
        reply_atom(k, "badarg");
    } else if (!dir_allowed(dir)) {
        /* not one of --drivers: as a folder that is not there */
        ei_x_buff x;
        ei_x_new_with_version(&x);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "error");
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "not_allowed");
        ei_x_encode_string(&x, dir);
        reply(k, &x);
    } else {
        int rc = edrv_load_driver(dir, name);
        if (rc < 0)
            reply_error(k, rc);
        else
            reply_atom(k, "ok");
    }
    free(dir);
    free(name);
}

static void req_unload_driver(const caller *k, const char *b, int *i) {
    char *name = decode_text(b, i);
    int rc = name ? edrv_unload_driver(name) : EDRV_EBADARG;
    if (rc < 0)
        reply_error(k, rc);
    else
        reply_atom(k, "ok");
    free(name);
}

typedef struct {
    const char *name;
    unsigned bit;
} flag_name;

/* A proper list of atoms, each one of names (ended by a NULL name): their
 * bits or'ed into *out. 0, or -1 for anything else. */
static int decode_flags(const char *b, int *i, const flag_name *names, unsigned *out) {
    int n;
    if (ei_decode_list_header(b, i, &n) < 0)
        return -1;
    for (int e = 0; e < n; e++) {
        char a[MAXATOMLEN];
        if (ei_decode_atom(b, i, a) < 0)
            return -1;
        const flag_name *f = names;
        while (f->name && strcmp(f->name, a) != 0)
            f++;
        if (!f->name)
            return -1;
        *out |= f->bit;
    }
    int tail = 0; /* the tail must be [] */
    return n > 0 && (ei_decode_list_header(b, i, &tail) < 0 || tail != 0) ? -1 : 0;
}

static void port_term(ei_x_buff *x, edrv_port port) {
    erlang_port p = {.id = port, .creation = node.creation};
    strcpy(p.node, node.node);
    ei_x_encode_port(x, &p);
}

/* {open_port, Command, Flags}: Flags a list of atoms. The helper hears of
 * each port before its reply (so before any exit of it: the exit comes
 * through the helper too). */
static void req_open_port(const caller *k, remote *r, const char *b, int *i) {
    static const flag_name names[] = {{"binary", EDRV_PORT_BINARY}, {"eof", EDRV_PORT_EOF}, {0}};
    char *cmd = decode_text(b, i);
    unsigned flags = 0;
    bool bad = !cmd || decode_flags(b, i, names, &flags) < 0;
    if (bad || !r) {
        free(cmd);
        reply_atom(k, "badarg");
        return;
    }
    edrv_port port = 0;
    int rc = edrv_open_port(r->proc, cmd, flags, &port);
    free(cmd);
    if (rc < 0) {
        reply_error(k, rc);
        return;
    }
    ei_x_buff m;
    ei_x_new_with_version(&m);
    ei_x_encode_tuple_header(&m, 2);
    ei_x_encode_atom(&m, "$edrv_port");
    port_term(&m, port);
    pthread_mutex_lock(&r->hlock);
    conn_write(k->c, r->hctl, r->hctl_len, m.buff, (size_t)m.index, NULL, 0);
    pthread_mutex_unlock(&r->hlock);
    ei_x_free(&m);
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    port_term(&x, port);
    reply(k, &x);
}

static int port_now(edrv_port port);
static bool told(conn *c, edrv_port port, int state);

/* {ok, Reply}; {ok, Reply, closed} when the port ended in the call (a
 * driver_exit in it) or is closing: the caller then knows it is closed,
 * and a port_command/2 of its raises badarg, as ERTS's would; {ok, Reply,
 * busy} when the port is busy after it (state, as port_now gives it). */
static void reply_data(const caller *k, const edrv_reply *rep, int state) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, state ? 3 : 2);
    ei_x_encode_atom(&x, "ok");
    switch (rep->kind) {
    case EDRV_REPLY_BINARY:
        ei_x_encode_binary(&x, rep->data, (long)rep->len);
        break;
    case EDRV_REPLY_TERM:
        ei_x_append_buf(&x, rep->data + 1, (int)rep->len - 1);
        break;
    case EDRV_REPLY_LIST:
        /* a list of bytes, as ERTS builds it (a string in ETF when short) */
        if (rep->len == 0) {
            ei_x_encode_empty_list(&x);
        } else if (rep->len <= 65535) {
            ei_x_encode_string_len(&x, rep->data, (int)rep->len);
        } else {
            ei_x_encode_list_header(&x, (long)rep->len);
            for (size_t j = 0; j < rep->len; j++)
                ei_x_encode_char(&x, rep->data[j]);
            ei_x_encode_empty_list(&x);
        }
        break;
    default:
        ei_x_encode_empty_list(&x);
    }
    if (state)
        ei_x_encode_atom(&x, state < 0 ? "closed" : "busy");
    reply(k, &x);
}

/* The answer to a request that failed with rc: `closed` when the port is
 * gone or closing (the caller remembers it: badarg for its port_command/2 from then
 * on), else badarg or enomem. */
static void reply_failure(const caller *k, edrv_port port, int rc) {
    bool gone = port && (rc == EDRV_ENOPORT || rc == EDRV_ECLOSED || port_now(port) < 0);
    reply_atom(k, rc == EDRV_ENOMEM ? "enomem" : gone ? "closed" : "badarg");
}

/* {control, Port, Op, Data} and {call, Port, Op, Term}. */
static void req_control(const caller *k, remote *r, const char *b, int *i, size_t len,
                        bool call) {
    edrv_port port = decode_port(b, i);
    unsigned long op;
    if (!port || !r || ei_decode_ulong(b, i, &op) < 0 || op > UINT_MAX) {
        reply_atom(k, "badarg");
        return;
    }
    edrv_reply rep = {0};
    int rc;
    if (call) {
        int at = *i;
        if (skip(b, i) < 0) {
            reply_atom(k, "badarg");
            return;
        }
        char *etf = malloc((size_t)(*i - at) + 1);
        if (!etf) {
            reply_error(k, EDRV_ENOMEM);
            return;
        }
        etf[0] = (char)131;
        memcpy(etf + 1, b + at, (size_t)(*i - at));
        rc = edrv_port_call(r->proc, port, (unsigned)op, etf, (size_t)(*i - at) + 1, &rep);
        free(etf);
    } else {
        iovs o = {.scratch = malloc(len)};
        if (!o.scratch || iodata(b, i, &o) < 0) {
            free(o.scratch);
            free(o.v);
            reply_atom(k, "badarg");
            return;
        }
        /* control takes one buffer: the pieces joined */
        size_t total = 0;
        for (int j = 0; j < o.n; j++)
            total += o.v[j].iov_len;
        char *data = malloc(total + 1);
        size_t at = 0;
        for (int j = 0; data && j < o.n; j++) {
            memcpy(data + at, o.v[j].iov_base, o.v[j].iov_len);
            at += o.v[j].iov_len;
        }
        rc = data ? edrv_port_control(r->proc, port, (unsigned)op, data, total, &rep)
                  : EDRV_ENOMEM;
        free(data);
        free(o.scratch);
        free(o.v);
    }
    if (rc < 0) {
        reply_failure(k, port, rc);
        return;
    }
    int state = port_now(port);
    told(k->c, port, state);
    reply_data(k, &rep, state);
    edrv_reply_free(&rep);
}

/* ---- commands and busy ports --------------------------------------------------
 * A BEAM node keeps a table of the ports it believes busy (edrv.erl): its
 * port_command/2 casts to a port that is not in it, and asks (a request
 * that waits) for one that is. The table is kept by the answers to
 * requests on a port ({ok, Reply, busy}, {true, busy}, ...), which the
 * caller applies before it returns, and by {'$edrv_busy', Port, Busy}
 * messages to the name edrv_busy there when a cast finds the state changed.
 * A request that finds its port busy waits here, parked, until the port
 * takes the data or is gone: the reader looks again after each packet, and
 * each millisecond while any waits. */

typedef struct parked {
    struct parked *next;
    remote *r;
    edrv_port port;
    unsigned opts;  /* EDRV_CMD_BINARY, or 0 */
    char *data;     /* the pieces, one after the other */
    size_t *lens;
    int n;
    char *from, *tag; /* the caller's, for the answer */
    size_t from_len, tag_len;
} parked;

/* The port's state for the table: 1 busy, 0 free, -1 gone (or closing). */
static int port_now(edrv_port port) {
    int b = edrv_port_busy(port);
    return b < 0 ? -1 : b;
}

static int by_port_cmp(const void *a, const void *b) {
    edrv_port x = *(const edrv_port *)a, y = *(const edrv_port *)b;
    return x < y ? -1 : x > y;
}

/* Notes that the BEAM node now knows the port's state (after an answer
 * that carried it); true when that differs from what it was told before. */
static bool told(conn *c, edrv_port port, int state) {
    void *n = tfind(&port, &c->told_busy, by_port_cmp);
    if ((state == 1) == (n != NULL))
        return false;
    if (n) {
        edrv_port *k = *(edrv_port **)n;
        tdelete(&port, &c->told_busy, by_port_cmp);
        free(k);
    } else {
        edrv_port *k = malloc(sizeof *k);
        if (k)
            *k = port; /* before tsearch, which compares it */
        if (!k || !tsearch(k, &c->told_busy, by_port_cmp)) {
            free(k);
            return false; /* out of memory: it learns from the next answer */
        }
    }
    return true;
}

/* Tells the BEAM node's edrv_busy the port's state: after a cast, when it
 * changed from what that node was told, and always when the port is busy
 * (a cast to a busy port shows that the node's table has it free: two of
 * its processes may have updated it in the other order); and when a
 * command waits (park). */
static void tell_busy(conn *c, edrv_port port) {
    int state = port_now(port);
    if ((!told(c, port, state) && state != 1) || state < 0) /* a closed port is forgotten */
        return;
    ei_x_buff x, m;
    ctl_begin(&x, 4, DOP_REG_SEND);
    ei_x_encode_pid(&x, &node.self);
    ei_x_encode_atom(&x, "");
    ei_x_encode_atom(&x, "edrv_busy");
    ei_x_new_with_version(&m);
    ei_x_encode_tuple_header(&m, 3);
    ei_x_encode_atom(&m, "$edrv_busy");
    port_term(&m, port);
    ei_x_encode_boolean(&m, state == 1);
    ctl_send(c, &x, m.buff, (size_t)m.index);
    ei_x_free(&m);
}

/* The answer to a command that was sent: true, or {true, busy}. */
static void reply_sent(const caller *k, edrv_port port) {
    int state = port_now(port);
    told(k->c, port, state);
    if (state != 1) {
        reply_atom(k, "true");
        return;
    }
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "true");
    ei_x_encode_atom(&x, "busy");
    reply(k, &x);
}

/* A command's port and data: {Port, Data} in a request. */
static int decode_command(const char *b, int *i, size_t len, edrv_port *port, iovs *o,
                          unsigned *opts) {
    *port = decode_port(b, i);
    if (!*port)
        return EDRV_EBADARG;
    int type, size;
    if (ei_get_type(b, i, &type, &size) == 0 && type == ERL_BINARY_EXT)
        *opts |= EDRV_CMD_BINARY; /* as port_command with a binary */
    o->scratch = malloc(len);
    return o->scratch && iodata(b, i, o) == 0 ? 0 : EDRV_EBADARG;
}

/* {'$edrv_cmd', Port, Data}: port_command/2, no answer. A busy port takes
 * it all the same (the sender has gone on: it did not know), and the BEAM
 * node is told; a closed port drops it, as ERTS drops a command that
 * reaches a port after it closed. */
static void cast_command(conn *c, remote *r, const char *b, int *i, size_t len) {
    edrv_port port = 0;
    iovs o = {0};
    unsigned opts = EDRV_CMD_QUEUE;
    int rc = r ? decode_command(b, i, len, &port, &o, &opts) : EDRV_EBADARG;
    if (rc == 0)
        rc = edrv_port_command_opts(r->proc, port, o.v, o.n, opts);
    free(o.scratch);
    free(o.v);
    if (rc < 0)
        trace("command from %s: %s", c->peer, edrv_last_error());
    else
        tell_busy(c, port);
}

static void park(const caller *k, remote *r, edrv_port port, const iovs *o, unsigned opts) {
    parked *p = calloc(1, sizeof *p);
    size_t total = 0;
    for (int j = 0; j < o->n; j++)
        total += o->v[j].iov_len;
    if (p) {
        p->data = malloc(total ? total : 1);
        p->lens = malloc((size_t)(o->n ? o->n : 1) * sizeof *p->lens);
        p->from = malloc(k->from_len);
        p->tag = malloc(k->tag_len);
    }
    if (!p || !p->data || !p->lens || !p->from || !p->tag) {
        if (p) {
            free(p->data), free(p->lens), free(p->from), free(p->tag);
            free(p);
        }
        reply_atom(k, "enomem");
        return;
    }
    size_t at = 0;
    for (int j = 0; j < o->n; j++) {
        memcpy(p->data + at, o->v[j].iov_base, o->v[j].iov_len);
        p->lens[j] = o->v[j].iov_len;
        at += o->v[j].iov_len;
    }
    p->n = o->n;
    p->r = r;
    p->port = port;
    p->opts = opts;
    memcpy(p->from, k->from, k->from_len);
    p->from_len = k->from_len;
    memcpy(p->tag, k->tag, k->tag_len);
    p->tag_len = k->tag_len;
    conn *c = k->c;
    if (!c->parked_end)
        c->parked_end = &c->parked;
    *c->parked_end = p;
    c->parked_end = &p->next;
    tell_busy(c, port); /* port_command/3 with [] did not know: others may not */
    trace("%s: a command waits for the busy port %llu", c->peer, (unsigned long long)port);
}

static void parked_free(parked *p) {
    free(p->data), free(p->lens), free(p->from), free(p->tag);
    free(p);
}

static void no_free(void *p) {
    (void)p;
}

/* Sends what waits for ports that are no longer busy, in order, and
 * answers closed for ports that are gone. Each port is looked at once a
 * pass: a command behind one that still waits for its port waits too, as
 * senders queue. Reader thread. */
static void unpark(conn *c) {
    void *blocked = NULL; /* ports whose first command still waits (keys in the entries) */
    parked **at = &c->parked;
    while (*at) {
        parked *p = *at;
        if (tfind(&p->port, &blocked, by_port_cmp)) {
            at = &p->next;
            continue;
        }
        int state = port_now(p->port);
        caller k = {c, p->from, p->from_len, p->tag, p->tag_len};
        int rc = -1;
        if (state == 0) {
            struct iovec v[64], *vp = p->n <= 64 ? v : malloc((size_t)p->n * sizeof *vp);
            size_t off = 0;
            for (int j = 0; vp && j < p->n; j++) {
                vp[j] = (struct iovec){p->data + off, p->lens[j]};
                off += p->lens[j];
            }
            rc = vp ? edrv_port_command_opts(p->r->proc, p->port, vp, p->n,
                                             p->opts | EDRV_CMD_NOSUSPEND)
                    : EDRV_ENOMEM;
            if (vp != v)
                free(vp);
        }
        if (state == 1 || rc == EDRV_EBUSY) { /* still busy (or busy again at once) */
            tsearch(&p->port, &blocked, by_port_cmp); /* out of memory: looked at again */
            at = &p->next;
            continue;
        }
        if (rc == 0)
            reply_sent(&k, p->port);
        else
            reply_failure(&k, p->port, state < 0 ? EDRV_ECLOSED : rc);
        *at = p->next;
        parked_free(p);
    }
    c->parked_end = at;
    tdestroy(blocked, no_free);
}

/* r ends (its helper did): what it waits to send is not sent; the answer
 * (closed: badarg) reaches it if it lives on, its helper killed alone. */
static void unpark_caller(conn *c, remote *r) {
    parked **at = &c->parked;
    while (*at) {
        parked *p = *at;
        if (p->r == r) {
            caller k = {c, p->from, p->from_len, p->tag, p->tag_len};
            reply_atom(&k, "closed");
            *at = p->next;
            parked_free(p);
        } else {
            at = &p->next;
        }
    }
    c->parked_end = at;
}

/* {command, Port, Data, Opts}: port_command/3, and port_command/2 to a port
 * believed busy. Answers true ({true, busy} when the port is busy after
 * it), false when busy with nosuspend, notsup, closed; without nosuspend
 * or force, a busy port makes it wait (parked) as ERTS suspends the sender. */
static void req_command(const caller *k, remote *r, const char *b, int *i, size_t len) {
    int at = *i;
    /* the options after the data: skip port and data first */
    if (skip(b, i) < 0 || skip(b, i) < 0) {
        reply_atom(k, "badarg");
        return;
    }
    static const flag_name names[] = {
        {"nosuspend", EDRV_CMD_NOSUSPEND}, {"force", EDRV_CMD_FORCE}, {0}};
    unsigned opts = 0;
    if (decode_flags(b, i, names, &opts) < 0 || !r) {
        reply_atom(k, "badarg");
        return;
    }
    *i = at;
    edrv_port port = 0;
    iovs o = {0};
    int rc = decode_command(b, i, len, &port, &o, &opts);
    bool wait = !(opts & (EDRV_CMD_NOSUSPEND | EDRV_CMD_FORCE));
    if (rc == 0) {
        bool queue_behind = false; /* others wait for it: this one too */
        for (parked *p = k->c->parked; p && !queue_behind; p = p->next)
            queue_behind = p->port == port;
        rc = wait && queue_behind ? EDRV_EBUSY
                                  : edrv_port_command_opts(r->proc, port, o.v, o.n,
                                                           opts | (wait ? EDRV_CMD_NOSUSPEND : 0));
        if (rc == EDRV_EBUSY && wait) {
            park(k, r, port, &o, opts & EDRV_CMD_BINARY);
            free(o.scratch);
            free(o.v);
            return;
        }
    }
    free(o.scratch);
    free(o.v);
    if (rc == EDRV_EBUSY) {
        told(k->c, port, 1);
        reply_atom(k, "false");
    } else if (rc == EDRV_ENOTSUP) {
        reply_atom(k, "notsup");
    } else if (rc < 0) {
        reply_failure(k, port, rc);
    } else {
        reply_sent(k, port);
    }
}

static void req_close(const caller *k, remote *r, const char *b, int *i) {
    edrv_port port = decode_port(b, i);
    int rc = port && r ? edrv_port_close(r->proc, port) : EDRV_EBADARG;
    if (rc < 0)
        reply_failure(k, port, rc);
    else
        reply_atom(k, "true");
}

/* The owner's pid as the BEAM knows it: its own for a BEAM process. */
static void encode_pid_of(conn *c, ei_x_buff *x, uint64_t local) {
    remote key = {.local = local};
    void *n = tfind(&key, &c->by_local, by_local_cmp);
    if (n) {
        remote *r = *(remote **)n;
        ei_x_append_buf(x, r->pid + 1, (int)r->pid_len - 1);
        return;
    }
    /* a process of another connection or of this node: ours as edrv writes it */
    erlang_pid p = {.num = (unsigned)local, .serial = (unsigned)(local >> 32),
                    .creation = node.creation};
    strcpy(p.node, node.node);
    ei_x_encode_pid(x, &p);
}

static bool info_item(conn *c, ei_x_buff *x, const edrv_port_status *st, const char *item) {
    if (strcmp(item, "id") == 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, item);
        ei_x_encode_ulonglong(x, st->id);
    } else if (strcmp(item, "name") == 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, item);
        ei_x_encode_string(x, st->name);
    } else if (strcmp(item, "connected") == 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, item);
        encode_pid_of(c, x, st->connected);
    } else if (strcmp(item, "links") == 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, item);
        ei_x_encode_list_header(x, 1);
        encode_pid_of(c, x, st->connected);
        ei_x_encode_empty_list(x);
    } else if (strcmp(item, "os_pid") == 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, item);
        if (st->os_pid < 0)
            ei_x_encode_atom(x, "undefined");
        else
            ei_x_encode_longlong(x, st->os_pid);
    } else {
        return false;
    }
    return true;
}

/* {info, Port} or {info, Port, Item}: port_info/1,2. */
static void req_info(const caller *k, const char *b, int *i, int arity) {
    edrv_port port = decode_port(b, i);
    char item[MAXATOMLEN] = "";
    if (!port || (arity == 3 && ei_decode_atom(b, i, item) < 0)) {
        reply_atom(k, "badarg");
        return;
    }
    edrv_port_status st;
    if (edrv_port_info(port, &st) < 0) {
        reply_atom(k, "undefined");
        return;
    }
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    if (arity == 3) {
        if (!info_item(k->c, &x, &st, item)) {
            ei_x_free(&x);
            reply_atom(k, "badarg");
            return;
        }
    } else {
        static const char *const all[] = {"name", "links", "id", "connected", "os_pid"};
        ei_x_encode_list_header(&x, 5);
        for (int j = 0; j < 5; j++)
            info_item(k->c, &x, &st, all[j]);
        ei_x_encode_empty_list(&x);
    }
    reply(k, &x);
}

/* A message to our name `edrv` from pid `from`: a request,
 * {'$edrv', Tag, Request, Helper} or {'$edrv_cmd', Port, Data, Helper}, the
 * helper being the caller's (or undefined for requests about no port).
 * Reader thread. */
static void request(conn *c, const erlang_pid *from, const char *from_etf, size_t from_len,
                    const char *b, size_t len) {
    int i = 0, version, arity;
    char tag[MAXATOMLEN];
    if (ei_decode_version(b, &i, &version) < 0 || ei_decode_tuple_header(b, &i, &arity) < 0 ||
        ei_decode_atom(b, &i, tag) < 0)
        goto bad;
    long acked;
    if (arity == 2 && strcmp(tag, "$edrv_ack") == 0 && ei_decode_long(b, &i, &acked) == 0) {
        relay_ack(c, from, acked);
        return;
    }
    if (arity != 4)
        goto bad;
    int body = i, at = i;
    erlang_pid helper;
    const char *h_etf;
    size_t h_len;
    if (skip(b, &at) < 0 || skip(b, &at) < 0)
        goto bad;
    int h_at = at;
    bool has_helper = ei_decode_pid(b, &h_at, &helper) == 0;
    if (raw_term(b, &at, &h_etf, &h_len) < 0)
        goto bad;
#define CALLER remote_get(c, from, has_helper ? &helper : NULL, h_etf, h_len)
    if (strcmp(tag, "$edrv_cmd") == 0) {
        /* port_command/2 to a port its node believes free: no reply (see
         * cast_command and "commands and busy ports"). */
        cast_command(c, CALLER, b, &i, len);
        return;
    }
    if (strcmp(tag, "$edrv") != 0)
        goto bad;
    /* A request may wait (for a port's lock, a driver's start): what the
     * reader holds must not wait with it. */
    conn_flush(c);
    caller k = {c, from_etf, from_len, b + body, 0};
    if (skip(b, &i) < 0)
        goto bad;
    k.tag_len = (size_t)(b + i - k.tag);
    char op[MAXATOMLEN];
    int n;
    if (ei_decode_tuple_header(b, &i, &n) < 0 || n < 1 || ei_decode_atom(b, &i, op) < 0) {
        reply_atom(&k, "badarg");
        return;
    }
    trace("%s: %s", c->peer, op);
    if (strcmp(op, "load_driver") == 0 && n == 3)
        req_load_driver(&k, b, &i);
    else if (strcmp(op, "unload_driver") == 0 && n == 2)
        req_unload_driver(&k, b, &i);
    else if (strcmp(op, "open_port") == 0 && n == 3)
        req_open_port(&k, CALLER, b, &i);
    else if (strcmp(op, "control") == 0 && n == 4)
        req_control(&k, CALLER, b, &i, len, false);
    else if (strcmp(op, "call") == 0 && n == 4)
        req_control(&k, CALLER, b, &i, len, true);
    else if (strcmp(op, "command") == 0 && n == 4)
        req_command(&k, CALLER, b, &i, len);
    else if (strcmp(op, "close") == 0 && n == 2)
        req_close(&k, CALLER, b, &i);
    else if (strcmp(op, "info") == 0 && (n == 2 || n == 3))
        req_info(&k, b, &i, n);
    else if (strcmp(op, "ping") == 0 && n == 1)
        reply_atom(&k, "pong");
    else
        reply_atom(&k, "badarg");
#undef CALLER
    return;
bad:
    say("%s sent a message that is not a request; dropped", c->peer);
}

/* ---- control messages ------------------------------------------------------- */

/* MONITOR_P from a BEAM process: our name `edrv` (or the node's pid) lives
 * as long as the node, whose end the BEAM sees as noconnection. Anything
 * else is not a process of ours: DOWN at once, with noproc. */
static void monitor_p(conn *c, const char *b, int *i) {
    const char *from, *to, *ref;
    size_t from_len, to_len, ref_len;
    if (raw_term(b, i, &from, &from_len) < 0)
        return;
    int at = *i;
    char name[MAXATOMLEN];
    erlang_pid pid;
    bool ours = (ei_decode_atom(b, &at, name) == 0 && strcmp(name, "edrv") == 0) ||
                (at = *i, ei_decode_pid(b, &at, &pid) == 0 && is_self(&pid));
    if (raw_term(b, i, &to, &to_len) < 0 || raw_term(b, i, &ref, &ref_len) < 0 || ours)
        return;
    ei_x_buff x;
    ctl_begin(&x, 5, DOP_MONITOR_P_EXIT);
    ei_x_append_buf(&x, to, (int)to_len);
    ei_x_append_buf(&x, from, (int)from_len);
    ei_x_append_buf(&x, ref, (int)ref_len);
    ei_x_encode_atom(&x, "noproc");
    ctl_send(c, &x, NULL, 0);
}

/* EXIT: a helper linked to the node's pid ended: its process's end (with
 * that process's reason), so its forwarding process ends too. */
static void exit_p(conn *c, const char *b, int *i, bool token) {
    erlang_pid from, to;
    const char *reason;
    size_t len;
    if (ei_decode_pid(b, i, &from) < 0 || ei_decode_pid(b, i, &to) < 0 ||
        (token && skip(b, i) < 0) || raw_term(b, i, &reason, &len) < 0 || !is_self(&to))
        return;
    remote key = {.hkey = pid_key(&from)};
    void *n = tfind(&key, &c->by_helper, by_helper_cmp);
    if (!n)
        return; /* the helper of a process that has a newer one */
    remote *r = *(remote **)n;
    char *etf = malloc(len + 1);
    if (!etf)
        return;
    etf[0] = (char)131;
    memcpy(etf + 1, reason, len);
    trace("%s: a caller ended (here the process %#llx)", c->peer, (unsigned long long)r->local);
    remote_end(c, r, etf, len + 1);
    free(etf);
}

/* LINK to one of our pids: only the node's own pid lives for the node's
 * lifetime; links to any other pid of ours get noproc. */
static void link_p(conn *c, const char *b, int *i) {
    const char *from, *to;
    size_t from_len, to_len;
    int at;
    erlang_pid pid;
    if (raw_term(b, i, &from, &from_len) < 0)
        return;
    at = *i;
    if (ei_decode_pid(b, &at, &pid) < 0 || is_self(&pid) || raw_term(b, i, &to, &to_len) < 0)
        return;
    ei_x_buff x;
    ctl_begin(&x, 4, DOP_EXIT);
    ei_x_append_buf(&x, to, (int)to_len);
    ei_x_append_buf(&x, from, (int)from_len);
    ei_x_encode_atom(&x, "noproc");
    ctl_send(c, &x, NULL, 0);
}

static void unlink_id(conn *c, const char *b, int *i) {
    const char *id, *from, *to;
    size_t id_len, from_len, to_len;
    if (raw_term(b, i, &id, &id_len) < 0 || raw_term(b, i, &from, &from_len) < 0 ||
        raw_term(b, i, &to, &to_len) < 0)
        return;
    ei_x_buff x;
    ctl_begin(&x, 4, DOP_UNLINK_ID_ACK);
    ei_x_append_buf(&x, id, (int)id_len);
    ei_x_append_buf(&x, to, (int)to_len);
    ei_x_append_buf(&x, from, (int)from_len);
    ctl_send(c, &x, NULL, 0);
}

/* A message to one of our pids (SEND) or names (REG_SEND). */
static void send_local(conn *c, const erlang_pid *to, const char *name, const char *msg,
                       size_t len) {
    uint64_t pid = 0;
    if (name)
        pid = edrv_whereis(name);
    else if (strcmp(to->node, node.node) == 0 && to->creation == node.creation)
        pid = (uint64_t)to->num | (uint64_t)to->serial << 32;
    if (pid && edrv_send(pid, msg, len) < 0)
        trace("%s: a message to the process %#llx: %s", c->peer, (unsigned long long)pid,
              edrv_last_error());
}

/* One packet (after its length). Reader thread. */
static void packet(conn *c, const char *b, size_t len) {
    int i = 1, version, arity;
    long op;
    pkt_end = b + len;
    if (len < 2 || b[0] != PASS_THROUGH) {
        say("%s sent a packet edrv does not understand (type %d); ignored", c->peer,
            len ? (unsigned char)b[0] : -1);
        return;
    }
    /* libei's decoders trust their input: the control term and the message
     * (if any) are checked whole first, every read bounds-checked. */
    long long ctl = edrv_term_size(b + 1, len - 1);
    size_t rest = ctl < 0 ? 0 : len - 1 - (size_t)ctl;
    if (ctl < 0 || (rest && edrv_term_size(b + 1 + ctl, rest) != (long long)rest) ||
        ei_decode_version(b, &i, &version) < 0 || ei_decode_tuple_header(b, &i, &arity) < 0 ||
        arity < 1 || ei_decode_long(b, &i, &op) < 0) {
        say("%s sent a packet that is not a control term and a message; ignored", c->peer);
        return;
    }
    trace("%s: control message %ld, %zu bytes", c->peer, op, len);
    /* Each handler reads at most the elements its operation has: too few
     * elements, or a message missing or where none belongs, is malformed. */
    int need;
    bool with_msg = false;
    switch (op) {
    case DOP_REG_SEND: need = 4, with_msg = true; break;
    case DOP_REG_SEND_TT: need = 5, with_msg = true; break;
    case DOP_SEND: case DOP_SEND_SENDER: need = 3, with_msg = true; break;
    case DOP_SEND_TT: case DOP_SEND_SENDER_TT: need = 4, with_msg = true; break;
    case DOP_MONITOR_P: case DOP_EXIT: case DOP_UNLINK_ID: need = 4; break;
    case DOP_EXIT_TT: need = 5; break;
    case DOP_LINK: need = 3; break;
    default: need = 1; break; /* ignored, whatever they hold */
    }
    if (arity < need || (with_msg && rest == 0)) {
        say("%s sent a malformed control message %ld; ignored", c->peer, op);
        return;
    }
    const char *msg = b + 1 + ctl; /* the message: what follows the control term */
    switch (op) {
    case DOP_REG_SEND:
    case DOP_REG_SEND_TT: {
        erlang_pid from;
        char to[MAXATOMLEN];
        const char *from_etf;
        size_t from_len;
        int at = i;
        if (raw_term(b, &i, &from_etf, &from_len) < 0 || ei_decode_pid(b, &at, &from) < 0 ||
            skip(b, &i) < 0 || ei_decode_atom(b, &i, to) < 0)
            break;
        if (strcmp(to, "edrv") == 0)
            request(c, &from, from_etf, from_len, msg, rest);
        else
            send_local(c, NULL, to, msg, rest);
        return;
    }
    case DOP_SEND:
    case DOP_SEND_TT:
    case DOP_SEND_SENDER:
    case DOP_SEND_SENDER_TT: {
        erlang_pid to;
        if (skip(b, &i) < 0 || ei_decode_pid(b, &i, &to) < 0)
            break;
        send_local(c, &to, NULL, msg, rest);
        return;
    }
    case DOP_MONITOR_P:
        conn_flush(c); /* as for a request, before anything that may wait */
        monitor_p(c, b, &i);
        return;
    case DOP_EXIT:
    case DOP_EXIT_TT:
        conn_flush(c);
        exit_p(c, b, &i, op == DOP_EXIT_TT);
        return;
    case DOP_LINK:
        link_p(c, b, &i);
        return;
    case DOP_UNLINK_ID:
        unlink_id(c, b, &i);
        return;
    case DOP_DEMONITOR_P: /* none of ours fires before the node's end */
    case DOP_MONITOR_P_EXIT:
    case DOP_UNLINK:
    case DOP_EXIT2:
    case DOP_EXIT2_TT:
        trace("%s: control message %ld ignored", c->peer, op);
        return;
    default:
        trace("%s: unknown control message %ld ignored", c->peer, op);
        return;
    }
    say("%s sent a malformed control message %ld; ignored", c->peer, op);
}

/* ---- connections -------------------------------------------------------------- */

/* The reader's input buffer: what came and is not yet taken is [at, end). */
typedef struct {
    char *buf;
    size_t cap, at, end;
} inbuf;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Makes `want` bytes readable at in->buf + in->at, reading as much as
 * comes. When nothing has come, the reader spins (non-blocking reads) for
 * up to node.spin_ns before it blocks, as ERTS's schedulers spin before they
 * sleep: a caller that sends its next request at once finds this thread
 * awake. 0, or -1 at the connection's end. */
static int in_need(conn *c, inbuf *in, size_t want) {
    if (in->end - in->at >= want)
        return 0;
    if (in->cap - in->at < want) { /* move to the front, grow if need be */
        memmove(in->buf, in->buf + in->at, in->end - in->at);
        in->end -= in->at;
        in->at = 0;
        if (in->cap < want) {
            char *nb = realloc(in->buf, want);
            if (!nb) {
                say("%s: no memory for a packet of %zu bytes", c->peer, want);
                return -1;
            }
            in->buf = nb;
            in->cap = want;
        }
    }
    conn_flush(c); /* what the reader held goes before it waits */
    long long deadline = 0;
    while (in->end - in->at < want) {
        bool spin = node.spin_ns > 0 && (deadline == 0 || now_ns() < deadline);
        if (!spin && c->parked) {
            /* commands wait for busy ports: look at them each millisecond */
            struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
            if (poll(&pfd, 1, 1) == 0) {
                unpark(c);
                conn_flush(c);
                continue;
            }
        }
        ssize_t n = recv(c->fd, in->buf + in->end, in->cap - in->end, spin ? MSG_DONTWAIT : 0);
        if (n > 0) {
            in->end += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (deadline == 0)
                deadline = now_ns() + node.spin_ns;
            continue;
        }
        return -1;
    }
    return 0;
}

/* Every caller of a connection that is gone ends with noconnection. */
static void conn_end(conn *c) {
    pthread_mutex_lock(&c->wlock);
    c->dead = true;
    shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&c->wlock);
    static const char noconnection[] = "\x83\x77\x0cnoconnection";
    while (c->by_key) {
        remote *r = *(remote **)c->by_key; /* the root */
        remote_end(c, r, noconnection, sizeof noconnection - 1);
    }
    while (c->parked) {
        parked *p = c->parked;
        c->parked = p->next;
        parked_free(p);
    }
    tdestroy(c->told_busy, free);
    /* out of the list before the fd closes: the main thread shuts down the
     * fds of the listed ones, and a closed fd's number may be reused */
    pthread_mutex_lock(&conns.lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        conns.head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    close(c->fd);
    pthread_cond_broadcast(&conns.gone);
    pthread_mutex_unlock(&conns.lock);
    free(c->obuf);
    pthread_mutex_destroy(&c->wlock);
    free(c);
}

static void *conn_main(void *arg) {
    conn *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    c->reader = pthread_self();
    say("%s connected", c->peer);
    inbuf in = {.cap = 1 << 16};
    in.buf = malloc(in.cap);
    while (in.buf && in_need(c, &in, 4) == 0) {
        const unsigned char *lenb = (const unsigned char *)in.buf + in.at;
        size_t len = (size_t)lenb[0] << 24 | (size_t)lenb[1] << 16 | (size_t)lenb[2] << 8 | lenb[3];
        in.at += 4;
        if (len == 0) { /* a tick: answer it */
            conn_write(c, NULL, 0, NULL, 0, NULL, 0);
            continue;
        }
        if (len > MAX_PACKET) {
            say("%s sent a packet of %zu bytes; closing the connection", c->peer, len);
            break;
        }
        if (in_need(c, &in, len) < 0)
            break;
        in.at += len;
        c->hold = in.end > in.at; /* more input: its answers go together */
        packet(c, in.buf + in.at - len, len);
        if (c->parked)
            unpark(c);
    }
    free(in.buf);
    say("%s disconnected", c->peer);
    conn_end(c);
    return NULL;
}

/* ---- the command line and the node -------------------------------------------- */

static const char usage[] =
    "usage: edrv --node NAME [options]\n"
    "Runs edrv as an Erlang node: BEAM nodes load drivers and open ports here\n"
    "with the Erlang module edrv (docs/node.md).\n"
    "\n"
    "  --node NAME, --sname NAME  the node's name: NAME@HOST as given, or NAME\n"
    "                          with this host's short name (as erl -sname)\n"
    "  --name NAME             NAME@HOST as given, or NAME with this host's\n"
    "                          full name (as erl -name)\n"
    "  --cookie COOKIE         the cookie (default: ~/.erlang.cookie)\n"
    "  --drivers DIR           a folder remote nodes may load drivers from (any\n"
    "                          number of times; none: no driver can be loaded)\n"
    "  --listen ADDR           the IPv4 address to accept connections on\n"
    "                          (default: every address)\n"
    "  -A N, --async-threads N size of the async thread pool (1..1024)\n"
    "  -S N, --schedulers N    scheduler threads\n"
    "  --spin US               how long a connection's reader keeps polling after\n"
    "                          a packet before it sleeps (default 100; 0: never;\n"
    "                          as ERTS's schedulers spin, for round-trip latency)\n"
    "  -h, --help              show this help and exit\n"
    "\n"
    "The node stops on SIGINT or SIGTERM. Exit status: 0 when stopped, 1 when it\n"
    "cannot start, 2 on a usage error.\n";

int edrv_node_wanted(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--node") == 0 || strcmp(a, "--sname") == 0 || strcmp(a, "--name") == 0)
            return 1;
        if (a[0] != '-' || strcmp(a, "--") == 0)
            return 0;
    }
    return 0;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "edrv: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'edrv --node NAME --help'.\n");
    va_end(ap);
    return 2;
}

/* A decimal number in lo..hi. */
static int long_arg(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int int_arg(const char *s, int *out) {
    long v;
    if (long_arg(s, 1, 1024, &v) < 0)
        return -1;
    *out = (int)v;
    return 0;
}

/* The host part of the node's name: this host's name, cut at the first dot
 * for a short name, or its canonical (full) name for a long one. */
static int host_name(bool longname, char *out, size_t cap) {
    char h[256];
    if (gethostname(h, sizeof h) < 0)
        return -1;
    h[sizeof h - 1] = 0;
    if (longname) {
        struct addrinfo hints = {.ai_flags = AI_CANONNAME}, *ai = NULL;
        if (getaddrinfo(h, NULL, &hints, &ai) == 0 && ai && ai->ai_canonname)
            snprintf(h, sizeof h, "%s", ai->ai_canonname);
        if (ai)
            freeaddrinfo(ai);
        if (!strchr(h, '.'))
            return -2; /* as erl -name: a full name has a dot */
    } else {
        char *dot = strchr(h, '.');
        if (dot)
            *dot = 0;
    }
    snprintf(out, cap, "%s", h);
    return 0;
}

static volatile sig_atomic_t stopping;
static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

int edrv_node_main(int argc, char **argv) {
    const char *name = NULL, *cookie = NULL, *listen_at = NULL;
    bool longname = false;
    int threads = 0, schedulers = 0;
    long spin_us = 100;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--node") == 0 || strcmp(a, "--sname") == 0 ||
                   strcmp(a, "--name") == 0) {
            if (!has)
                return usage_error("%s needs a name", a);
            if (name)
                return usage_error("the node is named twice");
            name = argv[++i];
            longname = strcmp(a, "--name") == 0;
        } else if (strcmp(a, "--cookie") == 0) {
            if (!has)
                return usage_error("%s needs an argument", a);
            cookie = argv[++i];
        } else if (strcmp(a, "--listen") == 0) {
            if (!has)
                return usage_error("%s needs an address", a);
            listen_at = argv[++i];
        } else if (strcmp(a, "--drivers") == 0) {
            if (!has)
                return usage_error("%s needs a folder", a);
            char *real = realpath(argv[++i], NULL);
            struct stat st;
            if (!real || stat(real, &st) < 0 || !S_ISDIR(st.st_mode)) {
                free(real);
                return usage_error("--drivers %s: not a folder", argv[i]);
            }
            if (node.ndirs == MAX_DRIVER_DIRS) {
                free(real);
                return usage_error("at most %d --drivers folders", MAX_DRIVER_DIRS);
            }
            node.dirs[node.ndirs++] = real;
        } else if (strcmp(a, "-A") == 0 || strcmp(a, "--async-threads") == 0) {
            if (!has || int_arg(argv[++i], &threads) < 0)
                return usage_error("the pool size must be 1..1024");
        } else if (strcmp(a, "-S") == 0 || strcmp(a, "--schedulers") == 0) {
            if (!has || int_arg(argv[++i], &schedulers) < 0)
                return usage_error("the schedulers must be 1..1024");
        } else if (strcmp(a, "--spin") == 0) {
            if (!has || long_arg(argv[++i], 0, 1000000, &spin_us) < 0)
                return usage_error("--spin takes microseconds, 0..1000000");
        } else {
            return usage_error("unknown option '%s' (a node runs no script)", a);
        }
    }
    if (!name)
        return usage_error("no node name (--node NAME)");
    const char *env = getenv("EDRV_NODE_TRACE");
    node.trace = env && *env && strcmp(env, "0") != 0;
    node.spin_ns = spin_us * 1000LL;

    /* name@host */
    char alive[256], host[256];
    const char *at = strchr(name, '@');
    if (at) {
        snprintf(alive, sizeof alive, "%.*s", (int)(at - name), name);
        snprintf(host, sizeof host, "%s", at + 1);
    } else {
        snprintf(alive, sizeof alive, "%s", name);
        int rc = host_name(longname, host, sizeof host);
        if (rc == -2)
            return usage_error("this host's name has no domain; give --name NAME@HOST");
        if (rc < 0)
            return usage_error("cannot find this host's name: %s", strerror(errno));
    }
    if (!alive[0] || !host[0] || strlen(alive) + strlen(host) + 1 > MAXNODELEN)
        return usage_error("bad node name '%s'", name);
    for (const char *p = alive; *p; p++)
        if (!(*p == '_' || *p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z')))
            return usage_error("bad node name '%s': letters, digits, '_' and '-' before '@'",
                               name);
    strcpy(node.node, alive); /* lengths checked above */
    strcat(node.node, "@");
    strcat(node.node, host);

    if (!cookie) {
        const char *home = getenv("HOME");
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/.erlang.cookie", home ? home : "");
        if (!home || access(path, R_OK) < 0) {
            fprintf(stderr, "edrv: no cookie: give --cookie or create %s (as erl does)\n", path);
            return 1;
        }
    }
    struct in_addr addr = {.s_addr = htonl(INADDR_ANY)};
    if (listen_at && inet_pton(AF_INET, listen_at, &addr) != 1)
        return usage_error("--listen %s: not an IPv4 address", listen_at);
    /* cookie NULL: libei reads ~/.erlang.cookie */
    if (ei_init() != 0 || ei_connect_xinit(&node.ec, host, alive, node.node, &addr, cookie, 0) < 0) {
        fprintf(stderr, "edrv: cannot set up node %s (cookie unreadable or too long?)\n",
                node.node);
        return 1;
    }
    int port = 0;
    int lfd = ei_xlisten(&node.ec, &addr, &port, 128);
    if (lfd < 0) {
        fprintf(stderr, "edrv: cannot listen: %s\n", strerror(erl_errno));
        return 1;
    }
    int pfd = ei_publish(&node.ec, port);
    if (pfd < 0) {
        fprintf(stderr, "edrv: cannot register %s with epmd (is epmd running? start it with "
                "'epmd -daemon'; is the name taken?)\n", node.node);
        return 1;
    }
    /* ei_publish took the node's creation from epmd */
    node.creation = node.ec.creation;

    edrv_options o = {.async_threads = threads, .schedulers = schedulers, .node = node.node,
                      .creation = node.creation};
    if (edrv_start(&o) < 0) {
        fprintf(stderr, "edrv: %s\n", edrv_last_error());
        return 1;
    }
    edrv_proc *self = edrv_proc_new();
    if (!self) {
        fprintf(stderr, "edrv: %s\n", edrv_last_error());
        edrv_stop();
        return 1;
    }
    uint64_t sp = edrv_proc_pid(self);
    node.self = (erlang_pid){.num = (unsigned)sp, .serial = (unsigned)(sp >> 32),
                             .creation = node.creation};
    strcpy(node.self.node, node.node);
    relay_init();

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("edrv node %s: listening on port %d\n", node.node, port);
    fflush(stdout);

    while (!stopping) {
        ErlConnect who;
        /* a timeout now and then, to see a stop asked by a signal */
        int fd = ei_accept_tmo(&node.ec, lfd, &who, 500);
        if (fd < 0) {
            if (erl_errno != ETIMEDOUT && !stopping)
                say("a connection failed its handshake (wrong cookie?)");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        snprintf(c->peer, sizeof c->peer, "%s", who.nodename);
        pthread_mutex_init(&c->wlock, NULL);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_mutex_lock(&conns.lock);
        c->next = conns.head;
        if (c->next)
            c->next->prev = c;
        conns.head = c;
        if (pthread_create(&t, &attr, conn_main, c) != 0) {
            conns.head = c->next;
            if (c->next)
                c->next->prev = NULL;
            close(fd);
            pthread_mutex_destroy(&c->wlock);
            free(c);
        }
        pthread_mutex_unlock(&conns.lock);
        pthread_attr_destroy(&attr);
    }
    say("stopping");
    /* Each reader sees its connection end and ends its callers. */
    pthread_mutex_lock(&conns.lock);
    for (conn *c = conns.head; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    while (conns.head)
        pthread_cond_wait(&conns.gone, &conns.lock);
    pthread_mutex_unlock(&conns.lock);
    edrv_proc_free(self);
    close(pfd);
    close(lfd);
    edrv_stop();
    for (int k = 0; k < node.ndirs; k++)
        free(node.dirs[k]);
    return 0;
}
