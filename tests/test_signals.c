/* Signals between processes, as in Erlang (each rule checked in erl):
 * links, exit/2, exit/1, monitors, send, registered names, and wait sets. */
#include "check.h"

#include <pthread.h>

/* A reason (or any term) as ETF: an atom. */
typedef struct {
    char b[300];
    int len;
} term;

static term atom(const char *a) {
    term t = {.len = 0};
    ei_encode_version(t.b, &t.len);
    ei_encode_atom(t.b, &t.len, a);
    return t;
}

static int exit_with(edrv_proc *p, const char *reason) {
    term t = atom(reason);
    return edrv_proc_exit(p, t.b, (size_t)t.len);
}

static int send_exit(edrv_proc *from, edrv_proc *to, const char *reason) {
    term t = atom(reason);
    return edrv_exit(from, edrv_proc_pid(to), t.b, (size_t)t.len);
}

static char *pidtext(edrv_proc *p) {
    static char s[4][32];
    static int k;
    k = (k + 1) % 4;
    snprintf(s[k], sizeof s[k], "<0.%llu.0>", (unsigned long long)edrv_proc_pid(p));
    return s[k];
}

/* The reason p was ended with, printed, or "alive". */
static char *ended_with(edrv_proc *p) {
    static char out[128];
    edrv_msg m;
    char *s = NULL;
    if (edrv_proc_exit_reason(p, &m) != 0)
        snprintf(out, sizeof out, "alive");
    else if (edrv_term_format(m.data, m.len, &s) < 0)
        snprintf(out, sizeof out, "(bad)");
    else
        snprintf(out, sizeof out, "%s", s);
    free(s);
    edrv_msg_free(&m);
    return out;
}

#define CHECK_NEXT(p, fmt, ...)                                                    \
    do {                                                                           \
        char want_[256];                                                           \
        snprintf(want_, sizeof want_, fmt, __VA_ARGS__);                           \
        char *got_ = recv_text((p), CHECK_WAIT_MS);                                \
        CHECK_STR(got_, want_);                                                    \
        free(got_);                                                                \
    } while (0)

/* Nothing in p's mailbox. */
#define CHECK_EMPTY(p)                                                             \
    do {                                                                           \
        char *got_ = recv_text((p), 0);                                            \
        CHECK_STR(got_, "timeout");                                                \
        free(got_);                                                                \
    } while (0)

static void sending(void) {
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new();
    term t = atom("hello");
    CHECK_INT(edrv_send(edrv_proc_pid(a), t.b, (size_t)t.len), 0);
    CHECK_NEXT(a, "%s", "hello");
    CHECK_INT(edrv_send(edrv_proc_pid(a), t.b, (size_t)t.len - 1), EDRV_EBADTERM);
    CHECK_INT(edrv_send(edrv_proc_pid(a), NULL, 0), EDRV_EBADTERM);
    uint64_t gone = edrv_proc_pid(b);
    edrv_proc_free(b);
    CHECK_INT(edrv_send(gone, t.b, (size_t)t.len), 0); /* dropped, as in Erlang */
    CHECK_INT(edrv_is_process_alive(gone), 0);
    CHECK_INT(edrv_is_process_alive(edrv_proc_pid(a)), 1);
    CHECK_EMPTY(a);
    edrv_proc_free(a);
}

static void link_exit(void) {
    /* B exits with foo: A, linked and not trapping, ends with foo; C,
     * linked and trapping, gets {'EXIT', B, foo}. */
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new(), *c = trapping_proc();
    CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_link(b, edrv_proc_pid(c)), 0); /* from the other end */
    CHECK_INT(edrv_link(a, edrv_proc_pid(a)), 0);  /* to itself: nothing */
    char bt[32];
    snprintf(bt, sizeof bt, "%s", pidtext(b));
    CHECK_INT(exit_with(b, "foo"), 0);
    CHECK_STR(ended_with(a), "foo");
    edrv_msg m;
    CHECK_INT(edrv_receive(a, 0, &m), EDRV_EEXITED);
    CHECK_INT(edrv_is_process_alive(edrv_proc_pid(a)), 0);
    CHECK_NEXT(c, "{'EXIT',%s,foo}", bt);
    CHECK_STR(ended_with(c), "alive");
    edrv_proc_free(a);
    edrv_proc_free(c);
}

static void link_normal(void) {
    /* normal: ignored by a process that does not trap exits, a message to
     * one that does; edrv_proc_free is an exit with reason normal. */
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new(), *c = trapping_proc();
    CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_link(c, edrv_proc_pid(b)), 0);
    char bt[32];
    snprintf(bt, sizeof bt, "%s", pidtext(b));
    edrv_proc_free(b);
    CHECK_STR(ended_with(a), "alive");
    CHECK_EMPTY(a);
    CHECK_NEXT(c, "{'EXIT',%s,normal}", bt);
    edrv_proc_free(a);
    edrv_proc_free(c);
}

static void link_dead(void) {
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new(), *c = trapping_proc();
    uint64_t gone = edrv_proc_pid(b);
    edrv_proc_free(b);
    CHECK_INT(edrv_link(a, gone), EDRV_ENOPROC);
    CHECK_STR(ended_with(a), "alive");
    CHECK_INT(edrv_link(c, gone), 0);
    CHECK_NEXT(c, "{'EXIT',<0.%llu.0>,noproc}", (unsigned long long)gone);
    CHECK_INT(edrv_link(a, 0), EDRV_ENOPROC);
    edrv_proc_free(a);
    edrv_proc_free(c);
}

static void unlink_stops_signals(void) {
    edrv_proc *a = trapping_proc(), *b = edrv_proc_new(), *c = edrv_proc_new();
    CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_link(c, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_unlink(a, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_unlink(b, edrv_proc_pid(c)), 0); /* from the other end */
    CHECK_INT(edrv_unlink(a, 12345), 0);             /* not linked: fine */
    CHECK_INT(exit_with(b, "bad"), 0);
    CHECK_EMPTY(a);
    CHECK_STR(ended_with(c), "alive");
    /* linked twice, one signal */
    b = edrv_proc_new();
    CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
    char bt[32];
    snprintf(bt, sizeof bt, "%s", pidtext(b));
    CHECK_INT(exit_with(b, "bad"), 0);
    CHECK_NEXT(a, "{'EXIT',%s,bad}", bt);
    CHECK_EMPTY(a);
    edrv_proc_free(a);
    edrv_proc_free(c);
}

static void exit2(void) {
    edrv_proc *me = edrv_proc_new(), *a = edrv_proc_new(), *t = trapping_proc();
    /* normal to a process that does not trap: nothing */
    CHECK_INT(send_exit(me, a, "normal"), 0);
    CHECK_STR(ended_with(a), "alive");
    /* normal to one that traps: a message */
    CHECK_INT(send_exit(me, t, "normal"), 0);
    CHECK_NEXT(t, "{'EXIT',%s,normal}", pidtext(me));
    /* foo: trapped, or the end */
    CHECK_INT(send_exit(me, t, "foo"), 0);
    CHECK_NEXT(t, "{'EXIT',%s,foo}", pidtext(me));
    CHECK_INT(send_exit(me, a, "foo"), 0);
    CHECK_STR(ended_with(a), "foo");
    edrv_proc_free(a);
    /* kill cannot be trapped: killed */
    CHECK_INT(send_exit(me, t, "kill"), 0);
    CHECK_STR(ended_with(t), "killed");
    edrv_proc_free(t);
    /* to a pid that is not alive: fine */
    term r = atom("x");
    CHECK_INT(edrv_exit(me, 999999, r.b, (size_t)r.len), 0);
    CHECK_INT(edrv_exit(me, 999999, r.b, 1), EDRV_EBADTERM);
    /* normal to itself ends a process that does not trap */
    CHECK_INT(send_exit(me, me, "normal"), 0);
    CHECK_STR(ended_with(me), "normal");
    CHECK_INT(send_exit(me, me, "x"), EDRV_EEXITED);
    edrv_proc_free(me);
    /* and is a message to one that traps */
    t = trapping_proc();
    CHECK_INT(send_exit(t, t, "normal"), 0);
    CHECK_NEXT(t, "{'EXIT',%s,normal}", pidtext(t));
    edrv_proc_free(t);
}

static void kill_over_links(void) {
    /* A process killed by exit/2 sends `killed` over its links; one that
     * exits with kill itself sends `kill`, which ends a linked process that
     * does not trap (with kill) and is a message to one that traps. */
    edrv_proc *me = edrv_proc_new(), *a = edrv_proc_new(), *t = trapping_proc();
    CHECK_INT(edrv_link(t, edrv_proc_pid(a)), 0);
    char at[32];
    snprintf(at, sizeof at, "%s", pidtext(a));
    CHECK_INT(send_exit(me, a, "kill"), 0);
    CHECK_NEXT(t, "{'EXIT',%s,killed}", at);
    edrv_proc_free(a);
    edrv_proc *b = edrv_proc_new(), *c = edrv_proc_new();
    CHECK_INT(edrv_link(t, edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_link(c, edrv_proc_pid(b)), 0);
    char bt[32];
    snprintf(bt, sizeof bt, "%s", pidtext(b));
    CHECK_INT(exit_with(b, "kill"), 0);
    CHECK_NEXT(t, "{'EXIT',%s,kill}", bt);
    CHECK_STR(ended_with(c), "kill");
    edrv_proc_free(c);
    edrv_proc_free(t);
    edrv_proc_free(me);
}

static void chain(void) {
    /* 20 000 processes linked in a row, the last owning a port: the first
     * one's end reaches every one (no stack grows with the chain), and the
     * last one's port closes with it. */
    enum { N = 20000 };
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc **ps = calloc(N, sizeof *ps);
    REQUIRE(ps);
    for (int i = 0; i < N; i++) {
        ps[i] = edrv_proc_new();
        if (i)
            CHECK_INT(edrv_link(ps[i], edrv_proc_pid(ps[i - 1])), 0);
    }
    edrv_port port = 0;
    CHECK_INT(edrv_open_port(ps[N - 1], "tdrv", 0, &port), 0);
    edrv_proc *watcher = trapping_proc();
    CHECK_INT(edrv_link(watcher, edrv_proc_pid(ps[N - 1])), 0);
    CHECK_INT(exit_with(ps[0], "boom"), 0);
    for (int i = 1; i < N; i++)
        if (strcmp(ended_with(ps[i]), "boom") != 0) {
            CHECK_REPORT("process %d of the chain: %s\n", i, ended_with(ps[i]));
            break;
        }
    CHECK_NEXT(watcher, "{'EXIT',%s,boom}", pidtext(ps[N - 1]));
    edrv_port_status st;
    CHECK(WAIT_UNTIL(edrv_port_info(port, &st) < 0));
    for (int i = 1; i < N; i++)
        edrv_proc_free(ps[i]);
    free(ps);
    edrv_proc_free(watcher);
}

static void port_exit_reaches_links(void) {
    /* A port's exit ends its owner, whose links and monitors get the reason. */
    REQUIRE(edrv_load_driver(EDRV_TEST_DRIVERS, "tdrv") == 0);
    edrv_proc *owner = edrv_proc_new(), *t = trapping_proc();
    CHECK_INT(edrv_link(t, edrv_proc_pid(owner)), 0);
    uint64_t ref = 0;
    CHECK_INT(edrv_monitor(t, edrv_proc_pid(owner), &ref), 0);
    edrv_port port = 0;
    REQUIRE(edrv_open_port(owner, "tdrv", 0, &port) == 0);
    edrv_reply r;
    CHECK_INT(edrv_port_control(t, port, 21, "bad", 3, &r), 0); /* driver_failure_atom */
    edrv_reply_free(&r);
    char *a = recv_text(t, CHECK_WAIT_MS), *b = recv_text(t, CHECK_WAIT_MS);
    char want[128];
    snprintf(want, sizeof want, "{'EXIT',%s,bad}", pidtext(owner));
    CHECK(strcmp(a, want) == 0 || strcmp(b, want) == 0);
    CHECK(strncmp(a, "{'DOWN',#Ref<", 13) == 0 || strncmp(b, "{'DOWN',#Ref<", 13) == 0);
    free(a);
    free(b);
    edrv_proc_free(owner);
    edrv_proc_free(t);
}

/* The DOWN message of monitor ref, as edrv_term_format prints it. */
static void down_text(char *out, size_t cap, uint64_t ref, edrv_proc *of, const char *reason) {
    snprintf(out, cap, "{'DOWN',#Ref<0.%llu.%llu.%llu>,process,%s,%s}",
             (unsigned long long)(ref >> 50), (unsigned long long)((ref >> 18) & 0xffffffffu),
             (unsigned long long)(ref & 0x3ffff), pidtext(of), reason);
}

static void monitors(void) {
    edrv_proc *w = edrv_proc_new(), *a = edrv_proc_new();
    uint64_t r1 = 0, r2 = 0;
    CHECK_INT(edrv_monitor(w, edrv_proc_pid(a), &r1), 0);
    CHECK_INT(edrv_monitor(w, edrv_proc_pid(a), &r2), 0);
    CHECK(r1 && r2 && r1 != r2);
    CHECK_INT(edrv_demonitor(w, r2), 1);
    CHECK_INT(edrv_demonitor(w, r2), 0);
    char want[256];
    down_text(want, sizeof want, r1, a, "bye");
    CHECK_INT(exit_with(a, "bye"), 0);
    CHECK_NEXT(w, "%s", want);
    CHECK_EMPTY(w); /* none for the demonitored one */
    /* of a pid that is not alive: noproc at once */
    edrv_proc *b = edrv_proc_new();
    uint64_t gone = edrv_proc_pid(b);
    edrv_proc_free(b);
    CHECK_INT(edrv_monitor(w, gone, &r1), 0);
    char got[256];
    char *s = recv_text(w, CHECK_WAIT_MS);
    snprintf(got, sizeof got, "%s", s);
    free(s);
    snprintf(want, sizeof want, "{'DOWN',#Ref<0.%llu.%llu.%llu>,process,<0.%llu.0>,noproc}",
             (unsigned long long)(r1 >> 50), (unsigned long long)((r1 >> 18) & 0xffffffffu),
             (unsigned long long)(r1 & 0x3ffff), (unsigned long long)gone);
    CHECK_STR(got, want);
    /* killed */
    edrv_proc *c = edrv_proc_new();
    CHECK_INT(edrv_monitor(w, edrv_proc_pid(c), &r1), 0);
    down_text(want, sizeof want, r1, c, "killed");
    CHECK_INT(send_exit(w, c, "kill"), 0);
    CHECK_NEXT(w, "%s", want);
    edrv_proc_free(c);
    /* a watcher that ends first: the target forgets its monitor */
    edrv_proc *d = edrv_proc_new(), *w2 = edrv_proc_new();
    CHECK_INT(edrv_monitor(w2, edrv_proc_pid(d), &r1), 0);
    edrv_proc_free(w2);
    edrv_proc_free(d);
    CHECK_INT(edrv_monitor(w, 0, NULL), EDRV_EINVAL);
    edrv_proc_free(w);
}

static void names(void) {
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new();
    uint64_t pa = edrv_proc_pid(a);
    CHECK_INT(edrv_whereis("foo"), 0);
    CHECK_INT(edrv_register("foo", pa), 0);
    CHECK_INT(edrv_whereis("foo"), pa);
    CHECK_INT(edrv_register("foo", edrv_proc_pid(b)), EDRV_EBADARG); /* taken */
    CHECK_INT(edrv_register("bar", pa), EDRV_EBADARG);              /* a has a name */
    CHECK_INT(edrv_register("undefined", edrv_proc_pid(b)), EDRV_EBADARG);
    CHECK_INT(edrv_register("", edrv_proc_pid(b)), EDRV_EBADARG);
    CHECK_INT(edrv_register(NULL, edrv_proc_pid(b)), EDRV_EBADARG);
    CHECK_INT(edrv_register("baz", 999999), EDRV_EBADARG); /* not alive */
    CHECK_INT(edrv_unregister("foo"), 0);
    CHECK_INT(edrv_unregister("foo"), EDRV_EBADARG);
    CHECK_INT(edrv_whereis("foo"), 0);
    CHECK_INT(edrv_register("bar", pa), 0); /* a has none now */
    /* a name goes with its process */
    CHECK_INT(exit_with(a, "x"), 0);
    CHECK_INT(edrv_whereis("bar"), 0);
    CHECK_INT(edrv_register("bar", edrv_proc_pid(b)), 0);
    CHECK_INT(edrv_whereis("bar"), edrv_proc_pid(b));
    /* many names: the hash's chains */
    edrv_proc *ps[300];
    char name[32];
    for (int i = 0; i < 300; i++) {
        ps[i] = edrv_proc_new();
        snprintf(name, sizeof name, "p%d", i);
        CHECK_INT(edrv_register(name, edrv_proc_pid(ps[i])), 0);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "p%d", i);
        CHECK_INT(edrv_whereis(name), edrv_proc_pid(ps[i]));
        if (i % 2)
            CHECK_INT(edrv_unregister(name), 0);
        edrv_proc_free(ps[i]);
        CHECK_INT(edrv_whereis(name), 0);
    }
    edrv_proc_free(b);
    CHECK_INT(edrv_whereis("bar"), 0);
}

static void waitset(void) {
    edrv_waitset *w = edrv_waitset_new();
    REQUIRE(w);
    edrv_proc *a = edrv_proc_new(), *b = edrv_proc_new(), *c = edrv_proc_new();
    term t = atom("m");
    CHECK_INT(edrv_send(edrv_proc_pid(c), t.b, (size_t)t.len), 0); /* before it joins */
    CHECK_INT(edrv_waitset_add(w, a, (void *)"a"), 0);
    CHECK_INT(edrv_waitset_add(w, b, (void *)"b"), 0);
    CHECK_INT(edrv_waitset_add(w, c, (void *)"c"), 0); /* has a message: reported */
    void *tags[8];
    CHECK_INT(edrv_waitset_wait(w, 0, tags, 8), 1);
    CHECK_STR(tags[0], "c");
    CHECK_INT(edrv_waitset_wait(w, 0, tags, 8), 0); /* once */
    CHECK_INT(edrv_send(edrv_proc_pid(b), t.b, (size_t)t.len), 0);
    CHECK_INT(edrv_send(edrv_proc_pid(a), t.b, (size_t)t.len), 0);
    CHECK_INT(edrv_send(edrv_proc_pid(b), t.b, (size_t)t.len), 0);
    CHECK_INT(edrv_waitset_wait(w, -1, tags, 1), 1);
    CHECK_STR(tags[0], "b");
    CHECK_INT(edrv_waitset_wait(w, -1, tags, 8), 1);
    CHECK_STR(tags[0], "a");
    /* ended by a signal: reported */
    CHECK_INT(send_exit(a, c, "bye"), 0);
    CHECK_INT(edrv_waitset_wait(w, -1, tags, 8), 1);
    CHECK_STR(tags[0], "c");
    CHECK_INT(edrv_waitset_free(w), EDRV_EINVAL); /* it has processes */
    /* another set takes b; a set of none leaves it */
    edrv_waitset *w2 = edrv_waitset_new();
    CHECK_INT(edrv_waitset_add(w2, b, (void *)"b2"), 0);
    CHECK_INT(edrv_waitset_wait(w2, 0, tags, 8), 1); /* it has messages */
    CHECK_STR(tags[0], "b2");
    CHECK_INT(edrv_waitset_add(NULL, b, NULL), 0);
    CHECK_INT(edrv_waitset_free(w2), 0);
    CHECK_INT(edrv_waitset_wait(w, 0, tags, 8), 0);
    edrv_proc_free(a);
    edrv_proc_free(b);
    edrv_proc_free(c);
    CHECK_INT(edrv_waitset_wait(w, 0, tags, 8), 0);
    CHECK_INT(edrv_waitset_wait(NULL, 0, tags, 8), EDRV_EINVAL);
    CHECK_INT(edrv_waitset_free(w), 0);
}

typedef struct {
    edrv_waitset *w;
    int n;
    void *tag;
} ws_waiter;

static void *ws_wait_thread(void *arg) {
    ws_waiter *x = arg;
    x->n = edrv_waitset_wait(x->w, -1, &x->tag, 1);
    return NULL;
}

static void waitset_wakes(void) {
    /* A thread waiting on a set wakes for a message from another thread. */
    edrv_waitset *w = edrv_waitset_new();
    edrv_proc *a = edrv_proc_new();
    CHECK_INT(edrv_waitset_add(w, a, (void *)"a"), 0);
    ws_waiter x = {w, -1, NULL};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, ws_wait_thread, &x) == 0);
    term t = atom("m");
    CHECK_INT(edrv_send(edrv_proc_pid(a), t.b, (size_t)t.len), 0);
    pthread_join(th, NULL);
    CHECK_INT(x.n, 1);
    CHECK_STR(x.tag, "a");
    edrv_proc_free(a);
    CHECK_INT(edrv_waitset_free(w), 0);
}

typedef struct {
    edrv_proc *killer;
    edrv_proc *victim;
    pthread_barrier_t *go;
} race;

static void *kill_thread(void *arg) {
    race *r = arg;
    pthread_barrier_wait(r->go);
    send_exit(r->killer, r->victim, "kill");
    return NULL;
}

static void link_races_exit(void) {
    /* link/1 against the target's end, on two threads: whichever comes
     * first, the linker gets exactly one signal ({'EXIT', B, killed} or
     * noproc), never none and never two. */
    edrv_proc *a = trapping_proc(), *k = edrv_proc_new();
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    for (int i = 0; i < 300; i++) {
        edrv_proc *b = edrv_proc_new();
        race r = {k, b, &go};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, kill_thread, &r) == 0);
        pthread_barrier_wait(&go);
        CHECK_INT(edrv_link(a, edrv_proc_pid(b)), 0);
        pthread_join(th, NULL);
        char *s = recv_text(a, CHECK_WAIT_MS);
        char k1[64], k2[64];
        snprintf(k1, sizeof k1, "{'EXIT',%s,killed}", pidtext(b));
        snprintf(k2, sizeof k2, "{'EXIT',%s,noproc}", pidtext(b));
        if (strcmp(s, k1) != 0 && strcmp(s, k2) != 0)
            CHECK_REPORT("round %d: %s\n", i, s);
        free(s);
        CHECK_EMPTY(a);
        edrv_proc_free(b);
    }
    pthread_barrier_destroy(&go);
    edrv_proc_free(a);
    edrv_proc_free(k);
}

typedef struct {
    edrv_proc *a;
    edrv_proc *killer;
    pthread_barrier_t *go;
} own_end;

static void *kill_a_thread(void *arg) {
    own_end *r = arg;
    pthread_barrier_wait(r->go);
    send_exit(r->killer, r->a, "kill");
    return NULL;
}

static void link_races_own_end(void) {
    /* A links to B while A is killed on another thread: when the link was
     * made (0), B, trapping, gets A's exit exactly once; when A was dead
     * first (EDRV_EEXITED), nothing. */
    edrv_proc *b = trapping_proc(), *k = edrv_proc_new();
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    int linked = 0, refused = 0;
    for (int i = 0; i < 300; i++) {
        edrv_proc *a = edrv_proc_new();
        own_end r = {a, k, &go};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, kill_a_thread, &r) == 0);
        pthread_barrier_wait(&go);
        int rc = edrv_link(a, edrv_proc_pid(b));
        pthread_join(th, NULL);
        char want[64];
        snprintf(want, sizeof want, "{'EXIT',%s,killed}", pidtext(a));
        if (rc == 0) {
            linked++;
            char *m = recv_text(b, CHECK_WAIT_MS);
            if (strcmp(m, want) != 0)
                CHECK_REPORT("round %d: linked, then %s\n", i, m);
            free(m);
        } else {
            refused++;
            CHECK_INT(rc, EDRV_EEXITED);
        }
        CHECK_EMPTY(b);
        edrv_proc_free(a);
    }
    CHECK_INT(linked + refused, 300);
    pthread_barrier_destroy(&go);
    edrv_proc_free(b);
    edrv_proc_free(k);
}

static void bad_calls(void) {
    term t = atom("x");
    CHECK_INT(edrv_link(NULL, 1), EDRV_EINVAL);
    CHECK_INT(edrv_unlink(NULL, 1), EDRV_EINVAL);
    CHECK_INT(edrv_exit(NULL, 1, t.b, (size_t)t.len), EDRV_EINVAL);
    CHECK_INT(edrv_proc_exit(NULL, t.b, (size_t)t.len), EDRV_EINVAL);
    uint64_t ref;
    CHECK_INT(edrv_monitor(NULL, 1, &ref), EDRV_EINVAL);
    CHECK_INT(edrv_demonitor(NULL, 1), EDRV_EINVAL);
    edrv_proc *p = edrv_proc_new();
    CHECK_INT(edrv_proc_exit(p, t.b, 1), EDRV_EBADTERM); /* and p lives on */
    CHECK_INT(edrv_is_process_alive(edrv_proc_pid(p)), 1);
    CHECK_INT(edrv_unregister(NULL), EDRV_EBADARG);
    CHECK_INT(edrv_whereis(NULL), 0);
    edrv_proc_free(p);
}

static const test_case cases[] = {
    {"send", sending},
    {"link_exit", link_exit},
    {"link_normal", link_normal},
    {"link_dead", link_dead},
    {"unlink_stops_signals", unlink_stops_signals},
    {"exit2", exit2},
    {"kill_over_links", kill_over_links},
    {"chain", chain},
    {"port_exit_reaches_links", port_exit_reaches_links},
    {"monitors", monitors},
    {"names", names},
    {"waitset", waitset},
    {"waitset_wakes", waitset_wakes},
    {"link_races_exit", link_races_exit},
    {"link_races_own_end", link_races_own_end},
    {"bad_calls", bad_calls},
    {NULL, NULL},
};

int main(int argc, char **argv) {
    return run_tests(cases, argc, argv);
}
