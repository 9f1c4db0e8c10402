/* Ports: open, command (output and outputv), close, start failures, owners. */
#include "check.h"

#include <errno.h>
#include <stdint.h>

static edrv_proc *proc;
static edrv_port port;

static int setup(const char *cmd, unsigned flags) {
    proc = trapping_proc();
    if (!proc)
        return -1;
    int rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv");
    if (rc == 0)
        rc = edrv_load_driver(EDRV_TEST_DRIVERS, "tdrvv");
    if (rc == 0)
        rc = edrv_open_port(proc, cmd, flags, &port);
    return rc;
}

static void teardown(void) {
    edrv_proc_free(proc);
    proc = NULL;
}

static void command_list_mode(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    CHECK_INT(edrv_port_command(proc, port, "abc", 3), 0);
    CHECK_MSG(proc, port, "{%P,{data,\"out:abc\"}}");
    struct iovec v[2] = {{"ab", 2}, {"cd", 2}};
    CHECK_INT(edrv_port_commandv(proc, port, v, 2), 0);
    CHECK_MSG(proc, port, "{%P,{data,\"out:abcd\"}}");
    teardown();
}

static void command_binary_mode(void) {
    REQUIRE(setup("tdrv", EDRV_PORT_BINARY) == 0);
    CHECK_INT(edrv_port_command(proc, port, "abc", 3), 0);
    CHECK_MSG(proc, port, "{%P,{data,[111,117,116,58|<<\"abc\">>]}}");
    teardown();
}

static void command_outputv(void) {
    REQUIRE(setup("tdrvv", 0) == 0);
    CHECK_INT(edrv_port_command(proc, port, "hello", 5), 0);
    /* As ERTS: iov[0] is left empty, the data follows. */
    CHECK_MSG(proc, port, "{outputv,2,5,[0,5],<<\"hello\">>}");
    /* One binary: one element, even empty (port_command(P, <<>>)). */
    CHECK_INT(edrv_port_command(proc, port, "", 0), 0);
    CHECK_MSG(proc, port, "{outputv,2,0,[0,0],<<>>}");
    /* A vector: one element per non-empty piece, as for an iolist. */
    struct iovec v[4] = {{"io", 2}, {"", 0}, {"list", 4}, {"!", 1}};
    CHECK_INT(edrv_port_commandv(proc, port, v, 4), 0);
    CHECK_MSG(proc, port, "{outputv,4,7,[0,2,4,1],<<\"iolist!\">>}");
    CHECK_INT(edrv_port_commandv(proc, port, v, 0), 0);
    CHECK_MSG(proc, port, "{outputv,1,0,[0],<<>>}");
    struct iovec many[20];
    for (int i = 0; i < 20; i++)
        many[i] = (struct iovec){"x", 1};
    CHECK_INT(edrv_port_commandv(proc, port, many, 20), 0);
    CHECK_MSG(proc, port, "{outputv,21,20,[0,1,1,1,1,1,1,1],<<\"xxxxxxxxxxxxxxxxxxxx\">>}");
    teardown();
}

static void output_from_start(void) {
    REQUIRE(setup("tdrv hello", 0) == 0);
    CHECK_MSG(proc, port, "{%P,{data,\"hello\"}}");
    teardown();
}

static void start_errors(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_port p2 = 0;
    CHECK_INT(edrv_open_port(proc, "tdrv general", 0, &p2), -EINVAL);
    CHECK_STR(edrv_err_name(-EINVAL), "einval");
    CHECK_INT(edrv_open_port(proc, "tdrv errno", 0, &p2), -ENOENT);
    CHECK_STR(edrv_err_name(-ENOENT), "enoent");
    CHECK_INT(edrv_open_port(proc, "tdrv badarg", 0, &p2), EDRV_EBADARG);
    CHECK_INT(edrv_open_port(proc, "nosuchdriver x", 0, &p2), EDRV_EBADARG); /* as open_port */
    CHECK_INT(p2, 0);
    char *m = recv_text(proc, 50);
    CHECK_STR(m, "timeout"); /* a failed start sends nothing */
    free(m);
    teardown();
}

static void failure_inside_start(void) {
    /* ERTS crashes on this (OTP 25 segfaults); edrv opens the port, which
     * then exits with the reason at once, after start returned. */
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_port p2;
    CHECK_INT(edrv_open_port(proc, "tdrv fail", 0, &p2), 0);
    CHECK_MSG(proc, p2, "{'EXIT',%P,failed_in_start}");
    CHECK_INT(edrv_port_command(proc, p2, "x", 1), EDRV_ECLOSED);
    teardown();
}

static void close_sends_exit(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    CHECK_INT(edrv_port_close(proc, port), 0);
    CHECK_MSG(proc, port, "{'EXIT',%P,normal}");
    char *m = recv_text(proc, 50);
    CHECK_STR(m, "timeout"); /* port_close sends no {Port, closed} */
    free(m);
    CHECK_INT(edrv_port_close(proc, port), EDRV_ECLOSED);
    CHECK_INT(edrv_port_command(proc, port, "x", 1), EDRV_ECLOSED);
    edrv_reply r;
    CHECK_INT(edrv_port_control(proc, port, 1, "x", 1, &r), EDRV_ECLOSED);
    CHECK_INT(edrv_port_command(proc, 999999, "x", 1), EDRV_ENOPORT);
    CHECK_STR(edrv_err_name(EDRV_ENOPORT), "badarg");
    teardown();
}

static void stop_output_after_exit(void) {
    /* Output from stop is delivered, after the exit signal (as ERTS). */
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(proc, port, 41, "", 0, &r), 0);
    edrv_reply_free(&r);
    CHECK_INT(edrv_port_close(proc, port), 0);
    CHECK_MSG(proc, port, "{'EXIT',%P,normal}");
    CHECK_MSG(proc, port, "from_stop");
    teardown();
}

static void owner_exit_closes_ports(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_proc *other = trapping_proc();
    edrv_port p2;
    REQUIRE(edrv_open_port(other, "tdrv", 0, &p2) == 0);
    edrv_proc_free(other);
    /* The port died with its owner. */
    CHECK_INT(edrv_port_command(proc, p2, "x", 1), EDRV_ECLOSED);
    CHECK_INT(edrv_port_command(proc, port, "x", 1), 0);
    CHECK_MSG(proc, port, "{%P,{data,\"out:x\"}}");
    teardown();
}

static void commands_keep_order(void) {
    REQUIRE(setup("tdrv", EDRV_PORT_BINARY) == 0);
    char buf[16];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(buf, sizeof buf, "%d", i);
        REQUIRE(edrv_port_command(proc, port, buf, (size_t)n) == 0);
    }
    for (int i = 0; i < 1000; i++) {
        char want[128];
        snprintf(want, sizeof want, "{%%P,{data,[111,117,116,58|<<\"%d\">>]}}", i);
        CHECK_MSG(proc, port, want);
    }
    teardown();
}

static void init_ack(void) {
    /* ERL_DRV_FLAG_USE_INIT_ACK: the open waits for erl_drv_init_ack. */
    REQUIRE(setup("tdrv", 0) == 0);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrva") == 0);
    edrv_port a, b, c = 0;
    CHECK_INT(edrv_open_port(proc, "tdrva ack_now", 0, &a), 0);
    CHECK_INT(edrv_open_port(proc, "tdrva ack_later", 0, &b), 0); /* acked by a timer */
    CHECK(a && b && a != b);
    CHECK_INT(edrv_open_port(proc, "tdrva ack_fail", 0, &c), EDRV_EBADARG);
    CHECK_INT(c, 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(proc, b, 1, "up", 2, &r), 0);
    edrv_reply_free(&r);
    teardown();
}

static void create_port(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_proc *other = trapping_proc();
    edrv_reply r;
    CHECK_INT(edrv_port_control(other, port, 77, "", 0, &r), 0); /* for `other` */
    CHECK(r.len == 1 && r.data[0] == '1');
    edrv_reply_free(&r);
    edrv_msg m;
    REQUIRE(edrv_receive(other, 1000, &m) == 0);
    int idx = 1, arity;
    char atom[MAXATOMLEN];
    erlang_port child;
    CHECK(ei_decode_tuple_header(m.data, &idx, &arity) == 0 && arity == 2);
    CHECK(ei_decode_atom(m.data, &idx, atom) == 0 && strcmp(atom, "created") == 0);
    CHECK(ei_decode_port(m.data, &idx, &child) == 0);
    edrv_msg_free(&m);
    edrv_port_status st;
    CHECK_INT(edrv_port_info(child.id, &st), 0);
    CHECK_STR(st.name, "tdrv child");
    CHECK_INT(st.connected, edrv_proc_pid(other));
    /* It works like any port of the driver, and dies with its owner. */
    CHECK_INT(edrv_port_command(other, child.id, "hi", 2), 0);
    CHECK_MSG(other, child.id, "{%P,{data,\"out:hi\"}}");
    edrv_proc_free(other);
    CHECK_INT(edrv_port_info(child.id, &st), EDRV_ECLOSED);
    teardown();
}

static void port_info(void) {
    REQUIRE(setup("tdrv some args", EDRV_PORT_BINARY) == 0);
    edrv_port_status st;
    CHECK_INT(edrv_port_info(port, &st), 0);
    CHECK_INT(st.id, port);
    CHECK_STR(st.name, "tdrv some args");
    CHECK_STR(st.driver, "tdrv");
    CHECK_INT(st.connected, edrv_proc_pid(proc));
    CHECK_INT(st.binary, 1);
    CHECK_INT(st.pending_jobs, 0);
    CHECK_INT(edrv_port_close(proc, port), 0);
    CHECK_INT(edrv_port_info(port, &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_info(port, NULL), EDRV_EINVAL);
    teardown();
}

static void bad_arguments(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_port p2;
    CHECK_INT(edrv_open_port(NULL, "tdrv", 0, &p2), EDRV_EINVAL);
    CHECK_INT(edrv_open_port(proc, NULL, 0, &p2), EDRV_EINVAL);
    CHECK_INT(edrv_open_port(proc, "tdrv", 0x80, &p2), EDRV_EINVAL);
    CHECK_INT(edrv_port_command(proc, port, NULL, 5), EDRV_EINVAL);
    CHECK_INT(edrv_port_commandv(proc, port, NULL, 1), EDRV_EINVAL);
    CHECK_INT(edrv_port_control(proc, port, 1, NULL, 3, NULL), EDRV_EINVAL);
    edrv_msg m;
    CHECK_INT(edrv_receive(NULL, 0, &m), EDRV_EINVAL);
    CHECK_INT(edrv_receive(proc, 0, &m), EDRV_ETIMEDOUT);
    edrv_msg_free(NULL);
    edrv_reply_free(NULL);
    edrv_proc_free(NULL);
    teardown();
}

/* A driver linked into the test: the stop of each port ends the port
 * opened after it, from inside stop, so that one port's end takes the
 * others with it while the runtime walks them. */
enum { CHAIN = 4 };
static ErlDrvPort chain[CHAIN];
static int chain_started, chain_stops;

static ErlDrvData ch_start(ErlDrvPort p, char *cmd) {
    (void)cmd;
    if (chain_started == CHAIN)
        return ERL_DRV_ERROR_GENERAL;
    chain[chain_started] = p;
    return (ErlDrvData)(intptr_t)chain_started++;
}

static void ch_stop(ErlDrvData d) {
    int i = (int)(intptr_t)d;
    chain[i] = NULL;
    chain_stops++;
    if (i + 1 < CHAIN && chain[i + 1])
        driver_failure_atom(chain[i + 1], "chained");
}

static ErlDrvEntry chain_entry = {
    .start = ch_start,
    .stop = ch_stop,
    .driver_name = "chain_drv",
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
};

/* The owner's exit ends its ports; the stop of the first ends the others
 * (nested), and the rest of that pass must not touch them. The ports of
 * another process stay. */
static void owner_exit_ports_end_each_other(void) {
    chain_started = chain_stops = 0;
    REQUIRE(setup("tdrv", 0) == 0);
    REQUIRE(edrv_register_driver(&chain_entry) == 0);
    edrv_proc *other = trapping_proc();
    REQUIRE(other);
    edrv_port ports[CHAIN];
    for (int i = 0; i < CHAIN; i++)
        REQUIRE(edrv_open_port(other, "chain_drv", 0, &ports[i]) == 0);
    edrv_proc_free(other);
    CHECK_INT(chain_stops, CHAIN);
    edrv_port_status st;
    for (int i = 0; i < CHAIN; i++)
        CHECK_INT(edrv_port_info(ports[i], &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_info(port, &st), 0);
    teardown();
}

/* The process of each port: closing the ports of one process leaves the
 * others' alone, including a port driver_create_port made for it. */
static void owner_exit_ends_only_its_ports(void) {
    REQUIRE(setup("tdrv", 0) == 0);
    edrv_proc *a = trapping_proc(), *b = trapping_proc();
    REQUIRE(a && b);
    edrv_port pa[3], pb;
    for (int i = 0; i < 3; i++)
        REQUIRE(edrv_open_port(a, "tdrv", 0, &pa[i]) == 0);
    REQUIRE(edrv_open_port(b, "tdrv", 0, &pb) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(b, pa[1], 77, "", 0, &r), 0); /* a port for b */
    edrv_reply_free(&r);
    edrv_msg m;
    REQUIRE(edrv_receive(b, 1000, &m) == 0);
    int idx = 1, arity;
    char atom[MAXATOMLEN];
    erlang_port child;
    CHECK(ei_decode_tuple_header(m.data, &idx, &arity) == 0 &&
          ei_decode_atom(m.data, &idx, atom) == 0 && ei_decode_port(m.data, &idx, &child) == 0);
    edrv_msg_free(&m);
    edrv_port_status st;
    CHECK_INT(edrv_port_close(a, pa[1]), 0); /* one leaves before its owner */
    edrv_proc_free(a);
    for (int i = 0; i < 3; i++)
        CHECK_INT(edrv_port_info(pa[i], &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_info(pb, &st), 0);
    CHECK_INT(edrv_port_info(child.id, &st), 0);
    CHECK_INT(st.connected, edrv_proc_pid(b));
    edrv_proc_free(b);
    CHECK_INT(edrv_port_info(pb, &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_info(child.id, &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_info(port, &st), 0);
    teardown();
}

/* edrv_stop closes every port even when an allocation fails meanwhile.
 * (Issue 12: it closed none, then unloaded the drivers under them; the
 * ports' memory leaked.) */
static void alloc_fails_in_stop(void) {
    for (long n = 1; n <= 6; n++) {
        REQUIRE(setup("tdrv", 0) == 0);
        edrv_port p2;
        REQUIRE(edrv_open_port(proc, "tdrvv", 0, &p2) == 0);
        edrv_testing_fail_alloc(n);
        int rc = edrv_stop();
        edrv_testing_fail_alloc(0);
        CHECK_INT(rc, 0);
        teardown();
        CHECK_INT(mem_in_use(), 0);
        edrv_options o = {.async_threads = 2};
        REQUIRE(edrv_start(&o) == 0);
    }
}

static const test_case cases[] = {
    {"command_list_mode", command_list_mode},
    {"command_binary_mode", command_binary_mode},
    {"command_outputv", command_outputv},
    {"output_from_start", output_from_start},
    {"start_errors", start_errors},
    {"failure_inside_start", failure_inside_start},
    {"close_sends_exit", close_sends_exit},
    {"stop_output_after_exit", stop_output_after_exit},
    {"owner_exit_closes_ports", owner_exit_closes_ports},
    {"commands_keep_order", commands_keep_order},
    {"init_ack", init_ack},
    {"create_port", create_port},
    {"port_info", port_info},
    {"bad_arguments", bad_arguments},
    {"owner_exit_ports_end_each_other", owner_exit_ports_end_each_other},
    {"owner_exit_ends_only_its_ports", owner_exit_ends_only_its_ports},
    {"alloc_fails_in_stop", alloc_fails_in_stop},
    {NULL, NULL},
};

TEST_MAIN(cases)
