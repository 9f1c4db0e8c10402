/*
 * internal.h: what libedrv's subsystems share with each other. Never installed.
 *
 * The runtime is one per OS process, as ERTS is: the driver interface has no
 * context argument (driver_alloc, driver_mk_atom, erl_drv_mutex_create, ...),
 * so the state it reaches is global. Each section below belongs to one source
 * file and says which threads may touch what.
 *
 * Threads:
 *   - the emulator thread (loop.c) runs every driver callback and owns all port
 *     and driver state;
 *   - host threads call edrv.h; their requests are queued to the emulator thread
 *     (loop.c) and, for synchronous calls, they wait for the answer;
 *   - any thread may allocate (mem.c), build and deliver messages (term.c,
 *     proc.c) and use the erl_drv_* thread primitives (thread.c).
 *
 * Lock order (outer first): procs table lock -> mailbox lock;
 * ports table lock -> nothing. No lock is held while a driver callback runs.
 */
#ifndef EDRV_INTERNAL_H
#define EDRV_INTERNAL_H

#include "edrv.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds: timers, and the idle threads' spins. */
static inline int64_t edrv__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define EDRV_API __attribute__((visibility("default")))
#define EDRV_UNUSED __attribute__((unused))

/* The node name in every pid and port edrv encodes: a non-distributed node. */
#define EDRV_NODE "nonode@nohost"

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

/* Binaries: an ErlDrvBinary with a reference count in front of it. */
ErlDrvBinary *edrv__binary_new(const void *bytes, size_t size);

/* ---- error.c -------------------------------------------------------------- */

/* Records the detail text for the calling thread's failing call (printf-style)
 * and returns err, so that `return edrv__fail(EDRV_EOPEN, "...", ...)` reads
 * well. edrv_last_error() returns it. */
int edrv__fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
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

/* An ETF writer: with buf == NULL it only counts, so every message is sized in
 * one pass and written in a second into one exact allocation. */
typedef struct {
    char *buf;
    int idx;
} etf_w;

void edrv__etf_pid(etf_w *w, uint64_t pid);
void edrv__etf_port(etf_w *w, uint64_t port);

/* The length of the one term at the start of buf, version byte included, or
 * -1 if the bytes are not a well-formed term. Every read is bounds-checked, so
 * libei may decode the bytes afterwards. Any thread. */
int edrv__etf_measure(const void *buf, size_t len);

/* Builds a message from a term spec, ready for edrv__deliver. Returns 0 and
 * the message in *out, or -1 for a bad spec (or no memory). Any thread. */
struct mbox_msg;
int edrv__spec_to_msg(const ErlDrvTermData *spec, int n, struct mbox_msg **out);

/* ---- proc.c: processes and mailboxes -------------------------------------- */

typedef struct mbox_msg {
    struct mbox_msg *next;
    size_t len;
    char data[]; /* ETF, version byte first */
} mbox_msg;

struct edrv_proc {
    uint64_t pid;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mbox_msg *head, *tail;
    size_t count;
};

/* Allocates a message buffer with room for len bytes, to be filled and then
 * passed to edrv__deliver (which takes ownership) or edrv__msg_drop. */
mbox_msg *edrv__msg_new(size_t len);
void edrv__msg_drop(mbox_msg *m);
/* Appends m to pid's mailbox. Returns 1 when delivered, 0 when there is no such
 * process (m is then freed). Any thread. */
int edrv__deliver(uint64_t pid, mbox_msg *m);
bool edrv__proc_alive(uint64_t pid);

/* ---- port.c: ports --------------------------------------------------------- */

/* CLOSING: port_close, or the owner's exit, found data in the driver queue;
 * the port lives on for its timers, async jobs, port_control and port_call
 * (output dropped) until a callback empties the queue (see port.c). */
typedef enum {
    PORT_STARTING, PORT_ALIVE, PORT_CLOSING, PORT_EXITING, PORT_STOPPING, PORT_DEAD
} port_state;

typedef struct edrv_queue edrv_queue;

struct edrv_driver;

/* ErlDrvPort, as drivers see it, points here. Fields are the emulator
 * thread's, except `state` (read by any thread that sends from the port) and
 * `owner` (read under the ports table lock by threads resolving a port term). */
struct _erl_drv_port {
    uint64_t id;
    struct edrv_driver *drv;
    char *name;               /* the command it was opened with */
    ErlDrvData data;
    _Atomic port_state state;
    _Atomic uint64_t owner;   /* connected process */
    uint64_t caller;          /* process behind the current callback */
    bool linked;              /* owner is linked (edrv processes trap exits) */
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
    long timer_slot;          /* index in the timer heap, or -1 */
    int64_t timer_deadline;   /* CLOCK_MONOTONIC ns */
    /* References besides the table's: async jobs. The struct outlives the
     * port (DEAD) until the last one goes. */
    int refs;
};
typedef struct _erl_drv_port edrv_port_t;

/* Looks up a live port by number; any thread (ports table lock). The pointer is
 * only valid on the emulator thread, or while the caller holds a reference that
 * the port subsystem gave out. */
uint64_t edrv__port_owner_of(uint64_t port_id, bool *closing);

/* Emulator thread: the operations a request carries out. */
/* Returns EDRV__PENDING when the driver answers later with erl_drv_init_ack;
 * the port then finishes the request (req) itself. */
#define EDRV__PENDING 1
int edrv__port_open(edrv_proc *p, const char *command, unsigned flags, edrv_port *out,
                    void *req);
int edrv__port_command(edrv_proc *p, edrv_port id, ErlDrvBinary *bin, const size_t *pieces,
                       int npieces, bool whole);
int edrv__port_control(edrv_proc *p, edrv_port id, unsigned op, char *data, size_t len,
                       edrv_reply *reply);
int edrv__port_call(edrv_proc *p, edrv_port id, unsigned op, char *data, size_t len,
                    edrv_reply *reply);
int edrv__port_close(edrv_proc *p, edrv_port id);
int edrv__port_info(edrv_port id, edrv_port_status *st);
void edrv__ports_of_proc_exit(uint64_t pid);
void edrv__ports_close_all(void);
void edrv__ports_kill_driver(struct edrv_driver *d); /* exit reason driver_unloaded */
size_t edrv__ports_using(struct edrv_driver *d);
int edrv__port_check(edrv_port id); /* any thread: 0, EDRV_ENOPORT or EDRV_ECLOSED */
/* Any thread but the emulator's: waits while the port is busy (see edrv.h
 * EDRV_CMD_*), then counts len bytes into its message queue. 0 or an error. */
int edrv__port_admit(edrv_port id, size_t len, unsigned opts);
/* Any thread: len admitted bytes leave the port's message queue. */
void edrv__port_unadmit(edrv_port id, size_t len);
/* Emulator thread: for the async pool. */
void edrv__port_ref(edrv_port_t *pt);
void edrv__port_unref(edrv_port_t *pt);
bool edrv__port_accepts_jobs(const edrv_port_t *pt);
/* Whether a finished job ends with ready_async: the port lives and has one. */
bool edrv__port_ready_async_ok(const edrv_port_t *pt);
void edrv__port_ready_async(edrv_port_t *pt, void *data);
void edrv__ports_reset(void);

/* Emulator thread: a monitored process ended (monitor.c). */
void edrv__port_process_exit(edrv_port_t *pt, ErlDrvMonitor *mon);

/* ---- monitor.c (emulator thread) ---------------------------------------------- */

void edrv__monitors_process_exited(uint64_t pid);
void edrv__monitors_port_gone(edrv_port_t *pt);

/* The driver queue changed size (queue.c): a closing port may end. */
void edrv__port_queue_changed(edrv_port_t *pt);

/* ---- queue.c: the driver queue ------------------------------------------------ */

size_t edrv__queue_size(const edrv_queue *q); /* NULL is empty */
void edrv__queue_free(edrv_queue *q);

/* Emulator thread: a due timer's callback. */
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
 * called, as in ERTS. */
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
size_t edrv__async_queued(void);  /* jobs submitted and not yet run */
bool edrv__async_has_done(void);  /* finished jobs wait for the drain */
/* Emulator thread, about to sleep at now (ns, CLOCK_MONOTONIC): gives spare
 * job memory back once the pool has been idle long enough; returns the ms
 * until it wants to be asked again, or -1. */
int edrv__async_trim_ms(uint64_t now);

/* ---- loop.c: the emulator thread ------------------------------------------ */

/* Any thread: wakes the emulator thread (the one wake-up primitive). */
void edrv__wake(void);

bool edrv__on_emulator_thread(void);
bool edrv__running(void);
int edrv__async_threads(void);
/* Emulator thread: answers a request left pending (EDRV__PENDING). */
void edrv__request_finish(void *req, int result);
/* Any thread but the emulator's: closes the ports a process ended with. */
void edrv__proc_exited(uint64_t pid);

#endif
