/*
 * edrv.h: the host side of edrv.
 *
 * edrv runs Erlang linked-in drivers (compiled against OTP's own erl_driver.h)
 * outside the BEAM. A port's callbacks run one at a time, under its driver's
 * lock, or its own for a driver with ERL_DRV_FLAG_USE_PORT_LOCKING (ERTS's
 * locking levels); any thread of the host program acts as an Erlang process
 * through this header: it loads drivers, opens ports, sends to them, controls
 * them, and receives their messages as Erlang terms in external term format
 * (ETF).
 *
 * Who runs a callback: the schedulers, which edrv_start starts
 * (edrv_options.schedulers), run timers, fd events, finished async jobs and
 * every call that was queued. A host thread's own call (open, command,
 * control, call, close, info) is run by that thread itself when the lock it
 * needs is free (the port's; the emulator lock, for what ports share, to
 * open) and nothing is queued for the port, as ERTS runs a port's callback in
 * the calling process's scheduler when it can; otherwise it is queued to the
 * scheduler of the port's lock (a command never waits for a port's lock).
 * Either way a thread's calls to a port keep their
 * order, and a port sees one callback at a time. A callback that calls this
 * header runs the call in place; a synchronous call to a port of another
 * lock, held by another thread, waits for it, so two drivers whose callbacks
 * call each other's ports synchronously can deadlock. A host thread runs driver
 * code only if SIGPIPE cannot kill it (ignored, handled, or blocked in that
 * thread, looked at on its first call), since ERTS ignores SIGPIPE and drivers
 * expect EPIPE; a program that leaves SIGPIPE's default action has its calls
 * queued. `signal(SIGPIPE, SIG_IGN)` at start, as ERTS does, is the usual way.
 * edrv_options.no_immediate queues every call.
 *
 * Conventions:
 *   - Functions that return an int return a negative EDRV_E* code on failure
 *     and 0 on success, with two exceptions: edrv_unload_driver returns 1
 *     when the unload waits for async jobs, and edrv_term_format returns the
 *     length of the text it printed. edrv_err_name() gives the Erlang-style
 *     reason ("badarg", "driver_incorrect_version", "enoent", ...),
 *     edrv_strerror() a sentence, and edrv_last_error() the detail of the
 *     calling thread's last failure (for example dlerror()'s text for
 *     EDRV_EOPEN).
 *   - Every function is safe to call from any thread. Calls that touch ports
 *     or drivers run under the port's lock (and the emulator lock, for what
 *     ports share), in the order each thread made them.
 *   - Buffers handed out (edrv_msg, edrv_reply) belong to the caller, who
 *     releases them with edrv_msg_free / edrv_reply_free (both accept NULL and
 *     already released values).
 *   - There is one runtime per OS process, started by edrv_start and ended by
 *     edrv_stop; it may be started again afterwards.
 */
#ifndef EDRV_H
#define EDRV_H

#include <erl_driver.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDRV_VERSION_MAJOR 0
#define EDRV_VERSION_MINOR 1
#define EDRV_VERSION_PATCH 0
#define EDRV_VERSION_STRING "0.1.0"

/* ---- errors ---------------------------------------------------------------
 * POSIX errors are returned as -errno (e.g. a driver's start failing with
 * ERL_DRV_ERROR_ERRNO and ENOENT gives -ENOENT, named "enoent"); edrv's own
 * codes lie below -1000. */
#define EDRV_ERRORS(X)                                                              \
    X(EBADARG, -1001, "badarg", "bad argument (refused by the driver or the runtime)") \
    X(ENOPORT, -1002, "badarg", "no such port")                                      \
    X(ECLOSED, -1003, "badarg", "port is closed")                                    \
    X(ENOTRUNNING, -1004, "not_running", "the runtime is not running")               \
    X(ERUNNING, -1005, "already_running", "the runtime is already running")          \
    X(ETIMEDOUT, -1006, "timeout", "timed out")                                      \
    X(ENOMEM, -1007, "enomem", "out of memory")                                      \
    X(EINVAL, -1008, "einval", "invalid argument to an edrv function")               \
    X(EOPEN, -1009, "open_error", "the driver file could not be opened")             \
    X(ENODRVINIT, -1010, "no_driver_init", "the file has no driver_init function")   \
    X(EDRVINIT, -1011, "driver_init_failed", "driver_init returned NULL or init failed") \
    X(EVERSION, -1012, "driver_incorrect_version", "the driver was built for an unsupported driver API version") \
    X(EBADNAME, -1013, "bad_driver_name", "the driver's name differs from the name it was loaded by") \
    X(ENODRIVER, -1014, "not_loaded", "no driver of that name is loaded")           \
    X(ELOADED, -1015, "already_loaded", "another driver of that name is loaded")    \
    X(ENOTSUP, -1016, "notsup", "not supported")                                     \
    X(EBADTERM, -1017, "badarg", "not a valid term in external term format")         \
    X(ENOPROC, -1018, "noproc", "no such process")                                  \
    X(EBUSY, -1019, "busy", "the port is busy (sent with EDRV_CMD_NOSUSPEND)")       \
    X(EEXITED, -1020, "exited", "the process was ended by an exit signal (see edrv_proc_exit_reason)")

enum {
#define EDRV_ERR_ENUM(name, code, reason, text) EDRV_##name = (code),
    EDRV_ERRORS(EDRV_ERR_ENUM)
#undef EDRV_ERR_ENUM
};

/* The Erlang-style reason for an error code, e.g. "badarg" or "enoent". */
const char *edrv_err_name(int err);
/* A sentence describing an error code. */
const char *edrv_strerror(int err);
/* The detail of the calling thread's last failed edrv call ("" if none). */
const char *edrv_last_error(void);

/* ---- the runtime ---------------------------------------------------------- */

typedef struct {
    int async_threads; /* pool size, 0 for the default (one per core) */
    /* How long, in microseconds, an idle thread (the emulator thread, pool
     * threads) spins looking for work before it sleeps: 0 for the default
     * (50), negative never to spin. Spinning turns a wake-up of several
     * microseconds into a fraction of one while work keeps coming; an idle
     * runtime sleeps once the spin is over and uses no CPU. */
    int spin_us;
    /* Every call is queued to a scheduler (with one scheduler, every driver
     * callback runs on the emulator thread: the original model, for drivers
     * and tests that want it). By default a host thread runs its own call's
     * callback when the port's lock is free and nothing is queued for the
     * port (as ERTS runs a port's callback in the calling process's
     * scheduler when it can). */
    int no_immediate;
    /* Scheduler threads, 0 for the default: $EDRV_SCHEDULERS if set (1 to
     * 1024), else 1 (bench/README.md says why). The
     * first, the emulator thread, runs fd events, finished async jobs and
     * queued calls that are not a port's (loading, opening); a port's queued
     * calls and due timers run on the scheduler of its lock (its driver's,
     * or its own with ERL_DRV_FLAG_USE_PORT_LOCKING), so ports of different
     * locks run side by side. 1 with no_immediate: every callback on one
     * thread. */
    int schedulers;
    /* The node named in every pid, port and reference edrv writes, with
     * its creation: NULL for nonode@nohost (creation 0), a node that is not
     * distributed. `edrv --node` sets its own (docs/node.md). At most 255
     * bytes, name@host. */
    const char *node;
    unsigned creation;
} edrv_options;

/* Starts the emulator thread. opts may be NULL. EDRV_ERUNNING if started. */
int edrv_start(const edrv_options *opts);
/* Closes every open port (each driver's stop runs), unloads every driver
 * (finish runs), and joins the emulator thread. Processes survive it: their
 * mailboxes can still be read, and they must still be freed. */
int edrv_stop(void);

/* ---- processes -------------------------------------------------------------
 * A process is a mailbox with a pid. Any thread may act for it, but one at a
 * time is the natural use (as with an Erlang process). Exit signals work as
 * in Erlang: a port is linked to its owner, and when it exits, its owner
 * gets the signal. A process that traps exits (EDRV_TRAP_EXIT) gets it as a
 * message {'EXIT', Port, Reason}. One that does not (the default, as in
 * Erlang) ignores a signal with reason `normal` and is ended by any other:
 * its ports close as if it had exited, messages to it are dropped, and every
 * call with it (edrv_receive included, even one already waiting) returns
 * EDRV_EEXITED; edrv_proc_exit_reason gives the reason, and edrv_proc_free
 * must still free it. */
typedef struct edrv_proc edrv_proc;

/* Creates a process. NULL when out of memory (edrv_last_error says so). */
edrv_proc *edrv_proc_new(void);
/* Ends a process: ports it owns are closed as if it had exited (a port with
 * data in its driver queue flushes first, as after edrv_port_close),
 * undelivered messages are dropped. Threads waiting in edrv_receive(p)
 * return EDRV_ENOPROC, and the process is freed once they have left; calls
 * with p under way on other threads finish. No call with p may start once
 * edrv_proc_free(p) has begun: a call that still finds p gets EDRV_ENOPROC
 * (or EDRV_EINVAL once it is freed), but p's memory may be gone by then.
 * Returns 0 (NULL is fine), or EDRV_EINVAL for a pointer that is not a live
 * process (freed twice, as far as that can be seen) or a process that
 * another thread is freeing. */
int edrv_proc_free(edrv_proc *p);
/* What process_info/2 would say of p: its message_queue_len, how many
 * threads wait in edrv_receive(p) for a message now (Erlang's `waiting`
 * status), and how many wait to send to a busy port (`suspended`). Any
 * thread. 0, or EDRV_EINVAL / EDRV_ENOPROC as edrv_receive. */
typedef struct {
    uint64_t pid;
    size_t message_queue_len;
    int waiting;
    int suspended;
} edrv_proc_status;
int edrv_proc_info(edrv_proc *p, edrv_proc_status *status);
/* Process flags, as erlang:process_flag/2. */
typedef enum {
    EDRV_TRAP_EXIT = 1 /* 0 (the default) or 1 */
} edrv_proc_flag;
/* Sets p's flag to value; returns the old value, or EDRV_EINVAL (an unknown
 * flag or value), EDRV_ENOPROC or EDRV_EEXITED. */
int edrv_process_flag(edrv_proc *p, edrv_proc_flag flag, int value);
/* The pid's number N, as in <0.N.0>. */
uint64_t edrv_proc_pid(const edrv_proc *p);
/* The pid as drivers see it (ErlDrvTermData for ERL_DRV_PID). */
ErlDrvTermData edrv_proc_term(const edrv_proc *p);

/* ---- between processes -----------------------------------------------------
 * Links, monitors, exit/2, send and registered names, as the BIFs of the
 * same names. A pid is edrv_proc_pid's number. Signals keep Erlang's rules:
 * an exit signal with reason `kill` sent by edrv_exit cannot be trapped and
 * ends its target with reason `killed`; one with reason `normal` is ignored
 * by a process that does not trap exits, unless it sends it to itself. A
 * process that exits (edrv_proc_exit, or edrv_proc_free: reason `normal`)
 * or is ended by an exit signal sends the signal on to every process linked
 * to it and a DOWN message to every monitor of it, and its name is freed.
 * After unlink (demonitor) returns, that link (monitor) brings no signal
 * (DOWN message) any more. */

/* Sends a message (one term in ETF, version byte first), as erlang:send/2 to
 * a pid: 0 also when no such process lives (the message is dropped, as in
 * Erlang). EDRV_EBADTERM; EDRV_ENOMEM. Any thread, no process needed. */
int edrv_send(uint64_t pid, const void *etf, size_t len);
/* link/1. 0; EDRV_ENOPROC when pid is not a live process and p does not
 * trap exits (p trapping gets {'EXIT', Pid, noproc} instead, and 0). */
int edrv_link(edrv_proc *p, uint64_t pid);
/* unlink/1: 0. */
int edrv_unlink(edrv_proc *p, uint64_t pid);
/* exit/2, from p to pid with a reason (ETF, version byte first): 0, also
 * for a pid that is not alive. A signal p sends itself may end p. */
int edrv_exit(edrv_proc *p, uint64_t pid, const void *reason, size_t len);
/* exit/1: p ends with the reason (ETF): its links get it, its monitors fire
 * with it, its ports close; then p is freed as by edrv_proc_free. */
int edrv_proc_exit(edrv_proc *p, const void *reason, size_t len);
/* monitor(process, Pid): the monitor's reference in *ref. When pid ends (at
 * once if it is not alive: reason noproc), p gets {'DOWN', Ref, process,
 * Pid, Reason}, Ref being a NEWER_REFERENCE_EXT on node nonode@nohost whose
 * three words are *ref's low 18 bits, its next 32 bits and its top 14. */
int edrv_monitor(edrv_proc *p, uint64_t pid, uint64_t *ref);
/* demonitor/1: 1 if the monitor was active (it is gone now), 0 if not. */
int edrv_demonitor(edrv_proc *p, uint64_t ref);
/* is_process_alive/1, for any pid: 1 or 0. */
int edrv_is_process_alive(uint64_t pid);
/* register/2: EDRV_EBADARG when the name (1 to 255 bytes, not
 * "undefined") is taken, or pid is not alive or has a name already. */
int edrv_register(const char *name, uint64_t pid);
/* unregister/1: EDRV_EBADARG when no live process has the name. */
int edrv_unregister(const char *name);
/* whereis/1: the pid, or 0. */
uint64_t edrv_whereis(const char *name);

/* A process that stands for one living elsewhere (a process of another
 * Erlang node): it has no mailbox; each message delivered to it is handed to
 * fn instead, with kind EDRV_FWD_MESSAGE, and each exit signal it gets
 * (it traps exits) as {'EXIT', From, Reason} with kind EDRV_FWD_EXIT. fn
 * runs on the delivering thread with the process locked, so its calls for
 * one process are one at a time and in delivery order; it must not call
 * edrv functions on this process and should not block for long. The bytes
 * (ETF, version byte first) are valid during the call only. `pid` is the
 * pid it stands for (one PID term in ETF, version byte first, at most 300
 * bytes): drivers and messages show it where they show this process
 * (driver_caller, driver_connected, ERL_DRV_PID). edrv_receive with such a
 * process is EDRV_EINVAL. NULL with edrv_last_error on bad arguments or
 * when out of memory. */
#define EDRV_FWD_PID_MAX 300
typedef enum { EDRV_FWD_MESSAGE = 0, EDRV_FWD_EXIT = 1 } edrv_fwd_kind;
typedef void (*edrv_forward_fn)(void *ctx, edrv_fwd_kind kind, const char *etf, size_t len);
edrv_proc *edrv_proc_new_forward(const void *pid, size_t pid_len, edrv_forward_fn fn, void *ctx);

/* A wait set lets one thread wait for many processes at once (a program
 * that runs many processes on one thread, as the Lua module's coroutines
 * do). A process is in one set at most. edrv_waitset_wait reports the tag of
 * each process of the set that got a message or was ended by an exit
 * signal since it was last reported (or added, when it had messages then),
 * once, in the order that happened; it waits up to timeout_ms (-1: for
 * ever, 0: not at all) while there is none, and returns how many tags it
 * wrote (at most max), 0 after the timeout. The set only tells: read the
 * mailbox with edrv_receive(p, 0, ...). A freed process leaves its set;
 * edrv_waitset_free fails (EDRV_EINVAL) while the set has processes. */
typedef struct edrv_waitset edrv_waitset;
edrv_waitset *edrv_waitset_new(void);
int edrv_waitset_free(edrv_waitset *w);
/* Puts p in w with tag (in place of the set it was in; NULL w: in none). */
int edrv_waitset_add(edrv_waitset *w, edrv_proc *p, void *tag);
int edrv_waitset_wait(edrv_waitset *w, long timeout_ms, void **tags, int max);

/* ---- drivers -------------------------------------------------------------- */

/* Loads DIR/NAME.so as erl_ddll:load_driver/2 does. Loading a driver that is
 * already loaded adds one user. Errors: EDRV_EOPEN (edrv_last_error has the
 * dlerror text), EDRV_ENODRVINIT, EDRV_EDRVINIT, EDRV_EVERSION, EDRV_EBADNAME
 * (the file's driver has another name, or a driver of that name is already
 * loaded from another file, or is registered by the host program). */
int edrv_load_driver(const char *dir, const char *name);
/* Registers a driver entry linked into the host program. Its init runs now;
 * the entry must outlive the registration. Registering the same entry again
 * adds one user; EDRV_ELOADED when another driver of that name is loaded (or
 * one of that name is waiting for its jobs to end before it unloads). */
int edrv_register_driver(ErlDrvEntry *entry);
/* Drops one user of a driver, as erl_ddll:unload_driver/1. The last one kills
 * the driver's open ports (their owners get {'EXIT', Port, driver_unloaded})
 * and unloads it: at once (returns 0) or, while its async jobs are pending,
 * when the last of them ends (returns 1; loading it again meanwhile cancels
 * the unload). finish runs before the file is closed. */
int edrv_unload_driver(const char *name);

/* ---- ports ---------------------------------------------------------------- */

typedef uint64_t edrv_port; /* the number N in #Port<0.N>; 0 is never a port */

#define EDRV_PORT_BINARY 0x1u /* open_port option binary: data as binaries */
#define EDRV_PORT_EOF 0x2u    /* open_port option eof: driver_failure_eof sends
                                 {Port, eof} and the port stays open */

/* Opens a port as open_port({spawn_driver, Command}, Options): the driver is
 * the command's first word, and start receives the whole command. The calling
 * process becomes the port's owner and is linked to it. A start failure maps
 * as in OTP: ERL_DRV_ERROR_GENERAL gives -EINVAL, ERL_DRV_ERROR_ERRNO gives
 * -errno, ERL_DRV_ERROR_BADARG gives EDRV_EBADARG. */
int edrv_open_port(edrv_proc *p, const char *command, unsigned flags, edrv_port *port);

/* Sends command data, as port_command/2: the driver's outputv receives it as
 * an ErlIOVec if it has one, otherwise output receives the bytes flattened.
 * Returns once queued; EDRV_ENOPORT/EDRV_ECLOSED for a port that is gone. */
int edrv_port_command(edrv_proc *p, edrv_port port, const void *data, size_t len);
int edrv_port_commandv(edrv_proc *p, edrv_port port, const struct iovec *iov, int iovcnt);

/* Back-pressure, as port_command/3: a port made busy by its driver
 * (set_busy_port) or by too much command data waiting for it (the busy
 * message queue limits, erl_drv_busy_msgq_limits: 4096/8192 bytes by default)
 * suspends senders: edrv_port_command(v) waits until the port is not busy or
 * is gone. With EDRV_CMD_NOSUSPEND the call returns EDRV_EBUSY instead (the
 * data is not sent); with EDRV_CMD_FORCE it sends anyway, if the driver has
 * ERL_DRV_FLAG_SOFT_BUSY, and returns EDRV_ENOTSUP otherwise. port_control
 * and port_call are never blocked. */
#define EDRV_CMD_NOSUSPEND 0x1u
#define EDRV_CMD_FORCE 0x2u
/* Sends even when the port is busy, whatever the driver's flags: for a
 * gateway whose sender cannot be suspended here (the edrv node, whose
 * senders are processes of other nodes). The data counts in the port's
 * message queue as any. */
#define EDRV_CMD_QUEUE 0x4u
/* The data is one binary, as port_command with a binary (not an iolist):
 * an outputv driver gets it as one element, even an empty one, as
 * edrv_port_command sends its buffer. */
#define EDRV_CMD_BINARY 0x8u
int edrv_port_command_opts(edrv_proc *p, edrv_port port, const struct iovec *iov, int iovcnt,
                           unsigned opts);
/* Whether a command now would wait: 1 when the port is busy (its driver's
 * set_busy_port, or its busy message queue), 0 when not; EDRV_ENOPORT, or
 * EDRV_ECLOSED for a port that is closed or closing (commands to it fail).
 * Any thread; a snapshot, which the driver may change at once. */
int edrv_port_busy(edrv_port port);

typedef enum {
    EDRV_REPLY_NONE = 0,
    EDRV_REPLY_LIST,   /* control: a list of bytes */
    EDRV_REPLY_BINARY, /* control: a binary */
    EDRV_REPLY_NIL,    /* control: [] because the driver set *rbuf = NULL */
    EDRV_REPLY_TERM    /* call: a term in ETF, version byte first */
} edrv_reply_kind;

typedef struct {
    edrv_reply_kind kind;
    char *data;
    size_t len;
} edrv_reply;

/* port_control/3: synchronous; EDRV_EBADARG when the driver has no control
 * callback or returns a negative value. A port closing with data in its
 * driver queue (see edrv_port_close) still serves control and call, as in
 * OTP 25, while command and close give EDRV_ECLOSED. */
int edrv_port_control(edrv_proc *p, edrv_port port, unsigned int op, const void *data,
                      size_t len, edrv_reply *reply);
/* port_call/3: `etf` is a term in external term format (version byte first);
 * the reply is the term the driver encoded. EDRV_EBADTERM for bad ETF. */
int edrv_port_call(edrv_proc *p, edrv_port port, unsigned int op, const void *etf,
                   size_t len, edrv_reply *reply);
/* port_close/1: the driver's stop runs before this returns, or, with data
 * in the driver queue, flush runs and the port ends once a callback empties
 * the queue. No {Port, closed} message is sent. */
int edrv_port_close(edrv_proc *p, edrv_port port);
void edrv_reply_free(edrv_reply *reply);

typedef struct {
    edrv_port id;
    char name[256];      /* the command it was opened with (cut at 255 bytes) */
    char driver[64];     /* the driver's name */
    uint64_t connected;  /* the owner's pid number */
    int binary;          /* opened with EDRV_PORT_BINARY */
    size_t pending_jobs; /* async jobs of this port not yet ended */
    long long os_pid;    /* set by erl_drv_set_os_pid, or -1 */
} edrv_port_status;

/* port_info/1: what a live port is (or a closing one, see
 * edrv_port_control). EDRV_ENOPORT/EDRV_ECLOSED otherwise. */
int edrv_port_info(edrv_port port, edrv_port_status *status);

/* ---- messages -------------------------------------------------------------- */

typedef struct {
    char *data; /* the term in ETF, version byte first */
    size_t len;
} edrv_msg;

/* Takes the next message of p's mailbox, waiting up to timeout_ms (-1: for
 * ever, 0: do not wait). Returns 0 or EDRV_ETIMEDOUT; EDRV_ENOPROC when
 * another thread frees p meanwhile (see edrv_proc_free). */
int edrv_receive(edrv_proc *p, long timeout_ms, edrv_msg *msg);
void edrv_msg_free(edrv_msg *msg);
/* The reason an exit signal ended p with, one term in ETF (version byte
 * first) in *reason, freed with edrv_msg_free. EDRV_EINVAL when p was not
 * ended by an exit signal; EDRV_ENOMEM. */
int edrv_proc_exit_reason(edrv_proc *p, edrv_msg *reason);
/* The length of the one term at the start of etf (version byte included),
 * as binary_to_term reads it (bytes after it are not looked at), or
 * EDRV_EBADTERM when the bytes are not a well-formed term. Every read is
 * bounds-checked: any bytes may be given. */
long long edrv_term_size(const void *etf, size_t len);
/* Where the term that starts at offset `at` of buf (at its tag: no version
 * byte there, as inside a term) ends: the offset just after it, or
 * EDRV_EBADTERM when buf holds no well-formed term there. As
 * edrv_term_size, every read is bounds-checked, and it keeps no stack: any
 * depth of nesting (libei's ei_skip_term recurses, one frame a level). */
long long edrv_term_skip(const void *buf, size_t len, size_t at);
/* Prints a term in Erlang syntax into a string that the caller frees with
 * free(). Returns the string's length, or EDRV_EBADTERM, EDRV_ENOMEM or
 * EDRV_ENOTSUP (a text of more than INT_MAX bytes), and then hands out no
 * string. Any depth of nesting: the printer keeps its stack on the heap. */
int edrv_term_format(const void *etf, size_t len, char **out);
/* The same as io:format's ~w prints it: strings and binaries as integers
 * ([104,105], <<104,105>>), where edrv_term_format shows printable ones as
 * ~p does ("hi", <<"hi">>). */
int edrv_term_format_w(const void *etf, size_t len, char **out);

/* ---- the async pool ---------------------------------------------------------- */

/* Cancels a job that driver_async queued and no pool thread has started:
 * its free callback runs (now, on the calling thread) and ready_async never
 * will. Returns 1 if cancelled; 0 if the job is running, finished, or unknown.
 * OTP removed this function in OTP 17; edrv keeps the original contract. Call
 * it from driver callbacks (the emulator thread), as driver_async. Its cost:
 * a binary search of each lane's jobs not yet ended (ids grow along a lane),
 * lane after lane until one holds the id: O(N log Q) for N pool threads and Q
 * jobs on a lane, with no table of ids to keep. */
int driver_async_cancel(long id);

typedef struct {
    int threads;            /* pool threads */
    uint64_t submitted;     /* jobs accepted by driver_async */
    uint64_t started;       /* jobs whose invoke began */
    uint64_t ready_async;   /* jobs ended with ready_async */
    uint64_t freed;         /* jobs ended with free (port gone, or no ready_async) */
    uint64_t cancelled;     /* jobs cancelled before they started */
    int sleeping;           /* pool threads asleep now (not spinning, not working) */
} edrv_pool_stats;

/* A snapshot of the pool's counters (any thread). Jobs queued now are
 * submitted - started - cancelled. */
void edrv_pool(edrv_pool_stats *stats);

/* ---- memory ----------------------------------------------------------------- */

typedef enum {
    EDRV_MEM_DRIVER = 0, /* driver_alloc */
    EDRV_MEM_BINARY,     /* driver binaries */
    EDRV_MEM_PORT,       /* ports and their runtime data */
    EDRV_MEM_MESSAGE,    /* messages in mailboxes and replies */
    EDRV_MEM_SYSTEM,     /* the runtime's own tables and requests */
    EDRV_MEM_ASYNC,      /* async jobs */
    EDRV_MEM_TYPES
} edrv_mem_type;

typedef struct {
    size_t bytes[EDRV_MEM_TYPES];  /* bytes allocated now, per type */
    size_t blocks[EDRV_MEM_TYPES]; /* blocks allocated now, per type */
} edrv_mem_stats;

void edrv_memory(edrv_mem_stats *stats);
const char *edrv_mem_type_name(edrv_mem_type type);

/* The allocator behind driver_alloc, driver binaries and libedrv's own memory:
 * "mimalloc" (the default, as ERTS gives driver_alloc an allocator of its
 * own) or "system" (glibc's malloc). It is chosen once, when libedrv loads:
 * "system" in sanitizer builds, under valgrind, in builds configured with
 * -DEDRV_MIMALLOC=OFF, and when the environment variable EDRV_MALLOC is
 * "system", so that memory checkers see every block a driver allocates.
 * EDRV_MALLOC=mimalloc asks for mimalloc even under valgrind. */
const char *edrv_allocator(void);

/* Fault injection for tests: the nth allocation from now (1 = the next) and
 * only it fails; 0 turns it off. Returns how many allocations the previous
 * setting still had to wait for: 0 when its failure happened (or none was
 * set), so that a test sweeping n knows when n passed the last allocation. */
long edrv_testing_fail_alloc(long nth);

#ifdef __cplusplus
}
#endif
#endif
