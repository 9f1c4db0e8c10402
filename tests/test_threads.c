/* Threads: the erl_drv_* primitives, and edrv.h used from many threads at once. */
#include "check.h"

#include <errno.h>
#include <pthread.h>

static ErlDrvMutex *mtx;
static ErlDrvCond *cnd;
static int counter;

static void *bump(void *arg) {
    for (int i = 0; i < 10000; i++) {
        erl_drv_mutex_lock(mtx);
        counter++;
        erl_drv_cond_signal(cnd);
        erl_drv_mutex_unlock(mtx);
    }
    return arg;
}

static void primitives(void) {
    mtx = erl_drv_mutex_create("test_mutex");
    cnd = erl_drv_cond_create("test_cond");
    ErlDrvRWLock *rw = erl_drv_rwlock_create("test_rwlock");
    REQUIRE(mtx && cnd && rw);
    CHECK_STR(erl_drv_mutex_name(mtx), "test_mutex");
    CHECK_STR(erl_drv_cond_name(cnd), "test_cond");
    CHECK_STR(erl_drv_rwlock_name(rw), "test_rwlock");
    counter = 0;
    ErlDrvThreadOpts *opts = erl_drv_thread_opts_create("opts");
    REQUIRE(opts);
    opts->suggested_stack_size = 64;
    ErlDrvTid t[4];
    for (int i = 0; i < 4; i++)
        REQUIRE(erl_drv_thread_create("bumper", &t[i], bump, (void *)(intptr_t)i, opts) == 0);
    erl_drv_thread_opts_destroy(opts);
    CHECK_STR(erl_drv_thread_name(t[0]), "bumper");
    CHECK(!erl_drv_equal_tids(t[0], t[1]));
    CHECK(erl_drv_equal_tids(erl_drv_thread_self(), erl_drv_thread_self()));
    erl_drv_mutex_lock(mtx);
    while (counter < 40000)
        erl_drv_cond_wait(cnd, mtx);
    erl_drv_mutex_unlock(mtx);
    for (int i = 0; i < 4; i++) {
        void *res;
        CHECK_INT(erl_drv_thread_join(t[i], &res), 0);
        CHECK(res == (void *)(intptr_t)i);
    }
    CHECK_INT(counter, 40000);
    CHECK_INT(erl_drv_mutex_trylock(mtx), 0);
    CHECK_INT(erl_drv_mutex_trylock(mtx), EBUSY);
    erl_drv_mutex_unlock(mtx);
    CHECK_INT(erl_drv_rwlock_tryrlock(rw), 0);
    CHECK_INT(erl_drv_rwlock_tryrlock(rw), 0);
    CHECK_INT(erl_drv_rwlock_tryrwlock(rw), EBUSY);
    erl_drv_rwlock_runlock(rw);
    erl_drv_rwlock_runlock(rw);
    erl_drv_rwlock_rwlock(rw);
    erl_drv_rwlock_rwunlock(rw);
    ErlDrvTSDKey key;
    CHECK_INT(erl_drv_tsd_key_create("key", &key), 0);
    CHECK(erl_drv_tsd_get(key) == NULL);
    erl_drv_tsd_set(key, &counter);
    CHECK(erl_drv_tsd_get(key) == &counter);
    erl_drv_tsd_key_destroy(key);
    erl_drv_mutex_destroy(mtx);
    erl_drv_cond_destroy(cnd);
    erl_drv_rwlock_destroy(rw);
    erl_drv_mutex_destroy(NULL);
}

/* Each thread is a process with its own port; the threads run at once. */
static void *worker(void *arg) {
    int *failures = arg;
    edrv_proc *p = edrv_proc_new();
    edrv_port port;
    if (!p || edrv_open_port(p, "tdrv", EDRV_PORT_BINARY, &port) != 0) {
        (*failures)++;
        edrv_proc_free(p);
        return NULL;
    }
    for (int i = 0; i < 2000; i++) {
        char buf[16];
        int n = snprintf(buf, sizeof buf, "%d", i);
        edrv_reply r;
        if (i % 2 == 0) {
            if (edrv_port_command(p, port, buf, (size_t)n) != 0)
                (*failures)++;
        } else {
            if (edrv_port_control(p, port, 10, buf, (size_t)n, &r) != 0)
                (*failures)++;
            edrv_reply_free(&r);
        }
        edrv_msg m;
        if (edrv_receive(p, CHECK_WAIT_MS, &m) != 0) {
            (*failures)++;
            continue;
        }
        /* The message carries this thread's number i, in order. */
        int idx = 1, arity, type, size;
        ei_decode_tuple_header(m.data, &idx, &arity);
        ei_skip_term(m.data, &idx);
        ei_decode_tuple_header(m.data, &idx, &arity);
        ei_skip_term(m.data, &idx);
        ei_get_type(m.data, &idx, &type, &size);
        const char *tail = m.data + m.len - (size_t)n;
        if (memcmp(tail, buf, (size_t)n) != 0)
            (*failures)++;
        edrv_msg_free(&m);
    }
    edrv_port_close(p, port);
    edrv_proc_free(p);
    return NULL;
}

static void many_threads(void) {
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    pthread_t t[8];
    int failures[8] = {0};
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, worker, &failures[i]);
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(failures[i], 0);
    }
}

/* One thread sends while another receives for the same process. */
static edrv_proc *shared;
static void *receiver(void *arg) {
    int *got = arg;
    edrv_msg m;
    while (*got < 5000 && edrv_receive(shared, CHECK_WAIT_MS, &m) == 0) {
        (*got)++;
        edrv_msg_free(&m);
    }
    return NULL;
}

static void send_and_receive_apart(void) {
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    shared = edrv_proc_new();
    edrv_port port;
    REQUIRE(edrv_open_port(shared, "tdrv", 0, &port) == 0);
    int got = 0;
    pthread_t r;
    pthread_create(&r, NULL, receiver, &got);
    for (int i = 0; i < 5000; i++)
        CHECK_INT(edrv_port_command(shared, port, "z", 1), 0);
    pthread_join(r, NULL);
    CHECK_INT(got, 5000);
    edrv_proc_free(shared);
}

static const test_case cases[] = {
    {"primitives", primitives},
    {"many_threads", many_threads},
    {"send_and_receive_apart", send_and_receive_apart},
    {NULL, NULL},
};

TEST_MAIN(cases)
