/* port_control and port_call: replies, buffers, flags, errors. */
#include "check.h"

static edrv_proc *proc;
static edrv_port port;

static int setup(unsigned flags) {
    proc = trapping_proc();
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv");
    return rc ? rc : edrv_open_port(proc, "tdrv", flags, &port);
}

static void control_reply_forms(void) {
    REQUIRE(setup(EDRV_PORT_BINARY) == 0);
    edrv_reply r;
    /* The reply form follows the control flags, not the port's mode. */
    CHECK_INT(edrv_port_control(proc, port, 1, "xyz", 3, &r), 0);
    CHECK_INT(r.kind, EDRV_REPLY_LIST);
    CHECK_INT(r.len, 3);
    CHECK(memcmp(r.data, "xyz", 3) == 0);
    edrv_reply_free(&r);
    CHECK(r.data == NULL);
    CHECK_INT(edrv_port_control(proc, port, 2, "", 0, &r), 0); /* binary flag */
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 1, "xyz", 3, &r), 0);
    CHECK_INT(r.kind, EDRV_REPLY_BINARY);
    CHECK_INT(r.len, 3);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 4, "", 0, &r), 0); /* *rbuf = NULL */
    CHECK_INT(r.kind, EDRV_REPLY_NIL);
    CHECK_INT(r.len, 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 3, "", 0, &r), 0); /* flags cleared */
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 1, "", 0, &r), 0);
    CHECK_INT(r.kind, EDRV_REPLY_LIST);
    CHECK_INT(r.len, 0);
    edrv_reply_free(&r);
    edrv_proc_free(proc);
}

static void control_driver_buffers(void) {
    REQUIRE(setup(0) == 0);
    edrv_reply r;
    char big[300];
    memset(big, 'q', sizeof big);
    /* More than the 64-byte default: the driver allocates, edrv frees. */
    CHECK_INT(edrv_port_control(proc, port, 1, big, sizeof big, &r), 0);
    CHECK_INT(r.len, 300);
    CHECK(r.data && memcmp(r.data, big, 300) == 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 6, "l", 1, &r), 0);
    CHECK_INT(r.kind, EDRV_REPLY_LIST);
    CHECK_INT(r.len, 200);
    CHECK(r.data && r.data[0] == 'L' && r.data[199] == 'L');
    edrv_reply_free(&r);
    /* A binary as the reply, with the binary flag. */
    CHECK_INT(edrv_port_control(proc, port, 2, "", 0, &r), 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port, 6, "b", 1, &r), 0);
    CHECK_INT(r.kind, EDRV_REPLY_BINARY);
    CHECK_INT(r.len, 200);
    CHECK(r.data && r.data[0] == 'B' && r.data[199] == 'B');
    edrv_reply_free(&r);
    edrv_proc_free(proc);
}

static void control_errors(void) {
    REQUIRE(setup(0) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(proc, port, 5, "", 0, &r), EDRV_EBADARG);
    CHECK_INT(edrv_port_control(proc, port, 9999, "", 0, &r), EDRV_EBADARG);
    CHECK_STR(edrv_err_name(EDRV_EBADARG), "badarg");
    /* The port survives a refused control. */
    CHECK_INT(edrv_port_control(proc, port, 1, "ok", 2, &r), 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_control(proc, port + 1000, 1, "", 0, &r), EDRV_ENOPORT);
    edrv_proc_free(proc);
}

static void output_inside_control(void) {
    REQUIRE(setup(0) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(proc, port, 14, "", 0, &r), 0);
    CHECK_INT(r.len, 3);
    edrv_reply_free(&r);
    /* Already in the mailbox when the control returned. */
    edrv_msg m;
    CHECK_INT(edrv_receive(proc, 0, &m), 0);
    edrv_msg_free(&m);
    edrv_proc_free(proc);
}

/* The reply of a call, printed. */
static char *call_text(unsigned op, const char *etf, size_t len, int *rc) {
    edrv_reply r;
    static char out[512];
    *rc = edrv_port_call(proc, port, op, etf, len, &r);
    if (*rc < 0)
        return strcpy(out, "error");
    char *s;
    if (edrv_term_format(r.data, r.len, &s) < 0) {
        edrv_reply_free(&r);
        return strcpy(out, "badterm");
    }
    snprintf(out, sizeof out, "%s", s);
    free(s);
    edrv_reply_free(&r);
    return out;
}

static void call(void) {
    REQUIRE(setup(0) == 0);
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "a");
    ei_x_encode_long(&x, 1);
    int rc;
    CHECK_STR(call_text(1, x.buff, (size_t)x.index, &rc), "{a,1}");
    CHECK_INT(rc, 0);
    call_text(2, x.buff, (size_t)x.index, &rc); /* reply is not a term */
    CHECK_INT(rc, EDRV_EBADARG);
    call_text(3, x.buff, (size_t)x.index, &rc); /* returns -1 */
    CHECK_INT(rc, EDRV_EBADARG);
    char *big = call_text(4, x.buff, (size_t)x.index, &rc); /* driver buffer, freed by edrv */
    CHECK_INT(rc, 0);
    CHECK(strncmp(big, "<<\"zzz", 6) == 0 && strlen(big) == 306);
    CHECK_STR(call_text(5, x.buff, (size_t)x.index, &rc), "kept"); /* KEEP_BUFFER */
    CHECK_STR(call_text(6, x.buff, (size_t)x.index, &rc), "7"); /* trailing byte ignored */
    /* Bad terms from the caller are refused before the driver sees them. */
    call_text(1, x.buff, (size_t)x.index - 1, &rc);
    CHECK_INT(rc, EDRV_EBADTERM);
    call_text(1, x.buff + 1, (size_t)x.index - 1, &rc);
    CHECK_INT(rc, EDRV_EBADTERM);
    char junk[] = {(char)131, (char)255, 1};
    call_text(1, junk, sizeof junk, &rc);
    CHECK_INT(rc, EDRV_EBADTERM);
    ei_x_free(&x);
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"control_reply_forms", control_reply_forms},
    {"control_driver_buffers", control_driver_buffers},
    {"control_errors", control_errors},
    {"output_inside_control", output_inside_control},
    {"call", call},
    {NULL, NULL},
};

TEST_MAIN(cases)
