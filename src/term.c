/*
 * term.c: atoms, term data values, and the one encoder of messages.
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
            t = TD_MAKE(TD_ATOM, atom_hash[j] - 1);
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
    t = TD_MAKE(TD_ATOM, natoms);
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
    if (TD_VAL(t) < natoms)
        name = atoms[TD_VAL(t)];
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
            int idx = 0, ver;
            if (!p || a[1] > INT32_MAX || ei_decode_version(p, &idx, &ver) < 0 ||
                ei_skip_term(p, &idx) < 0 || (ErlDrvUInt)idx != a[1])
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

int edrv__spec_to_msg(const ErlDrvTermData *spec, int n, char **out, size_t *outlen) {
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
        char *buf = edrv__alloc(EDRV_MEM_MESSAGE, (size_t)w.idx);
        if (buf) {
            w = (etf_w){buf, 0};
            ei_encode_version(buf, &w.idx);
            spec_write(&w, nodes, root, stack);
            *out = buf;
            *outlen = (size_t)w.idx;
            rc = 0;
        }
    }
    edrv__free(nodes);
    return rc;
}

/* ---- printing ------------------------------------------------------------------ */

EDRV_API int edrv_term_format(const void *etf, size_t len, char **out) {
    int idx = 0, ver, end = 0;
    if (!etf || !out || len > INT32_MAX || ei_decode_version(etf, &end, &ver) < 0 ||
        ei_skip_term(etf, &end) < 0 || (size_t)end != len)
        return edrv__fail(EDRV_EBADTERM, "not one term in external term format");
    *out = NULL;
    ei_decode_version(etf, &idx, &ver);
    int n = ei_s_print_term(out, etf, &idx);
    if (n < 0) {
        free(*out);
        *out = NULL;
        return edrv__fail(EDRV_EBADTERM, "the term could not be printed");
    }
    return n;
}
