/*
 * soak.h: what the soak program (soak.c) and its driver (soakdrv.c) share.
 *
 * The soak unloads and reloads the driver while its jobs are pending, and a
 * real dlclose takes the .so's static memory with it. So every record that
 * must outlive a load lives in the program: one object, soak_shared, which
 * the program exports (it is linked with -rdynamic) and the driver's init
 * looks up with dlsym(RTLD_DEFAULT) at every load. The driver keeps only that
 * pointer, set anew by each init, and a flag that tells a freshly mapped .so
 * from one that was never closed. A symbol lookup rather than a pointer in a
 * control op or in the environment: the driver then has its records from its
 * first callback on (a port's stop, a job's free), and a host without the
 * symbol gets a clean driver_init_failed instead of a crash.
 *
 * Records: one byte per job, indexed by the job's number in its round (the
 * driver numbers jobs as it submits them, before driver_async, because invoke
 * may run before driver_async returns the id). Ids are checked apart, one
 * byte per id from the round's first possible id: ids come from one
 * process-wide counter, so every id of a round lies above every id of the
 * rounds before it. Both arrays are reused from round to round: a round ends
 * only when every job of it has ended, and the program checks and clears them
 * then. Memory stays that of one round however long the run.
 *
 * Threads: the driver's callbacks run on edrv's emulator thread and write
 * the emulator-side fields; invoke runs on pool threads and touches only the
 * record bytes (atomic OR) and key_last. The program reads and resets
 * everything between rounds, after `ended` (a release increment, the last
 * thing a job's end does) has reached `next_job`, which orders every write of
 * the round before its reads.
 */
#ifndef SOAK_H
#define SOAK_H

#include <stdatomic.h>
#include <stdint.h>

#define SOAK_SHARED_SYMBOL "soak_shared"
#define SOAK_VERSION 1
#define SOAK_DRIVER "soakdrv"

/* A job's record: bits OR'ed in as things happen to it. */
enum {
    REC_SUBMITTED = 1, /* driver_async returned its id */
    REC_INVOKED = 2,   /* invoke ran (pool thread) */
    REC_READY = 4,     /* ready_async ran */
    REC_FREED = 8,     /* free ran */
    REC_CANCELLED = 16 /* driver_async_cancel returned 1 for it */
};

/* Every way the run can go wrong; soak.c names them. */
#define SOAK_VIOLATIONS(X)                                                              \
    X(INVOKED_TWICE, "invoke ran twice for one job")                                     \
    X(ENDED_TWICE, "a job ended twice (ready_async and/or free)")                        \
    X(NEVER_ENDED, "a job never ended")                                                  \
    X(NOT_INVOKED, "a job that was not cancelled never ran invoke")                      \
    X(READY_NOT_INVOKED, "ready_async ran for a job whose invoke had not run")           \
    X(CANCELLED_INVOKED, "a cancelled job ran invoke")                                   \
    X(CANCELLED_READY, "a cancelled job ended with ready_async")                         \
    X(CANCEL_NO_FREE, "driver_async_cancel returned 1 but free had not run")             \
    X(CANCEL_ENDED, "driver_async_cancel returned 1 for a job that had ended")           \
    X(CANCEL_UNKNOWN, "driver_async_cancel returned 1 for an id never handed out")       \
    X(ID_REPEATED, "driver_async returned an id twice")                                  \
    X(ID_RANGE, "an id below an earlier round's or beyond the round's")                  \
    X(KEY_ORDER, "jobs of one key ran out of submission order")                          \
    X(KEY_WRITEBACK, "driver_async wrote back a key other than key % threads")           \
    X(SUBMIT_FAILED, "driver_async failed on a live port")                               \
    X(POOL_COUNTS, "edrv_pool's counters disagree with the driver's")                    \
    X(MEMORY, "edrv_memory did not return to its baseline")                              \
    X(RSS, "the resident set grew beyond its baseline and slack")                        \
    X(UNLOAD, "an unload or reload went wrong")                                          \
    X(NOT_FRESH, "a reload after a completed unload found the .so never closed")        \
    X(API, "an edrv call returned an unexpected code")                                  \
    X(CAPACITY, "the soak's own record array was too small (a soak bug)")

enum {
#define SOAK_V_ENUM(name, text) V_##name,
    SOAK_VIOLATIONS(SOAK_V_ENUM)
#undef SOAK_V_ENUM
    V_COUNT
};

/* The control op that submits jobs; its data is a soak_submit. */
#define SOAK_OP_SUBMIT 1

typedef struct {
    uint32_t count;            /* jobs to submit */
    uint32_t cancel_per_mille; /* after each, try a cancel with this chance */
    uint32_t keyed_per_mille;  /* each job has a key with this chance */
    uint32_t seed;
} soak_submit;

/* Keys are 0..SOAK_KEYS-1, so that one key always means one lane. */
#define SOAK_KEYS 64
/* Recently submitted jobs, the candidates for a cancel. */
#define SOAK_RING 4096
/* One in this many jobs sends its owner {soak, JobNumber} from ready_async. */
#define SOAK_MSG_EVERY 1024

typedef struct {
    long id;
    uint64_t job;
    uint32_t round;
} soak_recent;

typedef struct {
    int version;
    /* The program's, set between rounds (no job pending, no callback running). */
    uint32_t round;
    _Atomic uint8_t *rec; /* cap records */
    uint8_t *ids;         /* cap bytes: ids id_base .. id_base + cap - 1 seen */
    uint64_t cap;
    long id_base;      /* the lowest id this round may have (0: not known yet) */
    int async_threads; /* the pool's size, for the key write-back check */
    /* Reports a violation (any thread): kind, job number, id (or -1). */
    void (*violation)(int kind, uint64_t job, long id);

    /* The emulator thread's. */
    _Atomic uint64_t next_job; /* job numbers handed out this round; host threads read it */
    long max_id;               /* the highest id handed out so far */
    soak_recent ring[SOAK_RING];
    uint64_t ring_n;
    _Atomic uint64_t ended; /* jobs of this round ended (release) */

    /* The pool threads': the last job number + 1 invoked with each key. */
    _Atomic uint64_t key_last[SOAK_KEYS];

    /* Counters over the whole run (the emulator thread writes them). */
    _Atomic uint64_t ready, freed, cancel_tries, cancels, unknown_cancels, stop_jobs, msgs;
    _Atomic uint64_t inits, finishes, fresh_loads;
} soak_state;

#endif
