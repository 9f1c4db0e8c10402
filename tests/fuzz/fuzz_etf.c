/*
 * fuzz_etf: the ETF validator, edrv__etf_measure, on any bytes, and the code
 * that trusts its answer.
 *
 * edrv__etf_measure stands between bytes from outside (a port_call argument,
 * a driver's call reply or EXT2TERM buffer) and libei, whose decoders trust
 * their input. Its answer is checked against libei's own walk of the same
 * bytes, and the printer runs on whatever it accepts. The bytes lie against
 * an inaccessible page (fuzz_fence), so that a read past them by libei,
 * which ASan does not instrument, faults.
 */
#include "fuzz_common.h"
#include "fuzz_known.h"

#include <ei.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    return 0;
}

/* The printer on a term that measured sound: a string of the length it
 * returns, or EDRV_EBADTERM for what libei refuses (an atom longer than
 * libei's buffer, ...). Never a crash. */
static void format_checks(const char *t, int n) {
    char *s = NULL;
    int r = edrv_term_format(t, (size_t)n, &s);
    if (r >= 0) {
        FUZZ_CHECK(s && strlen(s) == (size_t)r, "length %d", r);
        free(s);
    } else {
        FUZZ_CHECK(r == EDRV_EBADTERM && !s, "returned %d", r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ssize_t m = edrv__etf_measure(fuzz_fence(data, size), size);
    if (m < 0)
        return 0;
    FUZZ_CHECK(m >= 2 && (size_t)m <= size, "measured %zd of %zu bytes", m, size);
    int n = (int)m; /* libei's offsets are int; fuzzer inputs are small */
    /* The term alone, against the fence: it measures the same, and one byte
     * less is not a term. */
    const char *t = fuzz_fence(data, (size_t)n);
    FUZZ_CHECK(edrv__etf_measure(t, (size_t)n) == m, "not a prefix property");
    FUZZ_CHECK(edrv__etf_measure(fuzz_fence(data, (size_t)n - 1), (size_t)n - 1) < 0,
               "a cut term measured");
    t = fuzz_fence(data, (size_t)n);
    if (fuzz_skip(t, (size_t)n))
        return 0;
    /* libei never walks past the term. (It may stop short: ei_skip_term
     * ignores a failure to skip an element of a tuple, list or map, and
     * returns success, for a term it cannot decode.) */
    int idx = 1;
    if (ei_skip_term(t, &idx) == 0)
        FUZZ_CHECK(idx <= n, "ei_skip_term ends at %d, measured %d", idx, n);
    /* libei's printer leaks a fun's free variables (lsan.supp), and formats
     * each part of its text in a 2000-byte stack buffer with vsprintf, which
     * the text of a big integer (two digits a byte), or of a fun's two atoms
     * (Latin-1 doubled in UTF-8), overflows from about 1000 bytes: a term of
     * fewer than 960 bytes stays within it. */
    char *s = NULL;
    idx = 1;
    if (n < 960 && ei_s_print_term(&s, t, &idx) >= 0)
        FUZZ_CHECK(idx <= n, "ei_s_print_term ends at %d, measured %d", idx, n);
    free(s);
    format_checks(t, n);
    return 0;
}
