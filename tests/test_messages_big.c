/* Messages of gigabytes: sizes are 64-bit from the driver to the mailbox,
 * and what one ETF term cannot hold (a binary over 2^32-1 bytes, a list over
 * 2^32-1 elements) is refused with -1 and a warning, never cut or lost.
 *
 * The sources are one 16 MiB pattern mapped over and over (as in
 * tests/drivers/bigdrv.c), so only the messages take memory: at most about
 * 4 GiB at a time. The messages are checked by decoding their heads and
 * comparing their bytes with the pattern at their ends and at points in
 * between, never by printing them. This program runs alone (RUN_SERIAL). */
#define _GNU_SOURCE /* memfd_create */
#include "check.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define GiB ((size_t)1 << 30)

static edrv_proc *proc;
static edrv_port port;

static int setup(unsigned flags) {
    proc = trapping_proc();
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "bigdrv");
    return rc ? rc : edrv_open_port(proc, "bigdrv", flags, &port);
}

/* stderr goes to a file while a case runs a call, so that its warning can be
 * checked. */
static FILE *captured;
static int saved_stderr = -1;

static void capture_stderr(void) {
    fflush(stderr);
    captured = tmpfile();
    saved_stderr = dup(2);
    dup2(fileno(captured), 2);
}

/* The text written to stderr since capture_stderr, which it also echoes. */
static char *captured_text(void) {
    static char text[4096];
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    rewind(captured);
    size_t n = fread(text, 1, sizeof text - 1, captured);
    text[n] = '\0';
    fclose(captured);
    fputs(text, stderr);
    return text;
}

/* Runs bigdrv's op with size; returns the driver's reply (the output call's
 * return). Bytes to be refused unread are not prefaulted. */
static int run(unsigned op, uint64_t size, bool read) {
    char arg[9];
    for (int i = 0; i < 8; i++)
        arg[i] = (char)(size >> (56 - 8 * i));
    arg[8] = read;
    edrv_reply r;
    int rc = edrv_port_control(proc, port, op, arg, 9, &r);
    char text[32] = "";
    if (rc == 0 && r.data && r.len < sizeof text)
        memcpy(text, r.data, r.len);
    edrv_reply_free(&r);
    return rc < 0 ? rc : text[0] ? (int)strtol(text, NULL, 10) : -1000;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The offset just past "{Port, {data, " in a data message, or 0. */
static size_t data_start(const edrv_msg *m) {
    int idx = 1, arity;
    erlang_port p;
    char atom[MAXATOMLEN];
    if (ei_decode_tuple_header(m->data, &idx, &arity) < 0 || arity != 2 ||
        ei_decode_port(m->data, &idx, &p) < 0 || p.id != port ||
        ei_decode_tuple_header(m->data, &idx, &arity) < 0 || arity != 2 ||
        ei_decode_atom(m->data, &idx, atom) < 0 || strcmp(atom, "data") != 0)
        return 0;
    return (size_t)idx;
}

/* The offset just past "{ok, " in a term message, or 0. */
static size_t ok_start(const edrv_msg *m) {
    int idx = 1, arity;
    char atom[MAXATOMLEN];
    if (ei_decode_tuple_header(m->data, &idx, &arity) < 0 || arity != 2 ||
        ei_decode_atom(m->data, &idx, atom) < 0 || strcmp(atom, "ok") != 0)
        return 0;
    return (size_t)idx;
}

#define PERIOD ((size_t)16 << 20)

/* The source's byte at offset k (bigdrv's bd_pattern). */
static unsigned char source_byte(uint64_t k) {
    size_t j = (size_t)(k % PERIOD);
    return (unsigned char)(j ^ (j >> 8) ^ (j >> 16));
}

/* The offsets compared in a source of `size` bytes: the first and last 64 KiB
 * whole, and points spread between, the middle's neighbours among them. */
#define EDGE ((uint64_t)64 << 10)
static uint64_t sample(uint64_t i, uint64_t size) {
    if (size <= 2 * EDGE + 256)
        return i;
    if (i < EDGE)
        return i;
    if (i >= EDGE + 256)
        return size - (2 * EDGE + 256 - i);
    uint64_t k = i - EDGE; /* 0..255: spread, then the middle */
    return k < 250 ? EDGE + (size - 2 * EDGE) / 250 * k + k : size / 2 + (k - 253);
}

static uint64_t samples(uint64_t size) {
    return size <= 2 * EDGE + 256 ? size : 2 * EDGE + 256;
}

/* A host-side source like bigdrv's: the pattern mapped over and over. */
static char *source(size_t size, size_t *span) {
    size_t periods = (size + PERIOD - 1) / PERIOD;
    *span = periods * PERIOD;
    int fd = memfd_create("test_messages_big", 0);
    if (fd < 0 || ftruncate(fd, (off_t)PERIOD) != 0)
        return NULL;
    unsigned char *one = mmap(NULL, PERIOD, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *base = mmap(NULL, *span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (one == MAP_FAILED || base == MAP_FAILED)
        return NULL;
    for (size_t j = 0; j < PERIOD; j++)
        one[j] = source_byte(j);
    munmap(one, PERIOD);
    for (size_t k = 0; k < periods; k++)
        if (mmap(base + k * PERIOD, PERIOD, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
                 0) == MAP_FAILED)
            return NULL;
    close(fd);
    return base;
}

/* A list of `hlen` header bytes "hd" then the source's `size` bytes, at `at`:
 * LIST_EXT, each byte a SMALL_INTEGER_EXT, then NIL, ending the message. */
static void check_byte_list(const edrv_msg *m, size_t at, uint64_t hlen, uint64_t size) {
    const unsigned char *d = (const unsigned char *)m->data + at;
    uint64_t n = hlen + size;
    REQUIRE(m->len == at + 5 + 2 * n + 1);
    CHECK_INT(d[0], ERL_LIST_EXT);
    CHECK_INT(be32(d + 1), n);
    const unsigned char *e = d + 5;
    for (uint64_t k = 0; k < hlen; k++)
        CHECK(e[2 * k] == ERL_SMALL_INTEGER_EXT && e[2 * k + 1] == "hd"[k]);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < samples(size); i++) {
        uint64_t k = sample(i, size);
        const unsigned char *x = e + 2 * (hlen + k);
        bad += x[0] != ERL_SMALL_INTEGER_EXT || x[1] != source_byte(k);
    }
    CHECK_INT(bad, 0);
    CHECK_INT(e[2 * n], ERL_NIL_EXT);
}

/* A binary of the source's `size` bytes at `at`, ending the message. */
static void check_binary(const edrv_msg *m, size_t at, uint64_t size) {
    const unsigned char *d = (const unsigned char *)m->data + at;
    REQUIRE(m->len == at + 5 + size);
    CHECK_INT(d[0], ERL_BINARY_EXT);
    CHECK_INT(be32(d + 1), size);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < samples(size); i++) {
        uint64_t k = sample(i, size);
        bad += d[5 + k] != source_byte(k);
    }
    CHECK_INT(bad, 0);
}

static void no_more_messages(void) {
    edrv_msg m;
    CHECK_INT(edrv_receive(proc, 20, &m), EDRV_ETIMEDOUT);
}

/* 1 GiB of port_command data echoed to a list port: a message of 2 GiB and
 * more, which an int offset cannot reach (it was lost). */
static void gib_command_to_list_port(void) {
    REQUIRE(setup(0) == 0);
    uint64_t size = GiB;
    size_t span;
    char *src = source(size, &span);
    REQUIRE(src);
    CHECK_INT(edrv_port_command(proc, port, src, size), 0);
    munmap(src, span);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    size_t at = data_start(&m);
    CHECK(at > 0);
    if (at)
        check_byte_list(&m, at, 2, size);
    edrv_msg_free(&m);
    no_more_messages();
    edrv_proc_free(proc);
}

/* driver_output2 to a list port of more than 2^31 elements (INT_MAX). */
static void over_int_max_elements(void) {
    REQUIRE(setup(0) == 0);
    uint64_t size = 2 * GiB + 3;
    CHECK_INT(run(2, size, true), 0);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    size_t at = data_start(&m);
    CHECK(at > 0);
    if (at)
        check_byte_list(&m, at, 2, size);
    edrv_msg_free(&m);
    no_more_messages();
    edrv_proc_free(proc);
}

/* What ETF cannot hold is refused: -1, a warning with the size, no message.
 * Only the counting pass runs, which reads no byte. */
static void too_big_for_one_term(void) {
    uint64_t over = (uint64_t)1 << 32;
    REQUIRE(setup(0) == 0);
    capture_stderr();
    int out = run(1, over, false);
    char *text = captured_text();
    CHECK_INT(out, -1);
    CHECK(strstr(text, "driver_output: a list of 4294967296 elements") != NULL);
    CHECK(strstr(text, "(4294967295)") != NULL);
    /* The header counts: 2 + (2^32 - 2) elements. */
    CHECK_INT(run(2, over - 2, false), -1);
    CHECK_INT(run(3, over - 2, false), -1);
    CHECK_INT(run(5, over, false), -1); /* STRING */
    CHECK_INT(run(6, over, false), -1); /* STRING_CONS */
    no_more_messages();
    edrv_proc_free(proc);

    REQUIRE(setup(EDRV_PORT_BINARY) == 0);
    capture_stderr();
    out = run(1, over + 16, false);
    text = captured_text();
    CHECK_INT(out, -1);
    CHECK(strstr(text, "driver_output: a binary of 4294967312 bytes") != NULL);
    CHECK_INT(run(3, over, false), -1);
    capture_stderr();
    out = run(4, over + 16, false); /* BUF2BINARY */
    text = captured_text();
    CHECK_INT(out, -1);
    CHECK(strstr(text, "term spec refused (-1): a binary of 4294967312 bytes") != NULL);
    no_more_messages();
    edrv_proc_free(proc);
}

/* The next message is {ok, Binary} of the source's `size` bytes. */
static void check_ok_binary(uint64_t size) {
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    size_t at = ok_start(&m);
    CHECK(at > 0);
    if (at)
        check_binary(&m, at, size);
    edrv_msg_free(&m);
}

/* Binaries of 2 GiB and more in term specs: BUF2BINARY, and EXT2TERM, whose
 * bytes are measured past INT_MAX before they are copied. */
static void spec_binaries_over_2gib(void) {
    REQUIRE(setup(0) == 0);
    uint64_t size = 2 * GiB + 5;
    CHECK_INT(run(4, size, true), 1);
    check_ok_binary(size);
    CHECK_INT(run(7, size, true), 1);
    check_ok_binary(size);
    no_more_messages();
    edrv_proc_free(proc);
}

/* driver_output2 of 2 GiB to a binary port: [104,100|<<Data>>]. */
static void port_binary_over_2gib(void) {
    REQUIRE(setup(EDRV_PORT_BINARY) == 0);
    uint64_t size = 2 * GiB + 5;
    CHECK_INT(run(2, size, true), 0);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    size_t at = data_start(&m);
    CHECK(at > 0);
    if (at) {
        const unsigned char *d = (const unsigned char *)m.data + at;
        CHECK(d[0] == ERL_LIST_EXT && be32(d + 1) == 2);
        CHECK(d[5] == ERL_SMALL_INTEGER_EXT && d[6] == 'h' && d[8] == 'd');
        check_binary(&m, at + 9, size);
    }
    edrv_msg_free(&m);
    no_more_messages();
    edrv_proc_free(proc);
}

/* STRING of 1 GiB and STRING_CONS of 1 GiB on the tail [x]: messages of more
 * than 2 GiB written from term specs. */
static void spec_strings_over_2gib(void) {
    REQUIRE(setup(0) == 0);
    uint64_t size = GiB + 1;
    CHECK_INT(run(5, size, true), 1);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    size_t at = ok_start(&m);
    CHECK(at > 0);
    if (at)
        check_byte_list(&m, at, 0, size);
    edrv_msg_free(&m);

    CHECK_INT(run(6, size, true), 1);
    REQUIRE(edrv_receive(proc, 60000, &m) == 0);
    at = ok_start(&m);
    CHECK(at > 0);
    if (at) {
        const unsigned char *d = (const unsigned char *)m.data + at;
        REQUIRE(m.len == at + 5 + 2 * size + 5 + 3 + 1);
        CHECK_INT(d[0], ERL_LIST_EXT);
        CHECK_INT(be32(d + 1), size);
        CHECK(d[5] == ERL_SMALL_INTEGER_EXT && d[6] == source_byte(0));
        CHECK(d[5 + 2 * (size - 1) + 1] == source_byte(size - 1));
        const unsigned char *tail = d + 5 + 2 * size; /* [x] */
        CHECK(tail[0] == ERL_LIST_EXT && be32(tail + 1) == 1 && tail[5] == ERL_SMALL_ATOM_UTF8_EXT);
        CHECK(tail[8] == ERL_NIL_EXT);
    }
    edrv_msg_free(&m);
    no_more_messages();
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"too_big_for_one_term", too_big_for_one_term},
    {"gib_command_to_list_port", gib_command_to_list_port},
    {"over_int_max_elements", over_int_max_elements},
    {"spec_binaries_over_2gib", spec_binaries_over_2gib},
    {"port_binary_over_2gib", port_binary_over_2gib},
    {"spec_strings_over_2gib", spec_strings_over_2gib},
    {NULL, NULL},
};

TEST_MAIN(cases)
