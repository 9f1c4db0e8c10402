/* Processes: their mailboxes, process_info, and the end of a process while
 * other threads still use it (edrv_proc_free's contract in edrv.h). */
#include "check.h"

#include <pthread.h>
#include <unistd.h>

/* Waits (up to 60 s: a bound for a broken build, not a timing) until `n`
 * threads wait in edrv_receive(p). */
static int wait_waiting(edrv_proc *p, int n) {
    edrv_proc_status st = {0};
    for (int i = 0; i < 12000; i++) {
        if (edrv_proc_info(p, &st) == 0 && st.waiting == n)
            return 0;
        usleep(5000);
    }
    return -1;
}

typedef struct {
    edrv_proc *p;
    long timeout_ms;
    int rc;
} receiver;

static void *receive_one(void *arg) {
    receiver *r = arg;
    edrv_msg m;
    r->rc = edrv_receive(r->p, r->timeout_ms, &m);
    edrv_msg_free(&m);
    return NULL;
}

static void info_counts_messages(void) {
    edrv_proc *p = edrv_proc_new();
    REQUIRE(p);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    CHECK_INT(edrv_port_command(p, port, "ab", 2), 0); /* tdrv echoes */
    CHECK_INT(edrv_port_command(p, port, "cd", 2), 0);
    edrv_proc_status st;
    for (int i = 0; i < 12000 && edrv_proc_info(p, &st) == 0 && st.message_queue_len < 2; i++)
        usleep(5000);
    CHECK_INT(edrv_proc_info(p, &st), 0);
    CHECK_INT(st.pid, edrv_proc_pid(p));
    CHECK_INT(st.message_queue_len, 2);
    CHECK_INT(st.waiting, 0);
    CHECK_INT(edrv_proc_info(p, NULL), EDRV_EINVAL);
    CHECK_INT(edrv_proc_info(NULL, &st), EDRV_EINVAL);
    CHECK_INT(edrv_proc_free(p), 0);
}

static void free_wakes_receivers(void) {
    /* Two threads wait for ever in edrv_receive(p); freeing p wakes both
     * with EDRV_ENOPROC, closes p's port, and frees p once they have left. */
    edrv_proc *p = edrv_proc_new(), *other = edrv_proc_new();
    REQUIRE(p && other);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    receiver r[2] = {{p, -1, 1}, {p, -1, 1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(pthread_create(&t[i], NULL, receive_one, &r[i]) == 0);
    CHECK_INT(wait_waiting(p, 2), 0);
    CHECK_INT(edrv_proc_free(p), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(r[i].rc, EDRV_ENOPROC);
    }
    /* The port ended with its owner. */
    edrv_port_status st;
    CHECK_INT(edrv_port_info(port, &st), EDRV_ECLOSED);
    CHECK_INT(edrv_port_command(other, port, "x", 1), EDRV_ECLOSED);
    CHECK_INT(edrv_proc_free(other), 0);
}

static void free_with_a_timed_receiver(void) {
    /* A receiver with a timeout is woken too, before its time is up. */
    edrv_proc *p = edrv_proc_new();
    REQUIRE(p);
    receiver r = {p, 3600 * 1000, 1};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, receive_one, &r) == 0);
    CHECK_INT(wait_waiting(p, 1), 0);
    CHECK_INT(edrv_proc_free(p), 0);
    pthread_join(t, NULL);
    CHECK_INT(r.rc, EDRV_ENOPROC);
}

static void not_a_process(void) {
    /* What can be seen of a pointer that is not a live process is refused
     * (a freed one is the caller's error: ASan would report it here). */
    union {
        char bytes[512];
        long long align;
    } junk;
    memset(&junk, 0, sizeof junk);
    edrv_proc *fake = (edrv_proc *)&junk;
    edrv_msg m;
    edrv_port port;
    edrv_reply reply;
    CHECK_INT(edrv_proc_free(fake), EDRV_EINVAL);
    CHECK(strstr(edrv_last_error(), "not a live process") != NULL);
    CHECK_INT(edrv_receive(fake, 0, &m), EDRV_EINVAL);
    CHECK_INT(edrv_open_port(fake, "tdrv", 0, &port), EDRV_EINVAL);
    CHECK_INT(edrv_port_command(fake, 1, "x", 1), EDRV_EINVAL);
    CHECK_INT(edrv_port_control(fake, 1, 0, "", 0, &reply), EDRV_EINVAL);
    CHECK_INT(edrv_port_close(fake, 1), EDRV_EINVAL);
    CHECK_INT(edrv_proc_free(NULL), 0);
    CHECK_INT(edrv_receive(NULL, 0, &m), EDRV_EINVAL);
}

typedef struct {
    edrv_proc *p;
    edrv_port port;
    int rc;
} sender;

static void *send_one(void *arg) {
    sender *s = arg;
    s->rc = edrv_port_command(s->p, s->port, "late", 4);
    return NULL;
}

static void suspended_on_a_busy_port(void) {
    /* A process sending to a busy port is suspended until the port is not
     * busy (process_info's `suspended`), then its command goes through. */
    edrv_proc *p = edrv_proc_new(), *q = edrv_proc_new();
    REQUIRE(p && q);
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_port port;
    REQUIRE(edrv_open_port(p, "tdrv", 0, &port) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(p, port, 74, "\1", 1, &r), 0); /* TD_BUSY on */
    edrv_reply_free(&r);
    sender s = {q, port, 1};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, send_one, &s) == 0);
    edrv_proc_status st = {0};
    for (int i = 0; i < 12000 && edrv_proc_info(q, &st) == 0 && st.suspended != 1; i++)
        usleep(5000);
    CHECK_INT(st.suspended, 1);
    CHECK_INT(edrv_port_control(p, port, 74, "\0", 1, &r), 0); /* off */
    edrv_reply_free(&r);
    pthread_join(t, NULL);
    CHECK_INT(s.rc, 0);
    CHECK_INT(edrv_proc_info(q, &st), 0);
    CHECK_INT(st.suspended, 0);
    CHECK_INT(edrv_proc_free(q), 0);
    CHECK_INT(edrv_proc_free(p), 0);
}

static const test_case cases[] = {
    {"suspended_on_a_busy_port", suspended_on_a_busy_port},
    {"info_counts_messages", info_counts_messages},
    {"free_wakes_receivers", free_wakes_receivers},
    {"free_with_a_timed_receiver", free_with_a_timed_receiver},
    {"not_a_process", not_a_process},
    {NULL, NULL},
};

TEST_MAIN(cases)
