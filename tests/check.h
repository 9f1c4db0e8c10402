/*
 * check.h: the tests' small harness. A test file lists its cases in
 * TEST_LIST and ends with TEST_MAIN; `test_x` runs them all, `test_x NAME`
 * runs one. Each case runs between edrv_start and edrv_stop and then checks
 * that every byte edrv allocated was given back. The last line printed is
 * "N passed, N failed".
 *
 * No test depends on timing or on the machine's speed: a test waits for
 * what must come (a message, a counter, a state) with CHECK_WAIT_MS, a bound
 * for a broken build that a working one never reaches, however loaded the
 * machine; it builds the state it checks (gates, not sleeps). Only a
 * negative check (what must not come) waits a fixed short time.
 */
#ifndef EDRV_CHECK_H
#define EDRV_CHECK_H

#include "edrv.h"

#include <ei.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef EDRV_TEST_DRIVERS
#error EDRV_TEST_DRIVERS must name the directory of the test drivers
#endif

static int check_failures;

/* How long a test waits for what must come: generous, as a bound for a
 * broken build, never a timing a working build has to meet. */
#define CHECK_WAIT_MS 30000
#define CHECK_POLL_MS 5

static inline int64_t check_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Evaluates cond every CHECK_POLL_MS until it holds or CHECK_WAIT_MS have
 * passed; whether it holds (as its last evaluation said). */
#define WAIT_UNTIL(cond)                                                           \
    __extension__({                                                                \
        int64_t until_ = check_now_ms() + CHECK_WAIT_MS;                           \
        bool held_;                                                                \
        while (!(held_ = (cond)) && check_now_ms() < until_)                       \
            usleep(CHECK_POLL_MS * 1000);                                          \
        held_;                                                                     \
    })

/* Past this many failures a test stops printing them (a loop gone wrong). */
#define CHECK_REPORT(...)                                                          \
    do {                                                                           \
        if (check_failures < 20)                                                   \
            fprintf(stderr, __VA_ARGS__);                                          \
        check_failures++;                                                          \
    } while (0)

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            CHECK_REPORT("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                            \
    do {                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                        \
        if (a_ != b_) {                                                            \
            CHECK_REPORT("%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,    \
                         __LINE__, #a, a_, #b, b_);                                \
        }                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                            \
    do {                                                                           \
        const char *a_ = (a), *b_ = (b);                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                   \
            CHECK_REPORT("%s:%d: %s is \"%s\", expected \"%s\"\n", __FILE__,      \
                         __LINE__, #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)");    \
        }                                                                          \
    } while (0)

/* Must hold, or the rest of the case makes no sense. */
#define REQUIRE(cond)                                                              \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s (%s)\n", __FILE__, __LINE__, \
                    #cond, edrv_last_error());                                     \
            check_failures++;                                                      \
            return;                                                                \
        }                                                                          \
    } while (0)

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

/* A process that traps exits, as the Erlang processes of OTP's driver tests
 * do: its ports' exit signals come as {'EXIT', Port, Reason} messages. NULL
 * when out of memory. */
static inline edrv_proc *trapping_proc(void) {
    edrv_proc *p = edrv_proc_new();
    if (p && edrv_process_flag(p, EDRV_TRAP_EXIT, 1) != 0) {
        edrv_proc_free(p);
        return NULL;
    }
    return p;
}

/* port_control's reply as text (a thread's own buffer, valid until its next
 * call), or "error:NAME". */
static inline const char *control_text(edrv_proc *p, edrv_port port, unsigned op,
                                       const char *data, size_t len) {
    static _Thread_local char out[256];
    edrv_reply r;
    int rc = edrv_port_control(p, port, op, data, len, &r);
    if (rc < 0)
        snprintf(out, sizeof out, "error:%s", edrv_err_name(rc));
    else
        snprintf(out, sizeof out, "%.*s", (int)r.len, r.data ? r.data : "");
    edrv_reply_free(&r);
    return out;
}

/* The next message as text, or "timeout"; the caller frees it. */
static inline char *recv_text(edrv_proc *p, long timeout_ms) {
    edrv_msg m;
    char *s = NULL;
    if (edrv_receive(p, timeout_ms, &m) < 0)
        return strdup("timeout");
    if (edrv_term_format(m.data, m.len, &s) < 0)
        s = strdup("(not a term)");
    edrv_msg_free(&m);
    return s;
}

/* Checks that the next message prints as `want` ("%P" stands for the port). */
#define CHECK_MSG(proc, port, want)                                                \
    do {                                                                           \
        char *got_ = recv_text((proc), CHECK_WAIT_MS);                             \
        char want_[1024];                                                          \
        port_subst(want_, sizeof want_, (want), (port));                           \
        CHECK_STR(got_, want_);                                                    \
        free(got_);                                                                \
    } while (0)

static inline void port_subst(char *out, size_t cap, const char *want, edrv_port port) {
    size_t o = 0;
    for (const char *s = want; *s && o + 64 < cap; s++) {
        if (s[0] == '%' && s[1] == 'P') {
            o += (size_t)snprintf(out + o, cap - o, "#Port<0.%llu>",
                                  (unsigned long long)port);
            s++;
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
}

/* CPU time this process has used, user and system, in seconds. */
static inline double check_cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static inline int mem_in_use(void) {
    edrv_mem_stats st;
    edrv_memory(&st);
    int leaked = 0;
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        if (st.bytes[i] || st.blocks[i]) {
            fprintf(stderr, "  leak: %s: %zu bytes in %zu blocks\n",
                    edrv_mem_type_name((edrv_mem_type)i), st.bytes[i], st.blocks[i]);
            leaked = 1;
        }
    }
    return leaked;
}

static inline int run_case(const test_case *t) {
    int before = check_failures;
    edrv_options o = {.async_threads = 2};
    if (edrv_start(&o) != 0) {
        fprintf(stderr, "%s: edrv_start failed: %s\n", t->name, edrv_last_error());
        return 0;
    }
    t->fn();
    int rc = edrv_stop();
    if (rc != 0 && rc != EDRV_ENOTRUNNING) {
        fprintf(stderr, "%s: edrv_stop: %s\n", t->name, edrv_strerror(rc));
        check_failures++;
    }
    if (mem_in_use()) {
        fprintf(stderr, "%s: memory left allocated after edrv_stop\n", t->name);
        check_failures++;
    }
    return check_failures == before;
}

static inline int run_tests(const test_case *cases, int argc, char **argv) {
    int passed = 0, failed = 0;
    for (const test_case *t = cases; t->name; t++) {
        if (argc > 1 && strcmp(argv[1], t->name) != 0)
            continue;
        int ok = run_case(t);
        printf("%s %s\n", ok ? "ok  " : "FAIL", t->name);
        fflush(stdout);
        ok ? passed++ : failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed || passed == 0 ? 1 : 0;
}

#define TEST_MAIN(list)                        \
    int main(int argc, char **argv) {          \
        return run_tests(list, argc, argv);    \
    }

#endif
