/* edrv_term_format: terms printed in Erlang syntax. */
#include "check.h"

#include <ei.h>
#include <stdbool.h>

/* The term in x printed by format (edrv_term_format or _w). */
static char *fmt_with(int (*format)(const void *, size_t, char **), ei_x_buff *x) {
    static char out[512];
    char *s;
    int n = format(x->buff, (size_t)x->index, &s);
    if (n < 0)
        return strcpy(out, "error");
    snprintf(out, sizeof out, "%s", s);
    CHECK_INT(n, strlen(s));
    free(s);
    return out;
}

static char *fmt(ei_x_buff *x) {
    return fmt_with(edrv_term_format, x);
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

static void as_w(void) {
    /* ~w: strings and binaries as integers (checked in erl with ~w); the
     * rest as edrv_term_format prints it. */
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 5);
    ei_x_encode_binary(&x, "hi", 2);
    ei_x_encode_string(&x, "hi");
    ei_x_encode_binary(&x, "", 0);
    ei_x_encode_empty_list(&x);
    ei_x_encode_map_header(&x, 1);
    ei_x_encode_atom(&x, "a");
    ei_x_encode_double(&x, 1.5);
    CHECK_STR(fmt_with(edrv_term_format_w, &x), "{<<104,105>>,[104,105],<<>>,[],#{a => 1.5}}");
    CHECK_STR(fmt(&x), "{<<\"hi\">>,\"hi\",<<>>,[],#{a => 1.5}}");
    ei_x_free(&x);
    char *s = (char *)1;
    CHECK_INT(edrv_term_format_w("\x83", 1, &s), EDRV_EBADTERM);
    CHECK(s == NULL);
}

/* Kinds that libei decodes or prints for the printer, each from a buffer of
 * its own, and bit strings, which it writes as Erlang does. */
static void other_kinds(void) {
    /* Beyond 64 bits, hexadecimal as libei wrote it (Erlang would write decimal). */
    FORMATS("16#10000000000000000", ei_x_append_buf(&x, "\x6e\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01", 12));
    FORMATS("-18446744073709551615", ei_x_append_buf(&x, "\x6e\x08\x01\xff\xff\xff\xff\xff\xff\xff\xff", 11));
    FORMATS("1", ei_x_append_buf(&x, "\x6e\x02\x00\x01\x00", 5)); /* a big 1 */
    FORMATS("fun lists:map/2", ei_x_append_buf(&x, "\x71\x64\x00\x05lists\x64\x00\x03map\x61\x02", 17));
    FORMATS("<<7:3>>", ei_x_append_buf(&x, "\x4d\x00\x00\x00\x01\x03\xff", 7));
    FORMATS("<<1,2,3:4>>", ei_x_append_buf(&x, "\x4d\x00\x00\x00\x03\x04\x01\x02\x30", 9));
    FORMATS("1.5", ei_x_append_buf(&x, "\x63" "1.50000000000000000000e+00\0\0\0\0\0", 32));
    FORMATS("'\xc3\xa9t\xc3\xa9'", ei_x_append_buf(&x, "\x64\x00\x03\xe9t\xe9", 6)); /* Latin-1 */
    FORMATS("[1|\"ab\"]", ei_x_encode_list_header(&x, 1); ei_x_encode_long(&x, 1);
            ei_x_encode_string(&x, "ab"));
    FORMATS("{#{},[],<<>>,''}", ei_x_encode_tuple_header(&x, 4); ei_x_encode_map_header(&x, 0);
            ei_x_encode_empty_list(&x); ei_x_encode_binary(&x, "", 0);
            ei_x_encode_atom(&x, ""));
    FORMATS("#{a => [1,2],b => {}}", ei_x_encode_map_header(&x, 2); ei_x_encode_atom(&x, "a");
            ei_x_encode_list_header(&x, 2); ei_x_encode_long(&x, 1); ei_x_encode_long(&x, 2);
            ei_x_encode_empty_list(&x); ei_x_encode_atom(&x, "b"); ei_x_encode_tuple_header(&x, 0));
}

/* Terms written byte by byte: the version byte, then `bytes` (a string
 * literal, NULs included). */
#define FORMATS_RAW(want, bytes) FORMATS(want, ei_x_append_buf(&x, bytes, sizeof bytes - 1))

/* FLOAT_EXT: 31 bytes of text, padded with NULs. */
static char *old_float(ei_x_buff *x, const char *text) {
    char t[31] = {0};
    memcpy(t, text, strlen(text));
    ei_x_append_buf(x, "c", 1);
    ei_x_append_buf(x, t, 31);
    return NULL;
}

/* FLOAT_EXT is read as binary_to_term reads it (each case checked in erl):
 * [+-]digits, '.' or ',', digits, an optional exponent, then a NUL, and a
 * finite value. Before, edrv took any text strtod took, and the text of 31
 * bytes without a NUL, which libei's sscanf read past. */
static void old_floats(void) {
    FORMATS("1.5", old_float(&x, "1,5"));
    FORMATS("150.0", old_float(&x, "+1.5E+2"));
    FORMATS("-0.015", old_float(&x, "-1.5e-2"));
    FORMATS("0.0", old_float(&x, "1.0e-400")); /* underflow: 0.0 in ERTS too */
    FORMATS("4.0e-320", old_float(&x, "4.0e-320"));
    FORMATS("1.5", ei_x_append_buf(&x, "c1.5\0abcdefghijklmnopqrstuvwxyz1", 32));
    const char *bad[] = {"15", " 1.5", "1.", ".5", "1e5", "1.e5", "inf", "-inf", "nan",
                         "1.0e400", "1.5x", "0x1p3", "1.5e", "1.5e+", "+-1.0", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        FORMATS("error", old_float(&x, bad[i]));
    FORMATS("error", ei_x_append_buf(&x, "c1.5000000000000000000000000e+00", 32)); /* no NUL */
    FORMATS("error", ei_x_append_buf(&x, "c1.5\0", 5));                           /* short */
    /* In a list, the byte after the text is the next term's tag. */
    FORMATS("error", ei_x_append_buf(&x, "l\0\0\0\1c1.5000000000000000000000000e+00j", 38));
}

/* NaN and the infinities, which binary_to_term refuses: refused (the printer
 * parsed an exponent out of "nan" from past its NUL before it checked). */
static void non_finite_floats(void) {
    FORMATS_RAW("error", "F\x7f\xf8\0\0\0\0\0\0");
    FORMATS_RAW("error", "F\x7f\xf0\0\0\0\0\0\0");
    FORMATS_RAW("error", "F\xff\xf0\0\0\0\0\0\0");
    FORMATS_RAW("error", "h\2a\1F\xff\xf8\0\0\0\0\0\1");
    FORMATS_RAW("1.0e308", "F\x7f\xe1\xcc\xf3\x85\xeb\xc8\xa0");
}

/* A NEW_FUN_EXT of module fy, index 7, old index 3 and old uniq 5, with
 * `nfree` in its count, the free variables' bytes `fv` (n of them), and
 * `pid` (else an integer where the pid goes). Its size field is the true
 * size plus `size_off`. */
static void put_fun(ei_x_buff *x, uint32_t nfree, const char *fv, size_t n, bool pid,
                    int size_off) {
    ei_x_buff body;
    ei_x_new(&body);
    char fixed[25] = {1}; /* arity 1, uniq (16 bytes), index, count */
    fixed[20] = 7;
    fixed[21] = (char)(nfree >> 24);
    fixed[22] = (char)(nfree >> 16);
    fixed[23] = (char)(nfree >> 8);
    fixed[24] = (char)nfree;
    ei_x_append_buf(&body, fixed, 25);
    ei_x_encode_atom(&body, "fy");
    ei_x_encode_long(&body, 3);
    ei_x_encode_long(&body, 5);
    erlang_pid p = {.node = "nonode@nohost", .num = 9};
    if (pid)
        ei_x_encode_pid(&body, &p);
    else
        ei_x_encode_long(&body, 9);
    ei_x_append_buf(&body, fv, (int)n);
    uint32_t size = (uint32_t)(4 + body.index + size_off);
    char head[5] = {'p', (char)(size >> 24), (char)(size >> 16), (char)(size >> 8), (char)size};
    ei_x_append_buf(x, head, 5);
    ei_x_append_buf(x, body.buff, body.index);
    ei_x_free(&body);
}

/* Funs and exports as binary_to_term reads them (checked in erl), printed as
 * Erlang writes them. Before, the measure trusted a fun's size and took any
 * three terms for an export, and libei printed them: it read the fields of a
 * fun past the buffer, leaked what it allocated for an export it could not
 * decode (1021 bytes) and the free variables of every fun it printed (the
 * ASan build's leak check sees both). */
static void funs(void) {
    FORMATS("#Fun<fy.3.5>", put_fun(&x, 0, "", 0, true, 0));
    FORMATS("#Fun<fy.3.5>", put_fun(&x, 2, "a\7j", 3, true, 0));
    FORMATS("[#Fun<fy.3.5>,x]", ei_x_encode_list_header(&x, 2); put_fun(&x, 1, "a\7", 2, true, 0);
            ei_x_encode_atom(&x, "x"); ei_x_encode_empty_list(&x));
    ei_x_buff inner;
    ei_x_new(&inner);
    put_fun(&inner, 1, "a\7", 2, true, 0);
    FORMATS("#Fun<fy.3.5>", put_fun(&x, 1, inner.buff, (size_t)inner.index, true, 0));
    FORMATS("error", put_fun(&x, 0, "", 0, true, -1));        /* size short */
    FORMATS("error", put_fun(&x, 0, "a\7", 2, true, 0));     /* a byte past the free ones */
    FORMATS("error", put_fun(&x, 3, "a\7j", 3, true, 0));    /* fewer than the count */
    FORMATS("error", put_fun(&x, 0, "", 0, false, 0));        /* no pid */
    FORMATS("error", put_fun(&x, 256, "", 0, true, 0));       /* more than 255 */
    FORMATS("error", put_fun(&x, 1, "F\x7f\xf8\0\0\0\0\0\0", 9, true, 0)); /* NaN */
    inner.index = 0;
    put_fun(&inner, 3, "a\7j", 3, true, 0); /* the inner fun is the bad one */
    FORMATS("error", put_fun(&x, 1, inner.buff, (size_t)inner.index, true, 0));
    ei_x_free(&inner);
    FORMATS_RAW("error", "p\0\0\0\4");                   /* tests/fuzz: fun_size_4 */
    FORMATS_RAW("fun lists:map/256", "qd\0\5listsd\0\3mapb\0\0\1\0");
    FORMATS_RAW("fun 'Elixir.Foo':'Bar'/1", "qd\0\12Elixir.Food\0\3Bara\1");
    FORMATS_RAW("fun m:f/0", "qw\1mw\1fa\0");
    FORMATS_RAW("error", "qd\0\1ma\1a\1");                /* tests/fuzz: export_bad_parts */
    FORMATS_RAW("error", "qd\0\5listsk\0\3mapa\2");      /* a string for the name */
    FORMATS_RAW("error", "qd\0\5listsd\0\3mapb\xff\xff\xff\xff"); /* arity -1 */
    FORMATS_RAW("error", "qd\0\5listsd\0\3mapd\0\1a");  /* an atom for the arity */
}

/* A list of no elements is its tail, as binary_to_term reads it (this
 * printed [|1]). */
static void empty_list_heads(void) {
    FORMATS_RAW("1", "l\0\0\0\0a\1");
    FORMATS_RAW("[]", "l\0\0\0\0l\0\0\0\0j");
    FORMATS_RAW("{[a],x}", "h\2l\0\0\0\1d\0\1al\0\0\0\0jd\0\1x");
    FORMATS_RAW("[1|2]", "l\0\0\0\1a\1l\0\0\0\0a\2");
}

/* BIT_BINARY_EXT as binary_to_term reads it: 1 to 8 bits used in the last
 * byte, or no byte and 0 (fuzz_spec found edrv taking any count). */
static void bit_strings(void) {
    FORMATS_RAW("<<>>", "M\0\0\0\0\0");
    FORMATS_RAW("<<5>>", "M\0\0\0\1\x08\5");
    FORMATS_RAW("<<1:1>>", "M\0\0\0\1\1\xff");
    FORMATS_RAW("error", "M\0\0\0\0M");
    FORMATS_RAW("error", "M\0\0\0\0\x08");
    FORMATS_RAW("error", "M\0\0\0\1\0\5");
    FORMATS_RAW("error", "M\0\0\0\1\x09\5");
}

/* Integers of more than 1000 bytes: libei's printer wrote their text into a
 * stack buffer of 2000 bytes (vsprintf), and the program crashed. */
static void long_big_integers(void) {
    size_t n = 1100;
    char *etf = malloc(7 + n), *s = NULL;
    memcpy(etf, "\x83o\0\0\x04\x4c\1", 7); /* LARGE_BIG_EXT, 1100 bytes, negative */
    memset(etf + 7, 0x11, n);
    int len = edrv_term_format(etf, 7 + n, &s);
    CHECK_INT(len, 4 + 2 * n);
    if (len > 0) {
        bool ok = memcmp(s, "-16#", 4) == 0;
        for (size_t i = 4; i < (size_t)len; i++)
            ok = ok && s[i] == '1';
        CHECK(ok);
    }
    free(s);
    free(etf);
}

/* Control characters in an atom print escaped as Erlang writes them: a NUL
 * was printed as itself, which cut the text short of the returned length. */
static void atom_escapes(void) {
    FORMATS_RAW("'a\\000b'", "d\0\3a\0b");
    FORMATS_RAW("'\\001\\d\\200\xc3\x88'", "d\0\4\1\x7f\x80\xc8");
    FORMATS_RAW("'\\n\\e'", "d\0\2\n\x1b");
}

/* depth nested terms as ETF: lists [[...[]...]], or tuples {{...{ok}...}}
 * (then each arity 1, so the text is exactly depth brackets each side). */
static char *nested(size_t depth, bool tuples, size_t *len) {
    size_t per = tuples ? 2 : 5, n = 1 + depth * per + (tuples ? 4 : 1 + depth);
    char *b = malloc(n), *o = b;
    *o++ = (char)131;
    for (size_t i = 0; i < depth; i++) {
        memcpy(o, tuples ? "\x68\x01" : "\x6c\x00\x00\x00\x01", per);
        o += per;
    }
    if (tuples) {
        memcpy(o, "\x73\x02ok", 4); /* SMALL_ATOM_EXT ok */
        o += 4;
    } else {
        memset(o, ERL_NIL_EXT, 1 + depth); /* the innermost [], then each tail */
        o += 1 + depth;
    }
    *len = (size_t)(o - b);
    return b;
}

/* Deep terms print (the printer keeps its own stack on the heap): they did
 * overflow the thread's stack at about 7000 levels. */
static void deep_nesting(void) {
    size_t depths[] = {9999, 10001, 100000, 1000000};
    for (size_t i = 0; i < sizeof depths / sizeof *depths; i++) {
        for (int tuples = 0; tuples <= 1; tuples++) {
            size_t d = depths[i], len;
            char *etf = nested(d, tuples, &len), *s = NULL;
            int n = edrv_term_format(etf, len, &s);
            CHECK_INT(n, 2 * d + 2); /* ok or [] inside */
            if (n > 0) {
                bool ok = true;
                for (size_t k = 0; k < d; k++)
                    ok = ok && s[k] == (tuples ? '{' : '[') && s[n - 1 - k] == (tuples ? '}' : ']');
                CHECK(ok);
                CHECK(memcmp(s + d, tuples ? "ok" : "[]", 2) == 0);
            }
            free(s);
            free(etf);
        }
    }
}

/* edrv_term_size and edrv_term_skip: where a term ends, at any depth, and
 * nothing read past the bytes given. */
static void sizes_and_skips(void) {
    size_t len;
    char *etf = nested(1000000, 0, &len);
    CHECK_INT(edrv_term_size(etf, len), (long long)len);
    CHECK_INT(edrv_term_size(etf, len - 1), EDRV_EBADTERM);
    CHECK_INT(edrv_term_skip(etf, len, 1), (long long)len);
    CHECK_INT(edrv_term_skip(etf, len - 1, 1), EDRV_EBADTERM);
    free(etf);
    /* {a, [1], <<"b">>} with a byte after it: the skips inside it */
    const char t[] = "\x83\x68\x03\x77\x01" "a" "\x6b\x00\x01\x01"
                     "\x6d\x00\x00\x00\x01" "b" "!";
    size_t n = sizeof t - 1;
    CHECK_INT(edrv_term_size(t, n), (long long)n - 1); /* the byte after it is not read */
    CHECK_INT(edrv_term_skip(t, n, 1), (long long)n - 1);  /* the tuple */
    CHECK_INT(edrv_term_skip(t, n, 3), 6);                 /* the atom */
    CHECK_INT(edrv_term_skip(t, n, 6), 10);                /* "\1" */
    CHECK_INT(edrv_term_skip(t, n, 10), 16);               /* the binary */
    CHECK_INT(edrv_term_skip(t, 15, 10), EDRV_EBADTERM);   /* cut */
    CHECK_INT(edrv_term_skip(t, n, n), EDRV_EBADTERM);     /* at the end */
    CHECK_INT(edrv_term_skip(NULL, n, 1), EDRV_EBADTERM);
    CHECK_INT(edrv_term_size(NULL, n), EDRV_EBADTERM);
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
    {"as_w", as_w},
    {"scalars", scalars},
    {"compound", compound},
    {"other_kinds", other_kinds},
    {"old_floats", old_floats},
    {"non_finite_floats", non_finite_floats},
    {"funs", funs},
    {"empty_list_heads", empty_list_heads},
    {"bit_strings", bit_strings},
    {"long_big_integers", long_big_integers},
    {"atom_escapes", atom_escapes},
    {"deep_nesting", deep_nesting},
    {"sizes_and_skips", sizes_and_skips},
    {"bad_input", bad_input},
    {"mutations", mutations},
    {NULL, NULL},
};

TEST_MAIN(cases)
