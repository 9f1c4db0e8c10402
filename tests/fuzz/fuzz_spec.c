/*
 * fuzz_spec: term specs (erl_drv_output_term, erl_drv_send_term and, under
 * them, edrv__spec_to_msg) built from the fuzzer's bytes.
 *
 * The input is a flags byte, then operations, each one byte and its
 * arguments, which append one ERL_DRV_* tag and its words to the spec:
 *
 *   op % 18 = the tag (spec_tags below), or 17: an unknown tag (8 bytes)
 *   op / 18 = a variant: bit 0 asks for a NULL pointer or raw 8-byte counts
 *
 *   ATOM         1 byte: one of a few real atoms, or (past them) a raw value
 *   INT, UINT    8 bytes, little-endian
 *   PORT, PID    1 byte: 0 the real one, 1 a tagged 8-byte number, else a raw value
 *   BINARY       1 byte (0: NULL), then length and offset: 1 byte each, or 8
 *   STRING, STRING_CONS, BUF2BINARY, EXT2TERM
 *                2 bytes of length L (big-endian, cut to what is left), then
 *                L bytes, to which the spec points
 *   FLOAT, INT64, UINT64
 *                8 bytes, copied to an aligned slot the spec points to
 *   TUPLE, LIST, MAP
 *                1 byte of count; 255 means 8 bytes of count
 *
 * Flags: bit 0 sends with erl_drv_send_term (to the process, or with bit 1 to
 * a pid that does not exist) instead of erl_drv_output_term. Every pointer
 * stays inside the input or the harness's own buffers, as a correct driver's
 * would; everything else a driver may get wrong is left to the bytes.
 *
 * The properties: the call returns 1 and the process has one message, or it
 * returns 0 or -1 and the mailbox is empty; a message measures as exactly one
 * term, prints, and holds what binary_to_term would check: every float
 * finite and no map with the same key twice (edrv sent both at d90cb66).
 */
#include "fuzz_common.h"
#include "fuzz_known.h"

#include <ei.h>
#include <math.h>

#define MAX_WORDS 65536

static const ErlDrvTermData spec_tags[] = {
    ERL_DRV_NIL, ERL_DRV_ATOM, ERL_DRV_INT, ERL_DRV_PORT, ERL_DRV_BINARY, ERL_DRV_STRING,
    ERL_DRV_TUPLE, ERL_DRV_LIST, ERL_DRV_PID, ERL_DRV_STRING_CONS, ERL_DRV_FLOAT,
    ERL_DRV_EXT2TERM, ERL_DRV_UINT, ERL_DRV_BUF2BINARY, ERL_DRV_INT64, ERL_DRV_UINT64,
    ERL_DRV_MAP};
#define NTAGS (sizeof spec_tags / sizeof spec_tags[0])

static ErlDrvTermData atoms[8];
#define NATOMS (sizeof atoms / sizeof atoms[0])
static ErlDrvBinary *bin;

static ErlDrvTermData spec[MAX_WORDS];
static uint64_t slots[MAX_WORDS]; /* FLOAT, INT64, UINT64 values */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_runtime();
    static char long_name[256];
    memset(long_name, 'z', 255);
    char *names[NATOMS] = {"ok", "data", "true", "", "caf\xc3\xa9", "with space", "EXIT", long_name};
    for (size_t i = 0; i < NATOMS; i++)
        FUZZ_CHECK((atoms[i] = driver_mk_atom(names[i])) != 0, "atom %zu", i);
    FUZZ_CHECK((bin = driver_alloc_binary(64)) != NULL, "binary");
    for (int i = 0; i < 64; i++)
        bin->orig_bytes[i] = (char)('a' + i % 26);
    return 0;
}

/* ---- reading the input -------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

static uint8_t u8(reader *r) {
    if (!r->left)
        return 0;
    r->left--;
    return *r->p++;
}

/* 8 bytes little-endian; what is missing at the end of the input reads 0. */
static uint64_t u64(reader *r) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)u8(r) << (8 * i);
    return v;
}

/* A pointer to the next `len` bytes (big-endian 16-bit length, cut to what is
 * left), and the length. */
static const uint8_t *bytes(reader *r, size_t *len) {
    size_t n = (size_t)u8(r) << 8;
    n |= u8(r);
    if (n > r->left)
        n = r->left;
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    *len = n;
    return p;
}

/* ---- building the spec ---------------------------------------------------------- */

static ErlDrvTermData port_or_pid(reader *r, bool pid) {
    uint8_t k = u8(r);
    if (k == 0)
        return pid ? edrv_proc_term(fuzz_proc) : driver_mk_port(fuzz_drv_port);
    if (k == 1)
        return TD_MAKE(pid ? TD_PID : TD_PORT, u64(r) >> 2);
    return (ErlDrvTermData)k; /* any tag: the wrong kind must be refused */
}

/* Appends one operation's words; returns how many. */
static int op_words(reader *r, ErlDrvTermData *w, int nslot) {
    uint8_t op = u8(r);
    bool variant = (op / 18) & 1;
    if (op % 18 == NTAGS) {
        /* An unknown tag. (A known one would take the next operation's words
         * as its arguments: a wild pointer, which no spec check can catch.) */
        w[0] = (ErlDrvTermData)u64(r);
        if (w[0] >= ERL_DRV_NIL && w[0] <= ERL_DRV_MAP)
            w[0] += 0x100;
        return 1;
    }
    ErlDrvTermData tag = spec_tags[op % 18];
    w[0] = tag;
    size_t len;
    const uint8_t *p;
    switch (tag) {
    case ERL_DRV_NIL:
        return 1;
    case ERL_DRV_ATOM: {
        uint8_t k = u8(r);
        w[1] = k < NATOMS ? atoms[k] : (ErlDrvTermData)(k - NATOMS);
        return 2;
    }
    case ERL_DRV_INT: case ERL_DRV_UINT:
        w[1] = (ErlDrvTermData)u64(r);
        return 2;
    case ERL_DRV_PORT: case ERL_DRV_PID:
        w[1] = port_or_pid(r, tag == ERL_DRV_PID);
        return 2;
    case ERL_DRV_BINARY:
        w[1] = u8(r) ? (ErlDrvTermData)bin : 0;
        w[2] = variant ? (ErlDrvTermData)u64(r) : u8(r); /* length */
        w[3] = variant ? (ErlDrvTermData)u64(r) : u8(r); /* offset */
        return 4;
    case ERL_DRV_STRING: case ERL_DRV_STRING_CONS: case ERL_DRV_BUF2BINARY:
    case ERL_DRV_EXT2TERM:
        p = bytes(r, &len);
        /* The variant: no buffer, with the length read (refused unless 0). */
        w[1] = variant ? 0 : (ErlDrvTermData)p;
        w[2] = (ErlDrvTermData)len;
        return 3;
    case ERL_DRV_FLOAT: case ERL_DRV_INT64: case ERL_DRV_UINT64:
        slots[nslot] = u64(r);
        w[1] = variant ? 0 : (ErlDrvTermData)&slots[nslot];
        return 2;
    default: { /* TUPLE, LIST, MAP */
        uint8_t c = u8(r);
        w[1] = c == 255 || variant ? (ErlDrvTermData)u64(r) : c;
        return 2;
    }
    }
}

/* ---- checking the message ------------------------------------------------------- */

/* Whether the map whose pairs start at `idx` has two keys with the same
 * bytes (the same term, as edrv encodes terms). */
static bool duplicate_keys(const char *buf, int idx, int pairs) {
    int *at = malloc(2 * (size_t)pairs * sizeof *at);
    FUZZ_CHECK(at, "malloc");
    for (int k = 0; k < pairs; k++) {
        at[2 * k] = idx;
        FUZZ_CHECK(ei_skip_term(buf, &idx) == 0, "key");
        at[2 * k + 1] = idx;
        FUZZ_CHECK(ei_skip_term(buf, &idx) == 0, "value");
    }
    bool dup = false;
    for (int a = 0; a < pairs && !dup; a++)
        for (int b = a + 1; b < pairs && !dup; b++)
            dup = at[2 * a + 1] - at[2 * a] == at[2 * b + 1] - at[2 * b] &&
                  memcmp(buf + at[2 * a], buf + at[2 * b], (size_t)(at[2 * a + 1] - at[2 * a])) == 0;
    free(at);
    return dup;
}

/* What binary_to_term refuses: non-finite floats, maps with a key twice. One
 * pass over the term's headers and leaves. */
static void erts_checks(const char *buf, size_t len) {
    int idx = 1, type, size, arity;
    uint64_t need = 1;
    while (need--) {
        FUZZ_CHECK(ei_get_type(buf, &idx, &type, &size) == 0, "type at %d", idx);
        switch (type) {
        case ERL_SMALL_TUPLE_EXT: case ERL_LARGE_TUPLE_EXT:
            ei_decode_tuple_header(buf, &idx, &arity);
            need += (uint64_t)arity;
            break;
        case ERL_LIST_EXT:
            ei_decode_list_header(buf, &idx, &arity);
            need += (uint64_t)arity + 1;
            break;
        case ERL_MAP_EXT:
            ei_decode_map_header(buf, &idx, &arity);
            FUZZ_CHECK(!duplicate_keys(buf, idx, arity), "a map with a key twice");
            need += 2 * (uint64_t)arity;
            break;
        case NEW_FLOAT_EXT: case ERL_FLOAT_EXT: {
            double f;
            FUZZ_CHECK(ei_decode_double(buf, &idx, &f) == 0, "float");
            FUZZ_CHECK(isfinite(f), "a float that is not finite: %g", f);
            break;
        }
        default:
            FUZZ_CHECK(ei_skip_term(buf, &idx) == 0, "term at %d", idx);
        }
    }
    FUZZ_CHECK((size_t)idx == len, "ends at %d of %zu", idx, len);
}

static void check_message(const edrv_msg *m) {
    FUZZ_CHECK(edrv__etf_measure(m->data, m->len) == (ssize_t)m->len, "a message of %zu bytes "
               "that is not one term", m->len);
    /* An EXT2TERM buffer puts its bytes into the message as they are. */
    if (fuzz_skip(m->data, m->len))
        return;
    char *s = NULL;
    int r = edrv_term_format(m->data, m->len, &s);
    FUZZ_CHECK(r >= 0, "the message does not print: %d", r);
    free(s);
    erts_checks(m->data, m->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size};
    uint8_t flags = u8(&r);
    int n = 0, nslot = 0;
    while (r.left && n + 4 <= MAX_WORDS)
        n += op_words(&r, spec + n, nslot++);
    ErlDrvTermData port = driver_mk_port(fuzz_drv_port);
    int rc;
    if (flags & 1) {
        ErlDrvTermData to = flags & 2 ? TD_MAKE(TD_PID, 0x7fffffff) : edrv_proc_term(fuzz_proc);
        rc = erl_drv_send_term(port, to, spec, n);
    } else {
        rc = erl_drv_output_term(port, spec, n);
    }
    FUZZ_CHECK(rc >= -1 && rc <= 1, "returned %d", rc);
    int got = 0;
    edrv_msg m;
    while (edrv_receive(fuzz_proc, 0, &m) == 0) {
        got++;
        check_message(&m);
        edrv_msg_free(&m);
    }
    FUZZ_CHECK(got == (rc == 1), "returned %d, %d messages", rc, got);
    return 0;
}
