/*
 * select.c: I/O events for drivers (driver_select), on the emulator thread's
 * epoll set.
 *
 * A driver hands the runtime a file descriptor (cast to ErlDrvEvent) with
 * ERL_DRV_READ and/or ERL_DRV_WRITE; when it is readable or writable, the
 * port's ready_input or ready_output runs on the emulator thread, through
 * port.c, so that a failure decided inside takes effect once it returns.
 * This file owns the table from fd to its state: which directions are
 * selected and which port owns each (two ports may share one fd, one per
 * direction, as in ERTS).
 *
 * What ERTS does (OTP 25, each point checked in erl with tests/drivers/sdrv.c):
 *   - on=0 with ERL_DRV_USE (not ERL_DRV_USE_NO_CALLBACK) deselects both
 *     directions and calls the driver's stop_select(event, NULL) at once,
 *     inside driver_select, even from ready_input of that very fd, and even
 *     for an fd that was never selected. ERL_DRV_USE_NO_CALLBACK deselects
 *     only the directions in `mode` and never calls stop_select. ERTS's
 *     "used" flag only decides whether an idle fd stays in its pollset; no
 *     driver sees it, so it is not kept here.
 *   - Selecting a direction another port owns takes it over ("stealing
 *     control of fd"), with a report; deselecting one does too.
 *   - A port that ends with fds selected has them left as they are: no
 *     deselect, no stop_select; an event on one later is reported ("driver
 *     gone away without deselecting!"). Here they are deselected when the
 *     port ends (finish_exit), since the port is gone; stop_select is not
 *     called.
 *   - A NULL ready_input/ready_output is reported when the fd fires, that
 *     direction is deselected, and the port lives on (port.c).
 *   - An fd epoll refuses (EPERM: regular files, /dev/null) is polled by
 *     ERTS's poll() fallback, where it is always ready: here too. An fd that
 *     is not open is reported ("Bad input fd") and forgotten; driver_select
 *     still returns 0. A negative fd, or one at or above the open-files
 *     limit, gives -1.
 *
 * Indexes. The table maps each fd to its entry; each port lists the entries
 * it owns a direction of (port->sels[0] for input, [1] for output), so that
 * a port's end visits its own fds and no others; the fds epoll refuses are
 * on a list of their own, so that serving them does not scan the table.
 * None of them allocates but the table when it grows; it is given back when
 * the last fd goes.
 *
 * Mechanics. Each selected fd is in the epoll set with EPOLLONESHOT and is
 * re-armed after its callbacks ran (as ERTS re-arms after the port task): a
 * stale registration (an fd closed while selected, whose file lives on in a
 * child) fires once at most instead of spinning the loop. Each entry has a
 * generation, and the epoll data is gen << 32 | fd: an event from an older
 * entry of the same fd number, still in the batch epoll_wait returned, is
 * dropped. The fds epoll refuses are served by one eventfd that is left
 * readable (level-triggered) while there are any, so that each turn of the
 * loop serves them without a timeout of its own.
 *
 * Threads: the emulator thread only. Invariants: an entry exists iff it has a
 * direction selected; a direction is selected iff it has an owner, and then
 * the entry is on that port's list for the direction; a port's end empties
 * its lists (edrv__select_port_gone) before its struct goes, so an owner is
 * always a port that has not ended.
 */
#include "internal.h"
#include "idmap.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define DIRS (ERL_DRV_READ | ERL_DRV_WRITE)
/* epoll data of the eventfd that serves the fds epoll refuses; never gen<<32|fd
 * (an fd is at most INT_MAX), nor EDRV_EV_WAKE. */
#define EV_ALWAYS (UINT64_MAX - 1)

typedef struct {
    int fd;
    uint32_t gen;
    int events;             /* ERL_DRV_READ | ERL_DRV_WRITE selected */
    edrv_port_t *owner[2];  /* of input, of output; NULL for none */
    edrv_lnode by_port[2];   /* in owner[i]->sels[i] */
    edrv_lnode always_link;  /* in sels.always_list, when `always` */
    bool polled;            /* in the epoll set */
    bool always;            /* epoll refused it: always ready */
} sel;

static struct {
    idmap map;       /* fd -> sel */
    uint32_t gen;    /* the last generation given */
    edrv_lnode always_list; /* the entries with `always` */
    size_t always;   /* how many */
    int always_fd;   /* the eventfd behind EV_ALWAYS, or -1 */
    bool always_on;  /* always_fd is armed */
    long max_fds;    /* sysconf(_SC_OPEN_MAX), once known */
    bool told_gone;  /* a port ended with an fd selected: reported once per run */
} sels = {.always_fd = -1, .always_list = {&sels.always_list, &sels.always_list}};

static uint64_t key_of(const sel *s) {
    return (uint64_t)s->gen << 32 | (uint32_t)s->fd;
}

static ErlDrvEvent event_of(int fd) {
    return (ErlDrvEvent)(ErlDrvSInt)fd;
}

static const char *dir_name(int dir) {
    return dir == ERL_DRV_READ ? "input" : "output";
}

/* Index of a direction in owner[] and by_port[]. */
static int ix(int dir) {
    return dir == ERL_DRV_READ ? 0 : 1;
}

static edrv_port_t *owner(const sel *s, int dir) {
    return s->owner[ix(dir)];
}

/* Gives a direction to pt (NULL: to no one), moving the entry from its
 * former owner's list to pt's. */
static void set_owner(sel *s, int dir, edrv_port_t *pt) {
    int i = ix(dir);
    edrv__list_remove(&s->by_port[i]);
    s->owner[i] = pt;
    if (pt)
        edrv__list_append(&pt->sels[i], &s->by_port[i]);
}

/* The EV_ALWAYS eventfd is armed while any fd is served through it. */
static void update_always(void) {
    bool want = sels.always > 0;
    if (want == sels.always_on)
        return;
    int epfd = edrv__epoll_fd();
    if (want && sels.always_fd < 0) {
        sels.always_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* readable from now on */
        struct epoll_event ev = {.events = 0, .data.u64 = EV_ALWAYS};
        if (sels.always_fd >= 0 && epoll_ctl(epfd, EPOLL_CTL_ADD, sels.always_fd, &ev) < 0) {
            close(sels.always_fd);
            sels.always_fd = -1;
        }
        if (sels.always_fd < 0) {
            edrv__warn("driver_select: no eventfd for the fds epoll refuses: %s",
                       strerror(errno));
            return;
        }
    }
    struct epoll_event ev = {.events = want ? EPOLLIN : 0, .data.u64 = EV_ALWAYS};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, sels.always_fd, &ev) == 0)
        sels.always_on = want;
}

/* Forgets an entry: out of the epoll set, its owners' lists and the table
 * (given back once empty). */
static void drop(sel *s) {
    if (s->polled)
        (void)epoll_ctl(edrv__epoll_fd(), EPOLL_CTL_DEL, s->fd, NULL); /* may be closed */
    if (s->always) {
        edrv__list_remove(&s->always_link);
        sels.always--;
        update_always();
    }
    set_owner(s, ERL_DRV_READ, NULL);
    set_owner(s, ERL_DRV_WRITE, NULL);
    edrv__idmap_del(&sels.map, (uint64_t)s->fd);
    if (!sels.map.live)
        edrv__idmap_free(&sels.map);
    edrv__free(s);
}

/* Puts s's events into the epoll set, armed. An fd that is not open, or
 * cannot be polled at all, is reported and s is gone. */
static void arm(sel *s) {
    if (s->always)
        return;
    int epfd = edrv__epoll_fd();
    struct epoll_event ev = {.data.u64 = key_of(s), .events = EPOLLONESHOT};
    if (s->events & ERL_DRV_READ)
        ev.events |= EPOLLIN;
    if (s->events & ERL_DRV_WRITE)
        ev.events |= EPOLLOUT;
    int rc = epoll_ctl(epfd, s->polled ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev);
    if (rc < 0 && errno == ENOENT) /* closed and opened again under the same number */
        rc = epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
    /* EEXIST on ADD: the runtime's own eventfds (a driver selecting a number it
     * does not own); they are left alone, and the fd is "bad". */
    if (rc == 0) {
        s->polled = true;
        return;
    }
    if (errno == EPERM) {
        /* A regular file or the like: poll() calls it always ready. */
        s->polled = false;
        s->always = true;
        edrv__list_append(&sels.always_list, &s->always_link);
        sels.always++;
        update_always();
        return;
    }
    int err = errno;
    s->polled = false;
    for (int dir = ERL_DRV_READ; dir <= ERL_DRV_WRITE; dir <<= 1) {
        edrv_port_t *pt = s->events & dir ? owner(s, dir) : NULL;
        if (pt)
            edrv__warn("Bad %s fd in epoll: fd=%d, port=#Port<0.%llu>, driver=%s (%s)",
                       dir_name(dir), s->fd, (unsigned long long)pt->id, pt->drv->name,
                       strerror(err));
    }
    drop(s);
}

/* Takes the directions `dirs` away from any other port that has them. */
static void steal(sel *s, edrv_port_t *port, int dirs) {
    for (int dir = ERL_DRV_READ; dir <= ERL_DRV_WRITE; dir <<= 1) {
        edrv_port_t *pt = owner(s, dir);
        if (!(dirs & dir) || !(s->events & dir) || pt == port)
            continue;
        edrv__warn("driver_select: #Port<0.%llu> (%s) stealing control of fd=%d from %s "
                   "driver %s #Port<0.%llu>",
                   (unsigned long long)port->id, port->drv->name, s->fd, dir_name(dir),
                   pt->drv->name, (unsigned long long)pt->id);
        s->events &= ~dir;
        set_owner(s, dir, NULL);
    }
}

static void stop_select(edrv_port_t *port, ErlDrvEvent event) {
    void (*fn)(ErlDrvEvent, void *) = port->drv->entry->stop_select;
    if (fn)
        fn(event, NULL);
}

/* ---- the emulator thread's loop ----------------------------------------------- */

/* The entry an event's key names, if it is still that entry. */
static sel *find(uint64_t key) {
    sel *s = edrv__idmap_get(&sels.map, (uint32_t)key);
    return s && s->gen == (uint32_t)(key >> 32) ? s : NULL;
}

/* Runs the callback of one direction if it is still selected; the entry may
 * be gone afterwards. */
static void fire(uint64_t key, int dir) {
    sel *s = find(key);
    if (!s || !(s->events & dir))
        return;
    edrv_port_t *pt = owner(s, dir);
    int fd = s->fd;
    /* The port may have deselected the fd while this thread waited for
     * its unit: then the event is not its any more. */
    if (!edrv__port_lock(pt) || ((s = find(key)) && (s->events & dir) && owner(s, dir) == pt))
        edrv__port_io_ready(pt, event_of(fd), dir == ERL_DRV_READ);
    edrv__port_unlock(pt);
}

/* Serves each fd epoll refuses: always readable and writable. The list is
 * taken whole and each entry put back before it is served: a callback may
 * drop any entry (it leaves whichever list it is on) or add one (served
 * next turn). */
static void fire_always(void) {
    edrv_lnode todo;
    edrv__list_init(&todo);
    edrv__list_move(&sels.always_list, &todo);
    while (!edrv__list_empty(&todo)) {
        sel *s = EDRV_LINKED(todo.next, sel, always_link);
        edrv__list_remove(&s->always_link);
        edrv__list_append(&sels.always_list, &s->always_link);
        uint64_t key = key_of(s);
        fire(key, ERL_DRV_READ);
        fire(key, ERL_DRV_WRITE);
    }
}

void edrv__select_ready(uint64_t key, uint32_t revents) {
    EDRV_ASSERT_EMULATOR();
    if (key == EV_ALWAYS) {
        fire_always();
        return;
    }
    /* An error or a hang-up wakes each selected direction, as in ERTS: the
     * driver finds out by reading or writing. */
    bool err = revents & (EPOLLERR | EPOLLHUP);
    if (revents & EPOLLIN || err)
        fire(key, ERL_DRV_READ);
    if (revents & EPOLLOUT || err)
        fire(key, ERL_DRV_WRITE);
    sel *s = find(key);
    if (s)
        arm(s); /* one-shot: armed again for what is still selected */
}

/* pt ends: its directions of s are deselected; s goes if nothing is left. */
static void port_gone(sel *s, edrv_port_t *pt) {
    int had = (owner(s, ERL_DRV_READ) == pt ? ERL_DRV_READ : 0) |
              (owner(s, ERL_DRV_WRITE) == pt ? ERL_DRV_WRITE : 0);
    /* ERTS reports such an fd only if it fires later; here it is told once
     * per run, when the fd is still open (stop did not close it). */
    if (!sels.told_gone && fcntl(s->fd, F_GETFD) >= 0) {
        sels.told_gone = true;
        edrv__warn("#Port<0.%llu> (%s) ended with fd=%d selected for %s: deselected, "
                   "and stop_select is not called, as in ERTS (reported once)",
                   (unsigned long long)pt->id, pt->drv->name, s->fd,
                   had == DIRS ? "input and output" : dir_name(had));
    }
    for (int dir = ERL_DRV_READ; dir <= ERL_DRV_WRITE; dir <<= 1) {
        if (had & dir) {
            s->events &= ~dir;
            set_owner(s, dir, NULL);
        }
    }
    if (!s->events)
        drop(s);
    else
        arm(s);
}

void edrv__select_port_gone(edrv_port_t *pt) {
    EDRV_ASSERT_EMULATOR();
    for (int i = 0; i < 2; i++) {
        while (!edrv__list_empty(&pt->sels[i]))
            port_gone(EDRV_LINKED(pt->sels[i].next, sel, by_port[i]), pt);
    }
}

void edrv__select_reset(void) {
    EDRV_ASSERT_EMULATOR();
    /* The last drop gives the table back, and its capacity becomes 0. */
    for (size_t i = 0; i < sels.map.cap; i++) {
        sel *s = edrv__idmap_at(&sels.map, i);
        if (s)
            drop(s);
    }
    edrv__idmap_free(&sels.map);
    if (sels.always_fd >= 0) {
        (void)epoll_ctl(edrv__epoll_fd(), EPOLL_CTL_DEL, sels.always_fd, NULL);
        close(sels.always_fd);
    }
    sels.always_fd = -1;
    sels.always_on = false;
    sels.always = 0;
    sels.told_gone = false;
}

/* ---- the driver interface ------------------------------------------------------ */

EDRV_API int driver_select(ErlDrvPort port, ErlDrvEvent event, int mode, int on) {
    if (!port || !edrv__emulator_enter() || atomic_load(&port->state) == PORT_DEAD)
        return -1;
    ErlDrvSInt n = (ErlDrvSInt)event;
    if (n < 0)
        return -1;
    if (!sels.max_fds) {
        long m = sysconf(_SC_OPEN_MAX); /* ERTS's limit too */
        sels.max_fds = m > 0 ? m : INT32_MAX;
    }
    if (n >= sels.max_fds) {
        edrv__warn("driver_select by %s #Port<0.%llu> failed: fd=%lld is larger than the "
                   "largest allowed fd=%ld", port->drv->name, (unsigned long long)port->id,
                   (long long)n, sels.max_fds - 1);
        return -1;
    }
    int fd = (int)n;
    /* ERL_DRV_USE_NO_CALLBACK includes the ERL_DRV_USE bit. */
    bool stop = !on && (mode & ERL_DRV_USE_NO_CALLBACK) == ERL_DRV_USE;
    if (stop)
        mode |= DIRS; /* the fd is being given up: nothing stays selected */
    int dirs = mode & DIRS;
    sel *s = edrv__idmap_get(&sels.map, (uint64_t)fd);
    if (s)
        steal(s, port, dirs);
    if (on) {
        int add = dirs & ~(s ? s->events : 0);
        if (!add) {
            if (s && !s->events)
                drop(s); /* stolen from, and nothing left */
            return 0;
        }
        if (!s) {
            s = edrv__calloc(EDRV_MEM_SYSTEM, sizeof *s);
            if (!s || edrv__idmap_put(&sels.map, (uint64_t)fd, s) < 0) {
                edrv__free(s);
                edrv__warn("driver_select: out of memory selecting fd=%d", fd);
                return -1;
            }
            s->fd = fd;
            s->gen = ++sels.gen;
        }
        for (int dir = ERL_DRV_READ; dir <= ERL_DRV_WRITE; dir <<= 1)
            if (add & dir)
                set_owner(s, dir, port);
        s->events |= add;
        arm(s); /* an fd that is not open is reported and forgotten; still 0 */
        return 0;
    }
    if (s) {
        s->events &= ~dirs;
        for (int dir = ERL_DRV_READ; dir <= ERL_DRV_WRITE; dir <<= 1)
            if (dirs & dir)
                set_owner(s, dir, NULL);
        if (!s->events)
            drop(s);
        else
            arm(s);
    }
    /* Out of the epoll set already: safe to close now, inside this call. */
    if (stop)
        stop_select(port, event);
    return 0;
}

size_t edrv__select_count(void) {
    EDRV_ASSERT_EMULATOR();
    return sels.map.live;
}
