/*
 * file_drv: files on the async pool, after OTP's old efile driver.
 *
 * One port is a session; it may hold many open files. Every file operation
 * runs on a pool thread through driver_async, keyed by the file's handle, so
 * one file's operations run one at a time and in the order they were asked
 * for, while different files proceed in parallel. The answer comes back from
 * ready_async as a message to the port's owner. A plain OTP driver: built
 * against erl_driver.h (and OpenSSL's libcrypto) alone, it loads in erl and in
 * edrv unchanged.
 *
 *   erl_ddll:load_driver("build/drivers", "file_drv"),
 *   P = open_port({spawn_driver, "file_drv"}, [binary]),
 *   <<Ref:32, Fd:32>> = port_control(P, 1, <<6, "/tmp/x">>),  % write, create
 *   receive {file_drv, Ref, ok} -> ok end,
 *   <<W:32>> = port_control(P, 3, <<Fd:32, "hello">>),
 *   receive {file_drv, W, ok} -> ok end.
 *
 * Protocol
 * --------
 * Every request is a port_control(Port, Op, Data). The port sets
 * PORT_CONTROL_FLAG_BINARY, so replies are binaries. All numbers, in requests
 * and replies, are big-endian.
 *
 * The reply names the request: Ref:32, a counter of the port's accepted
 * requests (1, 2, 3, ...; after 2^32-1 it wraps to 1). OPEN replies with
 * Ref:32 then Fd:32, the new file's handle: handles are numbered 1, 2, 3, ...
 * within the port, never reused, and valid at once, so operations on the file
 * may be sent before the open itself has finished. A request that is not
 * understood (unknown op, data of the wrong length, unknown open flags, a path
 * holding a NUL byte; also an OPEN once the port has used all 2^32-1 handles)
 * is refused with badarg (control returns -1): no Ref is used and nothing is
 * sent.
 *
 * Each accepted request later sends exactly one message to the port's owner:
 *
 *   {file_drv, Ref, Result}
 *   Result = ok | {ok, Value} | eof | {error, Posix}
 *
 * where Posix is errno's name as erl_errno_id gives it (enoent, eisdir,
 * ebadf, ...). The messages of one file come in the order of its requests;
 * across files, and for LISTDIR, in any order.
 *
 *   Op  Name      Data                      Result
 *   1   OPEN      Flags:8, Path/bytes       ok
 *   2   READ      Fd:32, Size:32            {ok, Binary} | eof
 *   3   WRITE     Fd:32, Bytes/bytes        ok
 *   4   FSYNC     Fd:32                     ok
 *   5   CLOSE     Fd:32                     ok
 *   6   SHA256    Fd:32                     {ok, Digest} (32 bytes)
 *   7   LISTDIR   Path/bytes                {ok, [{Name, Type}]}
 *   8   POSITION  Fd:32, Offset:64 (signed) {ok, NewOffset}
 *   9   LSTAT     Path/bytes                {ok, Type}
 *   10  SHA256S   Paths (NUL between them)  {ok, [Digest | {error, Posix}]}
 *
 * OPEN flags: 1 read, 2 write, 4 create, 8 truncate, 16 append, 32 exclusive.
 * Append implies write; exclusive implies create (O_CREAT|O_EXCL); truncate
 * applies only when writing; no read or write bit opens for reading. Files
 * are created with mode 0666 (less the umask) and opened close-on-exec. A
 * directory opens for reading (reads then give eisdir); for writing, eisdir.
 * If the open fails, its Result is the error, and the handle is dead: every
 * operation on it, CLOSE included, gives {error, ebadf}.
 *
 * READ gives up to Size bytes from the current position: from a regular
 * file, fewer only at its end; from a pipe or device, what one read(2) gives;
 * eof when there are none left. Size 0 gives {ok, <<>>}. The buffer follows
 * the file's size, not Size, so a huge Size ("the rest of the file") costs no
 * more memory than the data.
 *
 * WRITE writes all its bytes at the current position (at the end with
 * append). POSITION is an absolute seek (lseek SEEK_SET); a negative offset
 * gives {error, einval}. SHA256 reads the file from its current position to
 * its end, 256 KiB at a time, through OpenSSL's EVP interface on the pool
 * thread; afterwards the position is at the end, as after reading it.
 *
 * LISTDIR lists one directory without following symbolic links: Name is a
 * binary, Type one of regular, directory, symlink, other (from the entry's
 * d_type, or lstat when the file system does not say); "." and ".." are left
 * out; the order is the directory's own.
 *
 * LSTAT gives the type of Path itself (a symbolic link is not followed), one
 * of LISTDIR's types.
 *
 * SHA256S hashes whole files by name, many in one request (one pool job):
 * Paths are one or more paths separated by single NUL bytes (none empty).
 * Each file is opened for reading (non-blocking, so that a FIFO cannot hang
 * the job), hashed and closed; the result lists, in the order of Paths, each
 * file's digest or its error: a file that is neither regular nor a
 * directory gives {error, einval} (a device or a FIFO is not read), a
 * directory {error, eisdir}. A batch of small files costs one request, one
 * job and one message instead of three of each per file. LSTAT and SHA256S,
 * like LISTDIR, use no handle, and go to the pool threads in turn.
 *
 * An operation on a handle that is not open (never opened, already closed or
 * with its close already asked for, or whose open failed) is accepted: it gets
 * a Ref and its Result is {error, ebadf}, sent through the pool like any other
 * with the handle as key, so it stays in order with that handle's requests.
 *
 * Closing the port closes every file still open: stop queues each one's close
 * on the pool with the file's key, after the operations already queued for it
 * (they still run; their results are dropped with the port).
 *
 * Threads and memory
 * ------------------
 * Port state (the handle table, the counters) is touched only by control,
 * ready_async and stop, on the emulator thread. A request carries everything
 * its invoke needs: its arguments, its result fields, and a pointer to its
 * file's own record, which holds the OS descriptor. That record is not port
 * state: only the invokes of that file's requests use the descriptor, and they
 * run one at a time on one pool thread because they share a key. The record is
 * reference counted (the handle table and each request hold one reference);
 * whoever drops the last one closes the descriptor if it is still open, so a
 * file is closed even if its close request ends in `free` without having run.
 * The driver's memory comes from driver_alloc and driver binaries only (OpenSSL
 * allocates its digest context itself; SHA256 frees it before returning);
 * every request is released by exactly one of ready_async or the free
 * callback, and frees all it holds.
 */
#define _DEFAULT_SOURCE /* d_type, dirfd, fstatat, O_CLOEXEC also under -std=c11 */
#define _FILE_OFFSET_BITS 64
#include <dirent.h>
#include <erl_driver.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    OP_OPEN = 1,
    OP_READ,
    OP_WRITE,
    OP_FSYNC,
    OP_CLOSE,
    OP_SHA256,
    OP_LISTDIR,
    OP_POSITION,
    OP_LSTAT,
    OP_SHA256S
};
/* The requests that name a path rather than a handle. */
#define BY_PATH(op) ((op) == OP_LISTDIR || (op) == OP_LSTAT || (op) == OP_SHA256S)
enum {
    FL_READ = 1,
    FL_WRITE = 2,
    FL_CREATE = 4,
    FL_TRUNCATE = 8,
    FL_APPEND = 16,
    FL_EXCLUSIVE = 32
};
#define FL_ALL 63

/* What a request ends with. */
enum { RES_OK, RES_ERROR, RES_EOF, RES_BINARY, RES_DIGEST, RES_OFFSET, RES_DIR, RES_TYPE, RES_DIGESTS };
enum { T_REGULAR, T_DIRECTORY, T_SYMLINK, T_OTHER };

#define SHA_CHUNK (256 * 1024)

/* One open file: its OS descriptor, used only by invokes of its key. */
typedef struct {
    int osfd; /* -1 before the open ran, after a failed open, after close */
    atomic_int refc;
} file;

typedef struct {
    size_t off, len; /* into the request's names */
    int type;
} dent;

/* One file of SHA256S: its digest, or the errno that stopped it. */
typedef struct {
    int err;
    unsigned char digest[32];
} hashed;

typedef struct {
    int op;
    uint32_t ref;
    uint32_t handle;
    file *f;             /* NULL for LISTDIR, LSTAT, SHA256S and handles not open */
    int flags;           /* OPEN */
    uint32_t size;       /* READ */
    ErlDrvSInt64 offset; /* POSITION: the argument, then the result */
    /* The result. */
    int kind;
    int err;
    ErlDrvBinary *bin; /* READ */
    size_t bin_len;
    unsigned char digest[32];
    char *names; /* LISTDIR */
    size_t names_len, names_cap;
    dent *ents;
    size_t nents, ents_cap;
    int type;       /* LSTAT */
    hashed *hashes; /* SHA256S, one per path */
    size_t nhashes;
    /* The request's bytes: WRITE's data; OPEN's and LISTDIR's path, NUL-ended. */
    size_t len;
    char data[];
} req;

/* The port: a session. Handles live in an open-addressed table. */
typedef struct {
    uint32_t handle; /* 0: empty slot */
    file *f;
} slot;

typedef struct {
    ErlDrvPort port;
    uint32_t last_ref;
    uint32_t last_handle;
    slot *slots;
    size_t cap, count; /* cap: 0 or a power of two */
} session;

/* ---- files and requests --------------------------------------------------------- */

static void file_release(file *f) {
    if (f && atomic_fetch_sub_explicit(&f->refc, 1, memory_order_acq_rel) == 1) {
        /* Every request of the file has ended, so no invoke uses the descriptor. */
        if (f->osfd >= 0)
            close(f->osfd);
        driver_free(f);
    }
}

static req *req_new(int op, const char *data, size_t len) {
    req *r = driver_alloc(sizeof *r + len + 1);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->op = op;
    r->len = len;
    if (len)
        memcpy(r->data, data, len);
    r->data[len] = '\0';
    return r;
}

static void req_destroy(req *r) {
    if (r->bin)
        driver_free_binary(r->bin);
    if (r->names)
        driver_free(r->names);
    if (r->ents)
        driver_free(r->ents);
    if (r->hashes)
        driver_free(r->hashes);
    file_release(r->f);
    driver_free(r);
}

/* The async free callback: the port is gone; the result is dropped. */
static void req_free(void *arg) {
    req_destroy(arg);
}

/* ---- the handle table (emulator thread) -------------------------------------------- */

static size_t slot_of(const session *s, uint32_t h) {
    return (size_t)(h * 2654435761u) & (s->cap - 1);
}

static file *table_get(const session *s, uint32_t h) {
    if (!s->cap || !h)
        return NULL;
    for (size_t i = slot_of(s, h);; i = (i + 1) & (s->cap - 1)) {
        if (s->slots[i].handle == h)
            return s->slots[i].f;
        if (!s->slots[i].handle)
            return NULL;
    }
}

static void table_insert(session *s, uint32_t h, file *f) {
    size_t i = slot_of(s, h);
    while (s->slots[i].handle)
        i = (i + 1) & (s->cap - 1);
    s->slots[i].handle = h;
    s->slots[i].f = f;
    s->count++;
}

/* Room for one more entry; -1 when out of memory. */
static int table_reserve(session *s) {
    if (s->cap && (s->count + 1) * 2 <= s->cap)
        return 0;
    size_t ncap = s->cap ? s->cap * 2 : 16;
    slot *old = s->slots;
    size_t ocap = s->cap;
    slot *ns = driver_alloc(ncap * sizeof *ns);
    if (!ns)
        return -1;
    memset(ns, 0, ncap * sizeof *ns);
    s->slots = ns;
    s->cap = ncap;
    s->count = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].handle)
            table_insert(s, old[i].handle, old[i].f);
    if (old)
        driver_free(old);
    return 0;
}

/* Removes h and gives its file (the table's reference goes to the caller). */
static file *table_take(session *s, uint32_t h) {
    if (!s->cap || !h)
        return NULL;
    size_t i = slot_of(s, h);
    while (s->slots[i].handle != h) {
        if (!s->slots[i].handle)
            return NULL;
        i = (i + 1) & (s->cap - 1);
    }
    file *f = s->slots[i].f;
    s->slots[i].handle = 0;
    s->slots[i].f = NULL;
    s->count--;
    /* Backward-shift the cluster after i, so lookups need no tombstones. */
    for (size_t j = (i + 1) & (s->cap - 1); s->slots[j].handle; j = (j + 1) & (s->cap - 1)) {
        size_t home = slot_of(s, s->slots[j].handle);
        /* Move j to i unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->slots[i] = s->slots[j];
            s->slots[j].handle = 0;
            s->slots[j].f = NULL;
            i = j;
        }
    }
    return f;
}

/* ---- the work, on pool threads ----------------------------------------------------- */

static void fail(req *r, int err) {
    r->kind = RES_ERROR;
    r->err = err ? err : EIO;
}

static void do_open(req *r) {
    int fl = O_CLOEXEC;
    int writing = (r->flags & (FL_WRITE | FL_APPEND)) != 0;
    if (writing)
        fl |= r->flags & FL_READ ? O_RDWR : O_WRONLY;
    else
        fl |= O_RDONLY;
    if (r->flags & FL_CREATE)
        fl |= O_CREAT;
    if (writing && r->flags & FL_TRUNCATE)
        fl |= O_TRUNC;
    if (r->flags & FL_APPEND)
        fl |= O_APPEND;
    if (r->flags & FL_EXCLUSIVE)
        fl |= O_CREAT | O_EXCL;
    int fd;
    do
        fd = open(r->data, fl, 0666);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        fail(r, errno);
        return;
    }
    r->f->osfd = fd;
    r->kind = RES_OK;
}

#define READ_MIN (64 * 1024)

/* Reads up to r->size bytes. A regular file is read until Size or its end;
 * the buffer starts at what the file holds beyond the position (at least
 * READ_MIN, since some files, as in /proc, say they hold nothing) and grows
 * if the file turns out longer. A pipe or device gives what one read gives. */
static void do_read(req *r, int fd) {
    size_t size = r->size;
    if (size == 0) {
        r->kind = RES_BINARY; /* bin NULL: <<>> */
        return;
    }
    size_t cap = size;
    struct stat st;
    int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (regular) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos >= 0) {
            uint64_t left = st.st_size > pos ? (uint64_t)(st.st_size - pos) : 0;
            if (left < READ_MIN)
                left = READ_MIN;
            if (left < cap)
                cap = (size_t)left;
        }
    }
    ErlDrvBinary *bin = driver_alloc_binary((ErlDrvSizeT)cap);
    if (!bin) {
        fail(r, ENOMEM);
        return;
    }
    size_t got = 0;
    while (got < size) {
        if (got == cap) { /* the file is longer than it said: grow */
            size_t ncap = cap > size / 2 ? size : cap * 2;
            ErlDrvBinary *bigger = driver_realloc_binary(bin, (ErlDrvSizeT)ncap);
            if (!bigger)
                break; /* give what there is */
            bin = bigger;
            cap = ncap;
        }
        ssize_t n = read(fd, bin->orig_bytes + got, cap - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            driver_free_binary(bin);
            fail(r, err);
            return;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (!regular)
            break;
    }
    if (got == 0) {
        driver_free_binary(bin);
        r->kind = RES_EOF;
        return;
    }
    if (got < cap) {
        ErlDrvBinary *smaller = driver_realloc_binary(bin, (ErlDrvSizeT)got);
        if (smaller)
            bin = smaller;
    }
    r->bin = bin;
    r->bin_len = got;
    r->kind = RES_BINARY;
}

static void do_write(req *r, int fd) {
    size_t done = 0;
    while (done < r->len) {
        ssize_t n = write(fd, r->data + done, r->len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            {
                fail(r, errno);
                return;
            }
        }
        done += (size_t)n;
    }
    r->kind = RES_OK;
}

/* The SHA-256 of fd from its position to its end into digest, with ctx
 * and buf (SHA_CHUNK bytes); 0 or an errno. size: the file's size as fstat
 * gave it, or -1: a short read that reaches it ends the file without
 * another read (a small file costs one read, not two; a file system that
 * reads short before the end, as FUSE may, still gets read to its end). */
static int hash_fd(int fd, off_t size, EVP_MD_CTX *ctx, char *buf, unsigned char digest[32]) {
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        return EIO;
    off_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, SHA_CHUNK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno ? errno : EIO;
        }
        if (n == 0)
            break;
        if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1)
            return EIO;
        total += n;
        if (size >= 0 && n < SHA_CHUNK && total >= size)
            break;
    }
    unsigned int dlen = 0;
    if (EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 || dlen != 32)
        return EIO;
    return 0;
}

static void do_sha256(req *r, int fd) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    char *buf = driver_alloc(SHA_CHUNK);
    int err = !ctx || !buf ? ENOMEM : hash_fd(fd, -1, ctx, buf, r->digest);
    if (err)
        fail(r, err);
    else
        r->kind = RES_DIGEST;
    if (buf)
        driver_free(buf);
    EVP_MD_CTX_free(ctx);
}

/* The type of a stat's mode, as LISTDIR names it. */
static int mode_type(mode_t m) {
    return S_ISREG(m) ? T_REGULAR : S_ISDIR(m) ? T_DIRECTORY : S_ISLNK(m) ? T_SYMLINK : T_OTHER;
}

static void do_lstat(req *r) {
    struct stat st;
    if (lstat(r->data, &st) < 0) {
        fail(r, errno);
        return;
    }
    r->type = mode_type(st.st_mode);
    r->kind = RES_TYPE;
}

/* One file of SHA256S: 0 and its digest, or an errno. */
static int hash_path(const char *path, EVP_MD_CTX *ctx, char *buf, unsigned char digest[32]) {
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno;
    struct stat st;
    int err = fstat(fd, &st) < 0 ? errno
              : S_ISDIR(st.st_mode) ? EISDIR
              : !S_ISREG(st.st_mode) ? EINVAL
                                     : hash_fd(fd, st.st_size, ctx, buf, digest);
    close(fd);
    return err;
}

static void do_sha256s(req *r) {
    size_t n = 1;
    for (size_t i = 0; i < r->len; i++)
        n += r->data[i] == '\0';
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    char *buf = driver_alloc(SHA_CHUNK);
    r->hashes = driver_alloc(n * sizeof *r->hashes);
    if (!ctx || !buf || !r->hashes) {
        fail(r, ENOMEM);
    } else {
        const char *path = r->data; /* the paths, each NUL-ended (req_new adds the last) */
        for (size_t k = 0; k < n; k++) {
            r->hashes[k].err = hash_path(path, ctx, buf, r->hashes[k].digest);
            path += strlen(path) + 1;
        }
        r->nhashes = n;
        r->kind = RES_DIGESTS;
    }
    if (buf)
        driver_free(buf);
    EVP_MD_CTX_free(ctx);
}

static int add_entry(req *r, const char *name, int type) {
    size_t len = strlen(name);
    if (r->names_len + len > r->names_cap) {
        size_t cap = r->names_cap ? r->names_cap * 2 : 1024;
        while (cap < r->names_len + len)
            cap *= 2;
        char *p = r->names ? driver_realloc(r->names, cap) : driver_alloc(cap);
        if (!p)
            return -1;
        r->names = p;
        r->names_cap = cap;
    }
    if (r->nents == r->ents_cap) {
        size_t cap = r->ents_cap ? r->ents_cap * 2 : 32;
        dent *p =
            r->ents ? driver_realloc(r->ents, cap * sizeof *p) : driver_alloc(cap * sizeof *p);
        if (!p)
            return -1;
        r->ents = p;
        r->ents_cap = cap;
    }
    memcpy(r->names + r->names_len, name, len);
    r->ents[r->nents].off = r->names_len;
    r->ents[r->nents].len = len;
    r->ents[r->nents].type = type;
    r->nents++;
    r->names_len += len;
    return 0;
}

static void do_listdir(req *r) {
    DIR *d = opendir(r->data);
    if (!d) {
        fail(r, errno);
        return;
    }
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) {
                fail(r, errno);
                goto out;
            }
            break;
        }
        const char *n = e->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        int type;
        switch (e->d_type) {
        case DT_REG:
            type = T_REGULAR;
            break;
        case DT_DIR:
            type = T_DIRECTORY;
            break;
        case DT_LNK:
            type = T_SYMLINK;
            break;
        case DT_UNKNOWN: {
            struct stat st;
            if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                if (errno == ENOENT)
                    continue; /* gone meanwhile */
                type = T_OTHER;
                break;
            }
            type = mode_type(st.st_mode);
            break;
        }
        default:
            type = T_OTHER;
        }
        if (add_entry(r, n, type) < 0) {
            fail(r, ENOMEM);
            goto out;
        }
    }
    r->kind = RES_DIR;
out:
    closedir(d);
}

/* Touches only its request and, through r->f, its own file's descriptor. */
static void req_invoke(void *arg) {
    req *r = arg;
    if (r->op == OP_LISTDIR) {
        do_listdir(r);
        return;
    }
    if (r->op == OP_LSTAT) {
        do_lstat(r);
        return;
    }
    if (r->op == OP_SHA256S) {
        do_sha256s(r);
        return;
    }
    if (!r->f) {
        fail(r, EBADF);
        return;
    }
    if (r->op == OP_OPEN) {
        do_open(r);
        return;
    }
    int fd = r->f->osfd;
    if (fd < 0) { /* its open failed */
        fail(r, EBADF);
        return;
    }
    switch (r->op) {
    case OP_READ:
        do_read(r, fd);
        return;
    case OP_WRITE:
        do_write(r, fd);
        return;
    case OP_FSYNC:
        if (fsync(fd) < 0) {
            fail(r, errno);
            return;
        }
        r->kind = RES_OK;
        return;
    case OP_CLOSE:
        r->f->osfd = -1;
        /* On Linux the descriptor is gone even when close says EINTR. */
        if (close(fd) < 0 && errno != EINTR) {
            fail(r, errno);
            return;
        }
        r->kind = RES_OK;
        return;
    case OP_SHA256:
        do_sha256(r, fd);
        return;
    case OP_POSITION: {
        off_t at = lseek(fd, (off_t)r->offset, SEEK_SET);
        if (at < 0) {
            fail(r, errno);
            return;
        }
        r->offset = (ErlDrvSInt64)at;
        r->kind = RES_OFFSET;
        return;
    }
    }
    fail(r, EINVAL);
}

/* ---- results, on the emulator thread ----------------------------------------------- */

static const char *type_name(int t) {
    switch (t) {
    case T_REGULAR:
        return "regular";
    case T_DIRECTORY:
        return "directory";
    case T_SYMLINK:
        return "symlink";
    default:
        return "other";
    }
}

static void send_result(session *s, req *r) {
    ErlDrvTermData small[24];
    ErlDrvTermData *sp = small;
    if (r->kind == RES_DIR || r->kind == RES_DIGESTS) {
        sp = driver_alloc((16 + 7 * (r->nents + r->nhashes)) * sizeof *sp);
        if (!sp) {
            sp = small;
            fail(r, ENOMEM);
        }
    }
    int n = 0;
    sp[n++] = ERL_DRV_ATOM;
    sp[n++] = driver_mk_atom("file_drv");
    sp[n++] = ERL_DRV_UINT;
    sp[n++] = (ErlDrvTermData)r->ref;
    switch (r->kind) {
    case RES_OK:
        sp[n++] = ERL_DRV_ATOM;
        sp[n++] = driver_mk_atom("ok");
        break;
    case RES_EOF:
        sp[n++] = ERL_DRV_ATOM;
        sp[n++] = driver_mk_atom("eof");
        break;
    case RES_ERROR:
        sp[n++] = ERL_DRV_ATOM;
        sp[n++] = driver_mk_atom("error");
        sp[n++] = ERL_DRV_ATOM;
        sp[n++] = driver_mk_atom(erl_errno_id(r->err));
        sp[n++] = ERL_DRV_TUPLE;
        sp[n++] = 2;
        break;
    default: /* {ok, Value} */
        sp[n++] = ERL_DRV_ATOM;
        sp[n++] = driver_mk_atom("ok");
        switch (r->kind) {
        case RES_BINARY:
            if (r->bin) {
                sp[n++] = ERL_DRV_BINARY;
                sp[n++] = (ErlDrvTermData)r->bin;
                sp[n++] = (ErlDrvTermData)r->bin_len;
                sp[n++] = 0;
            } else {
                sp[n++] = ERL_DRV_BUF2BINARY;
                sp[n++] = (ErlDrvTermData) "";
                sp[n++] = 0;
            }
            break;
        case RES_DIGEST:
            sp[n++] = ERL_DRV_BUF2BINARY;
            sp[n++] = (ErlDrvTermData)r->digest;
            sp[n++] = sizeof r->digest;
            break;
        case RES_OFFSET:
            sp[n++] = ERL_DRV_INT64;
            sp[n++] = (ErlDrvTermData)&r->offset;
            break;
        case RES_TYPE:
            sp[n++] = ERL_DRV_ATOM;
            sp[n++] = driver_mk_atom((char *)type_name(r->type));
            break;
        case RES_DIGESTS:
            for (size_t i = 0; i < r->nhashes; i++) {
                if (r->hashes[i].err) {
                    sp[n++] = ERL_DRV_ATOM;
                    sp[n++] = driver_mk_atom("error");
                    sp[n++] = ERL_DRV_ATOM;
                    sp[n++] = driver_mk_atom(erl_errno_id(r->hashes[i].err));
                    sp[n++] = ERL_DRV_TUPLE;
                    sp[n++] = 2;
                } else {
                    sp[n++] = ERL_DRV_BUF2BINARY;
                    sp[n++] = (ErlDrvTermData)r->hashes[i].digest;
                    sp[n++] = 32;
                }
            }
            sp[n++] = ERL_DRV_NIL;
            sp[n++] = ERL_DRV_LIST;
            sp[n++] = (ErlDrvTermData)(r->nhashes + 1);
            break;
        case RES_DIR:
            for (size_t i = 0; i < r->nents; i++) {
                sp[n++] = ERL_DRV_BUF2BINARY;
                sp[n++] = (ErlDrvTermData)(r->names + r->ents[i].off);
                sp[n++] = (ErlDrvTermData)r->ents[i].len;
                sp[n++] = ERL_DRV_ATOM;
                sp[n++] = driver_mk_atom((char *)type_name(r->ents[i].type));
                sp[n++] = ERL_DRV_TUPLE;
                sp[n++] = 2;
            }
            sp[n++] = ERL_DRV_NIL;
            sp[n++] = ERL_DRV_LIST;
            sp[n++] = (ErlDrvTermData)(r->nents + 1);
            break;
        }
        sp[n++] = ERL_DRV_TUPLE;
        sp[n++] = 2;
    }
    sp[n++] = ERL_DRV_TUPLE;
    sp[n++] = 3;
    erl_drv_output_term(driver_mk_port(s->port), sp, n);
    if (sp != small)
        driver_free(sp);
}

static void f_ready_async(ErlDrvData d, ErlDrvThreadData td) {
    session *s = (session *)d;
    req *r = (req *)td;
    /* A failed open kills its handle; requests already queued for it give
     * ebadf from their invoke, later ones from the table. */
    if (r->op == OP_OPEN && r->kind == RES_ERROR && table_get(s, r->handle) == r->f)
        file_release(table_take(s, r->handle));
    send_result(s, r);
    req_destroy(r);
}

/* ---- the port ------------------------------------------------------------------------ */

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static ErlDrvData f_start(ErlDrvPort port, char *command) {
    session *s = driver_alloc(sizeof *s);
    if (!s)
        return ERL_DRV_ERROR_GENERAL;
    memset(s, 0, sizeof *s);
    s->port = port;
    set_port_control_flags(port, PORT_CONTROL_FLAG_BINARY);
    return (ErlDrvData)s;
}

/* Queues the close of every file still open, behind its queued operations. */
static void f_stop(ErlDrvData d) {
    session *s = (session *)d;
    for (size_t i = 0; i < s->cap; i++) {
        if (!s->slots[i].handle)
            continue;
        uint32_t h = s->slots[i].handle;
        file *f = s->slots[i].f;
        req *r = req_new(OP_CLOSE, NULL, 0);
        if (!r) {
            file_release(f); /* the last reference closes it */
            continue;
        }
        r->handle = h;
        r->f = f; /* the table's reference */
        unsigned int key = h;
        if (driver_async(s->port, &key, req_invoke, r, req_free) < 0)
            req_destroy(r);
    }
    if (s->slots)
        driver_free(s->slots);
    driver_free(s);
}

static ErlDrvSSizeT f_control(ErlDrvData d, unsigned int op, char *buf, ErlDrvSizeT len,
                              char **rbuf, ErlDrvSizeT rlen) {
    session *s = (session *)d;
    const unsigned char *u = (const unsigned char *)buf;

    /* Check the request in full before anything is allocated. */
    switch (op) {
    case OP_OPEN:
        if (len < 1 || (u[0] & ~FL_ALL) || memchr(buf + 1, 0, len - 1) ||
            s->last_handle == UINT32_MAX)
            return -1;
        break;
    case OP_READ:
        if (len != 8)
            return -1;
        break;
    case OP_WRITE:
        if (len < 4)
            return -1;
        break;
    case OP_FSYNC:
    case OP_CLOSE:
    case OP_SHA256:
        if (len != 4)
            return -1;
        break;
    case OP_LISTDIR:
    case OP_LSTAT:
        if (memchr(buf, 0, len))
            return -1;
        break;
    case OP_SHA256S: /* no empty path: no NUL first, last or twice in a row */
        if (len == 0 || buf[0] == 0 || buf[len - 1] == 0)
            return -1;
        for (ErlDrvSizeT i = 1; i < len; i++)
            if (buf[i] == 0 && buf[i - 1] == 0)
                return -1;
        break;
    case OP_POSITION:
        if (len != 12)
            return -1;
        break;
    default:
        return -1;
    }

    ErlDrvSizeT reply_len = op == OP_OPEN ? 8 : 4;
    ErlDrvBinary *reply_bin = NULL;
    if (rlen < reply_len && !(reply_bin = driver_alloc_binary(reply_len)))
        return -1;

    req *r;
    if (op == OP_OPEN)
        r = req_new(op, buf + 1, len - 1);
    else if (op == OP_WRITE)
        r = req_new(op, buf + 4, len - 4);
    else if (BY_PATH(op))
        r = req_new(op, buf, len);
    else
        r = req_new(op, NULL, 0);
    if (!r)
        goto nomem;
    if (!BY_PATH(op))
        r->handle = get32(u);

    switch (op) {
    case OP_OPEN: {
        r->flags = u[0];
        file *f = driver_alloc(sizeof *f);
        if (!f || table_reserve(s) < 0) {
            if (f)
                driver_free(f);
            req_destroy(r);
            goto nomem;
        }
        f->osfd = -1;
        atomic_init(&f->refc, 2); /* the table's and the open's */
        r->handle = s->last_handle + 1;
        r->f = f;
        table_insert(s, r->handle, f);
        break;
    }
    case OP_CLOSE:
        r->f = table_take(s, r->handle); /* the table's reference moves to the close */
        break;
    case OP_LISTDIR:
    case OP_LSTAT:
    case OP_SHA256S:
        break;
    default:
        if ((r->f = table_get(s, r->handle)))
            atomic_fetch_add_explicit(&r->f->refc, 1, memory_order_relaxed);
        if (op == OP_READ)
            r->size = get32(u + 4);
        else if (op == OP_POSITION)
            r->offset = (ErlDrvSInt64)((uint64_t)get32(u + 4) << 32 | get32(u + 8));
    }

    uint32_t ref = s->last_ref == UINT32_MAX ? 1 : s->last_ref + 1;
    uint32_t handle = r->handle;
    file *f = r->f;
    r->ref = ref;
    unsigned int key = handle;
    /* Without async threads ERTS runs the request right here, ready_async
     * included: r may be gone when driver_async returns. */
    if (driver_async(s->port, BY_PATH(op) ? NULL : &key, req_invoke, r, req_free) < 0) {
        if (op == OP_OPEN) {
            table_take(s, handle);
            atomic_fetch_sub_explicit(&f->refc, 1, memory_order_relaxed); /* the table's */
        } else if (op == OP_CLOSE && f) {
            table_insert(s, handle, f); /* back, with its reference */
            r->f = NULL;
        }
        req_destroy(r);
        goto nomem;
    }
    s->last_ref = ref;
    if (op == OP_OPEN)
        s->last_handle = handle;

    unsigned char *out =
        reply_bin ? (unsigned char *)reply_bin->orig_bytes : (unsigned char *)*rbuf;
    put32(out, ref);
    if (op == OP_OPEN)
        put32(out + 4, handle);
    if (reply_bin)
        *rbuf = (char *)reply_bin;
    return (ErlDrvSSizeT)reply_len;

nomem:
    if (reply_bin)
        driver_free_binary(reply_bin);
    return -1;
}

static ErlDrvEntry file_entry = {
    .start = f_start,
    .stop = f_stop,
    .driver_name = "file_drv",
    .control = f_control,
    .ready_async = f_ready_async,
    .extended_marker = ERL_DRV_EXTENDED_MARKER,
    .major_version = ERL_DRV_EXTENDED_MAJOR_VERSION,
    .minor_version = ERL_DRV_EXTENDED_MINOR_VERSION,
    .driver_flags = ERL_DRV_FLAG_USE_PORT_LOCKING,
};

DRIVER_INIT(file_drv) {
    return &file_entry;
}
