/*
 * fuzz_known.h: bugs of libedrv that the fuzzers found and that are not fixed
 * yet. Each has its input in tests/fuzz/crashes/ and a paragraph in
 * README.md. A fuzzer would hit them within seconds on every run and find
 * nothing else, so the targets skip the inputs that reach them; with
 * EDRV_FUZZ_STRICT=1 in the environment nothing is skipped. Remove an entry
 * once its bug is fixed.
 */
#ifndef EDRV_FUZZ_KNOWN_H
#define EDRV_FUZZ_KNOWN_H

#include <stdbool.h>
#include <stddef.h>
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

/* Names the known bug that the term at buf (version byte first, accepted by
 * edrv__etf_measure) would reach, or NULL. None is known now: the float,
 * fun and export bugs found before are fixed in src/term.c, and their inputs
 * are in corpus/etf. A new one gets a check here, its input in crashes/ and
 * a paragraph in README.md, until it is fixed. */
static inline const char *fuzz_known_bug(const void *buf, size_t len) {
    (void)buf;
    (void)len;
    return NULL;
}

/* Whether the harness skips this term: it reaches a known bug and the run is
 * not strict. */
static inline bool fuzz_skip(const void *buf, size_t len) {
    return !fuzz_strict() && fuzz_known_bug(buf, len) != NULL;
}

#endif
