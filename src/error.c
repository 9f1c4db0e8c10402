/*
 * error.c: names and messages of error codes, the per-thread detail of the last
 * failure, and erl_errno_id (errno to Erlang's atom name).
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Initial-exec: every call clears it. */
static _Thread_local char last_detail[512] __attribute__((tls_model("initial-exec")));

int edrv__fail(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_detail, sizeof last_detail, fmt, ap);
    va_end(ap);
    return err;
}

void edrv__clear_error(void) {
    last_detail[0] = '\0';
}

void edrv__warn(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "edrv: %s\n", line);
}

void edrv__ownership_broken(const char *file, int line, const char *fn, const char *rule) {
    fprintf(stderr, "edrv: %s:%d: %s called against its rule (%s)\n", file, line, fn, rule);
    abort();
}

EDRV_API const char *edrv_last_error(void) {
    return last_detail;
}

/* Erlang's names for errno values are the lower-case C names ("enoent").
 * glibc knows the upper-case ones; keep a lower-cased copy per value. */
#define ERRNO_MAX 256
static char errno_names[ERRNO_MAX][24];
static pthread_once_t errno_once = PTHREAD_ONCE_INIT;

static void errno_names_init(void) {
    for (int e = 1; e < ERRNO_MAX; e++) {
        const char *n = strerrorname_np(e);
        if (!n)
            continue;
        size_t i = 0;
        for (; n[i] && i + 1 < sizeof errno_names[e]; i++)
            errno_names[e][i] = (char)tolower((unsigned char)n[i]);
        errno_names[e][i] = '\0';
    }
}

EDRV_API char *erl_errno_id(int error) {
    pthread_once(&errno_once, errno_names_init);
    if (error > 0 && error < ERRNO_MAX && errno_names[error][0])
        return errno_names[error];
    return "unknown";
}

EDRV_API const char *edrv_err_name(int err) {
    switch (err) {
#define EDRV_ERR_NAME(name, code, reason, text) \
    case code:                                  \
        return reason;
        EDRV_ERRORS(EDRV_ERR_NAME)
#undef EDRV_ERR_NAME
    case 0:
        return "ok";
    default:
        return err < 0 && err > -ERRNO_MAX ? erl_errno_id(-err) : "unknown";
    }
}

EDRV_API const char *edrv_strerror(int err) {
    switch (err) {
#define EDRV_ERR_TEXT(name, code, reason, text) \
    case code:                                  \
        return text;
        EDRV_ERRORS(EDRV_ERR_TEXT)
#undef EDRV_ERR_TEXT
    case 0:
        return "success";
    default:
        {
        const char *d = err < 0 && err > -ERRNO_MAX ? strerrordesc_np(-err) : NULL;
        return d ? d : "unknown error";
    }
    }
}
