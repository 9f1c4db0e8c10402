/* edrv_term_format: terms printed in Erlang syntax. */
#include "check.h"

#include <ei.h>

static char *fmt(ei_x_buff *x) {
    static char out[512];
    char *s;
    int n = edrv_term_format(x->buff, (size_t)x->index, &s);
    if (n < 0)
        return strcpy(out, "error");
    snprintf(out, sizeof out, "%s", s);
    CHECK_INT(n, strlen(s));
    free(s);
    return out;
}

#define FORMATS(want, ...)                  \
    do {                                    \
        ei_x_buff x;                        \
        ei_x_new_with_version(&x);          \
        __VA_ARGS__;                        \
        CHECK_STR(fmt(&x), want);           \
        ei_x_free(&x);                      \
    } while (0)

static void scalars(void) {
    FORMATS("42", ei_x_encode_long(&x, 42));
    FORMATS("-7", ei_x_encode_long(&x, -7));
    FORMATS("18446744073709551615", ei_x_encode_ulonglong(&x, 18446744073709551615ull));
    FORMATS("-9223372036854775808", ei_x_encode_longlong(&x, INT64_MIN));
    FORMATS("1.5", ei_x_encode_double(&x, 1.5));
    FORMATS("0.1", ei_x_encode_double(&x, 0.1));
    FORMATS("100.0", ei_x_encode_double(&x, 100.0));
    FORMATS("1.0e10", ei_x_encode_double(&x, 1.0e10));
    FORMATS("1.0e-5", ei_x_encode_double(&x, 1.0e-5));
    FORMATS("0.0001", ei_x_encode_double(&x, 0.0001));
    FORMATS("0.002", ei_x_encode_double(&x, 0.002));
    FORMATS("123.456", ei_x_encode_double(&x, 123.456));
    FORMATS("-0.0", ei_x_encode_double(&x, -0.0));
    FORMATS("ok", ei_x_encode_atom(&x, "ok"));
    FORMATS("'EXIT'", ei_x_encode_atom(&x, "EXIT"));
    FORMATS("'if'", ei_x_encode_atom(&x, "if"));
    FORMATS("'hello world'", ei_x_encode_atom(&x, "hello world"));
    FORMATS("'a\\'b'", ei_x_encode_atom(&x, "a'b"));
    FORMATS("node@host", ei_x_encode_atom(&x, "node@host"));
}

static void compound(void) {
    FORMATS("{}", ei_x_encode_tuple_header(&x, 0));
    FORMATS("[]", ei_x_encode_empty_list(&x));
    FORMATS("{a,[1,2]}", ei_x_encode_tuple_header(&x, 2); ei_x_encode_atom(&x, "a");
            ei_x_encode_list_header(&x, 2); ei_x_encode_long(&x, 1); ei_x_encode_long(&x, 2);
            ei_x_encode_empty_list(&x));
    FORMATS("[a|b]", ei_x_encode_list_header(&x, 1); ei_x_encode_atom(&x, "a");
            ei_x_encode_atom(&x, "b"));
    FORMATS("#{a => 1}", ei_x_encode_map_header(&x, 1); ei_x_encode_atom(&x, "a");
            ei_x_encode_long(&x, 1));
    FORMATS("\"abc\"", ei_x_encode_string(&x, "abc"));
    FORMATS("\"a\\nb\\\"c\"", ei_x_encode_string(&x, "a\nb\"c"));
    FORMATS("[1,2,200]", ei_x_encode_string(&x, "\x01\x02\xc8"));
    FORMATS("<<\"ok\">>", ei_x_encode_binary(&x, "ok", 2));
    FORMATS("<<>>", ei_x_encode_binary(&x, "", 0));
    FORMATS("<<0,255>>", ei_x_encode_binary(&x, "\x00\xff", 2));
    erlang_pid pid = {.node = "nonode@nohost", .num = 5};
    FORMATS("<0.5.0>", ei_x_encode_pid(&x, &pid));
    erlang_port port = {.node = "nonode@nohost", .id = 9};
    FORMATS("#Port<0.9>", ei_x_encode_port(&x, &port));
}

static void bad_input(void) {
    char *s = NULL;
    CHECK_INT(edrv_term_format(NULL, 3, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83", 1, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83\x6a\x6a", 3, &s), EDRV_EBADTERM); /* two terms */
    CHECK(s == NULL);
    /* Counts that promise more than the bytes hold. */
    CHECK_INT(edrv_term_format("\x83\x6c\x7f\xff\xff\xff\x6a", 7, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83\x6d\x00\x00\x10\x00" "ab", 8, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83\x74\x00\x00\x00\x09", 6, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83\x64\x00\x09" "ab", 6, &s), EDRV_EBADTERM);
    CHECK_INT(edrv_term_format("\x83\x58\x64\x00\x01" "a", 6, &s), EDRV_EBADTERM);
}

/* Mutated and truncated encodings of real terms: each is printed or refused,
 * never read past its end (the ASan build checks that). */
static void mutations(void) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 4);
    ei_x_encode_atom(&x, "data");
    ei_x_encode_list_header(&x, 2);
    ei_x_encode_binary(&x, "abc", 3);
    ei_x_encode_double(&x, 2.5);
    ei_x_encode_empty_list(&x);
    ei_x_encode_map_header(&x, 1);
    ei_x_encode_string(&x, "key");
    erlang_pid pid = {.node = "nonode@nohost", .num = 5};
    ei_x_encode_pid(&x, &pid);
    ei_x_encode_longlong(&x, -123456789012345LL);
    unsigned seed = 12345;
    int printed = 0, refused = 0;
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)x.index;
        char *m = malloc(len);
        memcpy(m, x.buff, len);
        seed = seed * 1103515245u + 12345u;
        if (seed % 3 == 0) {
            len = (seed >> 8) % len; /* truncated */
        } else {
            for (int k = 0; k < 1 + (int)(seed % 3); k++) {
                seed = seed * 1103515245u + 12345u;
                m[1 + (seed >> 8) % (len - 1)] = (char)(seed >> 20);
            }
        }
        char *shrunk = malloc(len ? len : 1); /* exactly len bytes, for ASan */
        memcpy(shrunk, m, len);
        char *s = NULL;
        int n = edrv_term_format(shrunk, len, &s);
        n >= 0 ? printed++ : refused++;
        free(s);
        free(shrunk);
        free(m);
    }
    CHECK(printed > 0 && refused > 0);
    ei_x_free(&x);
}

static const test_case cases[] = {
    {"scalars", scalars},
    {"compound", compound},
    {"bad_input", bad_input},
    {"mutations", mutations},
    {NULL, NULL},
};

TEST_MAIN(cases)
