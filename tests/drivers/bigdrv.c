/*
 * bigdrv: the test driver of big messages (tests/test_messages_big.c): output
 * and term specs of gigabytes, from mappings of zero pages that cost no
 * memory. Built against OTP's erl_driver.h alone, so it runs in erl too.
 *
 * port_control(op, Data): Data is the size, 8 bytes big-endian, then a byte:
 * 1 if the bytes will be read (the source is then prefaulted), 0 if the call
 * is to refuse them unread. The reply is the return of the output function,
 * as a decimal. Command data to the port
 * is echoed with driver_output2 and the header "hd".
 *
 * A source of gigabytes is one 16 MiB memfd mapped over and over (BD_PERIOD),
 * prefaulted with MAP_POPULATE when it is to be read: it costs 16 MiB, and the bytes differ from
 * place to place, so a test can check that they arrive whole and in order:
 * byte k is bd_pattern(k % BD_PERIOD). Anonymous zero pages would not do: on
 * the machine these tests were written on (a VM), reading them allocated
 * real pages, at several microseconds per 4 KiB fault.
 */
#define _GNU_SOURCE /* memfd_create */
#include <erl_driver.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BD_PERIOD ((size_t)16 << 20)
#define BD_PAGE ((size_t)4096)

/* The source's byte at offset j of a period (tests/test_messages_big.c
 * computes the same). */
static unsigned char bd_pattern(size_t j) {
    return (unsigned char)(j ^ (j >> 8) ^ (j >> 16));
}

enum {
    BD_OUTPUT = 1,      /* driver_output of `size` bytes */
    BD_OUTPUT2 = 2,     /* driver_output2, header "hd", then `size` bytes */
    BD_OUTPUTV = 3,     /* driver_outputv, header "hd", one element of `size` bytes */
    BD_BUF2BINARY = 4,  /* erl_drv_output_term: {ok, BUF2BINARY of `size` bytes} */
    BD_STRING = 5,      /* erl_drv_output_term: {ok, STRING of `size` bytes} */
    BD_STRING_CONS = 6, /* erl_drv_output_term: {ok, STRING_CONS of `size` bytes on [x]} */
    BD_EXT2TERM = 7,    /* erl_drv_output_term: {ok, EXT2TERM of a binary of `size` bytes} */
};

typedef struct {
    ErlDrvPort port;
} bigdrv;

static ErlDrvData bd_start(ErlDrvPort port, char *cmd) {
    (void)cmd;
    bigdrv *b = driver_alloc(sizeof *b);
    if (!b)
        return ERL_DRV_ERROR_GENERAL;
    b->port = port;
    return (ErlDrvData)b;
}

static void bd_stop(ErlDrvData d) {
    driver_free(d);
}

static void bd_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    driver_output2(((bigdrv *)d)->port, "hd", 2, buf, len);
}

/* A source of `size` bytes with `front` bytes of private room before it
 * (at most a page), or NULL. *span gets what to munmap. */
static char *source(size_t front, size_t size, int populate, size_t *span) {
    size_t periods = (size + BD_PERIOD - 1) / BD_PERIOD;
    *span = BD_PAGE + periods * BD_PERIOD;
    int fd = memfd_create("bigdrv", 0);
    if (fd < 0)
        return NULL;
    char *base = MAP_FAILED;
    unsigned char *one = MAP_FAILED;
    if (ftruncate(fd, (off_t)BD_PERIOD) != 0)
        goto out;
    one = mmap(NULL, BD_PERIOD, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (one == MAP_FAILED)
        goto out;
    for (size_t j = 0; j < BD_PERIOD; j++)
        one[j] = bd_pattern(j);
    /* The room in front, then the periods, each mapped at its place. */
    base = mmap(NULL, *span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    for (size_t k = 0; base != MAP_FAILED && k < periods; k++) {
        if (mmap(base + BD_PAGE + k * BD_PERIOD, BD_PERIOD, PROT_READ,
                 MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0), fd, 0) == MAP_FAILED) {
            munmap(base, *span);
            base = MAP_FAILED;
        }
    }
out:
    if (one != MAP_FAILED)
        munmap(one, BD_PERIOD);
    close(fd);
    return base == MAP_FAILED ? NULL : base + BD_PAGE - front;
}

static int spec_output(bigdrv *b, int op, char *src, size_t size) {
    ErlDrvTermData s[16];
    int n = 0;
    s[n++] = ERL_DRV_ATOM;
    s[n++] = driver_mk_atom("ok");
    switch (op) {
    case BD_BUF2BINARY: s[n++] = ERL_DRV_BUF2BINARY; break;
    case BD_STRING: s[n++] = ERL_DRV_STRING; break;
    case BD_STRING_CONS:
        s[n++] = ERL_DRV_ATOM;
        s[n++] = driver_mk_atom("x");
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_LIST;
        s[n++] = 2;
        s[n++] = ERL_DRV_STRING_CONS;
        break;
    default: s[n++] = ERL_DRV_EXT2TERM; break;
    }
    s[n++] = (ErlDrvTermData)src;
    s[n++] = (ErlDrvTermData)size;
    s[n++] = ERL_DRV_TUPLE;
    s[n++] = 2;
    return erl_drv_output_term(driver_mk_port(b->port), s, n);
}

static ErlDrvSSizeT bd_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    bigdrv *b = (bigdrv *)d;
    if (len != 9)
        return -1;
    size_t size = 0;
    for (int i = 0; i < 8; i++)
        size = size << 8 | (unsigned char)buf[i];
    /* EXT2TERM: the binary's 6-byte head in front of its bytes. */
    size_t front = op == BD_EXT2TERM ? 6 : 0, span;
    char *m = source(front, size, buf[8], &span);
    if (!m)
        return -1;
    int rc;
    if (op == BD_OUTPUT) {
        rc = driver_output(b->port, m, size);
    } else if (op == BD_OUTPUT2) {
        rc = driver_output2(b->port, "hd", 2, m, size);
    } else if (op == BD_OUTPUTV) {
        SysIOVec iov[1] = {{m, size}};
        ErlDrvBinary *binv[1] = {NULL};
        ErlIOVec ev = {1, size, iov, binv};
        rc = driver_outputv(b->port, "hd", 2, &ev, 0);
    } else if (op >= BD_BUF2BINARY && op <= BD_EXT2TERM) {
        if (op == BD_EXT2TERM) {
            unsigned char h[6] = {131, 109, (unsigned char)(size >> 24), (unsigned char)(size >> 16),
                                  (unsigned char)(size >> 8), (unsigned char)size};
            memcpy(m, h, sizeof h);
            rc = spec_output(b, op, m, front + size);
        } else {
            rc = spec_output(b, op, m, size);
        }
    } else {
        rc = -100;
    }
    munmap(m + front - BD_PAGE, span);
    return (ErlDrvSSizeT)snprintf(*rbuf, (size_t)rlen, "%d", rc);
}

static ErlDrvEntry bigdrv_entry = {
    .start = bd_start,
    .stop = bd_stop,
    .output = bd_output,
    .driver_name = "bigdrv",
    .control = bd_control,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

DRIVER_INIT(bigdrv) {
    return &bigdrv_entry;
}
