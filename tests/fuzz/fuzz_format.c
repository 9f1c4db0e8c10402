/*
 * fuzz_format: edrv_term_format, the public printer, on any bytes: a string
 * of the length it returns, or EDRV_EBADTERM. The bytes lie against an
 * inaccessible page (fuzz_fence), so that libei reading past them faults.
 */
#include "fuzz_common.h"
#include "fuzz_known.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (edrv__etf_measure(data, size) == (ssize_t)size && fuzz_skip(data, size))
        return 0;
    char *s = (char *)"unset";
    int r = edrv_term_format(fuzz_fence(data, size), size, &s);
    if (r >= 0) {
        FUZZ_CHECK(s && strlen(s) == (size_t)r, "length %d", r);
        FUZZ_CHECK(edrv__etf_measure(data, size) == (ssize_t)size, "printed what does not measure");
        free(s);
    } else {
        FUZZ_CHECK(r == EDRV_EBADTERM || r == EDRV_ENOMEM, "returned %d", r);
    }
    return 0;
}
