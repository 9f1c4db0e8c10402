/*
 * sdrv: the test driver of driver_select. Built against OTP's erl_driver.h
 * alone, so the same .so runs in erl and in edrv (tests/diff/select.scenario,
 * tests/test_select.c).
 *
 * Each port may own a pipe: control ops create it, select its read end (or
 * its write end) with any mode, write into it, and close its write end.
 * ready_input reads what is there and sends it as {Port, {data, Bytes}}; at
 * end of file it sends "eof" and deselects ERL_DRV_READ. ready_output sends
 * "writable" and deselects ERL_DRV_WRITE. stop_select closes the descriptor
 * and counts the calls in a counter global to the .so (SD_STOPS reads it),
 * so any port sees what happened to another's descriptors.
 *
 * Built twice: "sdrv", and "sdrvn" (-DSDRV_NO_READY) with neither
 * ready_input nor ready_output. "sdrv selfail" selects a readable pipe in
 * start and then fails.
 */
#include <erl_driver.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifdef SDRV_NO_READY
#define SDRV_NAME "sdrvn"
#else
#define SDRV_NAME "sdrv"
#endif

enum {
    SD_PIPE = 1,       /* create the pipe (both ends non-blocking); reply "ok" */
    SD_SELECT_RD = 2,  /* driver_select(read end, data[0] mode, data[1] on); reply its return */
    SD_WRITE = 3,      /* write the data into the write end; reply the count */
    SD_STOPS = 4,      /* reply the number of stop_select calls so far */
    SD_SELECT_WR = 5,  /* as SD_SELECT_RD, on the write end */
    SD_CLOSE_WR = 6,   /* close the write end: the read end sees end of file */
    SD_RD_OPEN = 7,    /* reply "open" or "closed": is the read end still open? */
    SD_SELECT_FD = 8,  /* driver_select(data[0..3] as a big-endian int, data[4], data[5]) */
    SD_ON_INPUT = 9,   /* what ready_input does after its output (data[0], IN_*) */
    SD_STOP_DESELECT = 10, /* stop deselects the read end with ERL_DRV_USE */
    SD_OPEN_FILE = 11, /* the read end becomes /dev/null, which epoll refuses */
    SD_WRITE_ORPHAN = 12,  /* write into the pipe of a port that ended selected */
    SD_SELECT_LAST = 13,   /* as SD_SELECT_RD, on the read end SD_PIPE made last (any port's) */
};

enum {
    IN_NOTHING = 0,
    IN_FAIL = 1,     /* driver_failure_atom(port, "boom"), then output "after" */
    IN_STOP_USE = 2, /* deselect with ERL_DRV_USE, then output "stops=N" */
};

typedef struct {
    ErlDrvPort port;
    int rd, wr;
    int on_input;
    int stop_deselect;
} sdrv;

static int stops;           /* stop_select calls */
static int orphan_wr = -1;  /* the write end of a port that ended with its read end selected */
static int last_rd = -1;    /* the read end SD_PIPE made last */

static ErlDrvEvent ev_of(int fd);

static ErlDrvData sd_start(ErlDrvPort port, char *cmd) {
    if (strstr(cmd, " selfail")) {
        /* Selects a readable pipe, then fails: the runtime is left with an
         * fd selected by a port that never started (both ends leak). */
        int fds[2];
        if (pipe(fds) == 0) {
            fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
            driver_select(port, ev_of(fds[0]), ERL_DRV_READ | ERL_DRV_USE, 1);
            if (write(fds[1], "x", 1) != 1)
                return ERL_DRV_ERROR_BADARG;
        }
        return ERL_DRV_ERROR_GENERAL;
    }
    sdrv *s = driver_alloc(sizeof *s);
    if (!s)
        return ERL_DRV_ERROR_GENERAL;
    s->port = port;
    s->rd = s->wr = -1;
    s->on_input = IN_NOTHING;
    s->stop_deselect = 0;
    return (ErlDrvData)s;
}

static ErlDrvEvent ev_of(int fd) {
    return (ErlDrvEvent)(ErlDrvSInt)fd;
}

static void sd_stop(ErlDrvData d) {
    sdrv *s = (sdrv *)d;
    if (s->stop_deselect && s->rd >= 0) {
        driver_select(s->port, ev_of(s->rd), ERL_DRV_USE, 0); /* stop_select closes it */
        s->rd = -1;
    }
    /* The read end is left to the runtime (selected or not); the write end
     * is kept for SD_WRITE_ORPHAN. */
    if (s->wr >= 0) {
        if (orphan_wr >= 0)
            close(orphan_wr);
        orphan_wr = s->wr;
    }
    driver_free(s);
}

static void sd_stop_select(ErlDrvEvent ev, void *reserved) {
    close((int)(ErlDrvSInt)ev);
    stops++;
}

#ifndef SDRV_NO_READY
static void sd_ready_input(ErlDrvData d, ErlDrvEvent ev) {
    sdrv *s = (sdrv *)d;
    char buf[64];
    ssize_t n = read((int)(ErlDrvSInt)ev, buf, sizeof buf);
    if (n > 0) {
        driver_output(s->port, buf, (ErlDrvSizeT)n);
    } else if (n == 0) {
        driver_output(s->port, "eof", 3);
        driver_select(s->port, ev, ERL_DRV_READ, 0);
    } else if (errno != EAGAIN) {
        driver_output(s->port, "error", 5);
        driver_select(s->port, ev, ERL_DRV_READ, 0);
    }
    if (s->on_input == IN_FAIL) {
        driver_failure_atom(s->port, "boom");
        driver_output(s->port, "after", 5); /* dropped: the port is exiting */
    } else if (s->on_input == IN_STOP_USE) {
        driver_select(s->port, ev, ERL_DRV_USE, 0);
        if ((int)(ErlDrvSInt)ev == s->rd)
            s->rd = -1;
        char m[32];
        int len = snprintf(m, sizeof m, "stops=%d", stops);
        driver_output(s->port, m, (ErlDrvSizeT)len);
    }
}

static void sd_ready_output(ErlDrvData d, ErlDrvEvent ev) {
    sdrv *s = (sdrv *)d;
    driver_output(s->port, "writable", 8);
    driver_select(s->port, ev, ERL_DRV_WRITE, 0);
}
#endif

/* Replies go in the runtime's buffer (64 bytes at least). */
static ErlDrvSSizeT reply(char **rbuf, ErlDrvSizeT rlen, const char *text) {
    size_t n = strlen(text) < rlen ? strlen(text) : rlen;
    memcpy(*rbuf, text, n);
    return (ErlDrvSSizeT)n;
}

static ErlDrvSSizeT reply_int(char **rbuf, ErlDrvSizeT rlen, long v) {
    char b[24];
    snprintf(b, sizeof b, "%ld", v);
    return reply(rbuf, rlen, b);
}

static ErlDrvSSizeT sd_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    sdrv *s = (sdrv *)d;
    const unsigned char *u = (const unsigned char *)buf;
    switch (op) {
    case SD_PIPE: {
        int fds[2];
        if (s->rd >= 0 || pipe(fds) < 0)
            return reply(rbuf, rlen, "error");
        for (int i = 0; i < 2; i++) {
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
            fcntl(fds[i], F_SETFD, FD_CLOEXEC);
        }
        s->rd = last_rd = fds[0];
        s->wr = fds[1];
        return reply(rbuf, rlen, "ok");
    }
    case SD_SELECT_RD:
    case SD_SELECT_WR: {
        if (len < 2)
            return -1;
        int fd = op == SD_SELECT_RD ? s->rd : s->wr;
        int rc = driver_select(s->port, ev_of(fd), u[0], u[1]);
        /* A deselect with ERL_DRV_USE hands the descriptor to stop_select. */
        if (!u[1] && (u[0] & ERL_DRV_USE_NO_CALLBACK) == ERL_DRV_USE) {
            if (op == SD_SELECT_RD)
                s->rd = -1;
            else
                s->wr = -1;
        }
        return reply_int(rbuf, rlen, rc);
    }
    case SD_WRITE:
        return reply_int(rbuf, rlen, s->wr < 0 ? -1 : (long)write(s->wr, buf, len));
    case SD_STOPS:
        return reply_int(rbuf, rlen, stops);
    case SD_CLOSE_WR:
        if (s->wr >= 0)
            close(s->wr);
        s->wr = -1;
        return reply(rbuf, rlen, "ok");
    case SD_RD_OPEN:
        return reply(rbuf, rlen, s->rd >= 0 && fcntl(s->rd, F_GETFD) >= 0 ? "open" : "closed");
    case SD_SELECT_FD: {
        if (len < 6)
            return -1;
        int fd = (int)((unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3]);
        return reply_int(rbuf, rlen, driver_select(s->port, ev_of(fd), u[4], u[5]));
    }
    case SD_ON_INPUT:
        s->on_input = len ? u[0] : IN_NOTHING;
        return reply(rbuf, rlen, "ok");
    case SD_STOP_DESELECT:
        s->stop_deselect = 1;
        return reply(rbuf, rlen, "ok");
    case SD_OPEN_FILE:
        if (s->rd >= 0)
            return reply(rbuf, rlen, "error");
        s->rd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return reply(rbuf, rlen, s->rd >= 0 ? "ok" : "error");
    case SD_SELECT_LAST:
        if (len < 2)
            return -1;
        return reply_int(rbuf, rlen, driver_select(s->port, ev_of(last_rd), u[0], u[1]));
    case SD_WRITE_ORPHAN:
        return reply_int(rbuf, rlen, orphan_wr < 0 ? -1 : (long)write(orphan_wr, buf, len));
    }
    return -1;
}

static ErlDrvEntry sdrv_entry = {
    .start = sd_start,
    .stop = sd_stop,
#ifndef SDRV_NO_READY
    .ready_input = sd_ready_input,
    .ready_output = sd_ready_output,
#endif
    .driver_name = SDRV_NAME,
    .control = sd_control,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
    .stop_select = sd_stop_select,
};

#ifdef SDRV_NO_READY
DRIVER_INIT(sdrvn)
#else
DRIVER_INIT(sdrv)
#endif
{
    return &sdrv_entry;
}
