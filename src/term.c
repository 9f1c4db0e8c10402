/*
 * term.c: atoms, term data values, and ETF: its one writer, its one reader.
 *
 * Every message edrv delivers is an Erlang term in external term format (ETF),
 * written by the edrv__etf_* functions here (port.c's messages too). A message
 * is written twice: first into no buffer, which only counts its bytes, then
 * into one exact allocation (type MESSAGE). Sizes are 64-bit; a part that ETF
 * cannot hold (over 2^32-1 bytes or elements) is refused, never cut. Term
 * specs (erl_drv_output_term and friends) are postfix, ETF is prefix, so a
 * spec is first parsed into a node array: each compound node records its
 * first child and each node its next sibling, which lets the writer walk the
 * tree in prefix order with an explicit stack, whatever the nesting depth.
 *
 * ETF that comes from outside (EXT2TERM buffers, call replies, the host's
 * port_call argument, edrv_term_format's input) is read by one bounds-checked
 * reader, read_item, which the measure, the spec checks and the printer share.
 *
 * Any thread: the atom table has its own lock; the rest has no shared state.
 */
#include "internal.h"

#include <ei.h>
#include <limits.h>
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

/* ---- writing ETF ------------------------------------------------------------ */

/* libei's encoders take an int offset, which cannot reach past 2 GiB into a
 * buffer. So libei writes only the small fixed-size terms here (integers,
 * floats, atoms, pids, ports), each at the start of a sub-buffer (or counting
 * from 0), and the 64-bit offset moves by what it wrote. Headers with a count
 * and the bytes of binaries and strings are written directly. */
#define EI_AT(w, call)                                                                 \
    do {                                                                               \
        int i_ = 0;                                                                    \
        char *b_ = (w)->buf ? (w)->buf + (w)->idx : NULL;                              \
        (void)(call);                                                                  \
        (w)->idx += (size_t)i_;                                                        \
    } while (0)

static void put_raw(etf_w *w, const void *p, size_t n) {
    if (w->buf && n)
        memcpy(w->buf + w->idx, p, n);
    w->idx += n;
}

/* A tag and a 32-bit count. */
static void put_head(etf_w *w, unsigned char tag, uint32_t n) {
    unsigned char h[5] = {tag, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};
    put_raw(w, h, sizeof h);
}

/* False, and the writer marked, when n is more than one ETF part holds. */
static bool fits(etf_w *w, const char *what, uint64_t n) {
    if (n <= EDRV_ETF_MAX_COUNT)
        return true;
    if (!w->refused) {
        w->refused = what;
        w->refused_size = n;
    }
    return false;
}

void edrv__etf_version(etf_w *w) {
    unsigned char v = 131;
    put_raw(w, &v, 1);
}

void edrv__etf_tuple(etf_w *w, uint64_t arity) {
    if (arity <= 255) {
        unsigned char h[2] = {ERL_SMALL_TUPLE_EXT, (unsigned char)arity};
        put_raw(w, h, 2);
    } else if (fits(w, "tuple", arity)) {
        put_head(w, ERL_LARGE_TUPLE_EXT, (uint32_t)arity);
    }
}

void edrv__etf_map(etf_w *w, uint64_t pairs) {
    if (fits(w, "map", pairs))
        put_head(w, ERL_MAP_EXT, (uint32_t)pairs);
}

void edrv__etf_list(etf_w *w, uint64_t n) {
    if (fits(w, "list", n))
        put_head(w, ERL_LIST_EXT, (uint32_t)n);
}

void edrv__etf_nil(etf_w *w) {
    unsigned char t = ERL_NIL_EXT;
    put_raw(w, &t, 1);
}

void edrv__etf_atom(etf_w *w, const char *name) {
    /* An ASCII name of up to 255 bytes is its own UTF-8: SMALL_ATOM_UTF8_EXT
     * with the bytes as they are, as libei writes it (every message's `data`
     * or `EXIT` takes this path, without libei's conversion). */
    size_t n = 0;
    while (n < 256 && name[n] && (unsigned char)name[n] < 0x80)
        n++;
    if (!name[n] && n < 256) {
        unsigned char h[2] = {ERL_SMALL_ATOM_UTF8_EXT, (unsigned char)n};
        put_raw(w, h, 2);
        put_raw(w, name, n);
        return;
    }
    EI_AT(w, ei_encode_atom_len_as(b_, &i_, name, (int)strlen(name), ERLANG_LATIN1, ERLANG_UTF8));
}

void edrv__etf_int(etf_w *w, int64_t v) {
    EI_AT(w, ei_encode_longlong(b_, &i_, v));
}

static void etf_uint(etf_w *w, uint64_t v) {
    EI_AT(w, ei_encode_ulonglong(b_, &i_, v));
}

static void etf_float(etf_w *w, double f) {
    EI_AT(w, ei_encode_double(b_, &i_, f));
}

static char node_name[256] = EDRV_NODE;
static unsigned node_creation;
/* Bumped by each change of node: a thread's cached pid or port bytes name
 * the node they were written for. */
static _Atomic unsigned node_gen;

void edrv__term_set_node(const char *node, unsigned creation) {
    if (!node)
        node = EDRV_NODE;
    if (strcmp(node, node_name) == 0 && creation == node_creation)
        return;
    snprintf(node_name, sizeof node_name, "%s", node);
    node_creation = creation;
    atomic_fetch_add(&node_gen, 1);
}

const char *edrv__term_node(void) {
    return node_name;
}

unsigned edrv__term_creation(void) {
    return node_creation;
}

/* The last pid and port this thread encoded, as libei encoded them: a
 * message names the same port (and pid) in both passes of its writing, and
 * a stream of messages the same one again, so libei's work (the node's
 * name converted to UTF-8 each time) is done once per new value. A
 * forwarding process's pid (EDRV_PID_REMOTE) is the pid it stands for. */
typedef struct {
    uint64_t id;
    unsigned gen;
    unsigned short len; /* 0: empty */
    char bytes[EDRV_REMOTE_PID_MAX];
} etf_cached;

static _Thread_local etf_cached last_pid __attribute__((tls_model("initial-exec")));
static _Thread_local etf_cached last_port __attribute__((tls_model("initial-exec")));

static void put_cached(etf_w *w, etf_cached *c, uint64_t id, bool port) {
    unsigned gen = atomic_load_explicit(&node_gen, memory_order_relaxed);
    if (c->len == 0 || c->id != id || c->gen != gen) {
        int i = 0;
        if (port) {
            erlang_port p = {.id = id, .creation = node_creation};
            memcpy(p.node, node_name, sizeof node_name);
            ei_encode_port(c->bytes, &i, &p);
        } else if (id & EDRV_PID_REMOTE) {
            /* gone: the pid of a process that never lived (dropped by all) */
            i = (int)edrv__proc_remote_etf(id, c->bytes, sizeof c->bytes);
            if (i == 0)
                id &= ~EDRV_PID_REMOTE;
        }
        if (!port && i == 0) {
            erlang_pid p = {.num = (unsigned)id, .serial = (unsigned)(id >> 32),
                            .creation = node_creation};
            memcpy(p.node, node_name, sizeof node_name);
            ei_encode_pid(c->bytes, &i, &p);
        }
        c->id = id;
        c->gen = gen;
        c->len = (unsigned short)i;
    }
    put_raw(w, c->bytes, c->len);
}

void edrv__etf_raw(etf_w *w, const void *p, size_t n) {
    put_raw(w, p, n);
}

void edrv__etf_ref(etf_w *w, uint64_t ref) {
    erlang_ref r = {.creation = node_creation,
                    .len = 3,
                    .n = {(unsigned)(ref & 0x3ffff), (unsigned)(ref >> 18), (unsigned)(ref >> 50)}};
    memcpy(r.node, node_name, sizeof node_name);
    EI_AT(w, ei_encode_ref(b_, &i_, &r));
}

void edrv__etf_pid(etf_w *w, uint64_t pid) {
    put_cached(w, &last_pid, pid, false);
}

void edrv__etf_port(etf_w *w, uint64_t port) {
    put_cached(w, &last_port, port, true);
}

size_t edrv__etf_port_size(uint64_t port) {
    etf_w w = {0};
    put_cached(&w, &last_port, port, true);
    return w.idx;
}

void edrv__etf_binary(etf_w *w, const char *p, size_t len) {
    if (!fits(w, "binary", len))
        return;
    put_head(w, ERL_BINARY_EXT, (uint32_t)len);
    put_raw(w, p, len);
}

static uint64_t pieces_len(const etf_piece *pieces, size_t n) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += pieces[i].len;
    return total;
}

void edrv__etf_byte_elements(etf_w *w, const etf_piece *pieces, size_t n) {
    for (size_t i = 0; i < n; i++) {
        size_t len = pieces[i].len;
        if (w->buf) {
            /* Each byte is a SMALL_INTEGER_EXT: two bytes per element. */
            unsigned char *o = (unsigned char *)w->buf + w->idx;
            const unsigned char *p = (const unsigned char *)pieces[i].p;
            for (size_t k = 0; k < len; k++) {
                o[2 * k] = ERL_SMALL_INTEGER_EXT;
                o[2 * k + 1] = p[k];
            }
        }
        w->idx += 2 * len;
    }
}

/* Up to 65535 bytes a list of bytes is a STRING_EXT; beyond, a LIST_EXT of
 * small integers, as term_to_binary writes them. */
void edrv__etf_string(etf_w *w, const etf_piece *pieces, size_t n) {
    uint64_t total = pieces_len(pieces, n);
    if (total == 0) {
        edrv__etf_nil(w);
    } else if (total <= 0xffff) {
        unsigned char h[3] = {ERL_STRING_EXT, (unsigned char)(total >> 8), (unsigned char)total};
        put_raw(w, h, 3);
        for (size_t i = 0; i < n; i++)
            put_raw(w, pieces[i].p, pieces[i].len);
    } else if (fits(w, "list", total)) {
        put_head(w, ERL_LIST_EXT, (uint32_t)total);
        edrv__etf_byte_elements(w, pieces, n);
        edrv__etf_nil(w);
    }
}

/* ---- reading ETF --------------------------------------------------------------
 * libei's decoders trust their input: a list header claiming a billion
 * elements in a ten-byte buffer makes ei_skip_term read far past the end, and
 * their int offsets stop at 2 GiB. So ETF is read here, one item at a time, by
 * read_item, with every length checked against the buffer and 64-bit offsets.
 * Three walks share it: edrv__etf_measure (structure), the strict check of
 * floats and map keys (term specs), and edrv_term_format; each keeps its own
 * explicit stack, so no walk recurses, however deep the term.
 *
 * The measure takes only what binary_to_term takes item by item (checked in
 * erl), so that libei, which trusts the bytes, never reads past them: floats
 * finite, FLOAT_EXT's text a number ended by a NUL, a bit string's count of
 * bits in range, funs and exports with every field in place. Map keys are
 * left to the spec check. */

/* One item: a whole term, or the head of a compound term whose `parts`
 * follow it (elements and tail of a list, a tuple's elements, a map's keys
 * and values in turn, a fun's free variables). */
typedef struct {
    unsigned char tag;
    bool latin1;              /* atoms, and the node or module below */
    bool fn_latin1;
    uint8_t bits;             /* BIT_BINARY_EXT: bits used in the last byte */
    uint8_t sign;             /* big integers */
    uint64_t parts;
    size_t start;             /* offset of the tag */
    const unsigned char *p;   /* the item's bytes: name, data, digits, fields;
                               * a fun's from its size field to its end */
    size_t n;
    const unsigned char *node; /* pids, ports, refs: the node's name; funs and
                                * exports: the module's */
    size_t node_n;
    const unsigned char *fn;  /* exports: the function's name */
    size_t fn_n;
    int64_t num[2];           /* exports: the arity; funs: old index, old uniq */
    double f;                 /* floats: the value */
} etf_item;

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Takes n bytes at *at into *p, if the buffer has them. */
static bool take(const unsigned char *b, size_t len, size_t *at, size_t n,
                 const unsigned char **p) {
    if (n > len - *at)
        return false;
    *p = b + *at;
    *at += n;
    return true;
}

/* A count of `width` (1, 2 or 4) bytes, big-endian. */
static bool take_count(const unsigned char *b, size_t len, size_t *at, int width, uint32_t *n) {
    const unsigned char *p;
    if (!take(b, len, at, (size_t)width, &p))
        return false;
    *n = width == 1 ? p[0] : width == 2 ? (uint32_t)p[0] << 8 | p[1] : be32(p);
    return true;
}

/* A length-prefixed run of bytes: an atom's name, a string, a binary. */
static bool take_run(const unsigned char *b, size_t len, size_t *at, int width,
                     const unsigned char **p, size_t *n) {
    uint32_t k;
    if (!take_count(b, len, at, width, &k))
        return false;
    *n = k;
    return take(b, len, at, k, p);
}

/* An atom, standing alone or as the node of a pid, port or reference. */
static bool take_atom(const unsigned char *b, size_t len, size_t *at, const unsigned char **p,
                      size_t *n, bool *latin1) {
    if (*at >= len)
        return false;
    switch (b[(*at)++]) {
    case ERL_ATOM_EXT: *latin1 = true; return take_run(b, len, at, 2, p, n);
    case ERL_ATOM_UTF8_EXT: *latin1 = false; return take_run(b, len, at, 2, p, n);
    case ERL_SMALL_ATOM_EXT: *latin1 = true; return take_run(b, len, at, 1, p, n);
    case ERL_SMALL_ATOM_UTF8_EXT: *latin1 = false; return take_run(b, len, at, 1, p, n);
    default: return false;
    }
}

/* Pids, ports and references: the node, then `fixed` bytes of fields. */
static bool take_ident(const unsigned char *b, size_t len, size_t *at, etf_item *it, size_t fixed) {
    it->n = fixed;
    return take_atom(b, len, at, &it->node, &it->node_n, &it->latin1) &&
           take(b, len, at, fixed, &it->p);
}

/* FLOAT_EXT's 31 bytes, read as ERTS reads them (binary_to_term, checked in
 * erl): [+-]digits, '.' or ',', digits, optionally [eE][+-]digits, then a NUL
 * within the 31 bytes (what follows it is not looked at), and a finite value
 * (an underflow to 0 or a subnormal is fine). libei's sscanf, like ERTS, reads
 * the text up to a NUL, so one is required for the read to stay inside. */
static bool float_text(const unsigned char *p, double *f) {
    char text[32], *end;
    size_t i = 0, point;
    for (; i < 31 && p[i]; i++)
        text[i] = (char)p[i];
    if (i == 31)
        return false;
    text[i] = '\0';
    /* The syntax, which strtod alone would not check (it takes "inf", "1e5",
     * hexadecimal and leading spaces). */
    const char *c = text + (text[0] == '+' || text[0] == '-');
    size_t digits = strspn(c, "0123456789");
    if (!digits || (c[digits] != '.' && c[digits] != ','))
        return false;
    point = (size_t)(c + digits - text);
    c += digits + 1;
    digits = strspn(c, "0123456789");
    if (!digits)
        return false;
    c += digits;
    if (*c == 'e' || *c == 'E') {
        c += 1 + (c[1] == '+' || c[1] == '-');
        digits = strspn(c, "0123456789");
        if (!digits)
            return false;
        c += digits;
    }
    if (*c)
        return false;
    /* strtod takes the locale's radix character: try '.', then ','. */
    text[point] = '.';
    *f = strtod(text, &end);
    if (end != text + i) {
        text[point] = ',';
        *f = strtod(text, &end);
    }
    return end == text + i && isfinite(*f);
}

/* A small integer field (SMALL_INTEGER_EXT or INTEGER_EXT), as ERTS and
 * libei write the numbers of funs and exports. */
static bool take_int(const unsigned char *b, size_t len, size_t *at, int64_t *v) {
    const unsigned char *p;
    if (*at >= len)
        return false;
    unsigned char tag = b[(*at)++];
    if (tag == ERL_SMALL_INTEGER_EXT && take(b, len, at, 1, &p)) {
        *v = p[0];
        return true;
    }
    if (tag == ERL_INTEGER_EXT && take(b, len, at, 4, &p)) {
        *v = (int32_t)be32(p);
        return true;
    }
    return false;
}

/* EXPORT_EXT (fun M:F/A): two atoms and an arity of 0 or more, as ERTS
 * takes it; libei's ei_decode_fun, given anything else, fails and leaks. */
static bool take_export(const unsigned char *b, size_t len, size_t *at, etf_item *it) {
    return take_atom(b, len, at, &it->node, &it->node_n, &it->latin1) &&
           take_atom(b, len, at, &it->fn, &it->fn_n, &it->fn_latin1) &&
           take_int(b, len, at, &it->num[0]) && it->num[0] >= 0;
}

static bool skip_terms(const unsigned char *b, size_t len, size_t *at, uint64_t need,
                       bool check_funs);

/* NEW_FUN_EXT: Size (4 bytes, counting itself), Arity (1), Uniq (16),
 * Index (4), NumFree (4), then Module (an atom), OldIndex and OldUniq
 * (integers), Pid, and NumFree terms, the free variables. ERTS reads the
 * fields and takes up to 255 free variables; libei trusts Size (it copies
 * the free variables by it), so here the fields must also end exactly where
 * Size says, and the pid must be a pid (ERTS 25 does not look at it; libei
 * fails on anything else). Its free variables are its parts. When
 * `check_free`, they are also walked here, up to Size, with any fun among
 * them taken by its own Size (its fields read, its free variables not): the
 * walk that then reaches that inner fun checks it the same way. So every fun
 * is checked, each byte is walked at most twice, and no walk recurses. */
static bool take_fun(const unsigned char *b, size_t len, size_t *at, etf_item *it,
                     bool check_free) {
    uint32_t size, nfree;
    const unsigned char *fixed;
    size_t start = *at, end;
    if (!take_count(b, len, at, 4, &size) || size < 29 || size > len - start)
        return false;
    end = start + size; /* fields past the fun are not the fun's */
    if (!take(b, end, at, 21, &fixed) || !take_count(b, end, at, 4, &nfree) || nfree > 255 ||
        !take_atom(b, end, at, &it->node, &it->node_n, &it->latin1) ||
        !take_int(b, end, at, &it->num[0]) || !take_int(b, end, at, &it->num[1]) || *at >= end ||
        (b[*at] != ERL_PID_EXT && b[*at] != ERL_NEW_PID_EXT))
        return false;
    etf_item pid = {0};
    (*at)++;
    if (!take_ident(b, end, at, &pid, b[*at - 1] == ERL_PID_EXT ? 9 : 12))
        return false;
    it->p = b + start;
    it->n = size;
    if (!check_free) {
        *at = end; /* the free variables unread: no parts */
        return true;
    }
    size_t free_at = *at;
    if (!skip_terms(b, end, &free_at, nfree, false) || free_at != end)
        return false;
    it->parts = nfree;
    return true;
}

/* Reads the item at *at and moves *at past it (not past its parts). False
 * when the bytes end early, the tag is unknown, or the item is not one that
 * binary_to_term takes. `check_funs`: see take_fun. */
static bool read_any(const unsigned char *b, size_t len, size_t *at, etf_item *it,
                     bool check_funs) {
    *it = (etf_item){.start = *at};
    if (*at >= len)
        return false;
    unsigned char tag = it->tag = b[(*at)++];
    uint32_t k;
    switch (tag) {
    case ERL_SMALL_INTEGER_EXT: return take(b, len, at, it->n = 1, &it->p);
    case ERL_INTEGER_EXT: return take(b, len, at, it->n = 4, &it->p);
    case NEW_FLOAT_EXT: {
        if (!take(b, len, at, it->n = 8, &it->p))
            return false;
        uint64_t bits = (uint64_t)be32(it->p) << 32 | be32(it->p + 4);
        memcpy(&it->f, &bits, sizeof it->f);
        return isfinite(it->f); /* binary_to_term refuses NaN and infinities */
    }
    case ERL_FLOAT_EXT: return take(b, len, at, it->n = 31, &it->p) && float_text(it->p, &it->f);
    case ERL_NIL_EXT: return true;
    case ERL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_EXT: case ERL_SMALL_ATOM_UTF8_EXT:
        (*at)--;
        return take_atom(b, len, at, &it->p, &it->n, &it->latin1);
    case ERL_STRING_EXT: return take_run(b, len, at, 2, &it->p, &it->n);
    case ERL_BINARY_EXT: return take_run(b, len, at, 4, &it->p, &it->n);
    case ERL_BIT_BINARY_EXT: {
        const unsigned char *bits;
        if (!take_count(b, len, at, 4, &k) || !take(b, len, at, 1, &bits))
            return false;
        /* As binary_to_term: 1 to 8 bits used in the last byte, or none
         * and no bytes. */
        it->bits = bits[0];
        return take(b, len, at, it->n = k, &it->p) && (k ? bits[0] >= 1 && bits[0] <= 8 : !bits[0]);
    }
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: {
        const unsigned char *sign;
        if (!take_count(b, len, at, tag == ERL_SMALL_BIG_EXT ? 1 : 4, &k) ||
            !take(b, len, at, 1, &sign))
            return false;
        it->sign = sign[0];
        return take(b, len, at, it->n = k, &it->p);
    }
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT:
        if (!take_count(b, len, at, tag == ERL_SMALL_TUPLE_EXT ? 1 : 4, &k))
            return false;
        it->parts = k;
        return true;
    case ERL_MAP_EXT:
        if (!take_count(b, len, at, 4, &k))
            return false;
        it->parts = 2 * (uint64_t)k;
        return true;
    case ERL_LIST_EXT: /* the elements and the tail */
        if (!take_count(b, len, at, 4, &k))
            return false;
        it->parts = (uint64_t)k + 1;
        return true;
    case ERL_EXPORT_EXT: return take_export(b, len, at, it);
    case ERL_PID_EXT: return take_ident(b, len, at, it, 9);
    case ERL_NEW_PID_EXT: return take_ident(b, len, at, it, 12);
    case ERL_PORT_EXT: return take_ident(b, len, at, it, 5);
    case ERL_NEW_PORT_EXT: return take_ident(b, len, at, it, 8);
    case ERL_V4_PORT_EXT: return take_ident(b, len, at, it, 12);
    case ERL_REFERENCE_EXT: return take_ident(b, len, at, it, 5);
    case ERL_NEW_REFERENCE_EXT:
    case ERL_NEWER_REFERENCE_EXT: /* the id's length in words comes first */
        if (!take_count(b, len, at, 2, &k) || k > 5)
            return false;
        return take_ident(b, len, at, it, (tag == ERL_NEW_REFERENCE_EXT ? 1 : 4) + 4 * (size_t)k);
    case ERL_NEW_FUN_EXT: return take_fun(b, len, at, it, check_funs);
    default:
        return false;
    }
}

static bool read_item(const unsigned char *b, size_t len, size_t *at, etf_item *it) {
    return read_any(b, len, at, it, true);
}

/* Moves *at past the `need` terms there; false if the bytes do not hold
 * them. */
static bool skip_terms(const unsigned char *b, size_t len, size_t *at, uint64_t need,
                       bool check_funs) {
    etf_item it;
    while (need) {
        need--;
        if (!read_any(b, len, at, &it, check_funs))
            return false;
        need += it.parts;
        /* Each part takes a byte at least: a count beyond the bytes left cannot
         * be met, so stop early. */
        if (need > len - *at)
            return false;
    }
    return true;
}

/* Moves *at past the one term there; false if the bytes do not hold one. */
static bool skip_term(const unsigned char *b, size_t len, size_t *at) {
    return skip_terms(b, len, at, 1, true);
}

ssize_t edrv__etf_measure(const void *buf, size_t len) {
    const unsigned char *b = buf;
    size_t at = 1;
    if (!b || len < 2 || len > (size_t)SSIZE_MAX || b[0] != 131 || !skip_term(b, len, &at))
        return -1;
    return (ssize_t)at;
}

/* ---- checking terms as ERTS builds them ---------------------------------------
 * ERTS refuses a term spec (-1, nothing sent) with a float that is NaN or
 * infinite, or a map with a key twice, also inside EXT2TERM bytes (checked in
 * erl; the measure refuses such floats in EXT2TERM bytes already). Two keys
 * are the same when the terms are exactly equal (=:=), which their encodings
 * do not show directly: "ab" may be a STRING_EXT or a
 * LIST_EXT of integers, [1|[2]] is [1,2], 1 may come as a SMALL_BIG_EXT, an
 * atom as Latin-1 or UTF-8, and #{a=>1,b=>2} may list its pairs in either
 * order. So each key is written in a canonical form, in which exactly equal
 * terms have equal bytes, and a map's canonical keys are sorted and compared
 * with their neighbours: n log n for n keys.
 *
 * The canonical form is prefix, as ETF is. Integers: 'I', the sign, the
 * length and the magnitude's bytes (least significant first, no leading
 * zeros). Floats: 'F' and the double (-0.0 as 0.0: OTP 25 holds 0.0 =:= -0.0,
 * checked in erl). Atoms: 'A', the length and the UTF-8 name. Binaries and bit
 * strings: 'B', the length, the bits used in the last byte and the bytes
 * (unused bits cleared). Lists: 'c' before each element, then the tail; []
 * is 'n'. Tuples: 't' and the arity. Maps: 'm', the count, and the pairs
 * sorted by their keys. Pids 'p', ports 'o' and references 'r': the node's
 * atom and the numbers widened to one size. Funs: 'f', their fixed fields
 * (arity, uniq, index, number of free variables), the module and the two old
 * numbers, then their free variables (the creator pid is left out, as ERTS 25
 * leaves it). Exports: 'x', the two atoms and the arity. Lengths and counts
 * take 8 bytes. */

typedef struct {
    uint64_t parts, left; /* parts in all, and still to come */
    size_t base;          /* maps: where the pairs' canonical bytes begin */
    size_t mark0;         /* maps: the first of their parts' marks */
    bool emit;            /* the parts are written out (inside a key) */
    unsigned char tag;
} cframe;

typedef struct {
    unsigned char *out; /* canonical bytes of the keys being compared */
    size_t len, cap;
    size_t *marks;      /* where each part of the open maps begins in out */
    size_t nmarks, marks_cap;
    cframe *frames;
    size_t nframes, frames_cap;
    bool oom;
} canon;

/* The array p with room for `need` elements of `size` bytes: p itself, or
 * p grown (then *cap is updated), or NULL when out of memory (p is kept). */
static void *grow(void *p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = edrv__realloc(EDRV_MEM_SYSTEM, p, c * size);
    if (q)
        *cap = c;
    return q;
}

static void canon_free(canon *c) {
    edrv__free(c->out);
    edrv__free(c->marks);
    edrv__free(c->frames);
}

static bool put(canon *c, const void *p, size_t n) {
    if (n == 0)
        return true;
    unsigned char *o = grow(c->out, &c->cap, c->len + n, 1);
    if (!o) {
        c->oom = true;
        return false;
    }
    c->out = o;
    memcpy(c->out + c->len, p, n);
    c->len += n;
    return true;
}

static bool put_tag_len(canon *c, char tag, uint64_t n) {
    return put(c, &tag, 1) && put(c, &n, sizeof n);
}

static bool push_mark(canon *c) {
    size_t *m = grow(c->marks, &c->marks_cap, c->nmarks + 1, sizeof *m);
    if (!m) {
        c->oom = true;
        return false;
    }
    c->marks = m;
    c->marks[c->nmarks++] = c->len;
    return true;
}

/* An integer from its magnitude, least significant byte first. */
static bool canon_int(canon *c, bool neg, const unsigned char *mag, size_t n) {
    while (n && !mag[n - 1])
        n--;
    unsigned char sign = n && neg;
    return put_tag_len(c, 'I', n) && put(c, &sign, 1) && put(c, mag, n);
}

static bool canon_small(canon *c, int64_t v) {
    uint64_t m = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    unsigned char mag[8];
    for (int i = 0; i < 8; i++)
        mag[i] = (unsigned char)(m >> (8 * i));
    return canon_int(c, v < 0, mag, sizeof mag);
}

static bool canon_atom(canon *c, const unsigned char *p, size_t n, bool latin1) {
    size_t utf8 = n;
    for (size_t i = 0; latin1 && i < n; i++)
        utf8 += p[i] >= 128;
    if (!put_tag_len(c, 'A', utf8))
        return false;
    if (!latin1)
        return put(c, p, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char u[2] = {(unsigned char)(0xc0 | (p[i] >> 6)), (unsigned char)(0x80 | (p[i] & 0x3f))};
        if (!(p[i] < 128 ? put(c, p + i, 1) : put(c, u, 2)))
            return false;
    }
    return true;
}

static bool canon_bits(canon *c, const unsigned char *p, size_t n, unsigned bits) {
    if (n == 0 || bits >= 8)
        bits = 8;
    unsigned char b = (unsigned char)bits;
    if (!put_tag_len(c, 'B', n) || !put(c, &b, 1) || !put(c, p, n ? n - 1 : 0))
        return false;
    unsigned char last = n ? (unsigned char)(p[n - 1] & (0xff << (8 - bits))) : 0;
    return n == 0 || put(c, &last, 1);
}

/* Pids, ports and references: node, then the numbers at fixed widths. */
static bool canon_ident(canon *c, const etf_item *it) {
    const unsigned char *f = it->p;
    uint32_t w[8];
    size_t nw = 0;
    char tag;
    switch (it->tag) {
    case ERL_PID_EXT: tag = 'p'; w[0] = be32(f); w[1] = be32(f + 4); w[2] = f[8]; nw = 3; break;
    case ERL_NEW_PID_EXT: tag = 'p'; w[0] = be32(f); w[1] = be32(f + 4); w[2] = be32(f + 8); nw = 3; break;
    case ERL_PORT_EXT: tag = 'o'; w[0] = 0; w[1] = be32(f); w[2] = f[4]; nw = 3; break;
    case ERL_NEW_PORT_EXT: tag = 'o'; w[0] = 0; w[1] = be32(f); w[2] = be32(f + 4); nw = 3; break;
    case ERL_V4_PORT_EXT: tag = 'o'; w[0] = be32(f); w[1] = be32(f + 4); w[2] = be32(f + 8); nw = 3; break;
    case ERL_REFERENCE_EXT: tag = 'r'; w[0] = f[4]; w[1] = be32(f); nw = 2; break;
    default: { /* NEW_ and NEWER_REFERENCE_EXT: creation, then the words */
        size_t cw = it->tag == ERL_NEW_REFERENCE_EXT ? 1 : 4;
        tag = 'r';
        w[nw++] = cw == 1 ? f[0] : be32(f);
        for (size_t k = cw; k + 4 <= it->n; k += 4)
            w[nw++] = be32(f + k);
    }
    }
    return put_tag_len(c, tag, nw) && canon_atom(c, it->node, it->node_n, it->latin1) &&
           put(c, w, nw * sizeof w[0]);
}

/* One item's own canonical bytes (written when `emit`), and its check. */
static bool canon_item(canon *c, const etf_item *it, bool emit) {
    double f = it->f == 0 ? 0.0 : it->f;
    switch (it->tag) {
    case NEW_FLOAT_EXT:
    case ERL_FLOAT_EXT:
        if (!isfinite(f))
            return false;
        return !emit || (put(c, "F", 1) && put(c, &f, sizeof f));
    default:
        break;
    }
    if (!emit)
        return true;
    switch (it->tag) {
    case ERL_SMALL_INTEGER_EXT: return canon_small(c, it->p[0]);
    case ERL_INTEGER_EXT: return canon_small(c, (int32_t)be32(it->p));
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: return canon_int(c, it->sign != 0, it->p, it->n);
    case ERL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_EXT: case ERL_SMALL_ATOM_UTF8_EXT:
        return canon_atom(c, it->p, it->n, it->latin1);
    case ERL_NIL_EXT: return put(c, "n", 1);
    case ERL_STRING_EXT:
        for (size_t i = 0; i < it->n; i++)
            if (!put(c, "c", 1) || !canon_small(c, it->p[i]))
                return false;
        return put(c, "n", 1);
    case ERL_BINARY_EXT: return canon_bits(c, it->p, it->n, 8);
    case ERL_BIT_BINARY_EXT: return canon_bits(c, it->p, it->n, it->bits);
    case ERL_NEW_FUN_EXT: /* arity, uniq, index, count of free variables */
        return put_tag_len(c, 'f', 25) && put(c, it->p + 4, 25) &&
               canon_atom(c, it->node, it->node_n, it->latin1) && canon_small(c, it->num[0]) &&
               canon_small(c, it->num[1]);
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT: return put_tag_len(c, 't', it->parts);
    case ERL_MAP_EXT: return put_tag_len(c, 'm', it->parts / 2);
    case ERL_EXPORT_EXT:
        return put(c, "x", 1) && canon_atom(c, it->node, it->node_n, it->latin1) &&
               canon_atom(c, it->fn, it->fn_n, it->fn_latin1) && canon_small(c, it->num[0]);
    case ERL_LIST_EXT: return true; /* its elements carry the marks */
    default: return canon_ident(c, it);
    }
}

typedef struct {
    const unsigned char *key;
    size_t key_len;
    size_t at, len; /* the pair's bytes in out */
} kpair;

static int kpair_cmp(const void *a, const void *b) {
    const kpair *x = a, *y = b;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

/* The parts of a map are done: its keys must differ. Inside a key the pairs
 * are put in key order, so that equal maps have equal bytes; otherwise only
 * the keys were written, and they are dropped. */
static bool map_close(canon *c, const cframe *f) {
    size_t pairs = (size_t)(f->parts / 2), end = c->len;
    const size_t *m = c->marks + f->mark0;
    bool ok = true;
    kpair *kp = pairs ? edrv__alloc(EDRV_MEM_SYSTEM, pairs * sizeof *kp) : NULL;
    if (pairs && !kp) {
        c->oom = true;
        return false;
    }
    for (size_t j = 0; j < pairs; j++) {
        size_t next = j + 1 < pairs ? m[2 * j + 2] : end;
        kp[j] = (kpair){c->out + m[2 * j], m[2 * j + 1] - m[2 * j], m[2 * j], next - m[2 * j]};
    }
    qsort(kp, pairs, sizeof *kp, kpair_cmp);
    for (size_t j = 1; ok && j < pairs; j++)
        ok = kpair_cmp(&kp[j - 1], &kp[j]) != 0;
    unsigned char *tmp = ok && f->emit && pairs > 1 ? edrv__alloc(EDRV_MEM_SYSTEM, end - f->base) : NULL;
    if (ok && f->emit && pairs > 1) {
        if (!tmp) {
            c->oom = true;
            ok = false;
        } else {
            size_t o = 0;
            for (size_t j = 0; j < pairs; j++) {
                memcpy(tmp + o, c->out + kp[j].at, kp[j].len);
                o += kp[j].len;
            }
            memcpy(c->out + f->base, tmp, o);
        }
    }
    edrv__free(tmp);
    edrv__free(kp);
    if (!f->emit)
        c->len = f->base;
    c->nmarks = f->mark0;
    return ok;
}

static bool push_frame(canon *c, const etf_item *it, bool emit) {
    cframe *f = grow(c->frames, &c->frames_cap, c->nframes + 1, sizeof *f);
    if (!f) {
        c->oom = true;
        return false;
    }
    c->frames = f;
    c->frames[c->nframes++] = (cframe){.parts = it->parts, .left = it->parts, .base = c->len,
                                       .mark0 = c->nmarks, .emit = emit, .tag = it->tag};
    return true;
}

/* Walks the one term at *at: checks its floats and the keys of every map in
 * it and, when `emit`, writes its canonical bytes. */
static bool canon_walk(canon *c, const unsigned char *b, size_t len, size_t *at, bool emit) {
    bool started = false;
    c->nframes = 0;
    for (;;) {
        bool e = emit;
        if (c->nframes) {
            cframe *f = &c->frames[c->nframes - 1];
            if (f->left == 0) {
                if (f->tag == ERL_MAP_EXT && !map_close(c, f))
                    return false;
                c->nframes--;
                continue;
            }
            uint64_t i = f->parts - f->left--;
            /* A map's keys are written always, its values as the map is. */
            e = f->emit || (f->tag == ERL_MAP_EXT && i % 2 == 0);
            if (f->tag == ERL_MAP_EXT && !push_mark(c))
                return false;
            if (f->tag == ERL_LIST_EXT && f->left && e && !put(c, "c", 1))
                return false;
        } else if (started) {
            return true;
        }
        started = true;
        etf_item it;
        if (!read_item(b, len, at, &it) || !canon_item(c, &it, e))
            return false;
        if (it.parts && !push_frame(c, &it, e))
            return false;
    }
}

/* EXT2TERM bytes (version byte first, already measured) as ERTS takes them. */
static bool ext_ok(const unsigned char *b, size_t len) {
    canon c = {0};
    size_t at = 1;
    bool ok = canon_walk(&c, b, len, &at, false);
    canon_free(&c);
    return ok;
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
    size_t at;           /* where the writer put it in the message */
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
            if (!isfinite(x->v.f))
                return -1; /* no term holds NaN or an infinity */
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
            x->v.bytes.len = a[1]; /* the writer refuses what ETF cannot hold */
            break;
        case ERL_DRV_EXT2TERM: {
            /* The driver's buffer is one whole term with its version byte,
             * and one that ERTS would take (finite floats, distinct keys). */
            const char *p = (const char *)a[0];
            if (!p || edrv__etf_measure(p, a[1]) != (ssize_t)a[1] ||
                !ext_ok((const unsigned char *)p, a[1]))
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

/* Writes the tree under `root` in prefix order, noting where each node
 * goes. `todo` has room for every node. */
static void spec_write(etf_w *w, node *nodes, int32_t root, int32_t *todo) {
    int top = 0;
    todo[top++] = root;
    while (top) {
        node *x = &nodes[todo[--top]];
        etf_piece bytes = {NULL, 0};
        if (x->kind == N_BYTES_BIN || x->kind == N_STRING || x->kind == N_STRING_CONS ||
            x->kind == N_EXT)
            bytes = (etf_piece){x->v.bytes.p, x->v.bytes.len};
        x->at = w->idx;
        switch ((node_kind)x->kind) {
        case N_NIL: edrv__etf_nil(w); break;
        case N_ATOM: edrv__etf_atom(w, x->v.atom); break;
        case N_INT: edrv__etf_int(w, x->v.i); break;
        case N_UINT: etf_uint(w, x->v.u); break;
        case N_FLOAT: etf_float(w, x->v.f); break;
        case N_PORT: edrv__etf_port(w, x->v.u); break;
        case N_PID: edrv__etf_pid(w, x->v.u); break;
        case N_BYTES_BIN: edrv__etf_binary(w, bytes.p, bytes.len); break;
        case N_STRING: edrv__etf_string(w, &bytes, 1); break;
        case N_EXT: put_raw(w, bytes.p, bytes.len); break;
        case N_STRING_CONS:
            /* [c1, ..., cn | Tail]: the tail is the node's one child. */
            if (bytes.len) {
                edrv__etf_list(w, bytes.len);
                edrv__etf_byte_elements(w, &bytes, 1);
            }
            break;
        case N_TUPLE: edrv__etf_tuple(w, x->n); break;
        case N_LIST:
            /* ERL_DRV_LIST n: n-1 elements and a tail; n == 1 is the tail alone. */
            if (x->n > 1)
                edrv__etf_list(w, x->n - 1);
            break;
        case N_MAP: edrv__etf_map(w, x->n); break;
        }
        /* Prefix order: this node's children before its next sibling. */
        if (x->next >= 0)
            todo[top++] = x->next;
        if (x->first_child >= 0)
            todo[top++] = x->first_child;
    }
}

/* The keys of each map the spec built must differ. Their canonical forms
 * are compared, from where the writer put them in the message; the values
 * are not walked (maps among them are nodes of their own). */
static bool spec_keys_differ(const node *nodes, int32_t nn, const mbox_msg *m) {
    canon c = {0};
    bool ok = true;
    for (int32_t i = 0; ok && i < nn; i++) {
        if (nodes[i].kind != N_MAP || nodes[i].n < 2)
            continue;
        cframe f = {.parts = 2 * nodes[i].n};
        c.len = c.nmarks = 0;
        for (int32_t k = nodes[i].first_child; ok && k >= 0; k = nodes[nodes[k].next].next) {
            size_t at = nodes[k].at;
            ok = push_mark(&c) && canon_walk(&c, (const unsigned char *)m->data, m->len, &at, true) &&
                 push_mark(&c);
        }
        ok = ok && map_close(&c, &f);
    }
    canon_free(&c);
    return ok;
}

/* A part that the term format cannot hold: ERTS, which builds the term in
 * memory, would send it; edrv says why it does not. */
static void warn_refused(const etf_w *w) {
    edrv__warn("term spec refused (-1): a %s of %llu %s is more than one term in external "
               "term format holds (%u)",
               w->refused, (unsigned long long)w->refused_size,
               strcmp(w->refused, "binary") == 0 ? "bytes" : "elements", EDRV_ETF_MAX_COUNT);
}

int edrv__spec_to_msg(const ErlDrvTermData *spec, int n, mbox_msg **out) {
    if (!spec || n <= 0)
        return -1;
    /* A spec of n words has at most n nodes; one block holds the nodes and an
     * index array (the parse stack, reused as the writer's stack). */
    size_t bytes = (size_t)n * (sizeof(node) + sizeof(int32_t));
    node *nodes = edrv__alloc(EDRV_MEM_SYSTEM, bytes);
    if (!nodes)
        return -1;
    int32_t *stack = (int32_t *)(nodes + n);
    int rc = -1;
    int32_t root = spec_parse(spec, n, nodes, stack);
    if (root >= 0) {
        etf_w w = {0};
        edrv__etf_version(&w);
        spec_write(&w, nodes, root, stack);
        mbox_msg *m = w.refused ? NULL : edrv__msg_new(w.idx);
        if (w.refused)
            warn_refused(&w);
        if (m) {
            w = (etf_w){.buf = m->data};
            edrv__etf_version(&w);
            spec_write(&w, nodes, root, stack);
            /* The root is the last node parsed (postfix order). */
            if (spec_keys_differ(nodes, root + 1, m)) {
                *out = m;
                rc = 0;
            } else {
                edrv__msg_drop(m);
            }
        }
    }
    edrv__free(nodes);
    return rc;
}

/* ---- printing ------------------------------------------------------------------ */

/* edrv_term_format prints a term as Erlang prints it with ~w, except that
 * strings and binaries of printable Latin-1 show as "..." and <<"...">> (as
 * ~p shows them): {#Port<0.3>,{data,<<"ok">>}}; edrv_term_format_w prints
 * them as ~w does, as integers: {#Port<0.3>,{data,<<111,107>>}}. The term is read with
 * read_item; libei only decodes pids and ports and prints references, each
 * from a sub-buffer of its own. */

/* The text grows with realloc: the caller frees it with free(). Its length
 * must fit the int that edrv_term_format returns. */
typedef struct {
    char *s;
    size_t len, cap;
    bool oom, too_long, failed;
    bool w; /* ~w: strings and binaries as integers */
} strbuf;

static void sb_put(strbuf *b, const char *p, size_t n) {
    if (b->failed)
        return;
    if (n > (size_t)INT_MAX - b->len) {
        b->too_long = b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = b->failed = true;
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
                               ['\f'] = 'f', ['\r'] = 'r', [27] = 'e', [127] = 'd'};
    char out[4] = {'\\', 0, 0, 0};
    if (c < sizeof esc && esc[c]) {
        out[1] = esc[c];
        sb_put(b, out, 2);
    } else if (c < 32 || (c >= 128 && c < 160)) {
        /* Other control characters in octal, as Erlang writes them in an
         * atom ('\000'): never as themselves (a NUL would cut the text). */
        sb_fmt(b, "\\%03o", c);
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

static bool reserved_word(const unsigned char *a, size_t n) {
    static const char *const reserved[] = {
        "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor",
        "case", "catch", "cond", "div", "end", "fun", "if", "let", "not", "of", "or",
        "orelse", "receive", "rem", "try", "when", "xor", NULL};
    for (int i = 0; reserved[i]; i++)
        if (strlen(reserved[i]) == n && memcmp(a, reserved[i], n) == 0)
            return true;
    return false;
}

/* An atom's characters, as between quotes: UTF-8 bytes are kept, Latin-1
 * ones above 127 become UTF-8. */
static void sb_name(strbuf *b, const unsigned char *a, size_t n, bool latin1) {
    for (size_t i = 0; i < n; i++) {
        if (a[i] < 128 || latin1)
            sb_char(b, a[i], '\'');
        else
            sb_put(b, (const char *)a + i, 1);
    }
}

/* An atom, quoted when Erlang would quote it. */
static void sb_atom(strbuf *b, const unsigned char *a, size_t n, bool latin1) {
    bool bare = n && a[0] >= 'a' && a[0] <= 'z';
    for (size_t i = 0; bare && i < n; i++)
        bare = (a[i] >= 'a' && a[i] <= 'z') || (a[i] >= 'A' && a[i] <= 'Z') ||
               (a[i] >= '0' && a[i] <= '9') || a[i] == '_' || a[i] == '@';
    if (bare && !reserved_word(a, n)) {
        sb_put(b, (const char *)a, n);
        return;
    }
    sb_put(b, "'", 1);
    sb_name(b, a, n, latin1);
    sb_put(b, "'", 1);
}

/* The shortest text that reads back as the same double, fixed or scientific,
 * whichever is shorter (fixed on a tie), as Erlang prints floats. */
static void sb_float(strbuf *b, double f) {
    char e[40];
    if (!isfinite(f)) { /* never in ERTS, which refuses them; as C writes them */
        sb_str(b, isnan(f) ? "nan" : f < 0 ? "-inf" : "inf");
        return;
    }
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

/* A reference, printed by libei (its text is short): at the start of its
 * own sub-buffer, which must stay within libei's int offsets. */
static bool print_with_ei(strbuf *b, const unsigned char *term, size_t n) {
    if (n > INT_MAX)
        return false;
    char *s = NULL;
    int idx = 0;
    bool ok = ei_s_print_term(&s, (const char *)term, &idx) >= 0 && (size_t)idx == n;
    if (ok)
        sb_str(b, s);
    free(s);
    return ok;
}

/* An integer beyond 64 bits, in hexadecimal (16#...), as libei wrote it:
 * Erlang writes decimal, which takes time quadratic in the length. Not with
 * libei, whose printer formats the text into a stack buffer of 2000 bytes
 * with vsprintf, which a magnitude of 1000 bytes overflows. `n` bytes of
 * magnitude, least significant first, the last one not 0. */
static void print_big(strbuf *b, const etf_item *it, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    char chunk[128];
    size_t o = 0;
    if (it->sign)
        sb_put(b, "-", 1);
    sb_put(b, "16#", 3);
    for (size_t i = n; i-- > 0;) {
        if (i + 1 < n || it->p[i] >> 4) /* no leading zero */
            chunk[o++] = hex[it->p[i] >> 4];
        chunk[o++] = hex[it->p[i] & 15];
        if (o + 2 > sizeof chunk || i == 0) {
            sb_put(b, chunk, o);
            o = 0;
        }
    }
}

static void print_int(strbuf *b, const etf_item *it) {
    if (it->tag == ERL_SMALL_INTEGER_EXT) {
        sb_fmt(b, "%u", it->p[0]);
        return;
    }
    if (it->tag == ERL_INTEGER_EXT) {
        sb_fmt(b, "%d", (int)(int32_t)be32(it->p));
        return;
    }
    size_t n = it->n; /* a big integer's magnitude, least significant byte first */
    while (n && !it->p[n - 1])
        n--;
    if (n > 8) {
        print_big(b, it, n);
        return;
    }
    uint64_t m = 0;
    for (size_t i = n; i-- > 0;)
        m = m << 8 | it->p[i];
    sb_fmt(b, "%s%llu", it->sign && m ? "-" : "", (unsigned long long)m);
}

/* Pids and ports are decoded by libei from their own sub-buffer. */
static bool print_pid_or_port(strbuf *b, const etf_item *it, const unsigned char *buf) {
    int idx = 0;
    const char *t = (const char *)buf + it->start;
    if (it->tag == ERL_PID_EXT || it->tag == ERL_NEW_PID_EXT) {
        erlang_pid p;
        if (ei_decode_pid(t, &idx, &p) < 0)
            return false;
        sb_fmt(b, "<0.%u.%u>", p.num, p.serial);
    } else {
        erlang_port p;
        if (ei_decode_port(t, &idx, &p) < 0)
            return false;
        sb_fmt(b, "#Port<0.%llu>", (unsigned long long)p.id);
    }
    return true;
}

/* Funs as Erlang writes them: fun M:F/A, and #Fun<M.OldIndex.OldUniq>
 * (its free variables not shown). Not with libei: its ei_decode_fun leaks
 * when it fails, and its printer never frees a fun's free variables. */
static void print_fun(strbuf *b, const etf_item *it) {
    if (it->tag == ERL_EXPORT_EXT) {
        sb_str(b, "fun ");
        sb_atom(b, it->node, it->node_n, it->latin1);
        sb_put(b, ":", 1);
        sb_atom(b, it->fn, it->fn_n, it->fn_latin1);
        sb_fmt(b, "/%lld", (long long)it->num[0]);
    } else {
        sb_str(b, "#Fun<");
        sb_name(b, it->node, it->node_n, it->latin1);
        sb_fmt(b, ".%lld.%lld>", (long long)it->num[0], (long long)it->num[1]);
    }
}

/* A string or binary: all printable, as "..."; otherwise as integers. */
static void print_bytes(strbuf *b, const unsigned char *p, size_t n, bool binary) {
    bool text = !b->w && (n || !binary) && all_printable(p, n);
    if (binary)
        sb_put(b, "<<", 2);
    if (text) {
        sb_quoted(b, p, n, '"');
    } else {
        if (!binary)
            sb_put(b, "[", 1);
        for (size_t i = 0; i < n && !b->failed; i++)
            sb_fmt(b, i ? ",%u" : "%u", p[i]);
        if (!binary)
            sb_put(b, "]", 1);
    }
    if (binary)
        sb_put(b, ">>", 2);
}

/* A bit string as Erlang writes it: <<1,2,3:4>>, the last byte's used bits
 * as a value and their number. */
static void print_bits(strbuf *b, const unsigned char *p, size_t n, unsigned bits) {
    sb_put(b, "<<", 2);
    for (size_t i = 0; i + 1 < n && !b->failed; i++)
        sb_fmt(b, "%u,", p[i]);
    if (n && bits >= 1 && bits < 8)
        sb_fmt(b, "%u:%u", (unsigned)(p[n - 1] >> (8 - bits)), bits);
    else if (n)
        sb_fmt(b, "%u", p[n - 1]);
    sb_put(b, ">>", 2);
}

/* A term whose parts follow: tuple, list or map. */
typedef struct {
    uint64_t left; /* parts still to print */
    char kind;     /* '{', '[' or '#' */
    bool first;
} pframe;

/* Prints one item (*at is past it); false if it cannot be printed. */
static bool print_item(strbuf *b, const etf_item *it, const unsigned char *buf, size_t *at) {
    switch (it->tag) {
    case ERL_SMALL_INTEGER_EXT: case ERL_INTEGER_EXT:
    case ERL_SMALL_BIG_EXT: case ERL_LARGE_BIG_EXT:
        print_int(b, it);
        return true;
    case NEW_FLOAT_EXT:
    case ERL_FLOAT_EXT:
        sb_float(b, it->f);
        return true;
    case ERL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_EXT: case ERL_SMALL_ATOM_UTF8_EXT:
        sb_atom(b, it->p, it->n, it->latin1);
        return true;
    case ERL_PID_EXT: case ERL_NEW_PID_EXT:
    case ERL_PORT_EXT: case ERL_NEW_PORT_EXT: case ERL_V4_PORT_EXT:
        return print_pid_or_port(b, it, buf);
    case ERL_NIL_EXT:
        sb_put(b, "[]", 2);
        return true;
    case ERL_STRING_EXT:
        print_bytes(b, it->p, it->n, false);
        return true;
    case ERL_BINARY_EXT:
        print_bytes(b, it->p, it->n, true);
        return true;
    case ERL_BIT_BINARY_EXT:
        print_bits(b, it->p, it->n, it->bits);
        return true;
    case ERL_NEW_FUN_EXT:
    case ERL_EXPORT_EXT:
        print_fun(b, it);
        return true;
    default: { /* references, as Erlang prints a local one: the words, last first */
        erlang_ref r;
        int idx = 0;
        if (ei_decode_ref((const char *)buf + it->start, &idx, &r) < 0)
            return print_with_ei(b, buf + it->start, *at - it->start);
        sb_str(b, "#Ref<0");
        for (int i = r.len - 1; i >= 0; i--)
            sb_fmt(b, ".%u", r.n[i]);
        sb_put(b, ">", 1);
        return true;
    }
    }
}

/* Before the next part of the innermost open term: its separator, or its
 * closing bracket (then it is done). Returns false when no part comes next. */
static bool next_part(strbuf *b, pframe *stack, size_t *sp, const unsigned char *buf, size_t len,
                      size_t *at) {
    while (*sp) {
        pframe *f = &stack[*sp - 1];
        if (f->left == 1 && f->kind == '[') {
            /* A list's tail: [] closes it, anything else follows a '|'. A
             * list of no elements is its own tail (the term was measured:
             * a LIST_EXT's head is whole). */
            while (len - *at > 5 && buf[*at] == ERL_LIST_EXT && be32(buf + *at + 1) == 0)
                *at += 5;
            if (*at < len && buf[*at] == ERL_NIL_EXT) {
                (*at)++;
                f->left = 0;
            } else {
                sb_put(b, "|", 1);
                f->left = 0;
                return true;
            }
        }
        if (f->left == 0) {
            sb_put(b, f->kind == '[' ? "]" : "}", 1);
            (*sp)--;
            continue;
        }
        if (!f->first)
            sb_put(b, f->kind == '#' && f->left % 2 ? " => " : ",", f->kind == '#' && f->left % 2 ? 4 : 1);
        f->first = false;
        f->left--;
        return true;
    }
    return false;
}

/* Prints the one term at *at. The open terms are kept on a stack of the
 * heap, so any depth that the bytes can hold prints. */
static bool print_term(strbuf *b, const unsigned char *buf, size_t len, size_t *at) {
    pframe *stack = NULL;
    size_t sp = 0, cap = 0;
    bool ok = true, started = false;
    while (ok && !b->failed && (!started || next_part(b, stack, &sp, buf, len, at))) {
        started = true;
        /* The term was measured: a fun's free variables need no second
         * check, and are not printed (read_any skips them). A list of no
         * elements is its tail: [|1] would not read back as 1. */
        etf_item it;
        do
            ok = read_any(buf, len, at, &it, false);
        while (ok && it.tag == ERL_LIST_EXT && it.parts == 1);
        if (!ok) {
            break;
        } else if (it.parts) {
            static const char *const open[] = {"{", "[", "#{"};
            char kind = it.tag == ERL_LIST_EXT ? '[' : it.tag == ERL_MAP_EXT ? '#' : '{';
            sb_str(b, open[kind == '{' ? 0 : kind == '[' ? 1 : 2]);
            pframe *s = grow(stack, &cap, sp + 1, sizeof *s);
            if (s) {
                stack = s;
                stack[sp++] = (pframe){.left = it.parts, .kind = kind, .first = true};
            } else {
                ok = false;
                b->oom = b->failed = true;
            }
        } else {
            ok = print_item(b, &it, buf, at);
        }
    }
    edrv__free(stack);
    return ok;
}

static int term_format(const void *etf, size_t len, char **out, bool w) {
    if (out)
        *out = NULL;
    if (!etf || !out || edrv__etf_measure(etf, len) != (ssize_t)len)
        return edrv__fail(EDRV_EBADTERM, "not one term in external term format");
    strbuf b = {.w = w};
    size_t at = 1;
    bool ok = print_term(&b, etf, len, &at);
    if (!ok || b.failed) {
        free(b.s);
        if (b.too_long)
            return edrv__fail(EDRV_ENOTSUP, "the text of the term is longer than INT_MAX bytes");
        return edrv__fail(b.oom ? EDRV_ENOMEM : EDRV_EBADTERM, "the term could not be printed");
    }
    *out = b.s;
    return (int)b.len;
}

EDRV_API long long edrv_term_size(const void *etf, size_t len) {
    ssize_t n = etf ? edrv__etf_measure(etf, len) : -1;
    if (n < 0)
        return edrv__fail(EDRV_EBADTERM, "edrv_term_size: not a term in external term format");
    return (long long)n;
}

EDRV_API long long edrv_term_skip(const void *buf, size_t len, size_t at) {
    size_t end = at;
    if (!buf || len > (size_t)SSIZE_MAX || at >= len ||
        !skip_term((const unsigned char *)buf, len, &end))
        return edrv__fail(EDRV_EBADTERM, "edrv_term_skip: no term at offset %zu", at);
    return (long long)end;
}

EDRV_API int edrv_term_format(const void *etf, size_t len, char **out) {
    return term_format(etf, len, out, false);
}

EDRV_API int edrv_term_format_w(const void *etf, size_t len, char **out) {
    return term_format(etf, len, out, true);
}
