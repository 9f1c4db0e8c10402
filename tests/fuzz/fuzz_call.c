/*
 * fuzz_call: edrv_port_call with any bytes as the argument, to a driver whose
 * call callback replies with the argument, the argument cut by one byte, or
 * the argument and one byte more (fuzz_common.h). Checks both of port_call's
 * ETF checks: the argument is refused unless it is exactly one term, and a
 * reply is accepted exactly when it starts with a whole term, which is what
 * the caller gets.
 */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_runtime();
    return 0;
}

static void call(unsigned op, const char *arg, size_t size, int want) {
    edrv_reply r = {0};
    int rc = edrv_port_call(fuzz_proc, fuzz_port, op, arg, size, &r);
    FUZZ_CHECK(rc == want, "op %u returned %d, expected %d (%s)", op, rc, want,
               edrv_last_error());
    if (rc == 0) {
        FUZZ_CHECK(r.kind == EDRV_REPLY_TERM && r.len == size && memcmp(r.data, arg, size) == 0,
                   "op %u: the reply is not the argument", op);
    }
    edrv_reply_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *arg = fuzz_fence(data, size);
    bool whole = edrv__etf_measure(arg, size) == (ssize_t)size;
    call(0, arg, size, whole ? 0 : EDRV_EBADTERM);
    if (whole) {
        call(1, arg, size, EDRV_EBADARG); /* a cut term is no reply */
        call(2, arg, size, 0);            /* a byte after the term is dropped */
    }
    return 0;
}
