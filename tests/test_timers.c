/* Driver timers: the heap fires them in deadline order, replacing and
 * cancelling keep it sound, and a port's timer dies with it. */
#include "check.h"

#include <time.h>
#include <unistd.h>

static edrv_proc *proc;

static const char *ctl(edrv_port port, unsigned op, const char *data, size_t len) {
    static char out[64];
    edrv_reply r;
    int rc = edrv_port_control(proc, port, op, data, len, &r);
    snprintf(out, sizeof out, "%.*s", rc < 0 ? 0 : (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

/* CLOCK_MONOTONIC, the timers' clock, in ms (with a fraction's worth of
 * rounding down). */
static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_timer(edrv_port port, unsigned ms) {
    char b[4] = {(char)(ms >> 24), (char)(ms >> 16), (char)(ms >> 8), (char)ms};
    ctl(port, 50, b, 4);
}

static void deadline_order(void) {
    proc = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    enum { N = 64 };
    edrv_port ports[N];
    for (int i = 0; i < N; i++)
        REQUIRE(edrv_open_port(proc, "tdrv", 0, &ports[i]) == 0);
    /* Port i's timer is set for 200 + 5 * ((i * 37) % N) ms; every third is
     * set twice (the second replaces the first), every fifth cancelled. A
     * timer's deadline lies between the clock just before its (last) setting
     * and just after it, plus its time: on a slow (sanitizer) build of a
     * loaded machine, setting them all can take longer than the 5 ms between
     * two of them, so the order is checked against those bounds. */
    int64_t lo[N], hi[N];
    for (int i = 0; i < N; i++) {
        unsigned ms = 200 + 5 * (unsigned)((i * 37) % N);
        if (i % 3 == 0)
            set_timer(ports[i], 5000);
        int64_t before = now_ms();
        set_timer(ports[i], ms);
        lo[i] = before + ms;
        hi[i] = now_ms() + ms;
        if (i % 5 == 0)
            CHECK_STR(ctl(ports[i], 51, "", 0), "0");
    }
    /* Every timer that is not cancelled fires, each in its time (however
     * late the machine runs them); then nothing more comes. */
    int last = -1;
    int fired = 0, want = N - (N + 4) / 5;
    edrv_msg m;
    while (fired < want && edrv_receive(proc, CHECK_WAIT_MS, &m) == 0) {
        int idx = 1, arity;
        erlang_port p;
        ei_decode_tuple_header(m.data, &idx, &arity);
        ei_decode_port(m.data, &idx, &p);
        int i = 0;
        while (i < N && ports[i] != p.id)
            i++;
        REQUIRE(i < N);
        CHECK(i % 5 != 0); /* cancelled ones never fire */
        /* In deadline order: none fires after one that was surely due later. */
        if (last >= 0)
            CHECK(hi[i] >= lo[last]);
        last = i;
        fired++;
        edrv_msg_free(&m);
    }
    CHECK_INT(fired, want);
    char *more = recv_text(proc, 600); /* a negative check: no more timers */
    CHECK_STR(more, "timeout");
    free(more);
    edrv_proc_free(proc);
}

static void timer_ends_with_port(void) {
    proc = trapping_proc();
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port a, b;
    REQUIRE(edrv_open_port(proc, "tdrv", 0, &a) == 0);
    REQUIRE(edrv_open_port(proc, "tdrv", 0, &b) == 0);
    /* a sets a timer and ends in one callback (tdrv's TD_TIMER_EXIT), so the
     * timer cannot have fired before; b's timer, set afterwards, is due
     * later. Timers fire in deadline order, so a's, had it survived its
     * port, would come before b's. */
    CHECK_STR(ctl(a, 80, "\0\0\0\0", 4), "");
    edrv_port_status st;
    CHECK_INT(edrv_port_info(a, &st), EDRV_ECLOSED); /* driver_exit unlinks: no 'EXIT' */
    set_timer(b, 1);
    CHECK_MSG(proc, b, "{%P,{data,\"timeout\"}}");
    char *m = recv_text(proc, 0);
    CHECK_STR(m, "timeout");
    free(m);
    /* Stopping the runtime with a timer pending frees everything. */
    set_timer(b, 10000);
    edrv_proc_free(proc);
}

static const test_case cases[] = {
    {"deadline_order", deadline_order},
    {"timer_ends_with_port", timer_ends_with_port},
    {NULL, NULL},
};

TEST_MAIN(cases)
