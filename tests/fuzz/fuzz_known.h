/*
 * fuzz_known.h: bugs of libedrv that the fuzzers found and that are not fixed
 * yet. Each has its input in tests/fuzz/crashes/ and a paragraph in
 * README.md. A fuzzer would hit them within seconds on every run and find
 * nothing else, so the targets skip the inputs that reach them; with
 * EDRV_FUZZ_STRICT=1 in the environment nothing is skipped (and fuzz_spec
 * checks its strict properties). Remove an entry once its bug is fixed.
 */
#ifndef EDRV_FUZZ_KNOWN_H
#define EDRV_FUZZ_KNOWN_H

#include <ei.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline bool fuzz_strict(void) {
    static int strict = -1;
    if (strict < 0) {
        const char *s = getenv("EDRV_FUZZ_STRICT");
        strict = s && strcmp(s, "1") == 0;
    }
    return strict;
}

static inline uint32_t fk_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The length of the atom at b (tag included), or 0. */
static inline size_t fk_atom(const unsigned char *b, size_t left) {
    if (left >= 3 && (b[0] == ERL_ATOM_EXT || b[0] == ERL_ATOM_UTF8_EXT))
        return 3 + ((size_t)b[1] << 8 | b[2]);
    if (left >= 2 && (b[0] == ERL_SMALL_ATOM_EXT || b[0] == ERL_SMALL_ATOM_UTF8_EXT))
        return 2 + (size_t)b[1];
    return 0;
}

/* Walks a term that edrv__etf_measure accepted (version byte first), the way
 * the measure does, and names the known bug the term would reach, or NULL:
 *
 *   float-ext-no-nul  an ERL_FLOAT_EXT whose 31 bytes hold no NUL: libei's
 *                     ei_decode_double runs sscanf over them, which reads on
 *                     past the term until it finds one;
 *   fun-fields        an ERL_NEW_FUN_EXT: the measure trusts its size field,
 *                     but libei's ei_decode_fun parses the fields inside and
 *                     reads past the buffer when they need more bytes;
 *   export-parts      an ERL_EXPORT_EXT whose three parts are not an atom, an
 *                     atom and a small integer: the measure takes any three
 *                     terms, and libei's ei_decode_fun, failing on them, leaks
 *                     the block it allocated (1021 bytes a call);
 *   float-not-finite  a NaN or an infinity (which binary_to_term refuses):
 *                     edrv_term_format's sb_float parses the exponent out of
 *                     "nan" or "inf" before it checks for them, with atoi
 *                     from past the string's NUL, into bytes left on the
 *                     stack, and on past the buffer. */
static inline const char *fuzz_known_bug(const void *buf, size_t len) {
    const unsigned char *b = buf;
    size_t at = 1;
    uint64_t need = 1;
    while (need-- && at < len) {
        unsigned char tag = b[at++];
        const unsigned char *p = b + at;
        size_t left = len - at, a;
        switch (tag) {
        case ERL_SMALL_INTEGER_EXT: at += 1; break;
        case ERL_INTEGER_EXT: at += 4; break;
        case NEW_FLOAT_EXT:
            if (left >= 2 && (p[0] & 0x7f) == 0x7f && (p[1] & 0xf0) == 0xf0)
                return "float-not-finite"; /* the exponent's bits all set */
            at += 8;
            break;
        case ERL_FLOAT_EXT: {
            char text[32];
            if (left < 31 || !memchr(p, 0, 31))
                return "float-ext-no-nul";
            memcpy(text, p, 31);
            text[31] = '\0';
            if (!isfinite(strtod(text, NULL)))
                return "float-not-finite";
            at += 31;
            break;
        }
        case ERL_NIL_EXT: break;
        case ERL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
        case ERL_SMALL_ATOM_EXT: case ERL_SMALL_ATOM_UTF8_EXT:
            at += fk_atom(p - 1, left + 1) - 1;
            break;
        case ERL_STRING_EXT: at += 2 + ((size_t)p[0] << 8 | p[1]); break;
        case ERL_BINARY_EXT: at += 4 + (size_t)fk_be32(p); break;
        case ERL_BIT_BINARY_EXT: at += 5 + (size_t)fk_be32(p); break;
        case ERL_SMALL_BIG_EXT: at += 2 + (size_t)p[0]; break;
        case ERL_LARGE_BIG_EXT: at += 5 + (size_t)fk_be32(p); break;
        case ERL_SMALL_TUPLE_EXT: at += 1; need += p[0]; break;
        case ERL_LARGE_TUPLE_EXT: at += 4; need += fk_be32(p); break;
        case ERL_MAP_EXT: at += 4; need += 2 * (uint64_t)fk_be32(p); break;
        case ERL_LIST_EXT: at += 4; need += (uint64_t)fk_be32(p) + 1; break;
        case ERL_EXPORT_EXT: {
            size_t a1 = fk_atom(p, left), a2 = a1 ? fk_atom(p + a1, left - a1) : 0;
            if (!a1 || !a2 || a1 > 2 + 255 || a2 > 2 + 255 || a1 + a2 >= left ||
                p[a1 + a2] != ERL_SMALL_INTEGER_EXT)
                return "export-parts";
            need += 3;
            break;
        }
        case ERL_NEW_FUN_EXT: return "fun-fields";
        default: /* pids, ports, references: a node atom and fixed words */
            a = fk_atom(p, left);
            if (tag == ERL_NEW_REFERENCE_EXT || tag == ERL_NEWER_REFERENCE_EXT)
                a = 2 + fk_atom(p + 2, left - 2) + (tag == ERL_NEW_REFERENCE_EXT ? 1 : 4) +
                    4 * ((size_t)p[0] << 8 | p[1]);
            else
                a += tag == ERL_PID_EXT ? 9 : tag == ERL_NEW_PID_EXT ? 12 : tag == ERL_PORT_EXT ? 5
                   : tag == ERL_NEW_PORT_EXT ? 8 : tag == ERL_V4_PORT_EXT ? 12 : 5;
            at += a;
        }
    }
    return NULL;
}

/* Whether the harness skips this term: it reaches a known bug and the run is
 * not strict. */
static inline bool fuzz_skip(const void *buf, size_t len) {
    return !fuzz_strict() && fuzz_known_bug(buf, len) != NULL;
}

#endif
