/*
 * internal.h: what libedrv's subsystems share with each other. Never installed.
 *
 * The runtime is one per OS process, as ERTS is: the driver interface has no
 * context argument (driver_alloc, driver_mk_atom, erl_drv_mutex_create, ...),
 * so the state it reaches is global. Each section below belongs to one source
 * file and says which threads may touch what.
 *
 * Threads:
 *   - the holder of a port's unit (loop.c "units": its driver's lock, or its
 *     own with ERL_DRV_FLAG_USE_PORT_LOCKING) runs the port's callbacks and
 *     changes its state (EDRV_ASSERT_UNIT checks it);
 *   - the holder of the emulator lock (loop.c) owns what ports share: the
 *     port table's indexes, timers, selected fds, monitors, drivers, the
 *     pool's lanes and pending counts. "emulator thread only" below means
 *     that lock (EDRV_ASSERT_EMULATOR checks it), which the emulator thread
 *     holds while it works, a host thread while it runs its own call in
 *     place, and a fast path's thread from the moment its callback asks for
 *     shared state (edrv__emulator_enter) until it lets its unit go;
 *   - host threads call edrv.h; a port's calls run under the port's unit
 *     alone (the fast paths, and tries); a call they cannot run at once is
 *     queued to a scheduler (loop.c): the port's unit's, which runs it under
 *     that unit alone, or the emulator thread, for the others; if
 *     synchronous, they wait for it;
 *   - any thread may allocate (mem.c), build and deliver messages (term.c,
 *     proc.c) and use the erl_drv_* thread primitives (thread.c).
 *
 * Lock order (outer first): unit -> emulator lock -> request queue lock
 * (loop.c); a holder of the emulator lock that wants a unit held elsewhere
 * lets the emulator lock go while it waits (edrv__unit_enter). Unit ->
 * port data lock -> emulator lock (a driver that holds its port data lock
 * in a callback may submit a job); the runtime takes a port data lock only
 * while it holds the port's unit. procs table lock -> mailbox lock;
 * busy_lock -> ports table lock (port.c) -> a unit, tried only, never
 * waited for (port.c fast paths). A driver callback runs with its port's
 * unit held, maybe the emulator lock, and no other lock of libedrv's.
 */
#ifndef EDRV_INTERNAL_H
#define EDRV_INTERNAL_H

#include "edrv.h"
#include "idmap.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds: timers, and the idle threads' spins. */
static inline int64_t edrv__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- ownership checks ----------------------------------------------------------
 * The rule for who may run a function is written at its head, and checked in
 * Debug and sanitizer builds (EDRV_CHECK_OWNERSHIP, set by CMake), as ERTS's
 * lock checker asserts its port locks: a call from the wrong thread aborts
 * with the function and the rule it broke, where the bug starts instead of
 * where it shows. Release builds compile the checks out. */
#ifdef EDRV_CHECK_OWNERSHIP
#define EDRV_ASSERT_OWNER(cond, rule)                                                          \
    ((cond) ? (void)0 : edrv__ownership_broken(__FILE__, __LINE__, __func__, rule))
#else
#define EDRV_ASSERT_OWNER(cond, rule) ((void)0)
#endif
/* Only the emulator thread runs this (it owns port, driver, timer, monitor
 * and select state). */
#define EDRV_ASSERT_EMULATOR() EDRV_ASSERT_OWNER(edrv__on_emulator_thread(), "emulator thread only")
/* Only the holder of the port's unit (loop.c), which runs its callbacks and
 * changes its state. */
#define EDRV_ASSERT_UNIT(pt)                                                                   \
    EDRV_ASSERT_OWNER(edrv__unit_held((pt)->unit), "the holder of the port's unit only")
/* Never on the emulator thread (a host thread that may wait for it). */
#define EDRV_ASSERT_NOT_EMULATOR()                                                             \
    EDRV_ASSERT_OWNER(!edrv__on_emulator_thread(), "never on the emulator thread")
_Noreturn void edrv__ownership_broken(const char *file, int line, const char *fn,
                                      const char *rule);
bool edrv__on_emulator_thread(void);
/* The lock that serializes a port's callbacks (loop.c "units"). */
typedef struct edrv_unit edrv_unit;

#define EDRV_API __attribute__((visibility("default")))
#define EDRV_UNUSED __attribute__((unused))

/* The node name in every pid and port edrv encodes when edrv_options names
 * none: a non-distributed node. */
#define EDRV_NODE "nonode@nohost"
/* term.c: the node and creation that edrv_start was given (NULL: EDRV_NODE
 * and 0). Set while no runtime runs. */
void edrv__term_set_node(const char *node, unsigned creation);
const char *edrv__term_node(void);
unsigned edrv__term_creation(void);

/* ---- mem.c: the one allocation choke point, per-type statistics ---------- */

/* Every byte libedrv allocates goes through edrv__alloc with a type, so that
 * edrv_memory() can report bytes and blocks per type and tests can fail the Nth
 * allocation. Any thread. */
void *edrv__alloc(edrv_mem_type type, size_t size);
void *edrv__calloc(edrv_mem_type type, size_t size);
void *edrv__realloc(edrv_mem_type type, void *ptr, size_t size);
void edrv__free(void *ptr); /* NULL is fine */
char *edrv__strdup(edrv_mem_type type, const char *s);

/* Adds v to an atomic counter that only the calling thread writes: a plain
 * load and store, no locked instruction; other threads may read it. */
#define EDRV_ONE_WRITER_ADD(c, v)                                                              \
    atomic_store_explicit((c), atomic_load_explicit((c), memory_order_relaxed) + (v),          \
                          memory_order_relaxed)

/* Counters of one thread's allocations, written by that thread alone (a
 * plain add instead of a locked one, which would wait for the block's cold
 * header). edrv's own busy threads, the emulator thread and the pool threads,
 * keep one for their lifetime, on their stack: */
typedef struct edrv_mem_counters {
    _Atomic size_t bytes[EDRV_MEM_TYPES], blocks[EDRV_MEM_TYPES];
    struct edrv_mem_counters *next;
} edrv_mem_counters;
void edrv__mem_thread_begin(edrv_mem_counters *c);
void edrv__mem_thread_end(edrv_mem_counters *c); /* its counts go to the shared ones */

/* Every thread edrv starts calls this first: it blocks SIGPIPE (sys.c). */
void edrv__thread_signals(void);

/* The core the emulator thread last spun on while it waited for work, or -1
 * once it gave up spinning to sleep (loop.c); idle pool threads leave that
 * core (async.c). */
extern _Atomic int edrv__emulator_cpu;

/* driver_api.c, generated by cmake/driver-api.sh: every function of the
 * driver API, which edrv_start refers to, so that a program linked with
 * libedrv.a has them all for its drivers. */
extern const void *const edrv__driver_api_data;
extern void (*const edrv__driver_api[])(void);

/* Binaries: an ErlDrvBinary with a reference count in front of it. */
ErlDrvBinary *edrv__binary_new(const void *bytes, size_t size);

/* ---- error.c -------------------------------------------------------------- */

/* Records the detail text for the calling thread's failing call (printf-style)
 * and returns err, so that `return edrv__fail(EDRV_EOPEN, "...", ...)` reads
 * well. edrv_last_error() returns it. */
int edrv__fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empties the calling thread's detail text (a call that starts). */
void edrv__clear_error(void);
/* Logs a driver misuse that ERTS would also survive (one line on stderr). */
void edrv__warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- term.c: term data values and the ETF encoder ------------------------ */

/* ErlDrvTermData values for atoms, pids and ports carry a 2-bit tag so that a
 * term spec naming the wrong kind is caught as a bad spec instead of crashing. */
enum { TD_ATOM = 1, TD_PID = 2, TD_PORT = 3 };
#define TD_TAG(t) ((unsigned)((t) & 3u))
#define TD_VAL(t) ((uint64_t)(t) >> 2)
#define TD_MAKE(tag, v) ((ErlDrvTermData)(((uint64_t)(v) << 2) | (tag)))

/* Name of an atom made by driver_mk_atom, or NULL when `t` is not one. */
const char *edrv__atom_name(ErlDrvTermData t);
void edrv__atoms_reset(void);

/* The ETF writer: every message is written by these functions, twice: with
 * buf == NULL they only count, so a message is sized in one pass and written
 * in a second into one exact allocation. Sizes are 64-bit throughout. The
 * format's own limits are 32-bit: a binary of more than 2^32-1 bytes, or a
 * list, tuple or map of more than 2^32-1 elements, cannot be one term. Such a
 * part is not written: `refused` names it and `refused_size` gives its size,
 * and the caller refuses the message (the counting pass sees it first). */
typedef struct {
    char *buf;
    size_t idx;
    const char *refused; /* NULL, or "binary", "list", "tuple", "map" */
    uint64_t refused_size;
} etf_w;

#define EDRV_ETF_MAX_COUNT 0xffffffffu /* the most bytes or elements of one part */

/* Bytes in pieces (a port's header and data segments). */
typedef struct {
    const char *p;
    size_t len;
} etf_piece;

void edrv__etf_version(etf_w *w);
void edrv__etf_tuple(etf_w *w, uint64_t arity);
void edrv__etf_map(etf_w *w, uint64_t pairs);
/* A list's header: n elements follow, then its tail (n >= 1). */
void edrv__etf_list(etf_w *w, uint64_t n);
void edrv__etf_nil(etf_w *w);
void edrv__etf_atom(etf_w *w, const char *name);
void edrv__etf_int(etf_w *w, int64_t v);
void edrv__etf_binary(etf_w *w, const char *p, size_t len);
/* The bytes of the pieces as a proper list of integers ("..." or []). */
void edrv__etf_string(etf_w *w, const etf_piece *pieces, size_t n);
/* The bytes of the pieces as list elements only: the caller wrote the header. */
void edrv__etf_byte_elements(etf_w *w, const etf_piece *pieces, size_t n);
void edrv__etf_pid(etf_w *w, uint64_t pid);
/* A reference made by edrv (edrv_monitor): NEWER_REFERENCE_EXT of three
 * words, ref's low 18 bits, the next 32, the top 14 (as edrv.h says). */
void edrv__etf_ref(etf_w *w, uint64_t ref);
/* Bytes that are already ETF (one term, no version byte). */
void edrv__etf_raw(etf_w *w, const void *p, size_t n);
void edrv__etf_port(etf_w *w, uint64_t port);
/* The bytes edrv__etf_port writes for this port. */
size_t edrv__etf_port_size(uint64_t port);

/* The length of the one term at the start of buf, version byte included, or
 * -1 if the bytes are not a well-formed term. Every read is bounds-checked, so
 * libei may decode the bytes afterwards (within its int offsets: libei reaches
 * no further than INT_MAX bytes into a buffer). Structure, and each item as
 * binary_to_term takes it (finite floats, FLOAT_EXT's text, bit counts, the
 * fields of funs and exports); map keys are not checked. Any thread. */
ssize_t edrv__etf_measure(const void *buf, size_t len);

/* Builds a message from a term spec, ready for edrv__deliver. Returns 0 and
 * the message in *out, or -1 for a bad spec (or no memory, or a part too big
 * for the term format: then with a warning). Any thread. */
struct mbox_msg;
int edrv__spec_to_msg(const ErlDrvTermData *spec, int n, struct mbox_msg **out);

/* ---- proc.c: processes and mailboxes -------------------------------------- */

typedef struct mbox_msg {
    struct mbox_msg *next;
    size_t len;
    char data[]; /* ETF, version byte first */
} mbox_msg;

/* signals.c: a process's links and monitors. */
typedef struct {
    uint64_t *v;
    uint32_t n, cap;
} edrv_pids;
typedef struct {
    uint64_t ref, pid;
} edrv_mon;
typedef struct {
    edrv_mon *v;
    uint32_t n, cap;
} edrv_mons;

struct edrv_proc {
    uint64_t pid;
    unsigned magic;       /* PROC_LIVE until freed (proc.c) */
    pthread_mutex_t lock; /* guards the rest */
    pthread_cond_t cond;  /* a message came, or the process is exiting */
    mbox_msg *head, *tail;
    size_t count;
    bool exiting;         /* edrv_proc_free began */
    bool trap_exit;       /* process_flag(trap_exit, ...) */
    mbox_msg *ended_by;   /* the {'EXIT', From, Reason} that ended it, or NULL */
    _Atomic bool ended;   /* ended_by is set: calls with it fail (EDRV_EEXITED) */
    int receivers;        /* threads inside edrv_receive */
    _Atomic int suspended; /* threads waiting for a busy port (edrv__port_admit) */
    /* Its commands queued to a scheduler and not yet run (loop.c): its exit
     * waits for them, as its exit signal follows them in ERTS. */
    _Atomic long queued;
    /* signals.c, under lock. dead: its end took its links, monitors and
     * name (it exited, is being freed, or an exit signal ended it); new
     * links and monitors get noproc. */
    bool dead;
    edrv_pids links;    /* the processes linked to it */
    edrv_mons mons_in;  /* monitors of it: (ref, watcher) */
    edrv_mons mons_out; /* its monitors: (ref, target) */
    char *name;         /* its registered name, or NULL */
    struct edrv_waitset *ws; /* the wait set it is in, or NULL */
    void *ws_tag;
    /* on ws's ready list (ws's lock): */
    struct edrv_proc *ws_prev, *ws_next;
    bool ws_ready;
    /* A forwarding process (edrv_proc_new_forward): set at creation, never
     * changed. remote is the ETF of the pid it stands for, without the
     * version byte. */
    edrv_forward_fn fwd;
    void *fwd_ctx;
    char *remote;
    size_t remote_len;
    /* Keeps the next process's words (its pid and magic, read on each of
     * its calls) off the cache line of this one's receive counts, written on
     * each receive (two threads with two processes would pass it between
     * their cores). */
    char pad[64];
};

/* Allocates a message buffer with room for len bytes, to be filled and then
 * passed to edrv__deliver (which takes ownership) or edrv__msg_drop. */
mbox_msg *edrv__msg_new(size_t len);
void edrv__msg_drop(mbox_msg *m);
/* Appends m to pid's mailbox. Returns 1 when delivered, 0 when there is no such
 * process (m is then freed). Any thread. */
int edrv__deliver(uint64_t pid, mbox_msg *m);
/* An exit signal to pid, m being its {'EXIT', From, Reason} message (taken):
 * a message to a process that traps exits, dropped by one that does not if
 * `normal`, the end of it otherwise (its ports then close: edrv__proc_ended).
 * Any thread. */
void edrv__exit_signal(uint64_t pid, mbox_msg *m, bool normal);
/* Any thread: a process was ended by an exit signal; its ports close as at
 * its exit, later, on the emulator thread. */
void edrv__proc_ended(uint64_t pid);
bool edrv__proc_alive(uint64_t pid);
/* A condition variable that waits on CLOCK_MONOTONIC (proc.c). */
void edrv__cond_init_monotonic(pthread_cond_t *c);
/* CLOCK_MONOTONIC now plus ms, for pthread_cond_timedwait on such a one. */
void edrv__deadline_in(long ms, struct timespec *at);
/* The process pid locked (its shard's read lock, then its own), or NULL. */
edrv_proc *edrv__proc_acquire(uint64_t pid);
void edrv__proc_release(edrv_proc *p);
/* Appends m to p's mailbox and tells its wait set (p->lock held); a
 * forwarding process hands m to its function instead (and m is freed).
 * _exit: m is an exit signal's {'EXIT', From, Reason}. */
void edrv__mbox_append(edrv_proc *p, mbox_msg *m);
void edrv__mbox_append_exit(edrv_proc *p, mbox_msg *m);
/* The pids of forwarding processes have this bit: their ETF is the pid
 * they stand for, which edrv__proc_remote_etf copies (without the version
 * byte) into buf; it returns the length, or 0 when the process is gone. */
#define EDRV_PID_REMOTE ((uint64_t)1 << 60)
#define EDRV_REMOTE_PID_MAX EDRV_FWD_PID_MAX
size_t edrv__proc_remote_etf(uint64_t pid, char *buf, size_t cap);
/* The offset of the reason in an {'EXIT', From, Reason} message, or -1. */
int edrv__exit_reason_at(const mbox_msg *m);
/* edrv_proc_free, with reason (ETF without the version byte; NULL for
 * normal) as the exit reason its links and monitors get. */
int edrv__proc_free_with(edrv_proc *p, const char *reason, size_t len);
/* signals.c: p's end takes its links, monitors and name (p must not be
 * locked), and edrv__proc_die_run carries it out (the record may be NULL). */
void *edrv__proc_die(edrv_proc *p, const char *reason, size_t len);
void edrv__proc_die_run(void *end);
/* p's wait set hears of it / p leaves its wait set (p->lock held). */
void edrv__ws_notify(edrv_proc *p);
void edrv__ws_leave(edrv_proc *p);
/* For an edrv.h call named `fn` made by p: 0 and p's pid in *pid, or
 * EDRV_EINVAL for NULL or a pointer that is not a live process, or
 * EDRV_ENOPROC once p is being freed. Any thread. */
int edrv__proc_caller(const edrv_proc *p, const char *fn, uint64_t *pid);

/* ---- port.c: ports --------------------------------------------------------- */

/* CLOSING: port_close, or the owner's exit, found data in the driver queue;
 * the port lives on for its timers, async jobs, port_control and port_call
 * (output dropped) until a callback empties the queue (see port.c). */
typedef enum {
    PORT_STARTING, PORT_ALIVE, PORT_CLOSING, PORT_EXITING, PORT_STOPPING, PORT_DEAD
} port_state;

typedef struct edrv_queue edrv_queue;

struct edrv_driver;

/* ErlDrvPort, as drivers see it, points here. Fields are its unit holder's,
 * except: `state` (changed by the unit's holder, read by any thread that
 * sends from the port), `owner` (read under the ports table lock by threads
 * resolving a port term), and those of shared structures, which the emulator
 * lock guards (timer_*, uses, the links). */
struct _erl_drv_port {
    uint64_t id;
    struct edrv_driver *drv;
    char *name;               /* the command it was opened with */
    ErlDrvData data;
    _Atomic port_state state;
    _Atomic uint64_t owner;   /* connected process */
    uint64_t caller;          /* process behind the current callback */
    bool linked;              /* owner is linked: it gets the port's exit signal */
    bool binary;              /* binary mode: {data, Binary} */
    bool eof;                 /* the eof option */
    ErlDrvSInt os_pid;        /* erl_drv_set_os_pid, or -1 */
    /* Opening (ERL_DRV_FLAG_USE_INIT_ACK may answer after start returned). */
    unsigned open_flags;
    edrv_port *open_id;       /* where the opener wants the number */
    void *open_req;           /* the opener's request, while unanswered */
    bool acked;
    ErlDrvData ack_data;
    /* Back-pressure (any thread reads; see port.c "busy"). */
    _Atomic bool busy;        /* set_busy_port */
    _Atomic bool msgq_busy;   /* queued command data passed the high limit */
    _Atomic size_t msgq_bytes; /* command data sent and not yet given to the driver */
    _Atomic size_t msgq_low, msgq_high; /* 0 high: disabled */
    int control_flags;        /* set_port_control_flags */
    int in_callback;          /* nesting depth of driver callbacks */
    /* Set when the port's end was decided inside a callback: stop runs once
     * the callback returns, never inside another callback. */
    bool exit_pending;
    ErlDrvPDL pdl;            /* driver_pdl_create's lock, or NULL */
    edrv_queue *queue;        /* the driver queue, or NULL while never used */
    edrv_unit *unit;          /* serializes its callbacks (loop.c "units") */
    /* Requests queued for it and not yet run (loop.c), in the low 32 bits,
     * and the scheduler they are queued to, in the high ones: while there
     * are any, a new one is queued behind them, to the same scheduler,
     * rather than run at once, so that a sender's calls reach the port in
     * order. EDRV_QUEUED gives the count. */
    _Atomic uint64_t queued;
    long timer_slot;          /* index in the timer heap, or -1 */
    /* Bumped by driver_set_timer and driver_cancel_timer, under the emulator
     * lock; read by a scheduler that runs a due timer under the unit alone. */
    _Atomic uint64_t timer_gen;
    int64_t timer_deadline;   /* CLOCK_MONOTONIC ns */
    /* The struct outlives the port (DEAD) while it is used or referenced.
     * uses: async jobs not yet ended and monitor passes under way (emulator
     * thread, plain: driver_async's fast path pays no atomic for it).
     * refs: one for the emulator thread, dropped once the port is dead, out
     * of its callbacks and unused (`released`), and one while its port data
     * lock exists, which a pool thread may drop; the last one frees it. */
    long uses;
    bool released;
    _Atomic int refs;
    /* Indexes, so that a port's end and its owner's exit cost what they
     * touch, whatever else exists. The struct holds the heads of the last
     * two: before it is freed, edrv__monitors_port_gone and
     * edrv__select_port_gone must have run (they empty them), and
     * table_remove (port.c) must have taken it out of the first two. */
    edrv_lnode all_link;   /* every port in the table, oldest first (port.c) */
    edrv_lnode owner_link; /* the ports of one owner, oldest first (port.c) */
    edrv_lnode monitors;   /* its monitors (monitor.c) */
    edrv_lnode sels[2];    /* the fds it has selected for input, output (select.c) */
};
typedef struct _erl_drv_port edrv_port_t;

#define EDRV_QUEUED(q) ((uint32_t)(q))

/* Whether output from the port is delivered (see port.c's life of a port). */
static inline bool edrv__port_outputs(const edrv_port_t *pt) {
    port_state st = atomic_load(&pt->state);
    return st == PORT_ALIVE || st == PORT_STARTING || st == PORT_STOPPING;
}

/* Busy: a command now would suspend its sender (set_busy_port, or the busy
 * message queue past its high limit). Any thread. */
static inline bool edrv__port_busy(edrv_port_t *pt) {
    return atomic_load(&pt->busy) || atomic_load(&pt->msgq_busy);
}

/* ---- port_table.c: the port table and busy ports (any thread) ---------------------- */

/* The table's writers hold the emulator lock: */
bool edrv__table_insert(edrv_port_t *pt); /* gives pt its number; false: no memory */
void edrv__table_remove(edrv_port_t *pt);
/* For a thread that holds neither the emulator lock nor a unit (a fast
 * path): the live port with this number, its unit taken if that was free
 * and no request is queued for the port, and the struct held
 * (edrv__port_unlock lets both go); NULL otherwise. */
edrv_port_t *edrv__table_take_fast(edrv_port id);
/* Any thread: the port with this number, not dead, its struct held
 * (edrv__port_put lets it go); NULL otherwise. */
edrv_port_t *edrv__table_ref(edrv_port id);
/* Passes over many ports (the emulator lock's holder): every port in the
 * table's list, oldest first, moves to `to` (take_all) and back before the
 * ports opened meanwhile (put_back_all); the ports of an owner leave its
 * index for `to` (take_owned); pop takes the first port's link of such a
 * list under the table's lock, and puts it at the end of `to` if given
 * (NULL once the list is empty). A callback may end any port meanwhile: it
 * leaves whichever list it is in. */
void edrv__table_take_all(edrv_lnode *to);
void edrv__table_put_back_all(edrv_lnode *from);
void edrv__table_take_owned(uint64_t pid, edrv_lnode *to);
edrv_lnode *edrv__table_pop(edrv_lnode *from, edrv_lnode *to);
/* Senders waiting for a busy port look again (any thread). */
void edrv__busy_changed(void);

/* Looks up a live port by number; any thread (ports table lock). The pointer is
 * only valid on the emulator thread, or while the caller holds a reference that
 * the port subsystem gave out. */
uint64_t edrv__port_owner_of(uint64_t port_id, bool *closing);

/* The operations a request carries out, for the process whose pid is
 * `caller` (a pid, never the edrv_proc, which its thread may free while the
 * request waits). Opening is the emulator lock's holder's; it returns
 * EDRV__PENDING when the driver answers later with erl_drv_init_ack, and the
 * port then finishes the request (req) itself. */
#define EDRV__PENDING 1
int edrv__port_open(uint64_t caller, const char *command, unsigned flags, edrv_port *out,
                    void *req);
/* The others run on a port the caller holds a reference to (edrv__table_ref),
 * from any thread: they wait for its unit or, with `try`, take it only if it
 * is free or already the caller's, and otherwise return EDRV__NOT_FAST (a
 * command then keeps its binary). A command's `admitted` bytes leave the
 * port's message queue once the driver takes them; a command to a port that
 * died is dropped, and returns 0, as in ERTS. What needs shared state takes
 * the emulator lock on the way (edrv__emulator_enter). */
#define EDRV__NOT_FAST 2
int edrv__port_command(uint64_t caller, edrv_port_t *pt, ErlDrvBinary *bin,
                       const size_t *pieces, int npieces, bool whole, bool try,
                       size_t admitted);
int edrv__port_control(uint64_t caller, edrv_port_t *pt, bool try, unsigned op, char *data,
                       size_t len, edrv_reply *reply);
int edrv__port_call(uint64_t caller, edrv_port_t *pt, bool try, unsigned op, char *data,
                    size_t len, edrv_reply *reply);
int edrv__port_close(uint64_t caller, edrv_port_t *pt, bool try);
int edrv__port_info(edrv_port_t *pt, bool try, edrv_port_status *st);
/* Any thread: lets go of a reference from edrv__table_ref. */
void edrv__port_put(edrv_port_t *pt);
/* The fast paths (loop.c "units"): for a host thread that holds neither the
 * emulator lock nor a unit. Each runs the callback in the calling thread
 * under the port's unit alone, if the port is alive, nothing is queued for
 * it and its unit is free; otherwise it returns EDRV__NOT_FAST and the call
 * takes the ordinary way, which also gives any error. The command's bytes go
 * straight to the driver's `output`, so never count in the port's message
 * queue (no admission); EDRV__NOT_FAST also when the port is busy or its
 * driver has `outputv` or no `output`. */
int edrv__port_command_fast(uint64_t caller, edrv_port id, const char *data, size_t len);
int edrv__port_control_fast(uint64_t caller, edrv_port id, unsigned op, char *data, size_t len,
                            edrv_reply *reply);
int edrv__port_call_fast(uint64_t caller, edrv_port id, unsigned op, char *data, size_t len,
                         edrv_reply *reply);
void edrv__ports_of_proc_exit(uint64_t pid);
void edrv__ports_close_all(void);
void edrv__ports_kill_driver(struct edrv_driver *d); /* exit reason driver_unloaded */
int edrv__port_check(edrv_port id); /* any thread: 0, EDRV_ENOPORT or EDRV_ECLOSED */
/* Any thread but the emulator's: waits while the port is busy (see edrv.h
 * EDRV_CMD_*), then counts len bytes into its message queue. 0 or an error.
 * *suspended (if not NULL) counts the sender as suspended while it waits. */
int edrv__port_admit(edrv_port id, size_t len, unsigned opts, _Atomic int *suspended);
/* Any thread: len admitted bytes leave the port's message queue. */
void edrv__port_unadmit(edrv_port id, size_t len);
/* Emulator thread: a use of a port that must outlive the port (an async
 * job, a monitor pass); the struct stays until the last use ends. */
void edrv__port_ref(edrv_port_t *pt);
void edrv__port_unref(edrv_port_t *pt);
bool edrv__port_accepts_jobs(const edrv_port_t *pt);
/* Whether a finished job ends with ready_async: the port lives and has one. */
bool edrv__port_ready_async_ok(const edrv_port_t *pt);
void edrv__port_ready_async(edrv_port_t *pt, void *data);
void edrv__ports_reset(void);

/* Any thread takes pt's unit before it calls one of the port's callbacks
 * below, and lets it go after: edrv__port_lock holds the struct until
 * edrv__port_unlock, and returns true when it let the emulator lock go
 * while it waited (the caller checks again that the event it serves still
 * stands). */
bool edrv__port_lock(edrv_port_t *pt);
void edrv__port_unlock(edrv_port_t *pt);

/* Emulator thread: a monitored process ended (monitor.c). */
void edrv__port_process_exit(edrv_port_t *pt, ErlDrvMonitor *mon);

/* ---- monitor.c (emulator thread) ---------------------------------------------- */

/* pid ended: each of its monitors fires, in the order they were made. */
void edrv__monitors_process_exited(uint64_t pid);
/* The port's monitors end with it (no process_exit). Neither allocates. */
void edrv__monitors_port_gone(edrv_port_t *pt);


/* ---- queue.c: the driver queue ------------------------------------------------ */

size_t edrv__queue_size(const edrv_queue *q); /* NULL is empty */
void edrv__queue_free(edrv_queue *q);

/* The holder of pt's unit: a due timer's callback. */
void edrv__port_timeout(edrv_port_t *pt);

/* ---- timer.c: driver timers (emulator thread) ------------------------------- */

void edrv__timer_cancel(edrv_port_t *pt);
long edrv__timers_next_ms(void); /* until the earliest timer; -1: none */
void edrv__timers_run(void);      /* runs the due timers */

/* ---- select.c: I/O events, driver_select (emulator thread) ------------------ */

/* The epoll data of loop.c's wake-up eventfd. select.c's keys are
 * gen << 32 | fd, with fd <= INT_MAX, so they never equal it. */
#define EDRV_EV_WAKE UINT64_MAX

/* An epoll event whose data is not EDRV_EV_WAKE: runs the ready_input and
 * ready_output callbacks it stands for. */
void edrv__select_ready(uint64_t key, uint32_t revents);
/* Emulator thread: fds selected now (the loop looks at them between turns). */
size_t edrv__select_count(void);
/* finish_exit, after stop: the port's fds are deselected; stop_select is not
 * called, as in ERTS. Costs what the port has selected; never allocates. */
void edrv__select_port_gone(edrv_port_t *pt);
/* Shutdown, once every port has ended: forgets every fd. */
void edrv__select_reset(void);
/* port.c: runs ready_input (input) or ready_output as a callback of the port. */
void edrv__port_io_ready(edrv_port_t *pt, ErlDrvEvent ev, bool input);
/* loop.c: the emulator thread's epoll set. */
int edrv__epoll_fd(void);

/* ---- driver.c: loading and the driver registry ----------------------------- */

typedef struct edrv_driver {
    struct edrv_driver *next;
    char *name;
    ErlDrvEntry *entry;
    void *dl;             /* dlopen handle, NULL for a registered static entry */
    long users;           /* load count (edrv_load_driver / edrv_register_driver) */
    size_t ports;         /* ports using it */
    size_t jobs;          /* async jobs not yet ended: they keep it loaded */
    bool unload_pending;  /* unload asked while ports were open */
    bool locked;          /* driver_lock_driver: loaded until the runtime stops */
    edrv_unit *unit;      /* its ports' unit, unless ERL_DRV_FLAG_USE_PORT_LOCKING */
} edrv_driver;

/* Emulator thread. */
int edrv__driver_load(const char *dir, const char *name);
int edrv__driver_register(ErlDrvEntry *de);
int edrv__driver_unload(const char *name);
edrv_driver *edrv__driver_find(const char *name, size_t len);
void edrv__driver_port_gone(edrv_driver *d); /* last port or job may finish an unload */
void edrv__driver_job_added(edrv_driver *d);
void edrv__driver_job_done(edrv_driver *d);
void edrv__drivers_unload_all(void);

/* ---- async.c: the pool ---------------------------------------------------- */

/* edrv_start; spin_ns: how long an idle pool thread spins (0: never). */
int edrv__async_start(int threads, long spin_ns);
void edrv__async_stop(void);        /* edrv_stop, after every job ended */
/* Emulator thread: ends the finished jobs (ready_async or free); returns how
 * many. */
size_t edrv__async_drain(void);
size_t edrv__async_pending(void); /* jobs submitted and not yet ended */
/* Emulator thread, when a driver with no job left is unloaded: forgets the
 * (invoke, free) pairs whose code in_code says is the driver's. */
void edrv__async_forget_code(bool (*in_code)(const void *fn, void *arg), void *arg);
size_t edrv__async_queued(void);  /* jobs submitted and not yet run */
bool edrv__async_has_done(void);  /* finished jobs wait for the drain */
/* Emulator thread, about to sleep at now (ns, CLOCK_MONOTONIC): gives spare
 * job memory back once the pool has been idle long enough; returns the ms
 * until it wants to be asked again, or -1. */
int edrv__async_trim_ms(uint64_t now);

/* ---- loop.c: the emulator thread ------------------------------------------ */

/* Units (loop.c): the lock that serializes a port's callbacks, its driver's
 * or its own (ERL_DRV_FLAG_USE_PORT_LOCKING); reference counted, since a
 * port's struct may outlive its driver. Lock order: unit -> emulator lock.
 * Recursive for the thread that holds it. */
edrv_unit *edrv__unit_new(void); /* NULL when out of memory */
void edrv__unit_ref(edrv_unit *u);
void edrv__unit_unref(edrv_unit *u); /* NULL is fine */
bool edrv__unit_held(const edrv_unit *u);
/* Takes u, waiting for it; a holder of the emulator lock lets that go while
 * it waits, and then true says so: what it found before may have changed. */
bool edrv__unit_enter(edrv_unit *u);
/* Takes u only if it is free and no thread waits for it; never waits. */
bool edrv__unit_try(edrv_unit *u);
void edrv__unit_exit(edrv_unit *u);
/* The holder of u, a scheduler: u's ports' queued calls go to this
 * scheduler from now on (loop.c, sched_route). */
void edrv__unit_settle(edrv_unit *u);
/* Whether the calling thread acts as the emulator (holds the emulator lock)
 * after the call: it does already, or it runs a callback on a fast path
 * (holds a unit) and takes the lock now, until it lets its last unit go.
 * Every driver API function that touches shared state asks this first. */
bool edrv__emulator_enter(void);
/* The thread runs driver code: it holds the emulator lock or a unit. */
bool edrv__in_callback_thread(void);

/* Any thread: wakes the emulator thread (the one wake-up primitive). */
void edrv__wake(void);
/* The holder of the emulator lock set a timer: the emulator thread, if it
 * waits, must compute its wait again (timer.c). */
void edrv__timers_changed(void);

bool edrv__on_emulator_thread(void);
bool edrv__running(void);
int edrv__async_threads(void);
/* Emulator thread: a due timer of pt whose generation was gen, run by the
 * scheduler of pt's unit when that is not the emulator thread (true), or
 * left to the caller (false). */
bool edrv__sched_timeout(edrv_port_t *pt, uint64_t gen);
/* Any thread: runs pt's due timer of generation gen, unless the driver set
 * or cancelled it since. */
void edrv__timer_fire(edrv_port_t *pt, uint64_t gen);
/* Emulator thread: answers a request left pending (EDRV__PENDING). */
void edrv__request_finish(void *req, int result);
/* Any thread but the emulator's: closes the ports a process ended with. */
void edrv__proc_exited(edrv_proc *p);
/* The number of scheduler threads (edrv_options.schedulers). */
int edrv__schedulers(void);

#endif
