/*
 * term.c: atoms, term data, term specs into messages, ETF checks, printing.
 *
 * Every message edrv delivers is an Erlang term in external term format (ETF),
 * written with libei's encoders. A message is written twice: first into no
 * buffer, which only counts its bytes, then into one exact allocation (type
 * MESSAGE). Term specs (erl_drv_output_term and friends) are postfix, ETF is
 * prefix, so a spec is first parsed into a node array: each compound node
 * records its first child and each node its next sibling, which lets the
 * writer walk the tree in prefix order with an explicit stack, whatever the
 * nesting depth.
 *
 * Any thread: the atom table has its own lock; the rest has no shared state.
 */
#include "internal.h"

#include <ei.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- atoms ----------------------------------------------------------------- */

#define ATOM_MAX_LEN 255

static pthread_mutex_t atoms_lock = PTHREAD_MUTEX_INITIALIZER;
static char **atoms;        /* index -> name */
static size_t natoms, atoms_cap;
static uint32_t *atom_hash; /* open addressing: index + 1, 0 empty */
static size_t hash_cap;     /* a power of two, kept above twice natoms */

static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static bool atoms_grow_hash(void) {
    size_t cap = hash_cap ? hash_cap * 2 : 256;
    uint32_t *h = edrv__calloc(EDRV_MEM_SYSTEM, cap * sizeof *h);
    if (!h)
        return false;
    for (size_t i = 0; i < natoms; i++) {
        size_t j = fnv1a(atoms[i], strlen(atoms[i])) & (cap - 1);
        while (h[j])
            j = (j + 1) & (cap - 1);
        h[j] = (uint32_t)(i + 1);
    }
    edrv__free(atom_hash);
    atom_hash = h;
    hash_cap = cap;
    return true;
}

/* Returns the atom's term data, or 0 (which no spec accepts) on failure. */
static ErlDrvTermData atom_put(const char *name, size_t len) {
    ErlDrvTermData t = 0;
    pthread_mutex_lock(&atoms_lock);
    if ((natoms + 1) * 2 > hash_cap && !atoms_grow_hash())
        goto out;
    size_t j = fnv1a(name, len) & (hash_cap - 1);
    for (; atom_hash[j]; j = (j + 1) & (hash_cap - 1)) {
        const char *a = atoms[atom_hash[j] - 1];
        if (strncmp(a, name, len) == 0 && a[len] == '\0') {
            t = TD_MAKE(TD_ATOM, atom_hash[j]);
            goto out;
        }
    }
    if (natoms == atoms_cap) {
        size_t cap = atoms_cap ? atoms_cap * 2 : 128;
        char **a = edrv__realloc(EDRV_MEM_SYSTEM, atoms, cap * sizeof *a);
        if (!a)
            goto out;
        atoms = a;
        atoms_cap = cap;
    }
    char *copy = edrv__alloc(EDRV_MEM_SYSTEM, len + 1);
    if (!copy)
        goto out;
    memcpy(copy, name, len);
    copy[len] = '\0';
    atoms[natoms] = copy;
    atom_hash[j] = (uint32_t)(natoms + 1);
    t = TD_MAKE(TD_ATOM, natoms + 1); /* from 1: the value 1 is driver_term_nil */
    natoms++;
out:
    pthread_mutex_unlock(&atoms_lock);
    return t;
}

const char *edrv__atom_name(ErlDrvTermData t) {
    if (TD_TAG(t) != TD_ATOM)
        return NULL;
    const char *name = NULL;
    pthread_mutex_lock(&atoms_lock);
    if (TD_VAL(t) >= 1 && TD_VAL(t) <= natoms)
        name = atoms[TD_VAL(t) - 1];
    pthread_mutex_unlock(&atoms_lock);
    return name; /* atoms are never freed while the runtime runs */
}

void edrv__atoms_reset(void) {
    pthread_mutex_lock(&atoms_lock);
    for (size_t i = 0; i < natoms; i++)
        edrv__free(atoms[i]);
    edrv__free(atoms);
    edrv__free(atom_hash);
    atoms = NULL;
    atom_hash = NULL;
    natoms = atoms_cap = hash_cap = 0;
    pthread_mutex_unlock(&atoms_lock);
}

EDRV_API ErlDrvTermData driver_mk_atom(char *name) {
    size_t len = name ? strlen(name) : 0;
    if (!name || len > ATOM_MAX_LEN) {
        edrv__warn("driver_mk_atom: %s", name ? "atom name longer than 255 bytes" : "NULL name");
        return 0;
    }
    return atom_put(name, len);
}

EDRV_API const ErlDrvTermData driver_term_nil = ERL_DRV_NIL;

EDRV_API ErlDrvTermData driver_mk_term_nil(void) {
    return driver_term_nil;
}

/* ---- pids and ports ---------------------------------------------------------- */

void edrv__etf_pid(etf_w *w, uint64_t pid) {
    erlang_pid p = {.node = EDRV_NODE, .num = (unsigned)pid, .serial = (unsigned)(pid >> 32)};
    ei_encode_pid(w->buf, &w->idx, &p);
}

void edrv__etf_port(etf_w *w, uint64_t port) {
    erlang_port p = {.node = EDRV_NODE, .id = port};
    ei_encode_port(w->buf, &w->idx, &p);
}

/* ---- validating ETF ------------------------------------------------------------ */

/* libei's decoders trust their input: a list header claiming a billion
 * elements in a ten-byte buffer makes ei_skip_term read far past the end. So
 * bytes from outside (a host's port_call argument, a driver's reply or
 * EXT2TERM buffer) are first walked here with every read bounds-checked; after
 * that, libei decodes them safely. This only measures; it decodes nothing. */

static bool take(size_t *at, size_t n, size_t len) {
    if (n > len - *at)
        return false;
    *at += n;
    return true;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Skips one atom (the node name inside pids, ports and references). */
static bool skip_atom(const unsigned char *b, size_t *at, size_t len) {
    if (*at >= len)
        return false;
    unsigned char tag = b[(*at)++];
    if (tag == ERL_ATOM_EXT || tag == ERL_ATOM_UTF8_EXT) {
        if (len - *at < 2)
            return false;
        size_t n = (size_t)b[*at] << 8 | b[*at + 1];
        return take(at, 2 + n, len);
    }
    if (tag == ERL_SMALL_ATOM_EXT || tag == ERL_SMALL_ATOM_UTF8_EXT) {
        if (*at >= len)
            return false;
        size_t n = b[*at];
        return take(at, 1 + n, len);
    }
    return false;
}

int edrv__etf_measure(const void *buf, size_t len) {
    const unsigned char *b = buf;
    size_t at = 1;
    if (len < 2 || len > INT32_MAX || b[0] != 131)
        return -1;
    uint64_t need = 1; /* terms still to skip */
    while (need) {
        need--;
        if (at >= len)
            return -1;
        unsigned char tag = b[at++];
        const unsigned char *p = b + at;
        size_t left = len - at;
        bool ok = true;
        switch (tag) {
        case ERL_SMALL_INTEGER_EXT: ok = take(&at, 1, len); break;
        case ERL_INTEGER_EXT: ok = take(&at, 4, len); break;
        case NEW_FLOAT_EXT: ok = take(&at, 8, len); break;
        case ERL_FLOAT_EXT: ok = take(&at, 31, len); break;
        case ERL_NIL_EXT: break;
        case ERL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
        case ERL_SMALL_ATOM_EXT: case ERL_SMALL_ATOM_UTF8_EXT:
            at--;
            ok = skip_atom(b, &at, len);
            break;
        case ERL_STRING_EXT:
            ok = left >= 2 && take(&at, 2 + ((size_t)p[0] << 8 | p[1]), len);
            break;
        case ERL_BINARY_EXT:
            ok = left >= 4 && take(&at, 4 + (size_t)be32(p), len);
            break;
        case ERL_BIT_BINARY_EXT:
            ok = left >= 5 && take(&at, 5 + (size_t)be32(p), len);
            break;
        case ERL_SMALL_BIG_EXT:
            ok = left >= 1 && take(&at, 2 + (size_t)p[0], len);
            break;
        case ERL_LARGE_BIG_EXT:
            ok = left >= 4 && take(&at, 5 + (size_t)be32(p), len);
            break;
        case ERL_SMALL_TUPLE_EXT:
            ok = take(&at, 1, len);
            need += ok ? p[0] : 0;
            break;
        case ERL_LARGE_TUPLE_EXT:
            ok = take(&at, 4, len);
            need += ok ? be32(p) : 0;
            break;
        case ERL_MAP_EXT:
            ok = take(&at, 4, len);
            need += ok ? 2 * (uint64_t)be32(p) : 0;
            break;
        case ERL_LIST_EXT:
            ok = take(&at, 4, len);
            need += ok ? (uint64_t)be32(p) + 1 : 0; /* the elements and the tail */
            break;
        case ERL_PID_EXT: ok = skip_atom(b, &at, len) && take(&at, 9, len); break;
        case ERL_NEW_PID_EXT: ok = skip_atom(b, &at, len) && take(&at, 12, len); break;
        case ERL_PORT_EXT: ok = skip_atom(b, &at, len) && take(&at, 5, len); break;
        case ERL_NEW_PORT_EXT: ok = skip_atom(b, &at, len) && take(&at, 8, len); break;
        case ERL_V4_PORT_EXT: ok = skip_atom(b, &at, len) && take(&at, 12, len); break;
        case ERL_REFERENCE_EXT: ok = skip_atom(b, &at, len) && take(&at, 5, len); break;
        case ERL_NEW_REFERENCE_EXT:
        case ERL_NEWER_REFERENCE_EXT: {
            if (left < 2)
                return -1;
            size_t words = (size_t)p[0] << 8 | p[1];
            at += 2;
            ok = words <= 5 && skip_atom(b, &at, len) &&
                 take(&at, (tag == ERL_NEW_REFERENCE_EXT ? 1 : 4) + 4 * words, len);
            break;
        }
        case ERL_NEW_FUN_EXT: /* its size covers it whole, tag excluded */
            ok = left >= 4 && be32(p) >= 4 && take(&at, (size_t)be32(p), len);
            break;
        case ERL_EXPORT_EXT:
            need += 3;
            break;
        default:
            return -1;
        }
        /* A count larger than the bytes left cannot be met: stop early. */
        if (!ok || need > len - at)
            return -1;
    }
    return (int)at;
}

/* ---- term specs -------------------------------------------------------------- */

typedef enum {
    N_NIL, N_ATOM, N_INT, N_UINT, N_PORT, N_PID, N_BYTES_BIN, N_STRING, N_TUPLE,
    N_LIST, N_STRING_CONS, N_FLOAT, N_EXT, N_MAP
} node_kind;

typedef struct {
    uint8_t kind;
    int32_t first_child; /* compound nodes: index, or -1 */
    int32_t next;        /* next sibling, or -1 */
    uint64_t n;          /* count: tuple arity, list length with tail, map pairs */
    union {
        int64_t i;
        uint64_t u;
        double f;
        const char *atom;
        struct {
            const char *p;
            size_t len;
        } bytes;
    } v;
} node;

/* Number of ErlDrvTermData words each tag takes, tag included; 0: unknown. */
static int spec_words(ErlDrvTermData tag) {
    switch (tag) {
    case ERL_DRV_NIL:
        return 1;
    case ERL_DRV_BINARY:
        return 4;
    case ERL_DRV_STRING: case ERL_DRV_STRING_CONS: case ERL_DRV_EXT2TERM:
    case ERL_DRV_BUF2BINARY:
        return 3;
    case ERL_DRV_ATOM: case ERL_DRV_INT: case ERL_DRV_PORT: case ERL_DRV_TUPLE:
    case ERL_DRV_LIST: case ERL_DRV_PID: case ERL_DRV_FLOAT: case ERL_DRV_UINT:
    case ERL_DRV_INT64: case ERL_DRV_UINT64: case ERL_DRV_MAP:
        return 2;
    default:
        return 0;
    }
}

/* Pops `count` roots off the stack and makes them the children of node `parent`. */
static bool adopt(node *nodes, int32_t *stack, int *sp, int32_t parent, uint64_t count) {
    if (count > (uint64_t)*sp)
        return false;
    int base = *sp - (int)count;
    nodes[parent].first_child = count ? stack[base] : -1;
    for (int k = base; k + 1 < *sp; k++)
        nodes[stack[k]].next = stack[k + 1];
    if (count)
        nodes[stack[*sp - 1]].next = -1;
    *sp = base;
    return true;
}

/* Parses a spec into nodes; returns the root index or -1 for a bad spec. */
static int32_t spec_parse(const ErlDrvTermData *spec, int n, node *nodes, int32_t *stack) {
    int nn = 0, sp = 0;
    for (int i = 0; i < n;) {
        int w = spec_words(spec[i]);
        if (!w || i + w > n)
            return -1;
        const ErlDrvTermData *a = spec + i + 1;
        node *x = &nodes[nn];
        *x = (node){.first_child = -1, .next = -1};
        switch (spec[i]) {
        case ERL_DRV_NIL:
            x->kind = N_NIL;
            break;
        case ERL_DRV_ATOM:
            x->kind = N_ATOM;
            if (!(x->v.atom = edrv__atom_name(a[0])))
                return -1;
            break;
        case ERL_DRV_INT:
            x->kind = N_INT;
            x->v.i = (ErlDrvSInt)a[0];
            break;
        case ERL_DRV_UINT:
            x->kind = N_UINT;
            x->v.u = a[0];
            break;
        case ERL_DRV_INT64:
            if (!a[0])
                return -1;
            x->kind = N_INT;
            x->v.i = *(const ErlDrvSInt64 *)a[0];
            break;
        case ERL_DRV_UINT64:
            if (!a[0])
                return -1;
            x->kind = N_UINT;
            x->v.u = *(const ErlDrvUInt64 *)a[0];
            break;
        case ERL_DRV_FLOAT:
            if (!a[0])
                return -1;
            x->kind = N_FLOAT;
            x->v.f = *(const double *)a[0];
            break;
        case ERL_DRV_PORT:
            if (TD_TAG(a[0]) != TD_PORT)
                return -1;
            x->kind = N_PORT;
            x->v.u = TD_VAL(a[0]);
            break;
        case ERL_DRV_PID:
            if (TD_TAG(a[0]) != TD_PID)
                return -1;
            x->kind = N_PID;
            x->v.u = TD_VAL(a[0]);
            break;
        case ERL_DRV_BINARY: {
            const ErlDrvBinary *b = (const ErlDrvBinary *)a[0];
            ErlDrvUInt len = a[1], off = a[2];
            if (!b || off > (ErlDrvUInt)b->orig_size || len > (ErlDrvUInt)b->orig_size - off)
                return -1;
            x->kind = N_BYTES_BIN;
            x->v.bytes.p = b->orig_bytes + off;
            x->v.bytes.len = len;
            break;
        }
        case ERL_DRV_BUF2BINARY:
        case ERL_DRV_STRING:
        case ERL_DRV_STRING_CONS:
            if (!a[0] && a[1])
                return -1;
            x->kind = spec[i] == ERL_DRV_BUF2BINARY ? N_BYTES_BIN
                      : spec[i] == ERL_DRV_STRING   ? N_STRING
                                                    : N_STRING_CONS;
            x->v.bytes.p = (const char *)a[0];
            x->v.bytes.len = a[1];
            if (x->kind != N_BYTES_BIN && a[1] > INT32_MAX)
                return -1;
            break;
        case ERL_DRV_EXT2TERM: {
            /* The driver's buffer is one whole term with its version byte. */
            const char *p = (const char *)a[0];
            if (!p || edrv__etf_measure(p, a[1]) != (int)a[1])
                return -1;
            x->kind = N_EXT;
            x->v.bytes.p = p + 1;
            x->v.bytes.len = a[1] - 1;
            break;
        }
        case ERL_DRV_TUPLE:
        case ERL_DRV_LIST:
        case ERL_DRV_MAP: {
            uint64_t count = a[0];
            x->kind = spec[i] == ERL_DRV_TUPLE ? N_TUPLE : spec[i] == ERL_DRV_LIST ? N_LIST : N_MAP;
            x->n = count;
            if (x->kind == N_LIST && count == 0)
                return -1; /* a list has at least its tail */
            if (x->kind == N_MAP && count > (uint64_t)INT32_MAX / 2)
                return -1;
            if (!adopt(nodes, stack, &sp, nn, x->kind == N_MAP ? count * 2 : count))
                return -1;
            break;
        }
        }
        if (x->kind == N_STRING_CONS && !adopt(nodes, stack, &sp, nn, 1))
            return -1;
        stack[sp++] = nn++;
        i += w;
    }
    return sp == 1 ? stack[0] : -1;
}

/* Writes the tree under `root` in prefix order. `todo` has room for every node. */
static void spec_write(etf_w *w, const node *nodes, int32_t root, int32_t *todo) {
    int top = 0;
    todo[top++] = root;
    while (top) {
        const node *x = &nodes[todo[--top]];
        switch ((node_kind)x->kind) {
        case N_NIL:
            ei_encode_empty_list(w->buf, &w->idx);
            break;
        case N_ATOM:
            ei_encode_atom_len_as(w->buf, &w->idx, x->v.atom, (int)strlen(x->v.atom),
                                  ERLANG_LATIN1, ERLANG_UTF8);
            break;
        case N_INT:
            ei_encode_longlong(w->buf, &w->idx, x->v.i);
            break;
        case N_UINT:
            ei_encode_ulonglong(w->buf, &w->idx, x->v.u);
            break;
        case N_FLOAT:
            ei_encode_double(w->buf, &w->idx, x->v.f);
            break;
        case N_PORT:
            edrv__etf_port(w, x->v.u);
            break;
        case N_PID:
            edrv__etf_pid(w, x->v.u);
            break;
        case N_BYTES_BIN:
            ei_encode_binary(w->buf, &w->idx, x->v.bytes.p, (long)x->v.bytes.len);
            break;
        case N_STRING:
            ei_encode_string_len(w->buf, &w->idx, x->v.bytes.p, (int)x->v.bytes.len);
            break;
        case N_EXT:
            if (w->buf)
                memcpy(w->buf + w->idx, x->v.bytes.p, x->v.bytes.len);
            w->idx += (int)x->v.bytes.len;
            break;
        case N_STRING_CONS:
            /* [c1, ..., cn | Tail]: the tail is the node's one child. */
            if (x->v.bytes.len) {
                ei_encode_list_header(w->buf, &w->idx, (int)x->v.bytes.len);
                for (size_t k = 0; k < x->v.bytes.len; k++)
                    ei_encode_ulong(w->buf, &w->idx, (unsigned char)x->v.bytes.p[k]);
            }
            break;
        case N_TUPLE:
            ei_encode_tuple_header(w->buf, &w->idx, (int)x->n);
            break;
        case N_LIST:
            /* ERL_DRV_LIST n: n-1 elements and a tail; n == 1 is the tail alone. */
            if (x->n > 1)
                ei_encode_list_header(w->buf, &w->idx, (int)(x->n - 1));
            break;
        case N_MAP:
            ei_encode_map_header(w->buf, &w->idx, (int)x->n);
            break;
        }
        /* Prefix order: this node's children before its next sibling. */
        if (x->next >= 0)
            todo[top++] = x->next;
        if (x->first_child >= 0)
            todo[top++] = x->first_child;
    }
}

int edrv__spec_to_msg(const ErlDrvTermData *spec, int n, mbox_msg **out) {
    if (!spec || n <= 0)
        return -1;
    /* A spec of n words has at most n nodes; one block holds the nodes and two
     * index arrays (the parse stack, reused as the writer's stack). */
    size_t bytes = (size_t)n * (sizeof(node) + sizeof(int32_t));
    node *nodes = edrv__alloc(EDRV_MEM_SYSTEM, bytes);
    if (!nodes)
        return -1;
    int32_t *stack = (int32_t *)(nodes + n);
    int rc = -1;
    int32_t root = spec_parse(spec, n, nodes, stack);
    if (root >= 0) {
        etf_w w = {NULL, 1};
        spec_write(&w, nodes, root, stack);
        mbox_msg *m = edrv__msg_new((size_t)w.idx);
        if (m) {
            w = (etf_w){m->data, 0};
            ei_encode_version(w.buf, &w.idx);
            spec_write(&w, nodes, root, stack);
            *out = m;
            rc = 0;
        }
    }
    edrv__free(nodes);
    return rc;
}

/* ---- printing ------------------------------------------------------------------ */

/* edrv_term_format prints a term as Erlang prints it with ~w, except that
 * strings and binaries of printable Latin-1 show as "..." and <<"...">> (as
 * ~p shows them): {#Port<0.3>,{data,<<"ok">>}}. The term is decoded with
 * libei; only the text is written here. */

typedef struct {
    char *s;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_put(strbuf *b, const char *p, size_t n) {
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(strbuf *b, const char *p) {
    sb_put(b, p, strlen(p));
}

__attribute__((format(printf, 2, 3))) static void sb_fmt(strbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static bool printable(unsigned c) {
    return (c >= 32 && c <= 126) || (c >= 160 && c <= 255) || (c >= 8 && c <= 13) || c == 27;
}

static void sb_char(strbuf *b, unsigned c, char quote) {
    static const char esc[] = {['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\v'] = 'v',
                               ['\f'] = 'f', ['\r'] = 'r', [27] = 'e'};
    char out[4] = {'\\', 0, 0, 0};
    if (c < sizeof esc && esc[c]) {
        out[1] = esc[c];
        sb_put(b, out, 2);
    } else if (c == (unsigned char)quote || c == '\\') {
        out[1] = (char)c;
        sb_put(b, out, 2);
    } else {
        /* Latin-1 above 127 as UTF-8, so the text prints on a terminal. */
        char u[2] = {(char)c, 0};
        if (c >= 128) {
            u[0] = (char)(0xc0 | (c >> 6));
            u[1] = (char)(0x80 | (c & 0x3f));
        }
        sb_put(b, u, c >= 128 ? 2 : 1);
    }
}

static void sb_quoted(strbuf *b, const unsigned char *p, size_t n, char quote) {
    sb_put(b, &quote, 1);
    for (size_t i = 0; i < n; i++)
        sb_char(b, p[i], quote);
    sb_put(b, &quote, 1);
}

static bool all_printable(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!printable(p[i]))
            return false;
    return true;
}

static void sb_atom(strbuf *b, const char *a) {
    static const char *const reserved[] = {
        "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor",
        "case", "catch", "cond", "div", "end", "fun", "if", "let", "not", "of", "or",
        "orelse", "receive", "rem", "try", "when", "xor", NULL};
    bool bare = a[0] >= 'a' && a[0] <= 'z';
    for (const char *c = a; bare && *c; c++)
        bare = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
               (*c >= '0' && *c <= '9') || *c == '_' || *c == '@';
    for (int i = 0; bare && reserved[i]; i++)
        bare = strcmp(a, reserved[i]) != 0;
    if (bare) {
        sb_str(b, a);
        return;
    }
    /* The name is UTF-8 (ei decodes atoms so); keep its bytes, escape quotes. */
    sb_put(b, "'", 1);
    for (const char *c = a; *c; c++) {
        unsigned char u = (unsigned char)*c;
        if (u >= 128)
            sb_put(b, c, 1);
        else
            sb_char(b, u, '\'');
    }
    sb_put(b, "'", 1);
}

/* The shortest text that reads back as the same double, fixed or scientific,
 * whichever is shorter (fixed on a tie), as Erlang prints floats. */
static void sb_float(strbuf *b, double f) {
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e is [-]D[.DDD]e[+-]XX */
    char digits[24];
    int nd = 0, exp10;
    const char *p = e;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    digits[nd] = '\0';
    exp10 = atoi(p + 1);
    if (!isfinite(f)) {
        sb_str(b, e);
        return;
    }
    char sci[48], fix[400];
    snprintf(sci, sizeof sci, "%s%c.%se%d", neg ? "-" : "", digits[0], nd > 1 ? digits + 1 : "0",
             exp10);
    int o = 0;
    if (neg)
        fix[o++] = '-';
    if (exp10 < 0) {
        o += snprintf(fix + o, sizeof fix - (size_t)o, "0.");
        for (int i = -1; i > exp10; i--)
            fix[o++] = '0';
        o += snprintf(fix + o, sizeof fix - (size_t)o, "%s", digits);
    } else {
        for (int i = 0; i <= exp10; i++)
            fix[o++] = i < nd ? digits[i] : '0';
        fix[o++] = '.';
        if (exp10 + 1 < nd)
            o += snprintf(fix + o, sizeof fix - (size_t)o, "%s", digits + exp10 + 1);
        else
            fix[o++] = '0';
    }
    fix[o] = '\0';
    sb_str(b, strlen(fix) <= strlen(sci) ? fix : sci);
}

static int print_term(strbuf *b, const char *buf, int *idx, int depth);

static int print_seq(strbuf *b, const char *buf, int *idx, int n, int depth) {
    for (int i = 0; i < n; i++) {
        if (i)
            sb_put(b, ",", 1);
        if (print_term(b, buf, idx, depth + 1) < 0)
            return -1;
    }
    return 0;
}

static int print_term(strbuf *b, const char *buf, int *idx, int depth) {
    int type, size, arity;
    if (depth > 10000 || ei_get_type(buf, idx, &type, &size) < 0)
        return -1;
    switch (type) {
    case ERL_SMALL_INTEGER_EXT:
    case ERL_INTEGER_EXT:
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: {
        long long v;
        unsigned long long u;
        int save = *idx;
        if (ei_decode_longlong(buf, idx, &v) == 0) {
            sb_fmt(b, "%lld", v);
        } else if ((*idx = save, ei_decode_ulonglong(buf, idx, &u)) == 0) {
            sb_fmt(b, "%llu", u);
        } else {
            /* Beyond 64 bits: libei's own printer knows bignums. */
            char *s = NULL;
            *idx = save;
            if (ei_s_print_term(&s, buf, idx) < 0) {
                free(s);
                return -1;
            }
            sb_str(b, s);
            free(s);
        }
        return 0;
    }
    case ERL_FLOAT_EXT:
    case NEW_FLOAT_EXT: {
        double f;
        if (ei_decode_double(buf, idx, &f) < 0)
            return -1;
        sb_float(b, f);
        return 0;
    }
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: {
        char a[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) < 0)
            return -1;
        sb_atom(b, a);
        return 0;
    }
    case ERL_PID_EXT:
    case ERL_NEW_PID_EXT: {
        erlang_pid p;
        if (ei_decode_pid(buf, idx, &p) < 0)
            return -1;
        sb_fmt(b, "<0.%u.%u>", p.num, p.serial);
        return 0;
    }
    case ERL_PORT_EXT:
    case ERL_NEW_PORT_EXT:
    case ERL_V4_PORT_EXT: {
        erlang_port p;
        if (ei_decode_port(buf, idx, &p) < 0)
            return -1;
        sb_fmt(b, "#Port<0.%llu>", (unsigned long long)p.id);
        return 0;
    }
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT:
        if (ei_decode_tuple_header(buf, idx, &arity) < 0)
            return -1;
        sb_put(b, "{", 1);
        if (print_seq(b, buf, idx, arity, depth) < 0)
            return -1;
        sb_put(b, "}", 1);
        return 0;
    case ERL_MAP_EXT:
        if (ei_decode_map_header(buf, idx, &arity) < 0)
            return -1;
        sb_put(b, "#{", 2);
        for (int i = 0; i < arity; i++) {
            if (i)
                sb_put(b, ",", 1);
            if (print_term(b, buf, idx, depth + 1) < 0)
                return -1;
            sb_put(b, " => ", 4);
            if (print_term(b, buf, idx, depth + 1) < 0)
                return -1;
        }
        sb_put(b, "}", 1);
        return 0;
    case ERL_NIL_EXT:
        ei_decode_list_header(buf, idx, &arity);
        sb_put(b, "[]", 2);
        return 0;
    case ERL_STRING_EXT: {
        /* Bytes that are all printable show as a string, others as integers. */
        const unsigned char *p = (const unsigned char *)buf + *idx + 3;
        if (all_printable(p, (size_t)size)) {
            sb_quoted(b, p, (size_t)size, '"');
        } else {
            sb_put(b, "[", 1);
            for (int i = 0; i < size; i++)
                sb_fmt(b, i ? ",%u" : "%u", p[i]);
            sb_put(b, "]", 1);
        }
        *idx += 3 + size;
        return 0;
    }
    case ERL_LIST_EXT: {
        if (ei_decode_list_header(buf, idx, &arity) < 0)
            return -1;
        sb_put(b, "[", 1);
        if (print_seq(b, buf, idx, arity, depth) < 0)
            return -1;
        int tail_type;
        if (ei_get_type(buf, idx, &tail_type, &size) < 0)
            return -1;
        if (tail_type == ERL_NIL_EXT) {
            ei_decode_list_header(buf, idx, &arity);
        } else {
            sb_put(b, "|", 1);
            if (print_term(b, buf, idx, depth + 1) < 0)
                return -1;
        }
        sb_put(b, "]", 1);
        return 0;
    }
    case ERL_BINARY_EXT: {
        const unsigned char *p = (const unsigned char *)buf + *idx + 5;
        if (size && all_printable(p, (size_t)size)) {
            sb_put(b, "<<", 2);
            sb_quoted(b, p, (size_t)size, '"');
            sb_put(b, ">>", 2);
        } else {
            sb_put(b, "<<", 2);
            for (int i = 0; i < size; i++)
                sb_fmt(b, i ? ",%u" : "%u", p[i]);
            sb_put(b, ">>", 2);
        }
        *idx += 5 + size;
        return 0;
    }
    default: {
        /* References, funs, bit strings...: libei's printer. */
        char *s = NULL;
        if (ei_s_print_term(&s, buf, idx) < 0) {
            free(s);
            return -1;
        }
        sb_str(b, s);
        free(s);
        return 0;
    }
    }
}

EDRV_API int edrv_term_format(const void *etf, size_t len, char **out) {
    int idx = 0, ver;
    if (!etf || !out || edrv__etf_measure(etf, len) != (int)len)
        return edrv__fail(EDRV_EBADTERM, "not one term in external term format");
    ei_decode_version(etf, &idx, &ver);
    strbuf b = {0};
    if (print_term(&b, etf, &idx, 0) < 0 || b.oom) {
        free(b.s);
        *out = NULL;
        return edrv__fail(b.oom ? EDRV_ENOMEM : EDRV_EBADTERM, "the term could not be printed");
    }
    *out = b.s;
    return (int)b.len;
}
