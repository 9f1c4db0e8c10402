/*
 * tdrv: the test driver of the port and message tests. Built against OTP's
 * erl_driver.h alone, so the same .so runs in erl and in edrv; the
 * differential tests do exactly that.
 *
 * Behaviour is chosen by port_control op codes (see the TD_* list below); the
 * command data is the argument. Built five times: "tdrv" with an output
 * callback; "tdrvv" (-DTDRV_OUTPUTV) with outputv, which reports the ErlIOVec
 * it got; "tdrva" (-DTDRV_INIT_ACK) with ERL_DRV_FLAG_USE_INIT_ACK; "tdrvs"
 * (-DTDRV_SOFT_BUSY) with ERL_DRV_FLAG_SOFT_BUSY; and "tdrvp"
 * (-DTDRV_PORT_LOCKING) with ERL_DRV_FLAG_USE_PORT_LOCKING: OTP 25 hangs
 * when a driver with the default driver-level lock calls driver_create_port
 * (TD_CREATE) from its control callback (checked in erl), so the
 * differential tests create ports with tdrvp.
 * The start command's words select start failures: "tdrv general", "tdrv
 * errno", "tdrv badarg", "tdrv fail" (driver_failure_atom inside start);
 * "hello" sends output from start, and "stop_term" does what TD_STOP_TERM
 * does (for ports that no control reaches before they end).
 */
#include <erl_driver.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#if defined(TDRV_OUTPUTV)
#define TDRV_NAME "tdrvv"
#elif defined(TDRV_INIT_ACK)
#define TDRV_NAME "tdrva" /* ERL_DRV_FLAG_USE_INIT_ACK: "tdrva ack_now|ack_later|ack_fail" */
#elif defined(TDRV_SOFT_BUSY)
#define TDRV_NAME "tdrvs" /* ERL_DRV_FLAG_SOFT_BUSY: port_command(P, D, [force]) sends */
#elif defined(TDRV_PORT_LOCKING)
#define TDRV_NAME "tdrvp" /* ERL_DRV_FLAG_USE_PORT_LOCKING: OTP 25 needs it for TD_CREATE */
#else
#define TDRV_NAME "tdrv"
#endif

enum {
    TD_ECHO = 1,          /* reply with the data */
    TD_SET_BINARY = 2,    /* set_port_control_flags(PORT_CONTROL_FLAG_BINARY) */
    TD_CLEAR_FLAGS = 3,   /* set_port_control_flags(0) */
    TD_NULL_RBUF = 4,     /* *rbuf = NULL */
    TD_NEGATIVE = 5,      /* return -1 */
    TD_BIG = 6,           /* a 200-byte reply in a driver buffer or binary */
    TD_OUTPUT = 10,       /* driver_output(data) */
    TD_OUTPUT2 = 11,      /* driver_output2: data[0] is the header length */
    TD_OUTPUT_BINARY = 12,/* driver_output_binary("hd", bin(data), 1, len - 2) */
    TD_OUTPUTV = 13,      /* driver_outputv("hd", [first half, second half], skip data[0]) */
    TD_OUTPUT_IN_CONTROL = 14, /* output "out", reply "rep" */
    TD_FAIL_EOF = 20,
    TD_FAIL_ATOM = 21,    /* data is the atom */
    TD_FAIL_POSIX = 22,   /* data[0] is the errno */
    TD_FAIL = 23,         /* data[0] is the error */
    TD_EXIT = 24,         /* data[0] is the error */
    TD_FAIL_SANDWICH = 25,/* output "x", fail "boom", output "y" */
    TD_FAIL_TWICE = 26,   /* reply with the two returns of driver_failure_atom */
    TD_TERM = 30,         /* erl_drv_output_term of spec number data[0] */
    TD_BAD_TERM = 31,     /* reply with the return for bad spec data[0] */
    TD_SEND_CALLER = 32,  /* erl_drv_send_term to driver_caller: {hello, Port} */
    TD_SEND_ATOM = 33,    /* erl_drv_send_term with an atom as receiver */
    TD_CHECKED_TERM = 34, /* reply erl_drv_output_term's return for spec data[0] of checked_spec */
    TD_CALLERS = 40,      /* {callers, StartCaller, ControlCaller, Connected} */
    TD_STOP_TERM = 41,    /* stop will send from_stop with output_term */
    TD_PORT_FLAGS = 42,   /* reply with get_port_flags as a decimal */
    TD_SET_TIMER = 50,    /* driver_set_timer(data: milliseconds, 4 bytes); reply its return */
    TD_CANCEL_TIMER = 51, /* reply driver_cancel_timer's return */
    TD_READ_TIMER = 52,   /* reply "rc,L": L is 1 if at least 500 ms are left, else 0 */
    TD_ENQ = 60,          /* driver_enq(data); reply its return */
    TD_PUSHQ = 61,        /* driver_pushq(data) */
    TD_DEQ = 62,          /* driver_deq(data[0]); reply its return (signed) */
    TD_SIZEQ = 63,        /* reply driver_sizeq (signed) */
    TD_PEEKQ = 64,        /* reply "vlen:" then the queued bytes, via driver_peekq */
    TD_ENQ_BIN = 65,      /* driver_enq_bin(binary of data, offset 1, len - 2) */
    TD_PEEKQV = 66,       /* reply "vsize,size" via driver_peekqv */
    TD_EMPTY_ON = 67,     /* data[0]: 1 timeout, 2 flush: that callback empties the queue */
    TD_ENQV = 68,         /* driver_enqv of data split in two binaries, skip 1 */
    TD_MONITOR = 70,      /* driver_monitor_process(driver_caller); reply its return */
    TD_DEMONITOR = 71,    /* reply driver_demonitor_process's return */
    TD_MONITORED = 72,    /* sends {monitored, driver_get_monitored_process(...)} */
    TD_OS_PID = 73,       /* erl_drv_set_os_pid(4711) */
    TD_BUSY = 74,         /* set_busy_port(data[0]) */
    TD_MSGQ = 75,         /* erl_drv_busy_msgq_limits(low:4, high:4); reply "low,high" (-1: disabled) */
    TD_SLEEP = 76,        /* sleeps data[0] * 10 ms in the callback */
    TD_CREATE = 77,       /* driver_create_port for the caller; sends it {created, Port} */
    TD_BROKEN_PIPE = 78,  /* write to a pipe with no reader, here and in a driver thread;
                             reply "control=R,thread=R", R: epipe, or what else happened */
    TD_GATE = 79,         /* data: entered_fd:4 release_fd:4; writes a byte to entered_fd,
                             then blocks in read(release_fd): the callback holds the
                             emulator until the test lets it go. Reply "ok", or "error" */
    TD_TIMER_EXIT = 80,   /* driver_set_timer(data: ms, 4 bytes), then driver_exit(port, 0)
                             in the same callback: the timer cannot fire before the end */
    TD_CRASH = 81,        /* writes through a NULL pointer: the VM (or edrv node) dies */
};

typedef struct {
    ErlDrvPort port;
    ErlDrvTermData start_caller;
    int term_in_stop;
    int empty_on; /* TD_EMPTY_ON */
    int ack_mode; /* tdrva: 1 ack from the timer, 2 ack a failure from it */
    ErlDrvMonitor mon;
} tdrv;

static ErlDrvData td_start(ErlDrvPort port, char *cmd) {
    if (strstr(cmd, " general"))
        return ERL_DRV_ERROR_GENERAL;
    if (strstr(cmd, " errno")) {
        errno = ENOENT;
        return ERL_DRV_ERROR_ERRNO;
    }
    if (strstr(cmd, " badarg"))
        return ERL_DRV_ERROR_BADARG;
    int fail = strstr(cmd, " fail") != NULL;
    tdrv *t = driver_alloc(sizeof *t);
    if (!t)
        return ERL_DRV_ERROR_GENERAL;
    t->port = port;
    t->start_caller = driver_caller(port);
    t->term_in_stop = strstr(cmd, " stop_term") != NULL; /* as TD_STOP_TERM */
    t->empty_on = 0;
    if (strstr(cmd, " hello"))
        driver_output(port, "hello", 5);
    if (fail)
        driver_failure_atom(port, "failed_in_start");
#ifdef TDRV_INIT_ACK
    if (strstr(cmd, " ack_now")) {
        erl_drv_init_ack(port, (ErlDrvData)t);
    } else {
        t->ack_mode = strstr(cmd, " ack_fail") ? 2 : 1;
        driver_set_timer(port, 20);
    }
#endif
    return (ErlDrvData)t; /* with init ack, the callbacks before the ack get it */
}

static void td_stop(ErlDrvData d) {
    tdrv *t = (tdrv *)d;
    if (t->term_in_stop) {
        ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("from_stop")};
        erl_drv_output_term(driver_mk_port(t->port), spec, 2);
    }
    driver_free(t);
}

#ifdef TDRV_OUTPUTV
/* Reports the vector: {outputv, VSize, Size, [Len0, Len1, ...], Data}. */
static void td_outputv(ErlDrvData d, ErlIOVec *ev) {
    tdrv *t = (tdrv *)d;
    ErlDrvTermData spec[16 + 2 * 8];
    int n = 0;
    char flat[256];
    ErlDrvSizeT len = driver_vec_to_buf(ev, flat, sizeof flat);
    spec[n++] = ERL_DRV_ATOM; spec[n++] = driver_mk_atom("outputv");
    spec[n++] = ERL_DRV_INT; spec[n++] = (ErlDrvTermData)ev->vsize;
    spec[n++] = ERL_DRV_INT; spec[n++] = (ErlDrvTermData)ev->size;
    int k = ev->vsize < 8 ? ev->vsize : 8;
    for (int i = 0; i < k; i++) {
        spec[n++] = ERL_DRV_UINT;
        spec[n++] = (ErlDrvTermData)ev->iov[i].iov_len;
    }
    spec[n++] = ERL_DRV_NIL;
    spec[n++] = ERL_DRV_LIST; spec[n++] = (ErlDrvTermData)k + 1;
    spec[n++] = ERL_DRV_BUF2BINARY; spec[n++] = (ErlDrvTermData)flat; spec[n++] = len;
    spec[n++] = ERL_DRV_TUPLE; spec[n++] = 5;
    erl_drv_output_term(driver_mk_port(t->port), spec, n);
}
#else
static void td_output(ErlDrvData d, char *buf, ErlDrvSizeT len) {
    tdrv *t = (tdrv *)d;
    driver_output2(t->port, "out:", 4, buf, len);
}
#endif

/* Term specs for TD_TERM, covering every tag. */
static int term_spec(tdrv *t, int which, ErlDrvTermData *s, ErlDrvBinary *bin, double *f,
                     ErlDrvSInt64 *i64, ErlDrvUInt64 *u64, char *ext) {
    int n = 0;
    ErlDrvTermData port = driver_mk_port(t->port);
    switch (which) {
    case 0: /* {ok, Port} */
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("ok");
        s[n++] = ERL_DRV_PORT; s[n++] = port;
        s[n++] = ERL_DRV_TUPLE; s[n++] = 2;
        break;
    case 1: /* [1, -1, 4294967295, 1.5, -9007199254740993, 18446744073709551615] */
        s[n++] = ERL_DRV_INT; s[n++] = (ErlDrvTermData)1;
        s[n++] = ERL_DRV_INT; s[n++] = (ErlDrvTermData)(ErlDrvSInt)-1;
        s[n++] = ERL_DRV_UINT; s[n++] = (ErlDrvTermData)4294967295u;
        s[n++] = ERL_DRV_FLOAT; s[n++] = (ErlDrvTermData)f;
        s[n++] = ERL_DRV_INT64; s[n++] = (ErlDrvTermData)i64;
        s[n++] = ERL_DRV_UINT64; s[n++] = (ErlDrvTermData)u64;
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_LIST; s[n++] = 7;
        break;
    case 2: /* {<<"inary">>, <<"buf">>, "str", [104,105|tail], [], {}} */
        s[n++] = ERL_DRV_BINARY; s[n++] = (ErlDrvTermData)bin; s[n++] = 5; s[n++] = 1;
        s[n++] = ERL_DRV_BUF2BINARY; s[n++] = (ErlDrvTermData) "buf"; s[n++] = 3;
        s[n++] = ERL_DRV_STRING; s[n++] = (ErlDrvTermData) "str"; s[n++] = 3;
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("tail");
        s[n++] = ERL_DRV_STRING_CONS; s[n++] = (ErlDrvTermData) "hi"; s[n++] = 2;
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_TUPLE; s[n++] = 0;
        s[n++] = ERL_DRV_TUPLE; s[n++] = 6;
        break;
    case 3: /* #{a => 1, b => [ext term]} with EXT2TERM and a caller pid */
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("a");
        s[n++] = ERL_DRV_INT; s[n++] = 1;
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("b");
        s[n++] = ERL_DRV_EXT2TERM; s[n++] = (ErlDrvTermData)ext; s[n++] = 9;
        s[n++] = ERL_DRV_PID; s[n++] = driver_caller(t->port);
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_LIST; s[n++] = 3;
        s[n++] = ERL_DRV_MAP; s[n++] = 2;
        break;
    case 4: /* an improper list [a | b] and an empty STRING_CONS */
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("a");
        s[n++] = ERL_DRV_ATOM; s[n++] = driver_mk_atom("b");
        s[n++] = ERL_DRV_LIST; s[n++] = 2;
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_STRING_CONS; s[n++] = (ErlDrvTermData) ""; s[n++] = 0;
        s[n++] = ERL_DRV_TUPLE; s[n++] = 2;
        break;
    case 5: { /* a long list built with LIST: 1000 integers */
        for (int i = 0; i < 1000; i++) {
            s[n++] = ERL_DRV_INT;
            s[n++] = (ErlDrvTermData)i;
        }
        s[n++] = ERL_DRV_NIL;
        s[n++] = ERL_DRV_LIST; s[n++] = 1001;
        break;
    }
    }
    return n;
}

static int bad_spec(tdrv *t, int which) {
    ErlDrvTermData port = driver_mk_port(t->port);
    ErlDrvTermData two[] = {ERL_DRV_ATOM, driver_mk_atom("a"), ERL_DRV_ATOM, driver_mk_atom("b")};
    ErlDrvTermData unknown[] = {99, 0};
    ErlDrvTermData short_tuple[] = {ERL_DRV_NIL, ERL_DRV_TUPLE, 3};
    ErlDrvTermData short_list[] = {ERL_DRV_NIL, ERL_DRV_LIST, 3};
    ErlDrvTermData no_arg[] = {ERL_DRV_ATOM};
    char bad_ext[] = {(char)131, (char)255, 7};
    ErlDrvTermData ext[] = {ERL_DRV_EXT2TERM, (ErlDrvTermData)bad_ext, 3};
    switch (which) {
    case 0: return erl_drv_output_term(port, two, 4);
    case 1: return erl_drv_output_term(port, unknown, 2);
    case 2: return erl_drv_output_term(port, short_tuple, 3);
    case 3: return erl_drv_output_term(port, short_list, 3);
    case 4: return erl_drv_output_term(port, two, 0);
    case 5: return erl_drv_output_term(port, no_arg, 1);
    case 6: return erl_drv_output_term(port, ext, 3);
    case 7: return erl_drv_send_term(port, driver_caller(t->port), two, 4);
    default: return -100;
    }
}

/* Specs that ERTS checks beyond their shape (OTP 25, checked in erl): a
 * float must be finite, and a map's keys must differ as terms (=:=), however
 * they are written: -1 and nothing sent otherwise. */
#define CK_ATOM(name) ERL_DRV_ATOM, driver_mk_atom(name)
#define CK_SPEC(...)                                                    \
    do {                                                                \
        ErlDrvTermData t_[] = {__VA_ARGS__};                            \
        memcpy(s, t_, sizeof t_);                                       \
        n = (int)(sizeof t_ / sizeof t_[0]);                            \
    } while (0)

static int checked_spec(tdrv *t, int which) {
    static double one = 1.0, zero = 0.0, minus_zero = -0.0, nan_ = 0.0, inf = 0.0;
    static char dup_ext[] = {(char)131, 116, 0, 0, 0, 2, 97, 1, 97, 2, 97, 1, 97, 3};
    static char nan_ext[] = {(char)131, 70, 0x7f, (char)0xf8, 0, 0, 0, 0, 0, 0};
    static char ba_ext[] = {(char)131, 116, 0, 0, 0, 2, 100, 0, 1, 'b', 97, 2, 100, 0, 1, 'a', 97, 3};
    static char atom_ext[] = {(char)131, 100, 0, 1, 'a'};
    static char big_one[] = {(char)131, 110, 2, 0, 1, 0}; /* 1 as a SMALL_BIG_EXT */
    static char bits8_ext[] = {(char)131, 77, 0, 0, 0, 2, 8, 'a', 'b'};
    static char bits3_ext[] = {(char)131, 77, 0, 0, 0, 1, 3, (char)0xff};
    static char float_text[33] = {(char)131, 99};
    ErlDrvTermData s[200];
    int n = 0;
    nan_ = zero / zero;
    inf = one / zero;
    switch (which) {
    case 0: /* #{1 => a, 1 => b} */
        CK_SPEC(ERL_DRV_INT, 1, CK_ATOM("a"), ERL_DRV_INT, 1, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 1: /* #{1 => a, 1.0 => b}: two keys */
        CK_SPEC(ERL_DRV_INT, 1, CK_ATOM("a"), ERL_DRV_FLOAT, (ErlDrvTermData)&one, CK_ATOM("b"),
                ERL_DRV_MAP, 2);
        break;
    case 2: CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&nan_); break;
    case 3: CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&inf); break;
    case 4: inf = -inf; CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&inf); break;
    case 5: /* 0.0 and -0.0: one key in OTP 25 */
        CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&zero, CK_ATOM("a"), ERL_DRV_FLOAT,
                (ErlDrvTermData)&minus_zero, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 6: /* "ab" as STRING and as a LIST of integers */
        CK_SPEC(ERL_DRV_STRING, (ErlDrvTermData) "ab", 2, CK_ATOM("a"), ERL_DRV_INT, 97,
                ERL_DRV_INT, 98, ERL_DRV_NIL, ERL_DRV_LIST, 3, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 7: /* #{#{a => 1, b => 2} => x, #{b => 2, a => 1} => y} */
        CK_SPEC(CK_ATOM("a"), ERL_DRV_INT, 1, CK_ATOM("b"), ERL_DRV_INT, 2, ERL_DRV_MAP, 2,
                CK_ATOM("x"), CK_ATOM("b"), ERL_DRV_INT, 2, CK_ATOM("a"), ERL_DRV_INT, 1,
                ERL_DRV_MAP, 2, CK_ATOM("y"), ERL_DRV_MAP, 2);
        break;
    case 8: CK_SPEC(ERL_DRV_EXT2TERM, (ErlDrvTermData)dup_ext, sizeof dup_ext); break;
    case 9: CK_SPEC(ERL_DRV_EXT2TERM, (ErlDrvTermData)nan_ext, sizeof nan_ext); break;
    case 10: /* [1 | [2]] and [1, 2] */
        CK_SPEC(ERL_DRV_INT, 1, ERL_DRV_INT, 2, ERL_DRV_NIL, ERL_DRV_LIST, 2, ERL_DRV_LIST, 2,
                CK_ATOM("a"), ERL_DRV_INT, 1, ERL_DRV_INT, 2, ERL_DRV_NIL, ERL_DRV_LIST, 3,
                CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 11: /* 40 keys (a hash map in ERTS), 0 twice */
        for (int i = 0; i < 40; i++) {
            s[n++] = ERL_DRV_INT;
            s[n++] = (ErlDrvTermData)(i == 39 ? 0 : i);
            s[n++] = ERL_DRV_INT;
            s[n++] = (ErlDrvTermData)i;
        }
        s[n++] = ERL_DRV_MAP;
        s[n++] = 40;
        break;
    case 12: /* EXT2TERM #{b => 2, a => 3}: fine in any order */
        CK_SPEC(ERL_DRV_EXT2TERM, (ErlDrvTermData)ba_ext, sizeof ba_ext);
        break;
    case 13: /* INT 1 and UINT 1 */
        CK_SPEC(ERL_DRV_INT, 1, CK_ATOM("a"), ERL_DRV_UINT, 1, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 14: /* the atom a, made here and as ATOM_EXT in EXT2TERM */
        CK_SPEC(CK_ATOM("a"), CK_ATOM("a"), ERL_DRV_EXT2TERM, (ErlDrvTermData)atom_ext,
                sizeof atom_ext, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 15: /* 1, and 1 as a SMALL_BIG_EXT */
        CK_SPEC(ERL_DRV_INT, 1, CK_ATOM("a"), ERL_DRV_EXT2TERM, (ErlDrvTermData)big_one,
                sizeof big_one, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 16: /* "" and [] */
        CK_SPEC(ERL_DRV_STRING, (ErlDrvTermData) "", 0, CK_ATOM("a"), ERL_DRV_NIL, CK_ATOM("b"),
                ERL_DRV_MAP, 2);
        break;
    case 17: /* <<"ab">>, and as a bit string of 8 bits in its last byte */
        CK_SPEC(ERL_DRV_BUF2BINARY, (ErlDrvTermData) "ab", 2, CK_ATOM("a"), ERL_DRV_EXT2TERM,
                (ErlDrvTermData)bits8_ext, sizeof bits8_ext, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 18: /* <<7:3>> with its unused bits set */
        CK_SPEC(ERL_DRV_EXT2TERM, (ErlDrvTermData)bits3_ext, sizeof bits3_ext);
        break;
    case 19: /* FLOAT_EXT "nan" */
    case 20: /* FLOAT_EXT 1.5 */
        memset(float_text + 2, 0, 31);
        snprintf(float_text + 2, 31, which == 19 ? "nan" : "%.20e", 1.5);
        CK_SPEC(ERL_DRV_EXT2TERM, (ErlDrvTermData)float_text, sizeof float_text);
        break;
    case 21: /* [$a, $b] from STRING_CONS, and "ab" */
        CK_SPEC(ERL_DRV_NIL, ERL_DRV_STRING_CONS, (ErlDrvTermData) "ab", 2, CK_ATOM("a"),
                ERL_DRV_STRING, (ErlDrvTermData) "ab", 2, CK_ATOM("b"), ERL_DRV_MAP, 2);
        break;
    case 22: /* -0.0 alone is a float like any other */
        CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&minus_zero);
        break;
    case 23: /* a key with a NaN inside: the float's check comes first */
        CK_SPEC(ERL_DRV_FLOAT, (ErlDrvTermData)&nan_, ERL_DRV_TUPLE, 1, CK_ATOM("a"), ERL_DRV_MAP, 1);
        break;
    default:
        return -100;
    }
    return erl_drv_output_term(driver_mk_port(t->port), s, n);
}

/* A timer's callback: says so to the owner (and may empty the queue). */
static void td_timeout(ErlDrvData d) {
    tdrv *t = (tdrv *)d;
#ifdef TDRV_INIT_ACK
    if (t->ack_mode) {
        /* A failed ack ends the port: stop still runs, with start's data,
         * and frees it (OTP 25 does that too). */
        int failed = t->ack_mode == 2;
        t->ack_mode = 0;
        erl_drv_init_ack(t->port, failed ? ERL_DRV_ERROR_BADARG : (ErlDrvData)t);
        return;
    }
#endif
    driver_output(t->port, "timeout", 7);
    if (t->empty_on == 1)
        driver_deq(t->port, driver_sizeq(t->port));
}

/* A monitored process ended: {process_exit, Same} where Same tells whether
 * the monitor is the one TD_MONITOR made. */
static void td_process_exit(ErlDrvData d, ErlDrvMonitor *m) {
    tdrv *t = (tdrv *)d;
    ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("process_exit"), ERL_DRV_ATOM,
                             driver_mk_atom(driver_compare_monitors(m, &t->mon) == 0 ? "same" : "other"),
                             ERL_DRV_TUPLE, 2};
    erl_drv_output_term(driver_mk_port(t->port), spec, 6);
}

/* Called by port_close with data queued; its output is dropped. */
static void td_flush(ErlDrvData d) {
    tdrv *t = (tdrv *)d;
    driver_output(t->port, "flush", 5);
    if (t->empty_on == 2)
        driver_deq(t->port, driver_sizeq(t->port));
}

#define REPLY(...) return (ErlDrvSSizeT)snprintf(*rbuf, (size_t)rlen, __VA_ARGS__)

/* Writes a byte to a pipe whose read end is closed: "epipe" when the write
 * fails with EPIPE (the process lives on: ERTS ignores SIGPIPE). */
static const char *broken_pipe(void) {
    int fd[2];
    if (pipe(fd) != 0)
        return "no_pipe";
    close(fd[0]);
    ssize_t n = write(fd[1], "x", 1);
    int e = errno;
    close(fd[1]);
    return n < 0 && e == EPIPE ? "epipe" : n < 0 ? "other_error" : "written";
}

static unsigned get32(const char *buf) {
    const unsigned char *u = (const unsigned char *)buf;
    return (unsigned)u[0] << 24 | (unsigned)u[1] << 16 | (unsigned)u[2] << 8 | u[3];
}

/* TD_GATE: says that the callback runs, then waits until it may return. */
static const char *gate(int entered_fd, int release_fd) {
    char b = 'g';
    ssize_t n;
    while ((n = write(entered_fd, &b, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1)
        return "error";
    while ((n = read(release_fd, &b, 1)) < 0 && errno == EINTR)
        ;
    return n == 1 ? "ok" : "error";
}

static void *broken_pipe_thread(void *arg) {
    *(const char **)arg = broken_pipe();
    return NULL;
}

static ErlDrvSSizeT td_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                               char **rbuf, ErlDrvSizeT rlen) {
    tdrv *t = (tdrv *)d;
    ErlDrvPort port = t->port;
    int arg = len ? (unsigned char)buf[0] : 0;
    switch (op) {
    case TD_ECHO:
        if (len > rlen) {
            *rbuf = driver_alloc(len);
            if (!*rbuf)
                return -1;
        }
        memcpy(*rbuf, buf, len);
        return (ErlDrvSSizeT)len;
    case TD_SET_BINARY:
        set_port_control_flags(port, PORT_CONTROL_FLAG_BINARY);
        return 0;
    case TD_CLEAR_FLAGS:
        set_port_control_flags(port, 0);
        return 0;
    case TD_NULL_RBUF:
        *rbuf = NULL;
        return 0;
    case TD_NEGATIVE:
        return -1;
    case TD_BIG: {
        int binary = 0;
        char probe[1];
        (void)probe;
        /* The reply form follows the port's control flags, which the test set. */
        binary = len && buf[0] == 'b';
        if (binary) {
            ErlDrvBinary *b = driver_alloc_binary(200);
            memset(b->orig_bytes, 'B', 200);
            *rbuf = (char *)b;
        } else {
            *rbuf = driver_alloc(200);
            memset(*rbuf, 'L', 200);
        }
        return 200;
    }
    case TD_OUTPUT:
        driver_output(port, buf, len);
        return 0;
    case TD_OUTPUT2: {
        if (!len)
            return -1;
        size_t h = (size_t)arg;
        if (h > len - 1)
            h = len - 1;
        driver_output2(port, buf + 1, h, buf + 1 + h, len - 1 - h);
        return 0;
    }
    case TD_OUTPUT_BINARY: {
        if (len < 1)
            return -1;
        ErlDrvBinary *b = driver_alloc_binary(len);
        if (!b)
            return -1;
        memcpy(b->orig_bytes, buf, len);
        driver_output_binary(port, "hd", 2, b, 1, len >= 2 ? len - 2 : 0);
        driver_output_binary(port, NULL, 0, b, 1, len >= 2 ? len - 2 : 0);
        driver_free_binary(b);
        return 0;
    }
    case TD_OUTPUTV: {
        /* data: skip byte, then the bytes, split in two binaries */
        size_t n = len ? len - 1 : 0, h = n / 2;
        ErlDrvBinary *a = driver_alloc_binary(h), *b = driver_alloc_binary(n - h);
        memcpy(a->orig_bytes, buf + 1, h);
        memcpy(b->orig_bytes, buf + 1 + h, n - h);
        SysIOVec iov[2] = {{a->orig_bytes, h}, {b->orig_bytes, n - h}};
        ErlDrvBinary *binv[2] = {a, b};
        ErlIOVec ev = {2, n, iov, binv};
        driver_outputv(port, "hd", 2, &ev, (ErlDrvSizeT)arg);
        driver_outputv(port, NULL, 0, &ev, (ErlDrvSizeT)arg);
        driver_free_binary(a);
        driver_free_binary(b);
        return 0;
    }
    case TD_OUTPUT_IN_CONTROL:
        driver_output(port, "out", 3);
        memcpy(*rbuf, "rep", 3);
        return 3;
    case TD_FAIL_EOF:
        driver_failure_eof(port);
        return 0;
    case TD_FAIL_ATOM: {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)len, buf);
        driver_failure_atom(port, name);
        return 0;
    }
    case TD_FAIL_POSIX:
        driver_failure_posix(port, arg);
        return 0;
    case TD_FAIL:
        driver_failure(port, arg);
        return 0;
    case TD_EXIT:
        driver_exit(port, arg);
        return 0;
    case TD_FAIL_SANDWICH:
        driver_output(port, "x", 1);
        driver_failure_atom(port, "boom");
        driver_output(port, "y", 1);
        return 0;
    case TD_FAIL_TWICE: {
        int a = driver_failure_atom(port, "first");
        int b = driver_failure_atom(port, "second");
        REPLY("%d,%d", a, b);
    }
    case TD_TERM: {
        static ErlDrvTermData s[2100];
        ErlDrvBinary *bin = driver_alloc_binary(6);
        if (!bin)
            return -1;
        memcpy(bin->orig_bytes, "binary", 6);
        double f = 1.5;
        ErlDrvSInt64 i64 = -9007199254740993LL;
        ErlDrvUInt64 u64 = 18446744073709551615ULL;
        char ext[] = {(char)131, 104, 2, 100, 0, 1, 'x', 97, 7}; /* {x, 7} */
        int n = term_spec(t, arg, s, bin, &f, &i64, &u64, ext);
        int rc = erl_drv_output_term(driver_mk_port(port), s, n);
        driver_free_binary(bin); /* the runtime holds its own reference */
        REPLY("%d", rc);
    }
    case TD_BAD_TERM:
        REPLY("%d", bad_spec(t, arg));
    case TD_CHECKED_TERM:
        REPLY("%d", checked_spec(t, arg));
    case TD_SEND_CALLER: {
        ErlDrvTermData s[] = {ERL_DRV_ATOM, driver_mk_atom("hello"), ERL_DRV_PORT,
                              driver_mk_port(port), ERL_DRV_TUPLE, 2};
        REPLY("%d", erl_drv_send_term(driver_mk_port(port), driver_caller(port), s, 6));
    }
    case TD_SEND_ATOM: {
        ErlDrvTermData s[] = {ERL_DRV_ATOM, driver_mk_atom("hello")};
        REPLY("%d", erl_drv_send_term(driver_mk_port(port), driver_mk_atom("x"), s, 2));
    }
    case TD_CALLERS: {
        ErlDrvTermData s[] = {ERL_DRV_ATOM, driver_mk_atom("callers"),
                              ERL_DRV_PID, t->start_caller,
                              ERL_DRV_PID, driver_caller(port),
                              ERL_DRV_PID, driver_connected(port),
                              ERL_DRV_TUPLE, 4};
        erl_drv_output_term(driver_mk_port(port), s, 10);
        return 0;
    }
    case TD_STOP_TERM:
        t->term_in_stop = 1;
        return 0;
    case TD_PORT_FLAGS:
        REPLY("%d", get_port_flags(port));
    case TD_SET_TIMER: {
        if (len < 4)
            return -1;
        const unsigned char *u = (const unsigned char *)buf;
        unsigned long ms = (unsigned long)u[0] << 24 | (unsigned long)u[1] << 16 |
                           (unsigned long)u[2] << 8 | u[3];
        REPLY("%d", driver_set_timer(port, ms));
    }
    case TD_CANCEL_TIMER:
        REPLY("%d", driver_cancel_timer(port));
    case TD_ENQ:
        REPLY("%d", driver_enq(port, buf, len));
    case TD_PUSHQ:
        REPLY("%d", driver_pushq(port, buf, len));
    case TD_DEQ:
        REPLY("%ld", (long)driver_deq(port, (ErlDrvSizeT)arg));
    case TD_SIZEQ:
        REPLY("%ld", (long)driver_sizeq(port));
    case TD_PEEKQ: {
        int vlen = -7;
        SysIOVec *iov = driver_peekq(port, &vlen);
        int n = snprintf(*rbuf, (size_t)rlen, "%d:", vlen);
        for (int i = 0; iov && i < vlen; i++)
            for (size_t k = 0; k < iov[i].iov_len && n < (int)rlen; k++)
                (*rbuf)[n++] = ((char *)iov[i].iov_base)[k];
        return n;
    }
    case TD_ENQ_BIN: {
        if (len < 2)
            return -1;
        ErlDrvBinary *b = driver_alloc_binary(len);
        if (!b)
            return -1;
        memcpy(b->orig_bytes, buf, len);
        int rc = driver_enq_bin(port, b, 1, len - 2);
        driver_free_binary(b); /* the queue holds its own reference */
        REPLY("%d", rc);
    }
    case TD_PEEKQV: {
        ErlIOVec ev;
        long size = (long)driver_peekqv(port, &ev);
        REPLY("%d,%ld", size < 0 ? -1 : ev.vsize, size);
    }
    case TD_EMPTY_ON:
        t->empty_on = arg;
        return 0;
    case TD_ENQV: {
        size_t h = len / 2;
        ErlDrvBinary *a = driver_alloc_binary(h), *b = driver_alloc_binary(len - h);
        if (!a || !b)
            return -1;
        memcpy(a->orig_bytes, buf, h);
        memcpy(b->orig_bytes, buf + h, len - h);
        SysIOVec iov[2] = {{a->orig_bytes, h}, {b->orig_bytes, len - h}};
        ErlDrvBinary *binv[2] = {a, b};
        ErlIOVec ev = {2, len, iov, binv};
        int rc = driver_enqv(port, &ev, 1);
        driver_free_binary(a);
        driver_free_binary(b);
        REPLY("%d", rc);
    }
    case TD_MONITOR:
        REPLY("%d", driver_monitor_process(port, driver_caller(port), &t->mon));
    case TD_DEMONITOR:
        REPLY("%d", driver_demonitor_process(port, &t->mon));
    case TD_MONITORED: {
        ErlDrvTermData who = driver_get_monitored_process(port, &t->mon);
        ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("monitored"),
                                 who == driver_term_nil ? ERL_DRV_NIL : ERL_DRV_PID, who,
                                 ERL_DRV_TUPLE, 2};
        int n = 6;
        if (who == driver_term_nil) { /* NIL takes no argument */
            spec[2] = ERL_DRV_NIL;
            spec[3] = ERL_DRV_TUPLE;
            spec[4] = 2;
            n = 5;
        }
        erl_drv_output_term(driver_mk_port(port), spec, n);
        return 0;
    }
    case TD_BUSY:
        set_busy_port(port, arg);
        return 0;
    case TD_MSGQ: {
        if (len < 8)
            return -1;
        const unsigned char *u = (const unsigned char *)buf;
        ErlDrvSizeT lo = (ErlDrvSizeT)u[0] << 24 | (ErlDrvSizeT)u[1] << 16 | (ErlDrvSizeT)u[2] << 8 | u[3];
        ErlDrvSizeT hi = (ErlDrvSizeT)u[4] << 24 | (ErlDrvSizeT)u[5] << 16 | (ErlDrvSizeT)u[6] << 8 | u[7];
        if (lo == 0xffffffff)
            lo = ERL_DRV_BUSY_MSGQ_DISABLED;
        if (hi == 0xffffffff)
            hi = ERL_DRV_BUSY_MSGQ_DISABLED;
        erl_drv_busy_msgq_limits(port, &lo, &hi);
        REPLY("%ld,%ld", lo == ERL_DRV_BUSY_MSGQ_DISABLED ? -1L : (long)lo,
              hi == ERL_DRV_BUSY_MSGQ_DISABLED ? -1L : (long)hi);
    }
    case TD_SLEEP:
        usleep((useconds_t)arg * 10000);
        return 0;
    case TD_CREATE: {
        tdrv *c = driver_alloc(sizeof *c);
        if (!c)
            return -1;
        memset(c, 0, sizeof *c);
        ErlDrvPort np = driver_create_port(port, driver_caller(port), "tdrv child", (ErlDrvData)c);
        if (!np) {
            driver_free(c);
            return -1;
        }
        c->port = np;
        c->start_caller = driver_caller(port);
        ErlDrvTermData spec[] = {ERL_DRV_ATOM, driver_mk_atom("created"), ERL_DRV_PORT,
                                 driver_mk_port(np), ERL_DRV_TUPLE, 2};
        REPLY("%d", erl_drv_send_term(driver_mk_port(port), driver_caller(port), spec, 6));
    }
    case TD_OS_PID:
        erl_drv_set_os_pid(port, 4711);
        return 0;
    case TD_BROKEN_PIPE: {
        const char *here = broken_pipe(), *there = "no_thread";
        ErlDrvTid tid;
        if (erl_drv_thread_create("tdrv_pipe", &tid, broken_pipe_thread, &there, NULL) == 0)
            erl_drv_thread_join(tid, NULL);
        REPLY("control=%s,thread=%s", here, there);
    }
    case TD_READ_TIMER: {
        unsigned long left = 12345;
        int rc = driver_read_timer(port, &left);
        REPLY("%d,%d", rc, left >= 500);
    }
    case TD_GATE:
        if (len < 8)
            return -1;
        REPLY("%s", gate((int)get32(buf), (int)get32(buf + 4)));
    case TD_TIMER_EXIT:
        if (len < 4)
            return -1;
        driver_set_timer(port, get32(buf));
        driver_exit(port, 0);
        return 0;
    case TD_CRASH: {
        volatile int *nowhere = NULL;
        *nowhere = 1;
        return 0;
    }
    default:
        return -1;
    }
}

/* call: op 1 echoes the term; 2 replies with bytes that are not a term; 3
 * returns -1; 4 replies with a 300-byte binary term in a driver buffer; 5
 * replies from a static buffer with DRIVER_CALL_KEEP_BUFFER; 6 replies with
 * a term and a trailing byte. */
static ErlDrvSSizeT td_call(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                            char **rbuf, ErlDrvSizeT rlen, unsigned int *flags) {
    static char kept[] = {(char)131, 100, 0, 4, 'k', 'e', 'p', 't'};
    switch (op) {
    case 1:
        if (len > rlen)
            *rbuf = driver_alloc(len);
        memcpy(*rbuf, buf, len);
        return (ErlDrvSSizeT)len;
    case 2:
        memcpy(*rbuf, "\x83\xff\x07", 3);
        return 3;
    case 3:
        return -1;
    case 4: {
        char *r = driver_alloc(6 + 300);
        r[0] = (char)131;
        r[1] = 109; /* BINARY_EXT */
        r[2] = 0; r[3] = 0; r[4] = 1; r[5] = 44; /* 300 */
        memset(r + 6, 'z', 300);
        *rbuf = r;
        return 306;
    }
    case 5:
        *rbuf = kept;
        *flags |= DRIVER_CALL_KEEP_BUFFER;
        return sizeof kept;
    case 6:
        memcpy(*rbuf, "\x83\x61\x07\x00", 4);
        return 4;
    default:
        return -1;
    }
}

static ErlDrvEntry tdrv_entry = {
    .start = td_start,
    .stop = td_stop,
#ifdef TDRV_OUTPUTV
    .outputv = td_outputv,
#else
    .output = td_output,
#endif
    .driver_name = TDRV_NAME,
    .control = td_control,
    .timeout = td_timeout,
    .flush = td_flush,
    .process_exit = td_process_exit,
    .call = td_call,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
#if defined(TDRV_INIT_ACK)
    .driver_flags = ERL_DRV_FLAG_USE_INIT_ACK,
#elif defined(TDRV_SOFT_BUSY)
    .driver_flags = ERL_DRV_FLAG_SOFT_BUSY,
#elif defined(TDRV_PORT_LOCKING)
    .driver_flags = ERL_DRV_FLAG_USE_PORT_LOCKING,
#endif
};

DRIVER_INIT(tdrv) {
    return &tdrv_entry;
}
