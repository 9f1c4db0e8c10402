/* Messages: every driver_output* form, term specs with every tag, failures. */
#include "check.h"

#include <errno.h>

static edrv_proc *proc;
static edrv_port port;

static int setup(unsigned flags) {
    proc = trapping_proc();
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv");
    return rc ? rc : edrv_open_port(proc, "tdrv", flags, &port);
}

/* Runs control op with data and returns the reply as a string. */
static const char *ctl(unsigned op, const char *data, size_t len) {
    static char out[256];
    edrv_reply r;
    int rc = edrv_port_control(proc, port, op, data, len, &r);
    if (rc < 0)
        snprintf(out, sizeof out, "error:%s", edrv_err_name(rc));
    else
        snprintf(out, sizeof out, "%.*s", (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

static void no_more_messages(void) {
    char *m = recv_text(proc, 20);
    CHECK_STR(m, "timeout");
    free(m);
}

static void outputs_list_port(void) {
    REQUIRE(setup(0) == 0);
    ctl(10, "abc", 3);
    CHECK_MSG(proc, port, "{%P,{data,\"abc\"}}");
    ctl(10, "", 0);
    CHECK_MSG(proc, port, "{%P,{data,[]}}");
    ctl(11, "\x02hdtail", 7);
    CHECK_MSG(proc, port, "{%P,{data,\"hdtail\"}}");
    ctl(12, "xyzw", 4);
    CHECK_MSG(proc, port, "{%P,{data,\"hdyz\"}}");
    CHECK_MSG(proc, port, "{%P,{data,\"yz\"}}");
    /* The second call sees the vector the first one trimmed, as in ERTS. */
    ctl(13, "\x01" "abcd", 5);
    CHECK_MSG(proc, port, "{%P,{data,\"hdbcd\"}}");
    CHECK_MSG(proc, port, "{%P,{data,\"cd\"}}");
    ctl(13, "\x09" "abcd", 5); /* all skipped */
    CHECK_MSG(proc, port, "{%P,{data,\"hd\"}}");
    CHECK_MSG(proc, port, "{%P,{data,[]}}");
    no_more_messages();
    edrv_proc_free(proc);
}

static void outputs_binary_port(void) {
    REQUIRE(setup(EDRV_PORT_BINARY) == 0);
    ctl(10, "abc", 3);
    CHECK_MSG(proc, port, "{%P,{data,<<\"abc\">>}}");
    ctl(11, "\x02hdtail", 7);
    CHECK_MSG(proc, port, "{%P,{data,[104,100|<<\"tail\">>]}}");
    ctl(11, "\x00tail", 5);
    CHECK_MSG(proc, port, "{%P,{data,<<\"tail\">>}}");
    ctl(11, "\x02hd", 3);
    CHECK_MSG(proc, port, "{%P,{data,[104,100|<<>>]}}");
    ctl(12, "xyzw", 4);
    CHECK_MSG(proc, port, "{%P,{data,[104,100|<<\"yz\">>]}}");
    CHECK_MSG(proc, port, "{%P,{data,<<\"yz\">>}}");
    ctl(13, "\x01" "abcd", 5);
    CHECK_MSG(proc, port, "{%P,{data,[104,100,<<\"b\">>|<<\"cd\">>]}}");
    CHECK_MSG(proc, port, "{%P,{data,<<\"cd\">>}}");
    ctl(13, "\x09" "abcd", 5); /* all skipped: the header alone, as a list */
    CHECK_MSG(proc, port, "{%P,{data,\"hd\"}}");
    CHECK_MSG(proc, port, "{%P,{data,[]}}");
    no_more_messages();
    edrv_proc_free(proc);
}

static void long_list_output(void) {
    /* Over 65535 bytes a list is no longer a STRING_EXT. */
    REQUIRE(setup(0) == 0);
    static char big[70000];
    memset(big, 'a', sizeof big);
    ctl(10, big, sizeof big);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 1000, &m) == 0);
    int idx = 1, arity, type, size;
    CHECK(ei_decode_tuple_header(m.data, &idx, &arity) == 0 && arity == 2);
    ei_skip_term(m.data, &idx);
    CHECK(ei_decode_tuple_header(m.data, &idx, &arity) == 0 && arity == 2);
    ei_skip_term(m.data, &idx);
    CHECK(ei_get_type(m.data, &idx, &type, &size) == 0);
    CHECK_INT(type, ERL_LIST_EXT);
    CHECK_INT(size, 70000);
    edrv_msg_free(&m);
    edrv_proc_free(proc);
}

static void term_specs(void) {
    REQUIRE(setup(0) == 0);
    CHECK_STR(ctl(30, "\x00", 1), "1");
    CHECK_MSG(proc, port, "{ok,%P}");
    CHECK_STR(ctl(30, "\x01", 1), "1");
    CHECK_MSG(proc, port, "[1,-1,4294967295,1.5,-9007199254740993,18446744073709551615]");
    CHECK_STR(ctl(30, "\x02", 1), "1");
    CHECK_MSG(proc, port, "{<<\"inary\">>,<<\"buf\">>,\"str\",[104,105|tail],[],{}}");
    CHECK_STR(ctl(30, "\x03", 1), "1");
    char want[128];
    snprintf(want, sizeof want, "#{a => 1,b => [{x,7},<0.%llu.0>]}",
             (unsigned long long)edrv_proc_pid(proc));
    CHECK_MSG(proc, port, want);
    CHECK_STR(ctl(30, "\x04", 1), "1");
    CHECK_MSG(proc, port, "{[a|b],[]}");
    CHECK_STR(ctl(30, "\x05", 1), "1");
    char *got = recv_text(proc, 1000);
    CHECK(strncmp(got, "[0,1,2,3,", 9) == 0 && strstr(got, ",998,999]"));
    free(got);
    no_more_messages();
    edrv_proc_free(proc);
}

static void bad_term_specs(void) {
    REQUIRE(setup(0) == 0);
    for (char i = 0; i <= 7; i++)
        CHECK_STR(ctl(31, &i, 1), "-1");
    no_more_messages();
    /* A receiver that is not a pid: 0, nothing sent. */
    CHECK_STR(ctl(33, "", 0), "0");
    CHECK_STR(ctl(32, "", 0), "1");
    CHECK_MSG(proc, port, "{hello,%P}");
    no_more_messages();
    edrv_proc_free(proc);
}

/* Specs that ERTS refuses for their values (checked in erl, and by
 * tests/diff/terms.scenario): NaN and infinite floats, and maps with a key
 * twice, however the two are written. They return -1 and send nothing. */
static void checked_term_specs(void) {
    REQUIRE(setup(0) == 0);
    static const struct {
        char which;
        const char *rc, *msg; /* msg NULL: nothing sent */
    } cases[] = {
        {0, "-1", NULL},  {1, "1", "#{1 => a,1.0 => b}"}, {2, "-1", NULL},
        {3, "-1", NULL},  {4, "-1", NULL},  {5, "-1", NULL},  {6, "-1", NULL},
        {7, "-1", NULL},  {8, "-1", NULL},  {9, "-1", NULL},  {10, "-1", NULL},
        {11, "-1", NULL}, {12, "1", "#{b => 2,a => 3}"},      {13, "-1", NULL},
        {14, "-1", NULL}, {15, "-1", NULL}, {16, "-1", NULL}, {17, "-1", NULL},
        {18, "1", "<<7:3>>"}, {19, "-1", NULL}, {20, "1", "1.5"}, {21, "-1", NULL},
        {22, "1", "-0.0"}, {23, "-1", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = ctl(34, &cases[i].which, 1);
        if (strcmp(got, cases[i].rc) != 0)
            fprintf(stderr, "checked spec %d:\n", cases[i].which);
        CHECK_STR(got, cases[i].rc);
        if (cases[i].msg)
            CHECK_MSG(proc, port, cases[i].msg);
        no_more_messages();
    }
    edrv_proc_free(proc);
}

static void callers(void) {
    REQUIRE(setup(0) == 0);
    edrv_proc *other = trapping_proc();
    edrv_reply r;
    /* Another process controls: driver_caller is that process. */
    CHECK_INT(edrv_port_control(other, port, 40, "", 0, &r), 0);
    edrv_reply_free(&r);
    edrv_msg m;
    REQUIRE(edrv_receive(proc, 1000, &m) == 0);
    int idx = 1, arity;
    char atom[MAXATOMLEN];
    erlang_pid start, caller, connected;
    CHECK(ei_decode_tuple_header(m.data, &idx, &arity) == 0 && arity == 4);
    CHECK(ei_decode_atom(m.data, &idx, atom) == 0 && strcmp(atom, "callers") == 0);
    CHECK(ei_decode_pid(m.data, &idx, &start) == 0);
    CHECK(ei_decode_pid(m.data, &idx, &caller) == 0);
    CHECK(ei_decode_pid(m.data, &idx, &connected) == 0);
    CHECK_INT(start.num, edrv_proc_pid(proc));
    CHECK_INT(caller.num, edrv_proc_pid(other));
    CHECK_INT(connected.num, edrv_proc_pid(proc));
    edrv_msg_free(&m);
    edrv_proc_free(other);
    edrv_proc_free(proc);
}

static void failure(unsigned op, const char *arg, size_t len, const char *exit_msg) {
    REQUIRE(setup(0) == 0);
    CHECK_STR(ctl(op, arg, len), "");
    if (exit_msg)
        CHECK_MSG(proc, port, exit_msg);
    no_more_messages();
    CHECK_INT(edrv_port_command(proc, port, "x", 1), EDRV_ECLOSED);
    edrv_proc_free(proc);
}

static void failures(void) {
    failure(20, "", 0, "{'EXIT',%P,normal}");
    failure(21, "boom", 4, "{'EXIT',%P,boom}");
    char eio = EIO;
    failure(22, &eio, 1, "{'EXIT',%P,eio}");
    failure(23, "\x00", 1, "{'EXIT',%P,normal}");
    failure(23, "\x05", 1, "{'EXIT',%P,5}");
    failure(24, "\x00", 1, NULL); /* driver_exit unlinks: no signal */
    failure(24, &eio, 1, NULL);
}

static void eof_option(void) {
    /* Opened with eof: driver_failure_eof sends {Port, eof}, the port stays. */
    proc = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    REQUIRE(edrv_open_port(proc, "tdrv", EDRV_PORT_EOF, &port) == 0);
    CHECK_STR(ctl(20, "", 0), "");
    CHECK_MSG(proc, port, "{%P,eof}");
    CHECK_STR(ctl(1, "still", 5), "still");
    CHECK_INT(edrv_port_close(proc, port), 0);
    CHECK_MSG(proc, port, "{'EXIT',%P,normal}");
    no_more_messages();
    edrv_proc_free(proc);
}

static void failure_drops_later_output(void) {
    REQUIRE(setup(0) == 0);
    CHECK_STR(ctl(25, "", 0), "");
    CHECK_MSG(proc, port, "{%P,{data,\"x\"}}");
    CHECK_MSG(proc, port, "{'EXIT',%P,boom}");
    no_more_messages();
    edrv_proc_free(proc);
    REQUIRE(setup(0) == 0);
    CHECK_STR(ctl(26, "", 0), "0,-1");
    CHECK_MSG(proc, port, "{'EXIT',%P,first}");
    no_more_messages();
    edrv_proc_free(proc);
}

static void out_of_memory_messages(void) {
    /* A message that cannot be allocated is dropped with a warning: the port
     * and the runtime go on, and nothing leaks. */
    REQUIRE(setup(0) == 0);
    edrv_reply r;
    edrv_testing_fail_alloc(3); /* control copy, then the message */
    int rc = edrv_port_control(proc, port, 10, "abc", 3, &r);
    edrv_testing_fail_alloc(0);
    edrv_reply_free(&r);
    CHECK(rc == 0 || rc == EDRV_ENOMEM);
    for (long n = 1; n < 6; n++) {
        edrv_testing_fail_alloc(n);
        rc = edrv_port_control(proc, port, 30, "\x02", 1, &r);
        edrv_testing_fail_alloc(0);
        edrv_reply_free(&r);
        edrv_msg m;
        while (edrv_receive(proc, 10, &m) == 0)
            edrv_msg_free(&m);
    }
    CHECK_STR(ctl(30, "\x00", 1), "1");
    CHECK_MSG(proc, port, "{ok,%P}");
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"outputs_list_port", outputs_list_port},
    {"outputs_binary_port", outputs_binary_port},
    {"long_list_output", long_list_output},
    {"term_specs", term_specs},
    {"bad_term_specs", bad_term_specs},
    {"checked_term_specs", checked_term_specs},
    {"callers", callers},
    {"failures", failures},
    {"eof_option", eof_option},
    {"failure_drops_later_output", failure_drops_later_output},
    {"out_of_memory_messages", out_of_memory_messages},
    {NULL, NULL},
};

TEST_MAIN(cases)
