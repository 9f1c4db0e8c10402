/* The async pool: driver_async as ERTS does it, cancel, close and shutdown
 * with jobs pending, and a stress test where every job must end exactly once. */
#define _GNU_SOURCE /* sched_setaffinity, CPU_* */
#include "check.h"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static edrv_proc *proc;

static void put32(char *p, unsigned v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static const char *ctl(edrv_port port, unsigned op, const char *data, size_t len) {
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

/* Submits count jobs; returns "id,key_after". */
static const char *submit(edrv_port port, int has_key, unsigned key, unsigned count,
                          unsigned work_us) {
    char b[13];
    b[0] = (char)has_key;
    put32(b + 1, key);
    put32(b + 5, count);
    put32(b + 9, work_us);
    return ctl(port, 1, b, sizeof b);
}

static long block(edrv_port port, unsigned key) {
    char b[4];
    put32(b, key);
    return atol(ctl(port, 3, b, 4));
}

/* Whether adrv's jobs have started n invokes in all. */
static bool invoked_at_least(edrv_port port, long n) {
    const char *s = strstr(ctl(port, 5, "", 0), "invoked=");
    return s && atol(s + 8) >= n;
}

/* Waits until adrv's jobs have started n invokes in all: a test that relies
 * on a blocker running waits for it, however loaded the machine; whether
 * they have. */
static bool wait_invoked(edrv_port port, long n) {
    return WAIT_UNTIL(invoked_at_least(port, n));
}

/* Whether every job submitted so far has ended (ready_async, free or a
 * cancel); st is the pool's statistics. */
static bool pool_idle(edrv_pool_stats *st) {
    edrv_pool(st);
    return st->ready_async + st->freed + st->cancelled == st->submitted;
}

static int cancel(edrv_port port, long id) {
    char b[8];
    put32(b, (unsigned)((unsigned long)id >> 32));
    put32(b + 4, (unsigned)id);
    return atoi(ctl(port, 2, b, 8));
}

static edrv_port open_adrv(void) {
    edrv_port port = 0;
    if (edrv_open_port(proc, "adrv", 0, &port) != 0)
        fprintf(stderr, "open adrv: %s\n", edrv_last_error());
    return port;
}

static int setup(void) {
    proc = trapping_proc();
    return edrv_load_driver(EDRV_TEST_DRIVERS, "adrv");
}

/* One {done, Key, Seq, InvokeOrder, Lane} message, decoded. */
typedef struct {
    unsigned long key, seq, order;
    char lane[32];
} done_msg;

static int next_done(done_msg *d, long timeout_ms) {
    edrv_msg m;
    if (edrv_receive(proc, timeout_ms, &m) != 0)
        return -1;
    int idx = 1, arity, rc = -1;
    char atom[MAXATOMLEN];
    if (ei_decode_tuple_header(m.data, &idx, &arity) == 0 && arity == 5 &&
        ei_decode_atom(m.data, &idx, atom) == 0 && strcmp(atom, "done") == 0 &&
        ei_decode_ulong(m.data, &idx, &d->key) == 0 && ei_decode_ulong(m.data, &idx, &d->seq) == 0 &&
        ei_decode_ulong(m.data, &idx, &d->order) == 0) {
        d->lane[0] = '\0';
        int type, size;
        if (ei_get_type(m.data, &idx, &type, &size) == 0 && size < (int)sizeof d->lane &&
            (type == ERL_NIL_EXT || ei_decode_string(m.data, &idx, d->lane) == 0))
            rc = 0;
    }
    edrv_msg_free(&m);
    return rc;
}

static void one_job(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    const char *r = submit(port, 0, 0, 1, 0);
    long id = atol(r);
    CHECK(id > 0);
    done_msg d;
    REQUIRE(next_done(&d, CHECK_WAIT_MS) == 0);
    CHECK_INT(d.seq, 1);
    CHECK(strncmp(d.lane, "async_", 6) == 0);
    CHECK_STR(ctl(port, 5, "", 0), "ready=1,freed=0,invoked=1,stopped=0");
    edrv_pool_stats st;
    edrv_pool(&st);
    CHECK_INT(st.threads, 2);
    CHECK_INT(st.submitted, 1);
    CHECK_INT(st.ready_async, 1);
    ErlDrvSysInfo si;
    driver_system_info(&si, sizeof si);
    CHECK_INT(si.async_threads, 2);
    edrv_proc_free(proc);
}

static void key_choice(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    /* Key given: *key % N, written back (N = 2 in these tests). */
    const char *r = submit(port, 1, 7, 1, 0);
    CHECK(strstr(r, ",1") != NULL);
    r = submit(port, 1, 12, 1, 0);
    CHECK(strstr(r, ",0") != NULL);
    done_msg d1, d2;
    REQUIRE(next_done(&d1, CHECK_WAIT_MS) == 0);
    REQUIRE(next_done(&d2, CHECK_WAIT_MS) == 0);
    CHECK(strcmp(d1.lane, d2.lane) != 0);
    /* No key: id % N, so consecutive jobs alternate lanes. */
    int per_lane[3] = {0};
    submit(port, 0, 0, 100, 0);
    for (int i = 0; i < 100; i++) {
        done_msg d;
        REQUIRE(next_done(&d, CHECK_WAIT_MS) == 0);
        per_lane[atoi(d.lane + 6) % 3]++;
    }
    CHECK_INT(per_lane[1], 50);
    CHECK_INT(per_lane[2], 50);
    CHECK_STR(ctl(port, 5, "", 0), "ready=102,freed=0,invoked=102,stopped=0");
    edrv_proc_free(proc);
}

static void per_key_order(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    enum { KEYS = 64, PER_KEY = 200 };
    for (int round = 0; round < PER_KEY; round++)
        for (unsigned k = 0; k < KEYS; k++)
            submit(port, 1, k + 100, 1, 0);
    unsigned long last_order[KEYS + 200] = {0}, last_seq[KEYS + 200] = {0};
    char lane_of[KEYS + 200][32];
    memset(lane_of, 0, sizeof lane_of);
    int bad = 0;
    for (int i = 0; i < KEYS * PER_KEY; i++) {
        done_msg d;
        REQUIRE(next_done(&d, CHECK_WAIT_MS) == 0);
        /* Same key: invoked in submission order, one thread, ready in order. */
        if (d.order != last_order[d.key] + 1 || d.seq <= last_seq[d.key])
            bad++;
        if (lane_of[d.key][0] && strcmp(lane_of[d.key], d.lane) != 0)
            bad++;
        snprintf(lane_of[d.key], sizeof lane_of[d.key], "%s", d.lane);
        last_order[d.key] = d.order;
        last_seq[d.key] = d.seq;
    }
    CHECK_INT(bad, 0);
    edrv_proc_free(proc);
}

static void cancel_queued(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    long blocker = block(port, 5); /* lane 1 is busy until released */
    long ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = atol(submit(port, 1, 5, 1, 0));
    REQUIRE(wait_invoked(port, 1));
    CHECK_INT(cancel(port, blocker), 0); /* running: too late */
    for (int i = 0; i < 10; i += 2)
        CHECK_INT(cancel(port, ids[i]), 1);
    CHECK_INT(cancel(port, ids[0]), 0); /* already cancelled */
    CHECK_INT(cancel(port, 999999), 0); /* unknown */
    CHECK_INT(cancel(port, 0), 0);
    CHECK_INT(cancel(port, -1), 0);
    CHECK_STR(ctl(port, 5, "", 0), "ready=0,freed=5,invoked=1,stopped=0");
    ctl(port, 4, "", 0);
    /* The blocker and the five others, in order; the cancelled never run. */
    done_msg d;
    for (int i = 0; i < 6; i++)
        REQUIRE(next_done(&d, CHECK_WAIT_MS) == 0);
    CHECK_INT(next_done(&d, 50), -1);
    CHECK_INT(cancel(port, ids[1]), 0); /* finished */
    CHECK_STR(ctl(port, 5, "", 0), "ready=6,freed=5,invoked=6,stopped=0");
    edrv_pool_stats st;
    edrv_pool(&st);
    CHECK_INT(st.cancelled, 5);
    edrv_proc_free(proc);
}

static void close_with_jobs_pending(void) {
    /* stop runs first; the queued jobs still run later, and end with free. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    block(port, 0); /* both lanes busy until released */
    block(port, 1);
    REQUIRE(wait_invoked(port, 2));
    submit(port, 1, 1, 20, 0);
    ctl(port, 9, "", 0); /* stop queues one more job */
    CHECK_INT(edrv_port_close(proc, port), 0);
    edrv_port other = open_adrv();
    CHECK_STR(ctl(other, 5, "", 0), "ready=0,freed=0,invoked=2,stopped=1");
    ctl(other, 4, "", 0);
    WAIT_UNTIL(strcmp(ctl(other, 5, "", 0), "ready=0,freed=23,invoked=23,stopped=1") == 0);
    CHECK_STR(ctl(other, 5, "", 0), "ready=0,freed=23,invoked=23,stopped=1");
    edrv_proc_free(proc);
}

static void driver_stays_loaded(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    block(port, 0);
    REQUIRE(wait_invoked(port, 1));
    submit(port, 1, 0, 3, 0);
    CHECK_INT(edrv_port_close(proc, port), 0);
    /* No port, jobs pending: the unload waits for them. */
    CHECK_INT(edrv_unload_driver("adrv"), 1);
    edrv_port p2;
    CHECK_INT(edrv_open_port(proc, "adrv", 0, &p2), EDRV_EBADARG);
    /* Loading it again cancels the pending unload: same state, same counters. */
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "adrv"), 0);
    port = open_adrv();
    CHECK_STR(ctl(port, 5, "", 0), "ready=0,freed=0,invoked=1,stopped=1");
    ctl(port, 4, "", 0);
    CHECK_INT(edrv_port_close(proc, port), 0);
    int rc = edrv_unload_driver("adrv"); /* 1 while the released jobs finish */
    CHECK(rc == 0 || rc == 1);
    /* Once the jobs end, it unloads: a new load starts from scratch. */
    edrv_pool_stats ps;
    CHECK(WAIT_UNTIL(pool_idle(&ps)));
    CHECK_INT(edrv_load_driver(EDRV_TEST_DRIVERS, "adrv"), 0);
    port = open_adrv();
    CHECK_STR(ctl(port, 5, "", 0), "ready=0,freed=0,invoked=0,stopped=0");
    edrv_proc_free(proc);
}

static void port_data_lock(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    char b[4];
    put32(b, 5000);
    CHECK_STR(ctl(port, 10, b, 4), "created");
    CHECK_STR(ctl(port, 10, b, 4), "again"); /* a second create fails */
    /* Every job counted under the lock; each one's reference is gone, the
     * port's own remains. */
    edrv_pool_stats st;
    CHECK(WAIT_UNTIL(pool_idle(&st)));
    CHECK_STR(ctl(port, 11, "", 0), "count=10000,refc=1");
    /* The port dies with the lock referenced by queued jobs: the last job
     * frees it (ASan checks). */
    edrv_port p2 = open_adrv();
    block(p2, 0);
    block(p2, 1);
    CHECK_STR(ctl(p2, 10, b, 4), "created");
    CHECK_INT(edrv_port_close(proc, p2), 0);
    ctl(port, 4, "", 0);
    edrv_proc_free(proc);
}

static void output_from_pool_threads(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    char b[4];
    put32(b, 1000);
    CHECK_STR(ctl(port, 12, b, 4), "");
    int got = 0;
    edrv_msg m;
    while (got < 1000 && edrv_receive(proc, CHECK_WAIT_MS, &m) == 0) {
        char *s;
        if (edrv_term_format(m.data, m.len, &s) > 0 && strncmp(s, "{from_pool,", 11) == 0)
            got++;
        free(s);
        edrv_msg_free(&m);
    }
    CHECK_INT(got, 1000);
    edrv_proc_free(proc);
}

static void shutdown_with_jobs_queued(void) {
    /* edrv_stop: ports close, queued jobs still run and end with free. Both
     * lanes wait at a gate that only the port's stop opens, so every job is
     * still queued (or waiting) when edrv_stop closes the port. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    REQUIRE(block(port, 0) > 0);
    REQUIRE(block(port, 1) > 0);
    submit(port, 1, 0, 1000, 0);
    submit(port, 1, 1, 1000, 10);
    CHECK_STR(ctl(port, 18, "", 0), "");
    CHECK_INT(edrv_stop(), 0);
    edrv_pool_stats st;
    edrv_pool(&st);
    CHECK_INT(st.submitted, 2002);
    CHECK_INT(st.ready_async, 0);
    CHECK_INT(st.freed, 2002);
    CHECK_INT(st.cancelled, 0);
    edrv_msg m;
    while (edrv_receive(proc, 0, &m) == 0)
        edrv_msg_free(&m);
    edrv_proc_free(proc);
}

/* Waits until the port is closed; its port_check error (0 if it never
 * closed). */
static int wait_closed(edrv_port port) {
    edrv_port_status st;
    int rc = 0;
    WAIT_UNTIL((rc = edrv_port_info(port, &st)) != 0);
    return rc;
}

static void pdl_queue_while_closing(void) {
    /* Pool threads use the driver queue under the port data lock while the
     * port closes: the runtime reads the queue's size and frees the queue
     * under that lock too (TSan checks), and the lock keeps the port's
     * struct alive for the jobs that still hold it (ASan checks). Jobs that
     * run after the port died find their enqueue refused. */
    REQUIRE(setup() == 0);
    long ok0 = 0, dead0 = 0;
    sscanf(ctl(open_adrv(), 19, "", 0), "deq=%*d,churn_ok=%ld,churn_dead=%ld", &ok0, &dead0);
    for (int round = 0; round < 20; round++) {
        edrv_port port = open_adrv();
        char b[4];
        put32(b, 500);
        CHECK_STR(ctl(port, 17, b, 4), "");
        CHECK_INT(edrv_port_close(proc, port), 0);
    }
    edrv_port other = open_adrv();
    edrv_pool_stats st;
    CHECK(WAIT_UNTIL(pool_idle(&st)));
    CHECK_INT(st.ready_async + st.freed, st.submitted);
    long ok = 0, dead = 0;
    CHECK(sscanf(ctl(other, 19, "", 0), "deq=%*d,churn_ok=%ld,churn_dead=%ld", &ok, &dead) == 2);
    CHECK_INT(ok - ok0 + dead - dead0, 20 * 500);
    edrv_proc_free(proc);
}

static void closing_port_emptied_by_job(void) {
    /* A port closed with data in its driver queue is closing; a pool thread
     * empties the queue under the port data lock, and the port ends with
     * that job (stop runs), as ERTS ends it after its next task. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv(), other = open_adrv();
    char b[4];
    put32(b, 10);
    CHECK_STR(ctl(port, 15, b, 4), "10");
    put32(b, 0);
    CHECK_STR(ctl(port, 16, b, 4), "");
    CHECK_INT(edrv_port_close(proc, port), 0);
    edrv_port_status st;
    CHECK_INT(edrv_port_info(port, &st), 0); /* closing, not closed */
    REQUIRE(wait_invoked(port, 1));
    CHECK_STR(ctl(port, 5, "", 0), "ready=0,freed=0,invoked=1,stopped=0");
    /* Released through the other port, so that the job's end is the closing
     * port's only event after the dequeue: it runs ready_async, then ends. */
    CHECK_STR(ctl(other, 4, "", 0), "");
    CHECK_INT(wait_closed(port), EDRV_ECLOSED);
    CHECK_STR(ctl(other, 19, "", 0), "deq=0,churn_ok=0,churn_dead=0");
    CHECK_STR(ctl(other, 5, "", 0), "ready=1,freed=0,invoked=1,stopped=1");
    edrv_proc_free(proc);
}

static void stress(void) {
    /* Jobs on many ports with random keys, random cancels and random port
     * closes: every job must end in exactly one of ready_async or free, and
     * no cancelled job may run. */
    REQUIRE(setup() == 0);
    const char *env = getenv("EDRV_STRESS_JOBS");
    long total = env ? atol(env) : 1000000;
    enum { PORTS = 32 };
    edrv_port ports[PORTS];
    for (int i = 0; i < PORTS; i++)
        ports[i] = open_adrv();
    unsigned seed = 42;
    long submitted = 0, cancelled = 0, batch = 2000;
    char b[12];
    for (long done = 0; done < total; done += batch) {
        seed = seed * 1103515245u + 12345u;
        int i = (int)((seed >> 8) % PORTS);
        put32(b, (unsigned)batch);
        put32(b + 4, 50); /* cancel 5% */
        put32(b + 8, seed);
        const char *r = ctl(ports[i], 7, b, sizeof b);
        long s, c;
        if (sscanf(r, "%ld,%ld", &s, &c) == 2) {
            submitted += s;
            cancelled += c;
        }
        if ((seed >> 12) % 16 == 0) { /* now and then, close a port mid-flight */
            CHECK_INT(edrv_port_close(proc, ports[i]), 0);
            ports[i] = open_adrv();
        }
    }
    CHECK_INT(submitted, total);
    CHECK(cancelled > 0);
    /* Wait for the pool to drain. */
    edrv_pool_stats st;
    for (int i = 0; i < 6000; i++) {
        edrv_pool(&st);
        if (st.ready_async + st.freed + st.cancelled == st.submitted)
            break;
        usleep(10000);
    }
    CHECK_INT(st.ready_async + st.freed + st.cancelled, st.submitted);
    CHECK_INT(st.submitted, total);
    char want[128];
    snprintf(want, sizeof want, "once=%ld,never=0,twice=0,invoked_cancelled=0", total);
    CHECK_STR(ctl(ports[0], 8, "", 0), want);
    printf("stress: %ld jobs, %ld cancelled, %llu ended with ready_async, %llu with free\n",
           total, cancelled, (unsigned long long)st.ready_async, (unsigned long long)st.freed);
    edrv_proc_free(proc);
}

/* Submits count jobs in batches over keys 0..3 and waits for every done
 * message; how many came. */
static long run_jobs(edrv_port port, long count) {
    long got = 0;
    for (long sent = 0; sent < count; sent += 500) {
        submit(port, 1, (unsigned)(sent / 500) % 4, 500, 0);
        done_msg d;
        for (int i = 0; i < 500 && next_done(&d, CHECK_WAIT_MS) == 0; i++)
            got++;
    }
    return got;
}

/* Restarts the runtime with these options (the harness stops it at the end). */
static int restart(int spin_us) {
    CHECK_INT(edrv_stop(), 0);
    return edrv_start(&(edrv_options){.async_threads = 2, .spin_us = spin_us});
}

static void lane_out_of_memory(void) {
    /* A lane's first job needs a segment and the lane's ring of segments:
     * when either allocation (or any other on the way) fails, driver_async
     * returns -1, takes no id and leaks nothing, and the next job works. */
    int failed = 0;
    for (long n = 1; n <= 6; n++) {
        REQUIRE(restart(0) == 0);
        REQUIRE(setup() == 0);
        edrv_port port = open_adrv();
        long first = atol(submit(port, 1, 0, 1, 0)); /* lane 0 only */
        REQUIRE(first > 0);
        done_msg d;
        REQUIRE(next_done(&d, CHECK_WAIT_MS) == 0); /* nothing else allocates now */
        edrv_pool_stats a, b;
        edrv_pool(&a);
        edrv_testing_fail_alloc(n);
        submit(port, 1, 1, 1, 0); /* lane 1's first job */
        edrv_testing_fail_alloc(0);
        edrv_pool(&b);
        long taken = (long)(b.submitted - a.submitted); /* 0 or 1 */
        failed += taken == 0;
        long next = atol(submit(port, 1, 1, 1, 0));
        CHECK_INT(next, first + taken + 1);
        /* Every job ends; a done message may itself be the allocation that
         * failed, if the job ended before the failure was turned off. */
        CHECK(WAIT_UNTIL(pool_idle(&b)));
        CHECK_INT(b.ready_async + b.freed, b.submitted);
        CHECK_INT(b.submitted, a.submitted + (unsigned long)taken + 1);
        while (next_done(&d, 100) == 0)
            ;
        edrv_proc_free(proc);
    }
    CHECK(failed > 0);
}

static void spin_option(void) {
    CHECK_INT(restart(1000001), EDRV_EINVAL);
    CHECK(strstr(edrv_last_error(), "spin_us") != NULL);
    CHECK_INT(edrv_start(&(edrv_options){.async_threads = 2, .spin_us = 1000000}), 0);
    CHECK_INT(restart(0), 0);
}

static void never_spinning(void) {
    /* spin_us < 0: every idle thread sleeps at once, so every job goes
     * through the futex and eventfd wake-ups; all must still end, in order. */
    REQUIRE(restart(-1) == 0);
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    CHECK_INT(run_jobs(port, 20000), 20000);
    for (int i = 0; i < 200; i++) { /* one job in flight at a time */
        submit(port, 0, 0, 1, 0);
        done_msg d;
        CHECK_INT(next_done(&d, CHECK_WAIT_MS), 0);
    }
    edrv_pool_stats st;
    edrv_pool(&st);
    CHECK_INT(st.ready_async, 20200);
    CHECK_INT(st.started, 20200);
    edrv_proc_free(proc);
}

static void idle_uses_no_cpu(void) {
    /* After work, the spins end within spin_us and every thread sleeps: a
     * second of idling costs (almost) no CPU. A thread that kept spinning
     * would cost a whole second per thread. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    CHECK_INT(run_jobs(port, 5000), 5000);
    edrv_pool_stats st = {0};
    CHECK(WAIT_UNTIL((edrv_pool(&st), st.sleeping == st.threads))); /* the spins are over */
    double c0 = check_cpu_seconds();
    usleep(1000000);
    double used = check_cpu_seconds() - c0;
    printf("idle: %.1f ms of CPU in 1 s\n", used * 1e3);
    CHECK(used < 0.1);
    edrv_proc_free(proc);
}

static void spare_memory_returned(void) {
    /* Queued jobs fill segments of the lanes (32 bytes a job); a second
     * after the last job ended, all but each lane's current one go back. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    char b[4];
    put32(b, 0);
    long blocker = atol(ctl(port, 3, b, 4)); /* lane 0 blocked: the rest queue */
    CHECK(blocker > 0);
    submit(port, 1, 0, 20000, 0);
    edrv_mem_stats m;
    edrv_memory(&m);
    size_t busy = m.bytes[EDRV_MEM_ASYNC];
    CHECK(busy >= 20000 * 32);
    ctl(port, 4, "", 0); /* unblock */
    done_msg d;
    long got = 0;
    while (got < 20001 && next_done(&d, CHECK_WAIT_MS) == 0)
        got++;
    CHECK_INT(got, 20001);
    size_t idle = busy;
    WAIT_UNTIL((edrv_memory(&m), idle = m.bytes[EDRV_MEM_ASYNC]) <= 64 * 1024);
    printf("async memory: %zu bytes with 20000 jobs queued, %zu when idle\n", busy, idle);
    CHECK(idle <= 64 * 1024);
    edrv_proc_free(proc);
}

static void cancel_finds_every_job(void) {
    /* Rounds of jobs queued behind blocked lanes, half of them cancelled in
     * a shuffled order: every cancel of a queued job must find it (1), a
     * second cancel must not (0), and exactly the others run. The jobs of a
     * round span several segments of each lane, and later rounds reuse
     * segments at other places in the lanes: a binary search that went wrong
     * would show here. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    enum { ROUNDS = 12, PER_KEY = 1000, N = 2 * PER_KEY };
    static long ids[N];
    unsigned seed = 7;
    long ran = 0;
    for (int round = 0; round < ROUNDS; round++) {
        char b[4];
        put32(b, 0);
        REQUIRE(atol(ctl(port, 3, b, 4)) > 0);
        put32(b, 1);
        REQUIRE(atol(ctl(port, 3, b, 4)) > 0);
        long last0 = atol(submit(port, 1, 0, PER_KEY, 0));
        long last1 = atol(submit(port, 1, 1, PER_KEY, 0));
        for (int i = 0; i < PER_KEY; i++) {
            ids[i] = last0 - PER_KEY + 1 + i;
            ids[PER_KEY + i] = last1 - PER_KEY + 1 + i;
        }
        for (int i = N - 1; i > 0; i--) { /* shuffle */
            seed = seed * 1103515245u + 12345u;
            int k = (int)((seed >> 8) % (unsigned)(i + 1));
            long t = ids[i];
            ids[i] = ids[k];
            ids[k] = t;
        }
        int found = 0;
        for (int i = 0; i < N / 2; i++)
            found += cancel(port, ids[i]);
        CHECK_INT(found, N / 2);
        int again = 0;
        for (int i = 0; i < N / 2; i++)
            again += cancel(port, ids[i]);
        CHECK_INT(again, 0);
        ctl(port, 4, "", 0); /* release */
        done_msg d;
        long got = 0;
        while (got < N / 2 + 2 && next_done(&d, CHECK_WAIT_MS) == 0)
            got++;
        CHECK_INT(got, N / 2 + 2);
        ran += got;
    }
    edrv_pool_stats st;
    edrv_pool(&st);
    CHECK_INT(st.cancelled, ROUNDS * N / 2);
    CHECK_INT(st.ready_async, ran);
    done_msg d;
    CHECK_INT(next_done(&d, 100), -1); /* no cancelled job ran */
    edrv_proc_free(proc);
}

static void callback_waits_for_its_job(void) {
    /* A callback that submits a job and waits for its invoke: the pool thread
     * must start at once, even asleep (spin_us < 0: every idle thread sleeps),
     * not once the callback has returned. */
    REQUIRE(restart(-1) == 0);
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    char b[4];
    for (unsigned key = 0; key < 4; key++) {
        edrv_pool_stats st = {0};
        CHECK(WAIT_UNTIL((edrv_pool(&st), st.sleeping == st.threads))); /* back asleep */
        put32(b, key);
        CHECK_STR(ctl(port, 13, b, 4), "ran");
        done_msg d;
        CHECK_INT(next_done(&d, CHECK_WAIT_MS), 0);
    }
    edrv_proc_free(proc);
}

/* The ids of this process's threads whose names start with prefix, up to
 * max; how many there are. */
static int threads_named(const char *prefix, pid_t *tids, int max) {
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char path[sizeof "/proc/self/task//comm" + sizeof e->d_name], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
        if (!f)
            continue;
        if (fgets(name, sizeof name, f) && strncmp(name, prefix, strlen(prefix)) == 0 && n < max)
            tids[n++] = (pid_t)atoi(e->d_name);
        fclose(f);
    }
    closedir(d);
    return n;
}

static bool has_mask(pid_t tid, const cpu_set_t *want) {
    cpu_set_t got;
    return sched_getaffinity(tid, sizeof got, &got) == 0 && CPU_EQUAL(&got, want);
}

/* round trips: one job in flight at a time, so that the emulator thread
 * spins for work between them; how many came back. */
static int round_trips(edrv_port port, int n) {
    int got = 0;
    done_msg d;
    for (int i = 0; i < n; i++) {
        submit(port, 0, 0, 1, 0);
        got += next_done(&d, CHECK_WAIT_MS) == 0;
    }
    return got;
}

/* An idle pool thread leaves the core where the emulator thread spins
 * (async.c, leave_emulator_core), and then has the CPU mask it had: one
 * allowed only that core stays there, one allowed another core gets its
 * whole mask back. (The kernel may move the second thread before the pool
 * does, so a pool that did not give the mask back fails this in most runs,
 * not in all.) */
static void pool_threads_keep_their_masks(void) {
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    cpu_set_t all, one, two;
    REQUIRE(sched_getaffinity(0, sizeof all, &all) == 0);
    int cpus[2] = {-1, -1}, ncpus = 0;
    for (int c = 0; c < CPU_SETSIZE && ncpus < 2; c++)
        if (CPU_ISSET(c, &all))
            cpus[ncpus++] = c;
    pid_t emulator, pool[2];
    REQUIRE(threads_named("emulator", &emulator, 1) == 1);
    REQUIRE(threads_named("async_", pool, 2) == 2);
    CPU_ZERO(&one);
    CPU_SET(cpus[0], &one);
    two = one;
    if (ncpus == 2)
        CPU_SET(cpus[1], &two);
    /* Everyone on the first core, then the second pool thread may leave. */
    REQUIRE(sched_setaffinity(emulator, sizeof one, &one) == 0);
    REQUIRE(sched_setaffinity(pool[0], sizeof one, &one) == 0);
    REQUIRE(sched_setaffinity(pool[1], sizeof one, &one) == 0);
    CHECK_INT(round_trips(port, 200), 200);
    REQUIRE(sched_setaffinity(pool[1], sizeof two, &two) == 0);
    CHECK_INT(round_trips(port, 2000), 2000);
    /* Once the threads are idle, no move is under way: each has its mask. */
    CHECK(WAIT_UNTIL(has_mask(pool[0], &one) && has_mask(pool[1], &two)));
    edrv_proc_free(proc);
}

static void pool_sleeping_count(void) {
    /* edrv_pool's `sleeping`: every pool thread is asleep once the pool has
     * been idle past its spin, and a blocked job keeps its thread awake. */
    REQUIRE(setup() == 0);
    edrv_port port = open_adrv();
    edrv_pool_stats st = {0};
    for (int i = 0; i < 12000 && (edrv_pool(&st), st.sleeping != st.threads); i++)
        usleep(5000);
    CHECK_INT(st.sleeping, 2);
    REQUIRE(block(port, 0) > 0);
    wait_invoked(port, 1);
    for (int i = 0; i < 12000 && (edrv_pool(&st), st.sleeping != 1); i++)
        usleep(5000);
    CHECK_INT(st.sleeping, 1);
    ctl(port, 4, "", 0);
    done_msg d;
    CHECK_INT(next_done(&d, 30000), 0);
    edrv_proc_free(proc);
}

/* The base address of the loaded adrv.so, or NULL. */
static void *adrv_base(void) {
    void *h = dlopen(EDRV_TEST_DRIVERS "/adrv.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return NULL;
    void *sym = dlsym(h, "driver_init");
    Dl_info info;
    void *base = sym && dladdr(sym, &info) ? info.dli_fbase : NULL;
    dlclose(h);
    return base;
}

static void reloads_keep_the_function_table(void) {
    /* A driver unloaded and loaded again at another address (the old one
     * is kept taken here) brings new (invoke, free) pairs each time; the
     * unload gives its pairs' slots back, so the pool's function table
     * (chunks of 256 pairs in EDRV_MEM_ASYNC) does not grow with reloads. */
    enum { RELOADS = 300 };
    static void *blocked[RELOADS];
    int nblocked = 0;
    edrv_mem_stats m0, m1;
    for (int i = 0; i < RELOADS; i++) {
        REQUIRE(setup() == 0);
        edrv_port port = open_adrv();
        submit(port, 1, 0, 1, 0);
        done_msg d;
        REQUIRE(next_done(&d, 30000) == 0);
        if (i == 1)
            edrv_memory(&m0);
        void *base = adrv_base();
        edrv_proc_free(proc);
        REQUIRE(edrv_unload_driver("adrv") == 0);
        /* Keep the old place taken, so that the next load lands elsewhere. */
        void *b = base ? mmap(base, 4096, PROT_NONE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
                       : MAP_FAILED;
        if (b != MAP_FAILED)
            blocked[nblocked++] = b;
    }
    edrv_memory(&m1);
    printf("reloads: %d, %d at a new address; async blocks %zu -> %zu\n", RELOADS, nblocked,
           m0.blocks[EDRV_MEM_ASYNC], m1.blocks[EDRV_MEM_ASYNC]);
    CHECK(nblocked > 256);
    CHECK_INT(m1.blocks[EDRV_MEM_ASYNC], m0.blocks[EDRV_MEM_ASYNC]);
    for (int i = 0; i < nblocked; i++)
        munmap(blocked[i], 4096);
}

static const test_case cases[] = {
    {"reloads_keep_the_function_table", reloads_keep_the_function_table},
    {"pool_sleeping_count", pool_sleeping_count},
    {"one_job", one_job},
    {"key_choice", key_choice},
    {"per_key_order", per_key_order},
    {"cancel_queued", cancel_queued},
    {"close_with_jobs_pending", close_with_jobs_pending},
    {"driver_stays_loaded", driver_stays_loaded},
    {"port_data_lock", port_data_lock},
    {"output_from_pool_threads", output_from_pool_threads},
    {"shutdown_with_jobs_queued", shutdown_with_jobs_queued},
    {"pdl_queue_while_closing", pdl_queue_while_closing},
    {"closing_port_emptied_by_job", closing_port_emptied_by_job},
    {"stress", stress},
    {"cancel_finds_every_job", cancel_finds_every_job},
    {"callback_waits_for_its_job", callback_waits_for_its_job},
    {"spin_option", spin_option},
    {"never_spinning", never_spinning},
    {"idle_uses_no_cpu", idle_uses_no_cpu},
    {"spare_memory_returned", spare_memory_returned},
    {"lane_out_of_memory", lane_out_of_memory},
    {"pool_threads_keep_their_masks", pool_threads_keep_their_masks},
    {NULL, NULL},
};

TEST_MAIN(cases)
