/*
 * lua_edrv.c: the Lua module `edrv`, used by the edrv command and loadable
 * from a stock lua5.4 with require "edrv".
 *
 * The script's thread is an Erlang process: its functions mirror the BIFs
 * (load_driver, open_port, port_command, port_control, port_call,
 * port_close, port_info, receive, self, ...) and call edrv.h for the one
 * process that belongs to the Lua state.
 *
 * Terms and Lua values:
 *   integer, float        <-> number (integer or float)
 *   binary                <-> string
 *   true, false           <-> boolean
 *   other atoms           <-> edrv.atom(name): one object per name, so == works
 *   tuple                 <-> edrv.tuple(...): a table with the Tuple metatable
 *   list                  <-> edrv.list{...}: a table with the List metatable
 *                             (an improper list keeps its tail in .tail); a
 *                             plain array table also encodes as a list
 *   string (charlist)     -> a List of integers; edrv.string(s) makes one
 *   map                   <-> edrv.map{...}: a table with the Map metatable;
 *                             a plain table with other keys encodes as a map
 *   pid, port             <-> objects with .num / .id
 * tostring() of any of them prints Erlang syntax, e.g. {#Port<0.3>,{data,<<"ok">>}}.
 *
 * Errors are raised as error objects with fields reason (the Erlang reason:
 * badarg, driver_incorrect_version, ...), detail and where ("script.lua:12");
 * tostring() gives "script.lua:12: edrv.port_control: badarg (detail)".
 */
#include "lua_edrv.h"

#include <dlfcn.h>
#include <edrv.h>
#include <ei.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MT_ATOM "edrv.Atom"
#define MT_TUPLE "edrv.Tuple"
#define MT_LIST "edrv.List"
#define MT_MAP "edrv.Map"
#define MT_PID "edrv.Pid"
#define MT_PORT "edrv.Port"
#define MT_OTHER "edrv.Other"
#define MT_ERROR "edrv.Error"
#define MT_PROC "edrv.Proc"
#define MT_RUNTIME "edrv.Runtime"
#define MT_ANY "edrv.Any"
#define MT_VAR "edrv.Var"

#define REG_ATOMS "edrv.atoms"   /* name -> atom object (weak values) */
#define REG_PIDS "edrv.pids"     /* pid number -> pid object (weak values) */

/* ---- errors ------------------------------------------------------------------- */

/* Raises an error object: {reason, detail, where}, printed as
 * "where: edrv.fn: reason (detail)". */
/* Pushes the error object (see raise). */
static void push_error(lua_State *L, const char *fn, const char *reason, const char *detail) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, detail ? detail : "");
    lua_setfield(L, -2, "detail");
    lua_pushstring(L, fn);
    lua_setfield(L, -2, "fn");
    /* Where in the script: the nearest Lua function up the stack (called
     * through pcall, the caller is pcall, which has no line). */
    lua_Debug ar;
    int level = 1;
    bool found = false;
    for (; !found && level < 20 && lua_getstack(L, level, &ar); level++)
        found = lua_getinfo(L, "Sl", &ar) && ar.currentline > 0;
    if (found)
        lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    else
        lua_pushliteral(L, "");
    lua_setfield(L, -2, "where");
    luaL_setmetatable(L, MT_ERROR);
}

static int raise(lua_State *L, const char *fn, const char *reason, const char *detail) {
    push_error(L, fn, reason, detail);
    return lua_error(L);
}

static int raise_exited(lua_State *L, const char *fn);

static int raise_rc(lua_State *L, const char *fn, int rc) {
    if (rc == EDRV_EEXITED)
        return raise_exited(L, fn);
    return raise(L, fn, edrv_err_name(rc), edrv_last_error()[0] ? edrv_last_error()
                                                                  : edrv_strerror(rc));
}

static int error_tostring(lua_State *L) {
    lua_getfield(L, 1, "where");
    lua_getfield(L, 1, "fn");
    lua_getfield(L, 1, "reason");
    lua_getfield(L, 1, "detail");
    const char *detail = lua_tostring(L, -1);
    if (detail && detail[0])
        lua_pushfstring(L, "%sedrv.%s: %s (%s)", lua_tostring(L, -4), lua_tostring(L, -3),
                        lua_tostring(L, -2), detail);
    else
        lua_pushfstring(L, "%sedrv.%s: %s", lua_tostring(L, -4), lua_tostring(L, -3),
                        lua_tostring(L, -2));
    return 1;
}

/* ---- the processes and the runtime --------------------------------------------------- */

/* A process of the Lua state: the script's own (its main thread), or one
 * that edrv.spawn made, a coroutine of the script's thread. Processes run
 * one at a time on that thread and switch in receive (and sleep, yield):
 * a spawned process that waits yields to whoever resumed it, and the
 * process that runs the loop (the script's own, or any process waiting
 * outside its own coroutine) resumes the ones that are ready, then sleeps
 * on the state's wait set until a message or a timeout makes one ready. */
typedef enum { P_RUNNING, P_READY, P_WAITING, P_DONE } pstate;

typedef struct lproc {
    edrv_proc *proc;
    edrv_msg pending;   /* a message being decoded (next_message), or none */
    lua_State *co;      /* its coroutine; NULL for the script's own process */
    pstate state;
    bool started;       /* its coroutine was resumed once */
    bool notified;      /* the wait set reported it since it last looked */
    int saved_ref;      /* its messages put aside by receive_match (a registry
                           reference to a table), or LUA_NOREF */
    int64_t deadline;   /* waiting: until when (ns, monotonic), or -1 */
    int heap_at;        /* its place in the timer heap, or -1 */
    struct lproc *next; /* on the run queue */
} lproc;

typedef struct {
    lproc *current;   /* the running process */
    lproc *main;      /* the script's own */
    edrv_waitset *ws; /* made by the first spawn */
    lproc *rq_head, *rq_tail;
    lproc **heap;     /* waiting processes with a deadline, soonest first */
    int heap_n, heap_cap;
    size_t live;      /* spawned processes not ended */
} lsched;

typedef struct {
    int owns_runtime; /* this module started the runtime, and stops it */
} runtime_box;

/* The registry's key of the state's scheduler: a light userdata, so that
 * every call finds it with one raw lookup. */
static const char proc_key;
/* The registry's table of live spawned processes (light userdata -> box). */
static const char procs_key;

/* The module's functions share two upvalues, which they reach without a
 * lookup (the registry holds them too, for the others): */
#define UP_PROC lua_upvalueindex(1)   /* the scheduler */
#define UP_DECODE lua_upvalueindex(2) /* the decoder's cache (decode) */

static lsched *sched_of(lua_State *L) {
    lsched *s;
    if (lua_type(L, UP_PROC) == LUA_TUSERDATA) {
        s = lua_touserdata(L, UP_PROC);
    } else {
        lua_rawgetp(L, LUA_REGISTRYINDEX, &proc_key);
        s = lua_touserdata(L, -1); /* only edrv_lua_open sets it */
        lua_pop(L, 1);
    }
    return s;
}

static lproc *self_box(lua_State *L) {
    lsched *s = sched_of(L);
    if (!s || !s->current || !s->current->proc)
        raise(L, "self", "noproc", "the edrv module was closed");
    return s->current;
}

static edrv_proc *self_proc(lua_State *L) {
    return self_box(L)->proc;
}

static int proc_gc(lua_State *L) {
    lproc *b = luaL_checkudata(L, 1, MT_PROC);
    edrv_msg_free(&b->pending);
    edrv_proc_free(b->proc);
    b->proc = NULL;
    return 0;
}

static int sched_gc(lua_State *L) {
    lsched *s = lua_touserdata(L, 1);
    free(s->heap);
    s->heap = NULL;
    if (s->ws && edrv_waitset_free(s->ws) == 0)
        s->ws = NULL;
    return 0;
}

static int runtime_gc(lua_State *L) {
    runtime_box *b = luaL_checkudata(L, 1, MT_RUNTIME);
    if (b->owns_runtime)
        edrv_stop();
    b->owns_runtime = 0;
    return 0;
}

/* ---- atoms and other term objects ---------------------------------------------------- */

static void push_atom(lua_State *L, const char *name) {
    if (strcmp(name, "true") == 0 || strcmp(name, "false") == 0) {
        lua_pushboolean(L, name[0] == 't');
        return;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, REG_ATOMS);
    if (lua_getfield(L, -1, name) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushstring(L, name);
        lua_setfield(L, -2, "name");
        luaL_setmetatable(L, MT_ATOM);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    }
    lua_remove(L, -2);
}

static int l_atom(lua_State *L) {
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (len > 255 || strlen(name) != len)
        return raise(L, "atom", "badarg", "an atom is at most 255 bytes, without NUL");
    push_atom(L, name);
    return 1;
}

/* Sets the metatable `mt` on the table argument (or a new table of the
 * arguments, for tuple). */
static int l_tuple(lua_State *L) {
    int n = lua_gettop(L);
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, -2, i);
    }
    luaL_setmetatable(L, MT_TUPLE);
    return 1;
}

static int set_mt(lua_State *L, const char *mt) {
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    else
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_setmetatable(L, mt);
    return 1;
}

static int l_list(lua_State *L) {
    return set_mt(L, MT_LIST);
}

static int l_map(lua_State *L) {
    return set_mt(L, MT_MAP);
}

/* edrv.string("abc"): the charlist [97,98,99]. */
static int l_string(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_createtable(L, (int)len, 0);
    for (size_t i = 0; i < len; i++) {
        lua_pushinteger(L, (unsigned char)s[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    luaL_setmetatable(L, MT_LIST);
    return 1;
}

/* One object per pid, as per atom: == and table keys work (a harness keeps
 * its workers in a table by pid). */
static void push_pid(lua_State *L, unsigned num, unsigned serial) {
    lua_Integer key = (lua_Integer)((uint64_t)serial << 32 | num);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_PIDS);
    if (lua_rawgeti(L, -1, key) == LUA_TTABLE) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, num);
    lua_setfield(L, -2, "num");
    lua_pushinteger(L, serial);
    lua_setfield(L, -2, "serial");
    luaL_setmetatable(L, MT_PID);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, key);
    lua_remove(L, -2);
}

static void push_port(lua_State *L, uint64_t id) {
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, (lua_Integer)id);
    lua_setfield(L, -2, "id");
    luaL_setmetatable(L, MT_PORT);
}

static lua_Integer field_int(lua_State *L, int idx, const char *k) {
    lua_getfield(L, idx, k);
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

static int eq_fields(lua_State *L, const char *k1, const char *k2) {
    int eq = lua_getmetatable(L, 1) && lua_getmetatable(L, 2) && lua_rawequal(L, -1, -2) &&
             field_int(L, 1, k1) == field_int(L, 2, k1) &&
             (!k2 || field_int(L, 1, k2) == field_int(L, 2, k2));
    lua_pushboolean(L, eq);
    return 1;
}

static int pid_eq(lua_State *L) {
    return eq_fields(L, "num", "serial");
}

/* References (and funs, big numbers) are equal when their bytes are. */
static int other_eq(lua_State *L) {
    int eq = lua_getmetatable(L, 1) && lua_getmetatable(L, 2) && lua_rawequal(L, -1, -2);
    if (eq) {
        lua_getfield(L, 1, "etf");
        lua_getfield(L, 2, "etf");
        eq = lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2);
    }
    lua_pushboolean(L, eq);
    return 1;
}

static int port_eq(lua_State *L) {
    return eq_fields(L, "id", NULL);
}

/* ---- Lua values to terms ---------------------------------------------------------------- */

typedef enum { K_NONE, K_ATOM, K_TUPLE, K_LIST, K_MAP, K_PID, K_PORT, K_OTHER } term_kind;

/* Which term object the table at idx is, by its metatable. */
/* The key, in each term metatable, of its kind: a light userdata no other
 * table can have, so one raw lookup tells a term's kind (encoding asks for
 * every element; a lookup of each metatable by name cost 7 string-keyed
 * lookups). */
static const char kind_key;

static term_kind kind_of(lua_State *L, int idx) {
    if (!lua_getmetatable(L, idx))
        return K_NONE;
    lua_rawgetp(L, -1, &kind_key);
    term_kind k = lua_isinteger(L, -1) ? (term_kind)lua_tointeger(L, -1) : K_NONE;
    lua_pop(L, 2);
    return k;
}

/* An atom's or a string's name, or NULL. */
static const char *name_of(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tostring(L, idx);
    if (lua_type(L, idx) == LUA_TTABLE && kind_of(L, idx) == K_ATOM) {
        lua_getfield(L, idx, "name");
        const char *n = lua_tostring(L, -1);
        lua_pop(L, 1); /* the atom object keeps its name */
        return n;
    }
    return NULL;
}

/* On failure, encode and the functions below leave the reason on top of the
 * stack, above whatever they had pushed (to_etf raises it). */
static int encode(lua_State *L, int idx, ei_x_buff *x, int depth);

static int encode_array(lua_State *L, int idx, ei_x_buff *x, lua_Integer n, int depth) {
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (encode(L, lua_gettop(L), x, depth + 1) < 0)
            return -1;
        lua_pop(L, 1);
    }
    return 0;
}

/* A list of integers 0..255 shorter than 65536 goes out as a string. */
static int encode_list(lua_State *L, int idx, ei_x_buff *x, int depth) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    int has_tail = lua_getfield(L, idx, "tail") != LUA_TNIL;
    lua_pop(L, 1);
    if (n == 0 && !has_tail)
        return ei_x_encode_empty_list(x);
    if (!has_tail && n < 65536) {
        char *bytes = malloc((size_t)n);
        lua_Integer i = 1;
        for (; bytes && i <= n; i++) {
            lua_rawgeti(L, idx, i);
            int isnum;
            lua_Integer v = lua_tointegerx(L, -1, &isnum);
            lua_pop(L, 1);
            if (!isnum || v < 0 || v > 255)
                break;
            bytes[i - 1] = (char)v;
        }
        if (bytes && i > n) {
            int rc = ei_x_encode_string_len(x, bytes, (int)n);
            free(bytes);
            return rc;
        }
        free(bytes);
    }
    if (n && ei_x_encode_list_header(x, (long)n) < 0)
        return -1;
    if (encode_array(L, idx, x, n, depth) < 0)
        return -1;
    if (!has_tail)
        return ei_x_encode_empty_list(x);
    lua_getfield(L, idx, "tail");
    if (encode(L, lua_gettop(L), x, depth + 1) < 0)
        return -1;
    lua_pop(L, 1);
    return 0;
}

static int encode_map(lua_State *L, int idx, ei_x_buff *x, int depth) {
    long n = 0;
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1))
        n++;
    if (ei_x_encode_map_header(x, n) < 0)
        return -1;
    for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {
        int key = lua_gettop(L) - 1;
        if (encode(L, key, x, depth + 1) < 0 || encode(L, key + 1, x, depth + 1) < 0)
            return -1;
        lua_settop(L, key + 1);
    }
    return 0;
}

/* Appends the term for the value at idx. On failure, leaves a message at the
 * top of the stack and returns -1. */
static int encode(lua_State *L, int idx, ei_x_buff *x, int depth) {
    if (depth > 1000) {
        lua_pushstring(L, "nesting deeper than 1000 levels (a cycle?)");
        return -1;
    }
    /* Each level keeps its value (and a map its key) on the stack, and Lua
     * only promises a C function LUA_MINSTACK slots. */
    luaL_checkstack(L, 8, "term too deep");
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return ei_x_encode_atom(x, lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return ei_x_encode_longlong(x, lua_tointeger(L, idx));
        return ei_x_encode_double(x, lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return ei_x_encode_binary(x, s, (long)len);
    }
    case LUA_TTABLE: {
        term_kind mt = kind_of(L, idx);
        if (mt == K_NONE) {
            /* A plain table: an array is a list, anything else a map. */
            lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
            for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1))
                count++;
            return count == n ? encode_list(L, idx, x, depth) : encode_map(L, idx, x, depth);
        }
        if (mt == K_OTHER) {
            lua_getfield(L, idx, "etf");
            size_t n;
            const char *etf = lua_tolstring(L, -1, &n);
            int rc = etf && n ? ei_x_append_buf(x, etf, (int)n) : -1;
            lua_pop(L, 1);
            if (rc < 0)
                lua_pushstring(L, "an opaque term without its bytes");
            return rc;
        }
        if (mt == K_ATOM) {
            lua_getfield(L, idx, "name");
            int rc = ei_x_encode_atom_len_as(x, lua_tostring(L, -1), (int)lua_rawlen(L, -1),
                                             ERLANG_UTF8, ERLANG_UTF8);
            lua_pop(L, 1);
            if (rc < 0)
                lua_pushstring(L, "an atom's name must be UTF-8 of at most 255 characters");
            return rc;
        }
        if (mt == K_TUPLE) {
            lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
            if (ei_x_encode_tuple_header(x, (long)n) < 0)
                return -1;
            return encode_array(L, idx, x, n, depth);
        }
        if (mt == K_LIST)
            return encode_list(L, idx, x, depth);
        if (mt == K_MAP)
            return encode_map(L, idx, x, depth);
        if (mt == K_PID) {
            erlang_pid p = {.node = "nonode@nohost", .num = (unsigned)field_int(L, idx, "num"),
                            .serial = (unsigned)field_int(L, idx, "serial")};
            return ei_x_encode_pid(x, &p);
        }
        erlang_port p = {.node = "nonode@nohost", .id = (EI_ULONGLONG)field_int(L, idx, "id")};
        return ei_x_encode_port(x, &p);
    }
    default:
        lua_pushfstring(L, "a %s cannot be a term", luaL_typename(L, idx));
        return -1;
    }
}

/* The value at idx as ETF, version byte first; raises badarg otherwise. */
static void to_etf(lua_State *L, int idx, ei_x_buff *x, const char *fn) {
    idx = lua_absindex(L, idx);
    ei_x_new_with_version(x);
    if (encode(L, idx, x, 0) < 0) {
        ei_x_free(x);
        raise(L, fn, "badarg", lua_isstring(L, -1) ? lua_tostring(L, -1) : "not a term");
    }
}

/* ---- terms to Lua values ------------------------------------------------------------------- */

/* Whether an atom's name, as libei decodes it, is what ERTS accepts: UTF-8
 * (no overlong forms, no surrogates, at most U+10FFFF) of at most 255
 * characters. The measure edrv puts bytes through does not look inside atoms,
 * and libei copies an ERL_ATOM_UTF8_EXT's bytes as they are; a name that is
 * not valid would come back as a value that cannot be encoded again. */
static bool atom_name_ok(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    int chars = 0;
    while (*p) {
        unsigned c = *p++;
        int more = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2
                 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (more < 0)
            return false;
        unsigned cp = more ? c & (0x3fu >> more) : c;
        for (int k = 0; k < more; k++, p++) {
            if ((*p & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (*p & 0x3fu);
        }
        static const unsigned least[] = {0, 0x80, 0x800, 0x10000};
        if (cp < least[more] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        chars++;
    }
    return chars <= 255;
}

/* ---- decoding: terms to Lua values ---------------------------------------------
 * The decoder finds what it needs in one table (the registry's at
 * &decode_key), pushed once per term, with weak values: the term metatables
 * (at D_*, which the registry also holds), the atoms it made or met (at
 * their names), and the port objects (at D_PORTS + their number), so that a
 * port received twice is the same object, and costs one table once. */
static const char decode_key;
enum { D_TUPLE = 1, D_LIST, D_MAP, D_PORT, D_ID, D_PORTS }; /* D_ID: the string "id" */

/* Sets the metatable `which` (D_*) on the value on top; d: the cache. */
static void set_cached_mt(lua_State *L, int d, int which) {
    lua_rawgeti(L, d, which);
    lua_setmetatable(L, -2);
}

/* The port object of id: the one made before, while it lives, or a new one. */
static void push_port_cached(lua_State *L, int d, uint64_t id) {
    lua_Integer key = D_PORTS + (lua_Integer)id;
    if (lua_rawgeti(L, d, key) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, (lua_Integer)id);
    lua_setfield(L, -2, "id");
    set_cached_mt(L, d, D_PORT);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d, key);
}

/* An atom whose name is len ASCII bytes at name (no NUL, at most 255): the
 * interned atom object, as push_atom gives. */
static void push_ascii_atom(lua_State *L, int d, const char *name, size_t len) {
    if ((len == 4 && memcmp(name, "true", 4) == 0) || (len == 5 && memcmp(name, "false", 5) == 0)) {
        lua_pushboolean(L, len == 4);
        return;
    }
    lua_pushlstring(L, name, len);
    if (lua_rawget(L, d) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    lua_pushlstring(L, name, len); /* the key, below the atom */
    push_atom(L, lua_tostring(L, -1));
    lua_pushvalue(L, -1);
    lua_insert(L, -3);
    lua_rawset(L, d);
}

/* The number of the port at *idx (NEW_PORT_EXT, V4_PORT_EXT or PORT_EXT,
 * whose node edrv's ports all share), which *idx then passes. */
static uint64_t port_number(const char *buf, int *idx) {
    /* Its own tag: ei_get_type calls all three ERL_PORT_EXT. */
    int type = (unsigned char)buf[*idx];
    const unsigned char *p = (const unsigned char *)buf + *idx + 1;
    /* The node: an atom. */
    size_t n = p[0] == ERL_SMALL_ATOM_UTF8_EXT || p[0] == ERL_SMALL_ATOM_EXT
                   ? 2 + (size_t)p[1]
                   : 3 + ((size_t)p[1] << 8 | p[2]);
    p += n;
    uint64_t id = 0;
    int idlen = type == ERL_V4_PORT_EXT ? 8 : 4;
    for (int i = 0; i < idlen; i++)
        id = id << 8 | p[i];
    *idx = (int)((const char *)p + idlen + (type == ERL_PORT_EXT ? 1 : 4) - buf);
    return id;
}

/* The name of the atom at *idx when its bytes are ASCII, without NUL:
 * then *len and 1, else 0 (the general way decodes it). */
static int ascii_atom(const char *buf, int idx, const char **name, size_t *len) {
    /* Its own tag: ei_get_type calls all four ERL_ATOM_EXT. */
    int type = (unsigned char)buf[idx];
    const unsigned char *p = (const unsigned char *)buf + idx + 1;
    size_t n;
    if (type == ERL_SMALL_ATOM_UTF8_EXT || type == ERL_SMALL_ATOM_EXT) {
        n = p[0];
        p += 1;
    } else { /* ATOM_EXT, ATOM_UTF8_EXT: two bytes of length */
        n = (size_t)p[0] << 8 | p[1];
        p += 2;
    }
    if (n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0 || p[i] >= 0x80)
            return 0;
    *name = (const char *)p;
    *len = n;
    return 1;
}

/* Pushes the term at *idx when it is no tuple, list or map; d: the cache. */
static int decode_leaf(lua_State *L, const char *buf, int *idx, int type, int size, int d) {
    switch (type) {
    case ERL_SMALL_INTEGER_EXT:
    case ERL_INTEGER_EXT:
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: {
        long long v;
        int save = *idx;
        if (ei_decode_longlong(buf, idx, &v) == 0) {
            lua_pushinteger(L, v);
            return 0;
        }
        *idx = save;
        goto other; /* past Lua's integers: kept exact, as its bytes */
    }
    case ERL_FLOAT_EXT:
    case NEW_FLOAT_EXT: {
        double f;
        if (ei_decode_double(buf, idx, &f) < 0)
            return -1;
        lua_pushnumber(L, f);
        return 0;
    }
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: {
        const char *name;
        size_t n;
        if (ascii_atom(buf, *idx, &name, &n)) {
            push_ascii_atom(L, d, name, n);
            *idx = (int)(name + n - buf);
            return 0;
        }
        char a[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(buf, idx, a, sizeof a, ERLANG_UTF8, NULL, NULL) < 0 ||
            !atom_name_ok(a))
            return -1;
        push_atom(L, a);
        return 0;
    }
    case ERL_BINARY_EXT: {
        long len;
        const char *p = buf + *idx + 5;
        if (ei_decode_binary(buf, idx, NULL, &len) < 0)
            return -1;
        lua_pushlstring(L, p, (size_t)len);
        return 0;
    }
    case ERL_NIL_EXT: {
        int arity;
        ei_decode_list_header(buf, idx, &arity);
        lua_newtable(L);
        set_cached_mt(L, d, D_LIST);
        return 0;
    }
    case ERL_STRING_EXT: {
        const unsigned char *p = (const unsigned char *)buf + *idx + 3;
        lua_createtable(L, size, 0);
        for (int i = 0; i < size; i++) {
            lua_pushinteger(L, p[i]);
            lua_rawseti(L, -2, i + 1);
        }
        set_cached_mt(L, d, D_LIST);
        *idx += 3 + size;
        return 0;
    }
    case ERL_PID_EXT:
    case ERL_NEW_PID_EXT: {
        erlang_pid p;
        if (ei_decode_pid(buf, idx, &p) < 0)
            return -1;
        push_pid(L, p.num, p.serial);
        return 0;
    }
    case ERL_PORT_EXT:
    case ERL_NEW_PORT_EXT:
    case ERL_V4_PORT_EXT:
        push_port_cached(L, d, port_number(buf, idx));
        return 0;
    default:
    other: {
        /* References, funs, big numbers: kept as their text. */
        int start = *idx;
        if (ei_skip_term(buf, idx) < 0)
            return -1;
        ei_x_buff x;
        ei_x_new_with_version(&x);
        ei_x_append_buf(&x, buf + start, *idx - start);
        char *text = NULL;
        int n = edrv_term_format(x.buff, (size_t)x.index, &text);
        ei_x_free(&x);
        lua_createtable(L, 0, 2);
        lua_pushstring(L, n >= 0 ? text : "#Term<?>");
        lua_setfield(L, -2, "text");
        lua_pushlstring(L, buf + start, (size_t)(*idx - start)); /* sent back as it came */
        lua_setfield(L, -2, "etf");
        luaL_setmetatable(L, MT_OTHER);
        free(text);
        return 0;
    }
    }
}

/* A tuple, list or map being filled. Its table is on the Lua stack, with
 * above it its elements' tables being filled (and, in a map, a key waiting
 * for its value). */
typedef struct {
    bool map;
    bool list_tail;   /* a list's elements are in: the next value is its tail */
    bool is_list;
    int64_t left;     /* elements still to come (a map's keys and values) */
    lua_Integer next; /* the array index of the next element */
} open_term;

/* Opens the tuple, list or map at *idx: pushes its table; d: the cache. */
static int open_compound(lua_State *L, const char *buf, int *idx, int type, open_term *o, int d) {
    int arity;
    int mt = type == ERL_MAP_EXT ? D_MAP : type == ERL_LIST_EXT ? D_LIST : D_TUPLE;
    int rc = type == ERL_MAP_EXT    ? ei_decode_map_header(buf, idx, &arity)
             : type == ERL_LIST_EXT ? ei_decode_list_header(buf, idx, &arity)
                                    : ei_decode_tuple_header(buf, idx, &arity);
    if (rc < 0 || arity < 0)
        return -1;
    lua_createtable(L, type == ERL_MAP_EXT ? 0 : arity, type == ERL_MAP_EXT ? arity : 0);
    set_cached_mt(L, d, mt);
    *o = (open_term){.map = type == ERL_MAP_EXT, .is_list = type == ERL_LIST_EXT,
                     .left = type == ERL_MAP_EXT ? 2 * (int64_t)arity : arity, .next = 1};
    return 0;
}

/* The value on top of the stack is the next element of `o` (whose table is
 * below it, or below a map key): stores it. Returns 1 when `o` is complete.
 * A list with its elements in ends with [] (consumed here) or has a tail. */
static int store(lua_State *L, const char *buf, int *idx, open_term *o) {
    if (o->list_tail) {
        lua_setfield(L, -2, "tail");
        return 1;
    }
    if (o->map) {
        if (o->left-- % 2 == 0)
            return 0; /* a key: it waits for its value */
        lua_rawset(L, -3);
    } else {
        lua_rawseti(L, -2, o->next++);
        o->left--;
    }
    return o->left == 0 ? 1 : 0;
}

/* Whether the compound `o`, with all its elements, is complete: a list is
 * once its tail is [] (after any lists of no elements, which are their
 * tails); otherwise the next value is its tail. */
static bool complete(const char *buf, int *idx, open_term *o) {
    int type, size, arity;
    if (!o->is_list || o->list_tail)
        return true;
    while (ei_get_type(buf, idx, &type, &size) == 0 && type == ERL_LIST_EXT && size == 0)
        ei_decode_list_header(buf, idx, &arity);
    if (ei_get_type(buf, idx, &type, &size) == 0 && type == ERL_NIL_EXT) {
        ei_decode_list_header(buf, idx, &arity);
        return true;
    }
    o->list_tail = true;
    return false;
}

/* Pushes the term at *idx. The bytes were checked by edrv (messages and
 * replies come from edrv_receive and edrv_port_call). No recursion: a term
 * of any depth that edrv delivers decodes, the open compounds on a stack of
 * their own: on the C stack while it is shallow, then in a userdata below
 * the value, so that a Lua error frees it. Past the Lua stack's size (about
 * a million levels), luaL_checkstack raises. */
static int decode(lua_State *L, const char *buf, int *idx) {
    open_term small[16];
    size_t depth = 0, cap = sizeof small / sizeof small[0];
    int base = lua_gettop(L) + 1;
    open_term *st = small;
    luaL_checkstack(L, 8, "term too deep");
    lua_pushnil(L); /* the slot of the userdata, once the term is deeper */
    if (lua_type(L, UP_DECODE) == LUA_TTABLE)
        lua_pushvalue(L, UP_DECODE);
    else
        lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key);
    int d = base + 1;
    for (;;) {
        int type, size;
        if (ei_get_type(buf, idx, &type, &size) < 0)
            return -1;
        if (type == ERL_LIST_EXT && size == 0) {
            /* No elements: the term is its tail, as binary_to_term reads it. */
            int arity;
            ei_decode_list_header(buf, idx, &arity);
            continue;
        }
        if (type == ERL_SMALL_TUPLE_EXT || type == ERL_LARGE_TUPLE_EXT || type == ERL_LIST_EXT ||
            type == ERL_MAP_EXT) {
            /* One more table (and a map's key) on the stack, and room for
             * the leaves above it. */
            luaL_checkstack(L, 8, "term too deep");
            if (depth == cap) {
                open_term *bigger = lua_newuserdatauv(L, 2 * cap * sizeof *st, 0);
                memcpy(bigger, st, cap * sizeof *st);
                lua_replace(L, base);
                st = bigger;
                cap *= 2;
            }
            if (open_compound(L, buf, idx, type, &st[depth], d) < 0)
                return -1;
            if (st[depth].left > 0 || !complete(buf, idx, &st[depth])) {
                depth++;
                continue; /* its elements come next */
            }
        } else if (decode_leaf(L, buf, idx, type, size, d) < 0) {
            return -1;
        }
        /* A value is complete: it goes into its compound, which may then be
         * complete in turn, and so on outwards. */
        while (depth > 0 && store(L, buf, idx, &st[depth - 1]) && complete(buf, idx, &st[depth - 1]))
            depth--;
        if (depth == 0) {
            lua_replace(L, base);
            lua_settop(L, base);
            return 0;
        }
    }
}

static void push_etf(lua_State *L, const char *buf, size_t len, const char *fn) {
    int idx = 0, ver;
    int top = lua_gettop(L);
    /* libei decodes with int offsets: a term of 2 GiB or more (edrv sends
     * them) is out of its reach. */
    if (len > INT_MAX)
        raise(L, fn, "system_limit", "a term of 2 GiB or more, which the Lua binding cannot decode");
    if (ei_decode_version(buf, &idx, &ver) < 0 || decode(L, buf, &idx) < 0 ||
        (size_t)idx != len) {
        lua_settop(L, top);
        raise(L, fn, "badarg", "a term edrv could not decode");
    }
}

/* Pushes the value at 1 in Erlang syntax, as ~p (edrv_term_format) or ~w
 * (edrv_term_format_w) prints it. */
static int push_printed(lua_State *L, const char *fn, bool w) {
    if (lua_istable(L, 1) && kind_of(L, 1) == K_OTHER) {
        lua_getfield(L, 1, "text");
        return 1;
    }
    ei_x_buff x;
    to_etf(L, 1, &x, fn);
    char *text = NULL;
    int n = (w ? edrv_term_format_w : edrv_term_format)(x.buff, (size_t)x.index, &text);
    ei_x_free(&x);
    if (n < 0)
        return raise(L, fn, "badarg", "cannot print the term");
    lua_pushlstring(L, text, (size_t)n);
    free(text);
    return 1;
}

/* tostring() of every term object: Erlang syntax. */
static int term_tostring(lua_State *L) {
    return push_printed(L, "tostring", false);
}

/* ---- term order ------------------------------------------------------------------------------ */

/* Erlang's term order, on two terms in ETF (version bytes skipped):
 * number < atom < reference < fun < port < pid < tuple < map < [] < list <
 * binary. Numbers compare by value (1 and 1.0 are equal, as with ==);
 * tuples by size, then element by element; maps by size, then their keys in
 * term order (where an integer comes before the equal float), then the
 * values in that order; lists element by element, the
 * shorter first; binaries byte by byte, the shorter first. term_cmp returns
 * -1, 0 or 1 and moves both indexes past the terms, or -2 for ETF it cannot
 * read. */
static int rank(int type) {
    switch (type) {
    case ERL_SMALL_INTEGER_EXT: case ERL_INTEGER_EXT: case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: case ERL_FLOAT_EXT: case NEW_FLOAT_EXT: return 1;
    case ERL_ATOM_EXT: case ERL_SMALL_ATOM_EXT: case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: return 2;
    case ERL_REFERENCE_EXT: case ERL_NEW_REFERENCE_EXT: case ERL_NEWER_REFERENCE_EXT: return 3;
    case ERL_FUN_EXT: case ERL_NEW_FUN_EXT: case ERL_EXPORT_EXT: return 4;
    case ERL_PORT_EXT: case ERL_NEW_PORT_EXT: case ERL_V4_PORT_EXT: return 5;
    case ERL_PID_EXT: case ERL_NEW_PID_EXT: return 6;
    case ERL_SMALL_TUPLE_EXT: case ERL_LARGE_TUPLE_EXT: return 7;
    case ERL_MAP_EXT: return 8;
    case ERL_NIL_EXT: return 9;
    case ERL_LIST_EXT: case ERL_STRING_EXT: return 10;
    case ERL_BINARY_EXT: case ERL_BIT_BINARY_EXT: return 11;
    default: return -1;
    }
}

#define SIGN(a, b) ((a) < (b) ? -1 : (a) > (b))

static int term_cmp(const char *a, int *ai, const char *b, int *bi, int depth);

/* Comparing map keys: an integer before the equal float. */
static _Thread_local bool key_mode;

static int num_cmp(const char *a, int *ai, const char *b, int *bi) {
    int ta, tb, n;
    ei_get_type(a, ai, &ta, &n);
    ei_get_type(b, bi, &tb, &n);
    bool fa = ta == ERL_FLOAT_EXT || ta == NEW_FLOAT_EXT, fb = tb == ERL_FLOAT_EXT || tb == NEW_FLOAT_EXT;
    if (!fa && !fb) {
        long long x, y;
        if (ei_decode_longlong(a, ai, &x) < 0 || ei_decode_longlong(b, bi, &y) < 0)
            return -2; /* an integer past 64 bits: no Lua value makes one */
        return SIGN(x, y);
    }
    double x, y;
    long long lx, ly;
    if (fa ? ei_decode_double(a, ai, &x) < 0 : ei_decode_longlong(a, ai, &lx) < 0)
        return -2;
    if (fb ? ei_decode_double(b, bi, &y) < 0 : ei_decode_longlong(b, bi, &ly) < 0)
        return -2;
    if (!fa)
        x = (double)lx;
    if (!fb)
        y = (double)ly;
    return x != y || !key_mode ? SIGN(x, y) : SIGN(fa, fb);
}

/* A list's elements one at a time, whether it is a LIST_EXT (terms, then a
 * tail) or a STRING_EXT (bytes). */
typedef struct {
    const char *buf;
    int *idx;
    bool bytes;
    int left;                /* elements not yet taken */
    const unsigned char *s;  /* STRING_EXT: the next byte */
} list_it;

static int list_open(list_it *it, const char *buf, int *idx) {
    int type, n;
    if (ei_get_type(buf, idx, &type, &n) < 0)
        return -1;
    it->buf = buf;
    it->idx = idx;
    it->bytes = type == ERL_STRING_EXT;
    it->left = n;
    if (it->bytes) {
        it->s = (const unsigned char *)buf + *idx + 3; /* tag, 2-byte length */
        *idx += 3 + n;
        return 0;
    }
    return ei_decode_list_header(buf, idx, &n) < 0 ? -1 : 0;
}

static int cmp_lists(const char *a, int *ai, const char *b, int *bi, int depth) {
    list_it x = {0}, y = {0}; /* gcc -O2 thinks s may be read unset */
    if (list_open(&x, a, ai) < 0 || list_open(&y, b, bi) < 0)
        return -2;
    int r = 0;
    for (; r == 0 && x.left && y.left; x.left--, y.left--) {
        if (x.bytes && y.bytes) {
            r = SIGN(*x.s, *y.s);
            x.s++, y.s++;
        } else if (x.bytes || y.bytes) {
            /* a byte against a term: the byte is a small integer */
            list_it *t = x.bytes ? &y : &x;
            unsigned char c = *(x.bytes ? x.s : y.s);
            char small[3] = {ERL_SMALL_INTEGER_EXT, (char)c, 0};
            int si = 0;
            r = x.bytes ? term_cmp(small, &si, t->buf, t->idx, depth + 1)
                        : term_cmp(t->buf, t->idx, small, &si, depth + 1);
            if (x.bytes)
                x.s++;
            else
                y.s++;
        } else {
            r = term_cmp(a, ai, b, bi, depth + 1);
        }
    }
    if (r)
        return r;
    /* One ran out, or both: what remains compares as lists; the tails
     * (nil, or an improper list's tail) last. */
    if (x.left || y.left)
        return x.left ? 1 : -1;
    bool tx = !x.bytes, ty = !y.bytes;
    if (tx && ty)
        return term_cmp(a, ai, b, bi, depth + 1);
    int type, n;
    if (tx) { /* y's tail is [] */
        ei_get_type(a, ai, &type, &n);
        return type == ERL_NIL_EXT ? (ei_skip_term(a, ai), 0) : 1;
    }
    if (ty) {
        ei_get_type(b, bi, &type, &n);
        return type == ERL_NIL_EXT ? (ei_skip_term(b, bi), 0) : -1;
    }
    return 0;
}

/* The offsets of a map's keys, sorted by term order; the map's values follow
 * their keys. NULL when out of memory or the ETF is bad. */
static _Thread_local const char *sort_buf;
static int key_order(const void *x, const void *y) {
    int i = *(const int *)x, j = *(const int *)y;
    return term_cmp(sort_buf, &i, sort_buf, &j, 1);
}

static int *map_keys(const char *buf, int *idx, int n) {
    int *keys = malloc(((size_t)n + 1) * sizeof *keys);
    if (!keys)
        return NULL;
    for (int k = 0; k < n; k++) {
        keys[k] = *idx;
        if (ei_skip_term(buf, idx) < 0 || ei_skip_term(buf, idx) < 0) {
            free(keys);
            return NULL;
        }
    }
    sort_buf = buf;
    bool was = key_mode;
    key_mode = true;
    qsort(keys, (size_t)n, sizeof *keys, key_order);
    key_mode = was;
    return keys;
}

static int cmp_maps(const char *a, int *ai, const char *b, int *bi, int depth) {
    int na, nb;
    if (ei_decode_map_header(a, ai, &na) < 0 || ei_decode_map_header(b, bi, &nb) < 0)
        return -2;
    if (na != nb) {
        int r = SIGN(na, nb);
        int *ka = map_keys(a, ai, na), *kb = map_keys(b, bi, nb);
        free(ka);
        free(kb);
        return ka && kb ? r : -2;
    }
    int *ka = map_keys(a, ai, na), *kb = map_keys(b, bi, nb);
    int r = ka && kb ? 0 : -2;
    bool was = key_mode;
    key_mode = true;
    for (int k = 0; r == 0 && k < na; k++) {
        int x = ka[k], y = kb[k];
        r = term_cmp(a, &x, b, &y, depth + 1);
    }
    key_mode = was;
    for (int k = 0; r == 0 && k < na; k++) {
        int x = ka[k], y = kb[k];
        if (ei_skip_term(a, &x) < 0 || ei_skip_term(b, &y) < 0)
            r = -2;
        else
            r = term_cmp(a, &x, b, &y, depth + 1);
    }
    free(ka);
    free(kb);
    return r;
}

/* The rest: bytes of a skipped term, compared as they are (references,
 * funs); only their equality is exact. */
static int cmp_raw(const char *a, int *ai, const char *b, int *bi) {
    int a0 = *ai, b0 = *bi;
    if (ei_skip_term(a, ai) < 0 || ei_skip_term(b, bi) < 0)
        return -2;
    int la = *ai - a0, lb = *bi - b0, r = memcmp(a + a0, b + b0, (size_t)(la < lb ? la : lb));
    return r ? SIGN(r, 0) : SIGN(la, lb);
}

static int term_cmp(const char *a, int *ai, const char *b, int *bi, int depth) {
    int ta, tb, na, nb;
    if (depth > 10000 || ei_get_type(a, ai, &ta, &na) < 0 || ei_get_type(b, bi, &tb, &nb) < 0)
        return -2;
    int ra = rank(ta), rb = rank(tb);
    if (ra < 0 || rb < 0)
        return -2;
    if (ra != rb) {
        if (ei_skip_term(a, ai) < 0 || ei_skip_term(b, bi) < 0)
            return -2;
        return SIGN(ra, rb);
    }
    switch (ra) {
    case 1:
        return num_cmp(a, ai, b, bi);
    case 2: {
        char x[MAXATOMLEN_UTF8], y[MAXATOMLEN_UTF8];
        if (ei_decode_atom(a, ai, x) < 0 || ei_decode_atom(b, bi, y) < 0)
            return -2;
        int r = strcmp(x, y);
        return SIGN(r, 0);
    }
    case 5: {
        erlang_port x, y;
        if (ei_decode_port(a, ai, &x) < 0 || ei_decode_port(b, bi, &y) < 0)
            return -2;
        int r = strcmp(x.node, y.node);
        return r ? SIGN(r, 0) : SIGN(x.id, y.id);
    }
    case 6: {
        erlang_pid x, y;
        if (ei_decode_pid(a, ai, &x) < 0 || ei_decode_pid(b, bi, &y) < 0)
            return -2;
        int r = strcmp(x.node, y.node);
        return r ? SIGN(r, 0) : x.num != y.num ? SIGN(x.num, y.num) : SIGN(x.serial, y.serial);
    }
    case 7: {
        if (ei_decode_tuple_header(a, ai, &na) < 0 || ei_decode_tuple_header(b, bi, &nb) < 0)
            return -2;
        int r = SIGN(na, nb);
        for (int k = 0; k < na && k < nb; k++) {
            int e = r ? (ei_skip_term(a, ai) < 0 || ei_skip_term(b, bi) < 0 ? -2 : r)
                      : term_cmp(a, ai, b, bi, depth + 1);
            if (e == -2)
                return -2;
            r = e;
        }
        for (int k = nb; k < na; k++)
            if (ei_skip_term(a, ai) < 0)
                return -2;
        for (int k = na; k < nb; k++)
            if (ei_skip_term(b, bi) < 0)
                return -2;
        return r;
    }
    case 8:
        return cmp_maps(a, ai, b, bi, depth);
    case 9:
        return ei_skip_term(a, ai) < 0 || ei_skip_term(b, bi) < 0 ? -2 : 0;
    case 10:
        return cmp_lists(a, ai, b, bi, depth);
    case 11: {
        if (ta == ERL_BIT_BINARY_EXT || tb == ERL_BIT_BINARY_EXT)
            return cmp_raw(a, ai, b, bi);
        const char *x = a + *ai + 5, *y = b + *bi + 5; /* tag, 4-byte length */
        if (ei_skip_term(a, ai) < 0 || ei_skip_term(b, bi) < 0)
            return -2;
        int r = memcmp(x, y, (size_t)(na < nb ? na : nb));
        return r ? SIGN(r, 0) : SIGN(na, nb);
    }
    default:
        return cmp_raw(a, ai, b, bi);
    }
}

/* edrv.compare(a, b): -1, 0 or 1, as a < b, a == b, a > b in Erlang. */
static int compare_values(lua_State *L, int ia, int ib) {
    ei_x_buff x, y;
    to_etf(L, ia, &x, "compare"); /* raises on a bad term, x freed */
    ei_x_new_with_version(&y);
    lua_pushvalue(L, ib);
    int bad = encode(L, lua_gettop(L), &y, 0) < 0;
    lua_pop(L, 1);
    int xi = 1, yi = 1, r = bad ? -2 : term_cmp(x.buff, &xi, y.buff, &yi, 0);
    ei_x_free(&x);
    ei_x_free(&y);
    if (r == -2)
        raise(L, "compare", "badarg", "not a term");
    return r;
}

static int l_compare(lua_State *L) {
    luaL_checkany(L, 1);
    luaL_checkany(L, 2);
    lua_pushinteger(L, compare_values(L, 1, 2));
    return 1;
}

static int sort_less(lua_State *L) {
    lua_pushboolean(L, compare_values(L, 1, 2) < 0);
    return 1;
}

/* edrv.sort(t): sorts the array t in place in Erlang's term order; t. */
static int l_sort(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, 1);
    lua_pushcfunction(L, sort_less);
    lua_call(L, 2, 0);
    lua_settop(L, 1);
    return 1;
}

/* ---- term_to_binary and binary_to_term ------------------------------------------------- */

/* term_to_binary writes what OTP 25's writes: the Lua value is encoded as
 * for a message, then transcoded, term by term, into the forms ERTS picks
 * (atoms in Latin-1 as ATOM_EXT where they can be, UTF-8 otherwise, or
 * always with {minor_version, 2}; floats as NEW_FLOAT_EXT, or FLOAT_EXT's
 * text with {minor_version, 0}; lists of bytes as STRING_EXT; pids, ports
 * and references in their newest forms; map keys in term order, as ERTS
 * keeps a map of up to 32 keys, and a larger one with `deterministic`).
 * Funs are copied as they came. */
typedef struct {
    int minor;
} t2b_opts;

static void put_u16(ei_x_buff *o, unsigned v) {
    char b[2] = {(char)(v >> 8), (char)v};
    ei_x_append_buf(o, b, 2);
}

static void put_u32(ei_x_buff *o, uint32_t v) {
    char b[4] = {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
    ei_x_append_buf(o, b, 4);
}

/* An atom, its name in UTF-8, as ERTS writes it. */
static int t2b_atom(ei_x_buff *o, const char *name, const t2b_opts *t) {
    size_t n = strlen(name);
    char latin1[MAXATOMLEN + 1];
    size_t k = 0;
    bool fits = t->minor < 2;
    for (size_t i = 0; fits && i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x80)
            latin1[k++] = (char)c;
        else if ((c == 0xc2 || c == 0xc3) && i + 1 < n)
            latin1[k++] = (char)(((c & 0x03) << 6) | ((unsigned char)name[++i] & 0x3f));
        else
            fits = false;
        fits = fits && k <= MAXATOMLEN;
    }
    char tag;
    if (fits) {
        tag = ERL_ATOM_EXT;
        ei_x_append_buf(o, &tag, 1);
        put_u16(o, (unsigned)k);
        return ei_x_append_buf(o, latin1, (int)k);
    }
    if (n < 256) {
        char h[2] = {(char)ERL_SMALL_ATOM_UTF8_EXT, (char)n};
        ei_x_append_buf(o, h, 2);
    } else {
        tag = ERL_ATOM_UTF8_EXT;
        ei_x_append_buf(o, &tag, 1);
        put_u16(o, (unsigned)n);
    }
    return ei_x_append_buf(o, name, (int)n);
}

typedef struct {
    ei_x_buff k, v;
} t2b_pair;

static int pair_order(const void *x, const void *y) {
    const t2b_pair *a = x, *b = y;
    int i = 0, j = 0;
    bool was = key_mode;
    key_mode = true;
    int r = term_cmp(a->k.buff, &i, b->k.buff, &j, 1);
    key_mode = was;
    return r == -2 ? 0 : r;
}

static int t2b_term(const char *b, int *i, ei_x_buff *o, const t2b_opts *t, int depth);

/* A map's pairs, transcoded one by one, then sorted by key. */
static int t2b_map(const char *b, int *i, ei_x_buff *o, const t2b_opts *t, int depth) {
    int n;
    if (ei_decode_map_header(b, i, &n) < 0)
        return -1;
    t2b_pair *ps = calloc((size_t)n + 1, sizeof *ps);
    int rc = ps ? 0 : -1;
    for (int k = 0; rc == 0 && k < n; k++) {
        ei_x_new(&ps[k].k);
        ei_x_new(&ps[k].v);
        if (t2b_term(b, i, &ps[k].k, t, depth + 1) < 0 || t2b_term(b, i, &ps[k].v, t, depth + 1) < 0)
            rc = -1;
    }
    if (rc == 0) {
        qsort(ps, (size_t)n, sizeof *ps, pair_order);
        ei_x_encode_map_header(o, n);
        for (int k = 0; k < n; k++) {
            ei_x_append_buf(o, ps[k].k.buff, ps[k].k.index);
            ei_x_append_buf(o, ps[k].v.buff, ps[k].v.index);
        }
    }
    for (int k = 0; ps && k < n; k++) {
        ei_x_free(&ps[k].k);
        ei_x_free(&ps[k].v);
    }
    free(ps);
    return rc;
}

/* A LIST_EXT of bytes only, proper and short enough, is a STRING_EXT in ERTS. */
static bool list_is_string(const char *b, int i, int n) {
    if (n > 65535 || ei_decode_list_header(b, &i, &n) < 0)
        return false;
    for (int k = 0; k < n; k++) {
        long v;
        if (ei_decode_long(b, &i, &v) < 0 || v < 0 || v > 255)
            return false;
    }
    int type, size;
    return ei_get_type(b, &i, &type, &size) == 0 && type == ERL_NIL_EXT;
}

static int t2b_term(const char *b, int *i, ei_x_buff *o, const t2b_opts *t, int depth) {
    int type, size;
    if (depth > 10000 || ei_get_type(b, i, &type, &size) < 0)
        return -1;
    int start = *i;
    switch (type) {
    case ERL_SMALL_INTEGER_EXT:
    case ERL_INTEGER_EXT:
    case ERL_SMALL_BIG_EXT:
    case ERL_LARGE_BIG_EXT: {
        long long v;
        if (ei_decode_longlong(b, i, &v) < 0) {
            *i = start;
            break; /* past 64 bits: as it came */
        }
        /* As ERTS: a byte, a 32-bit integer, or the fewest bytes of a big
         * (libei keeps INTEGER_EXT to 28 bits) */
        if (v >= 0 && v <= 255) {
            char h[2] = {(char)ERL_SMALL_INTEGER_EXT, (char)v};
            return ei_x_append_buf(o, h, 2);
        }
        if (v >= INT32_MIN && v <= INT32_MAX) {
            char tag = ERL_INTEGER_EXT;
            ei_x_append_buf(o, &tag, 1);
            put_u32(o, (uint32_t)v);
            return 0;
        }
        unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
        char big[11] = {(char)ERL_SMALL_BIG_EXT, 0, (char)(v < 0)};
        int n = 0;
        for (; u; u >>= 8)
            big[3 + n++] = (char)(u & 0xff);
        big[1] = (char)n;
        return ei_x_append_buf(o, big, 3 + n);
    }
    case ERL_FLOAT_EXT:
    case NEW_FLOAT_EXT: {
        double f;
        if (ei_decode_double(b, i, &f) < 0)
            return -1;
        if (t->minor > 0)
            return ei_x_encode_double(o, f);
        char text[32] = {(char)ERL_FLOAT_EXT};
        snprintf(text + 1, 31, "%.20e", f);
        return ei_x_append_buf(o, text, 32);
    }
    case ERL_ATOM_EXT:
    case ERL_SMALL_ATOM_EXT:
    case ERL_ATOM_UTF8_EXT:
    case ERL_SMALL_ATOM_UTF8_EXT: {
        char name[MAXATOMLEN_UTF8];
        if (ei_decode_atom_as(b, i, name, sizeof name, ERLANG_UTF8, NULL, NULL) < 0)
            return -1;
        return t2b_atom(o, name, t);
    }
    case ERL_SMALL_TUPLE_EXT:
    case ERL_LARGE_TUPLE_EXT: {
        int n;
        if (ei_decode_tuple_header(b, i, &n) < 0 || ei_x_encode_tuple_header(o, n) < 0)
            return -1;
        for (int k = 0; k < n; k++)
            if (t2b_term(b, i, o, t, depth + 1) < 0)
                return -1;
        return 0;
    }
    case ERL_LIST_EXT: {
        if (list_is_string(b, *i, size)) {
            int n;
            ei_decode_list_header(b, i, &n);
            char *bytes = malloc((size_t)n);
            for (int k = 0; bytes && k < n; k++) {
                long v;
                ei_decode_long(b, i, &v);
                bytes[k] = (char)v;
            }
            int rc = bytes ? ei_x_encode_string_len(o, bytes, n) : -1;
            free(bytes);
            ei_decode_list_header(b, i, &n); /* the [] */
            return rc;
        }
        int n;
        if (ei_decode_list_header(b, i, &n) < 0 || ei_x_encode_list_header(o, n) < 0)
            return -1;
        for (int k = 0; k <= n; k++) /* the elements, then the tail */
            if (t2b_term(b, i, o, t, depth + 1) < 0)
                return -1;
        return 0;
    }
    case ERL_MAP_EXT:
        return t2b_map(b, i, o, t, depth);
    case ERL_PID_EXT:
    case ERL_NEW_PID_EXT: {
        erlang_pid p;
        if (ei_decode_pid(b, i, &p) < 0)
            return -1;
        char tag = ERL_NEW_PID_EXT;
        ei_x_append_buf(o, &tag, 1);
        t2b_atom(o, p.node, t);
        put_u32(o, p.num);
        put_u32(o, p.serial);
        put_u32(o, p.creation);
        return 0;
    }
    case ERL_PORT_EXT:
    case ERL_NEW_PORT_EXT:
    case ERL_V4_PORT_EXT: {
        erlang_port p;
        if (ei_decode_port(b, i, &p) < 0)
            return -1;
        bool v4 = p.id > 0xffffffffu;
        char tag = v4 ? ERL_V4_PORT_EXT : ERL_NEW_PORT_EXT;
        ei_x_append_buf(o, &tag, 1);
        t2b_atom(o, p.node, t);
        if (v4)
            put_u32(o, (uint32_t)(p.id >> 32));
        put_u32(o, (uint32_t)p.id);
        put_u32(o, p.creation);
        return 0;
    }
    case ERL_REFERENCE_EXT:
    case ERL_NEW_REFERENCE_EXT:
    case ERL_NEWER_REFERENCE_EXT: {
        erlang_ref r;
        if (ei_decode_ref(b, i, &r) < 0)
            return -1;
        char tag = ERL_NEWER_REFERENCE_EXT;
        ei_x_append_buf(o, &tag, 1);
        put_u16(o, (unsigned)r.len);
        t2b_atom(o, r.node, t);
        put_u32(o, r.creation);
        for (int k = 0; k < r.len; k++)
            put_u32(o, r.n[k]);
        return 0;
    }
    default:
        break; /* binaries, bit strings, strings, [], funs: as they came */
    }
    if (ei_skip_term(b, i) < 0)
        return -1;
    return ei_x_append_buf(o, b + start, *i - start);
}

/* An option: a string, an atom, or a tuple {name, value}; its name, and
 * its value (or -1). */
static const char *t2b_option(lua_State *L, int idx, lua_Integer *value) {
    *value = -1;
    if (lua_type(L, idx) == LUA_TTABLE && kind_of(L, idx) == K_TUPLE && lua_rawlen(L, idx) == 2) {
        lua_rawgeti(L, idx, 2);
        int isnum;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        *value = isnum ? v : -2;
        lua_rawgeti(L, idx, 1);
        const char *n = name_of(L, -1);
        lua_pop(L, 1); /* the atom or the string stays in the tuple */
        return n;
    }
    return name_of(L, idx);
}

/* edrv.term_to_binary(v [, opts]): OTP 25's bytes for v; opts as
 * term_to_binary/2's: "compressed", {"compressed", 0..9},
 * {"minor_version", 0..2}, "deterministic". */
static int l_term_to_binary(lua_State *L) {
    luaL_checkany(L, 1);
    t2b_opts t = {.minor = 1};
    int level = 0;
    if (!lua_isnoneornil(L, 2)) {
        if (!lua_istable(L, 2))
            return raise(L, "term_to_binary", "badarg", "the options must be a list");
        for (lua_Integer k = 1; k <= (lua_Integer)lua_rawlen(L, 2); k++) {
            lua_rawgeti(L, 2, k);
            lua_Integer v;
            const char *n = t2b_option(L, lua_gettop(L), &v);
            if (n && strcmp(n, "compressed") == 0 && v == -1)
                level = 6;
            else if (n && strcmp(n, "compressed") == 0 && v >= 0 && v <= 9)
                level = (int)v;
            else if (n && strcmp(n, "minor_version") == 0 && v >= 0 && v <= 2)
                t.minor = (int)v;
            else if (!(n && strcmp(n, "deterministic") == 0 && v == -1))
                return raise(L, "term_to_binary", "badarg",
                             "options: compressed, {compressed, 0..9}, {minor_version, 0..2}, "
                             "deterministic");
            lua_pop(L, 1);
        }
    }
    ei_x_buff x, o;
    to_etf(L, 1, &x, "term_to_binary");
    ei_x_new_with_version(&o);
    int i = 1;
    int rc = t2b_term(x.buff, &i, &o, &t, 0);
    ei_x_free(&x);
    if (rc < 0) {
        ei_x_free(&o);
        return raise(L, "term_to_binary", "badarg", "the term could not be encoded");
    }
    /* Compressed as ERTS does: zlib at the level, kept only if it is no
     * larger than the plain bytes less the 5 of its header. */
    uLongf zlen = o.index - 1 < 5 ? 0 : (uLongf)(o.index - 1 - 5);
    char *z = level ? malloc(6 + (size_t)zlen) : NULL;
    if (z && compress2((Bytef *)z + 6, &zlen, (const Bytef *)o.buff + 1, (uLong)(o.index - 1),
                       level) == Z_OK) {
        z[0] = (char)131;
        z[1] = 80;
        uint32_t n = (uint32_t)(o.index - 1);
        z[2] = (char)(n >> 24), z[3] = (char)(n >> 16), z[4] = (char)(n >> 8), z[5] = (char)n;
        lua_pushlstring(L, z, 6 + (size_t)zlen);
    } else {
        lua_pushlstring(L, o.buff, (size_t)o.index);
    }
    free(z);
    ei_x_free(&o);
    return 1;
}

/* edrv.binary_to_term(s [, opts]): the term, as binary_to_term/2 reads it
 * (compressed or not; bytes after the term are ignored; "used" returns the
 * count of bytes read too; "safe" is accepted: atoms made here are garbage
 * collected). */
static int l_binary_to_term(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    bool used = false;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        for (lua_Integer k = 1; k <= (lua_Integer)lua_rawlen(L, 2); k++) {
            lua_rawgeti(L, 2, k);
            const char *n = name_of(L, -1);
            if (n && strcmp(n, "used") == 0)
                used = true;
            else if (!n || strcmp(n, "safe") != 0)
                return raise(L, "binary_to_term", "badarg", "options: safe, used");
            lua_pop(L, 1);
        }
    }
    if (len >= 6 && (unsigned char)s[0] == 131 && s[1] == 80) {
        uLongf n = (uLongf)((unsigned char)s[2] << 24 | (unsigned char)s[3] << 16 |
                            (unsigned char)s[4] << 8 | (unsigned char)s[5]);
        /* in a userdata: decoding may raise (too deep), and Lua frees it */
        char *plain = n < (uLongf)INT_MAX ? lua_newuserdatauv(L, (size_t)n + 1, 0) : NULL;
        z_stream zs = {.next_in = (Bytef *)s + 6, .avail_in = (uInt)(len - 6)};
        int ok = plain && inflateInit(&zs) == Z_OK;
        if (ok) {
            zs.next_out = (Bytef *)plain + 1;
            zs.avail_out = (uInt)n;
            ok = inflate(&zs, Z_FINISH) == Z_STREAM_END && zs.total_out == n;
            inflateEnd(&zs);
        }
        long long size = -1;
        if (ok) {
            plain[0] = (char)131;
            size = edrv_term_size(plain, (size_t)n + 1);
        }
        if (size != (long long)n + 1)
            return raise(L, "binary_to_term", "badarg", "not a term in external term format");
        int idx = 1;
        if (decode(L, plain, &idx) < 0)
            return raise(L, "binary_to_term", "badarg", "a term edrv cannot represent");
        if (!used)
            return 1;
        lua_pushinteger(L, 6 + (lua_Integer)zs.total_in);
        return 2;
    }
    long long size = edrv_term_size(s, len);
    if (size < 0)
        return raise(L, "binary_to_term", "badarg", "not a term in external term format");
    push_etf(L, s, (size_t)size, "binary_to_term");
    if (!used)
        return 1;
    lua_pushinteger(L, (lua_Integer)size);
    return 2;
}

/* edrv.format(v [, how]): the term as ~p ("p", the default, what tostring
 * gives) or ~w ("w") print it. */
static int l_format(lua_State *L) {
    const char *how = luaL_optstring(L, 2, "p");
    bool w = strcmp(how, "w") == 0;
    if (!w && strcmp(how, "p") != 0)
        return raise(L, "format", "badarg", "the format must be \"p\" or \"w\"");
    lua_settop(L, 1);
    return push_printed(L, "format", w);
}

/* The script's process was ended by an exit signal (it does not trap exits,
 * and one of its ports exited with a reason other than normal): the error
 * says so, and carries the reason as a term in `exit_reason`. */
static int raise_exited(lua_State *L, const char *fn) {
    char detail[512];
    snprintf(detail, sizeof detail, "%s", edrv_last_error());
    push_error(L, fn, "exited", detail);
    edrv_msg m;
    if (edrv_proc_exit_reason(self_proc(L), &m) == 0) {
        int idx = 1, top = lua_gettop(L);
        if (decode(L, m.data, &idx) == 0)
            lua_setfield(L, top, "exit_reason");
        lua_settop(L, top);
        edrv_msg_free(&m);
    }
    return lua_error(L);
}

/* edrv.process_flag("trap_exit", on): the old value, as
 * erlang:process_flag/2. */
static int l_process_flag(lua_State *L) {
    const char *flag = luaL_checkstring(L, 1);
    luaL_checkany(L, 2);
    if (strcmp(flag, "trap_exit") != 0)
        return raise(L, "process_flag", "badarg",
                     lua_pushfstring(L, "unsupported flag '%s'", flag));
    if (lua_type(L, 2) != LUA_TBOOLEAN)
        return raise(L, "process_flag", "badarg", "trap_exit takes true or false");
    int rc = edrv_process_flag(self_proc(L), EDRV_TRAP_EXIT, lua_toboolean(L, 2));
    if (rc < 0)
        return raise_rc(L, "process_flag", rc);
    lua_pushboolean(L, rc);
    return 1;
}

/* ---- the BIFs ------------------------------------------------------------------------------ */

static edrv_port check_port(lua_State *L, int idx, const char *fn) {
    if (lua_isinteger(L, idx))
        return (edrv_port)lua_tointeger(L, idx);
    if (lua_type(L, UP_DECODE) == LUA_TTABLE && lua_getmetatable(L, idx)) {
        /* The module's own functions: the port metatable and the key "id"
         * from the decoder's cache, without a lookup by name. */
        lua_rawgeti(L, UP_DECODE, D_PORT);
        bool port = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (port) {
            lua_rawgeti(L, UP_DECODE, D_ID);
            lua_rawget(L, idx);
            edrv_port id = (edrv_port)lua_tointeger(L, -1);
            lua_pop(L, 1);
            return id;
        }
    } else if (lua_istable(L, idx) && kind_of(L, idx) == K_PORT) {
        return (edrv_port)field_int(L, idx, "id");
    }
    raise(L, fn, "badarg", "not a port");
    return 0;
}

/* A string argument that names a file or a driver: a NUL in it would cut
 * it short in C, so it is refused. */
static const char *name_arg(lua_State *L, int idx, const char *fn, const char *what) {
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    if (strlen(s) != len)
        raise(L, fn, "badarg", lua_pushfstring(L, "the %s contains a NUL byte", what));
    return s;
}

static int l_load_driver(lua_State *L) {
    const char *dir = name_arg(L, 1, "load_driver", "folder"),
               *name = name_arg(L, 2, "load_driver", "driver name");
    int rc = edrv_load_driver(dir, name);
    if (rc < 0)
        return raise_rc(L, "load_driver", rc);
    push_atom(L, "ok"); /* as erl_ddll:load_driver/2 */
    return 1;
}

static int l_unload_driver(lua_State *L) {
    int rc = edrv_unload_driver(name_arg(L, 1, "unload_driver", "driver name"));
    if (rc < 0)
        return raise_rc(L, "unload_driver", rc);
    if (rc == 1)
        push_atom(L, "pending_driver");
    else
        lua_pushboolean(L, 1);
    return 1;
}

/* A port name: {"spawn_driver", Command} or {"spawn", Command}, as a plain
 * table or a tuple, with the first element a string or the atom. In erl,
 * spawn opens the driver named by Command's first word if one is loaded,
 * and an external program otherwise; edrv runs no programs, so both open a
 * loaded driver (edrv_open_port says when none has that name). */
static const char *port_command_string(lua_State *L, int idx) {
    if (!lua_istable(L, idx))
        return NULL;
    lua_rawgeti(L, idx, 1);
    const char *kind = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        kind = lua_tostring(L, -1);
    else if (lua_istable(L, -1) && kind_of(L, -1) == K_ATOM) {
        lua_getfield(L, -1, "name");
        kind = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    int ok = kind && (strcmp(kind, "spawn_driver") == 0 || strcmp(kind, "spawn") == 0);
    lua_pop(L, 1);
    if (!ok)
        return NULL;
    lua_rawgeti(L, idx, 2);
    size_t n = 0;
    const char *cmd = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* the string stays alive in the table */
    return cmd && strlen(cmd) == n ? cmd : NULL; /* a NUL would cut it short */
}

/* True if the option list at idx (strings or atoms) holds `opt`. */
static int has_option(lua_State *L, int idx, const char *opt, const char **unknown,
                      const char *const *known) {
    int found = 0;
    if (lua_isnoneornil(L, idx))
        return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    for (lua_Integer i = 1;; i++) {
        if (lua_rawgeti(L, idx, i) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        const char *o = lua_tostring(L, -1);
        if (!o && lua_istable(L, -1) && kind_of(L, -1) == K_ATOM) {
            lua_getfield(L, -1, "name");
            lua_replace(L, -2);
            o = lua_tostring(L, -1);
        }
        int good = 0;
        for (int k = 0; o && known[k]; k++)
            good |= strcmp(o, known[k]) == 0;
        if (!good && unknown && !*unknown)
            *unknown = o ? o : "(not a string)";
        found |= o && strcmp(o, opt) == 0;
        lua_pop(L, 1);
    }
    return found;
}

static int l_open_port(lua_State *L) {
    const char *cmd = port_command_string(L, 1);
    if (!cmd)
        return raise(L, "open_port", "badarg",
                     "the port name must be {\"spawn_driver\", Command} or {\"spawn\", Command}, "
                     "Command a string without NUL");
    static const char *const known[] = {"binary", "eof", "in", "out", "stream", NULL};
    const char *unknown = NULL;
    unsigned flags = has_option(L, 2, "binary", &unknown, known) ? EDRV_PORT_BINARY : 0;
    if (has_option(L, 2, "eof", NULL, known))
        flags |= EDRV_PORT_EOF;
    if (unknown)
        return raise(L, "open_port", "badarg", lua_pushfstring(L, "unsupported option '%s'", unknown));
    edrv_port port;
    int rc = edrv_open_port(self_proc(L), cmd, flags, &port);
    if (rc < 0)
        return raise_rc(L, "open_port", rc);
    push_port(L, port);
    return 1;
}

/* iodata: a string, an integer 0..255, or a (nested) table of them, gathered
 * into one C buffer (no Lua error may be raised while it is held). */
typedef struct {
    char *p;
    size_t len, cap;
} bytes;

static int bytes_add(bytes *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int collect_iodata(lua_State *L, int idx, bytes *b, int depth) {
    if (depth > 100)
        return -1;
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        return bytes_add(b, s, len);
    }
    if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        char c = (char)v;
        return v < 0 || v > 255 ? -1 : bytes_add(b, &c, 1);
    }
    if (!lua_istable(L, idx) || !lua_checkstack(L, 2))
        return -1;
    for (lua_Integer i = 1;; i++) {
        if (lua_rawgeti(L, idx, i) == LUA_TNIL) {
            lua_pop(L, 1);
            /* an improper list's tail: a binary ([1, 2 | <<3>>]) */
            if (lua_getfield(L, idx, "tail") == LUA_TSTRING && kind_of(L, idx) == K_LIST) {
                int rc = collect_iodata(L, lua_gettop(L), b, depth + 1);
                lua_pop(L, 1);
                return rc;
            }
            lua_pop(L, 1);
            return 0;
        }
        int rc = collect_iodata(L, lua_gettop(L), b, depth + 1);
        lua_pop(L, 1);
        if (rc < 0)
            return -1;
    }
}

static int l_port_command(lua_State *L) {
    edrv_port port = check_port(L, 1, "port_command");
    luaL_checkany(L, 2);
    static const char *const known[] = {"nosuspend", "force", NULL};
    const char *unknown = NULL;
    unsigned opts = has_option(L, 3, "force", &unknown, known) ? EDRV_CMD_FORCE : 0;
    if (has_option(L, 3, "nosuspend", NULL, known))
        opts |= EDRV_CMD_NOSUSPEND;
    if (unknown)
        return raise(L, "port_command", "badarg",
                     lua_pushfstring(L, "unsupported option '%s'", unknown));
    if (lua_type(L, 2) == LUA_TNUMBER)
        return raise(L, "port_command", "badarg",
                     "a number is not iodata (a byte goes in a table: {42})");
    int rc;
    if (lua_type(L, 2) == LUA_TSTRING && !opts) {
        size_t len;
        const char *s = lua_tolstring(L, 2, &len);
        rc = edrv_port_command(self_proc(L), port, s, len);
    } else {
        bytes b = {0};
        if (collect_iodata(L, 2, &b, 0) < 0) {
            free(b.p);
            return raise(L, "port_command", "badarg",
                         "data must be iodata: strings, bytes 0..255, tables of them, at most 100 levels deep");
        }
        struct iovec v = {b.p, b.len};
        rc = edrv_port_command_opts(self_proc(L), port, &v, b.len ? 1 : 0, opts);
        free(b.p);
    }
    if (rc == EDRV_EBUSY) { /* nosuspend on a busy port */
        lua_pushboolean(L, 0);
        return 1;
    }
    if (rc < 0)
        return raise_rc(L, "port_command", rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* A list of bytes (a string, to Erlang), as the decoder makes one. */
static void push_byte_list(lua_State *L, const char *p, size_t n) {
    lua_createtable(L, (int)(n < INT_MAX ? n : 0), 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, (unsigned char)p[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    if (lua_type(L, UP_DECODE) == LUA_TTABLE)
        set_cached_mt(L, UP_DECODE, D_LIST);
    else
        luaL_setmetatable(L, MT_LIST);
}

/* edrv.iolist_to_binary(iodata): its bytes, as a string (a binary). */
static int l_iolist_to_binary(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) {
        lua_settop(L, 1);
        return 1;
    }
    bytes b = {0};
    if (!lua_istable(L, 1) || collect_iodata(L, 1, &b, 0) < 0) {
        free(b.p);
        return raise(L, "iolist_to_binary", "badarg",
                     "not iodata: a string, or a list of strings, bytes 0..255 and iodata, "
                     "at most 100 levels deep");
    }
    lua_pushlstring(L, b.p ? b.p : "", b.len);
    free(b.p);
    return 1;
}

/* edrv.binary_to_list(s): the bytes as a list. */
static int l_binary_to_list(lua_State *L) {
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    push_byte_list(L, p, n);
    return 1;
}

static int l_port_control(lua_State *L) {
    edrv_port port = check_port(L, 1, "port_control");
    lua_Integer op = luaL_checkinteger(L, 2);
    if (op < 0 || op > 0xffffffffLL)
        return raise(L, "port_control", "badarg", "the operation must be 0..4294967295");
    /* The data is iodata, as port_control/3 takes: a string, or a table of
     * strings and bytes; nil or a number is badarg, as in Erlang. */
    bytes b = {0};
    size_t len = 0;
    const char *data = NULL;
    if (lua_type(L, 3) == LUA_TSTRING) {
        data = lua_tolstring(L, 3, &len);
    } else if (!lua_istable(L, 3) || collect_iodata(L, 3, &b, 0) < 0) {
        free(b.p);
        return raise(L, "port_control", "badarg",
                     "data must be iodata: a string, or a table of strings and bytes 0..255, at most 100 levels deep");
    } else {
        data = b.p ? b.p : "";
        len = b.len;
    }
    edrv_reply r;
    int rc = edrv_port_control(self_proc(L), port, (unsigned)op, data, len, &r);
    free(b.p);
    if (rc < 0)
        return raise_rc(L, "port_control", rc);
    /* As port_control/3 returns it: a binary when the driver's control
     * flags say so, a list of bytes otherwise ([] when *rbuf was NULL). */
    if (r.kind == EDRV_REPLY_BINARY)
        lua_pushlstring(L, r.data ? r.data : "", r.len);
    else
        push_byte_list(L, r.data, r.len);
    edrv_reply_free(&r);
    return 1;
}

static int l_port_call(lua_State *L) {
    edrv_port port = check_port(L, 1, "port_call");
    lua_Integer op = luaL_checkinteger(L, 2);
    luaL_checkany(L, 3);
    if (op < 0 || op > 0xffffffffLL)
        return raise(L, "port_call", "badarg", "the operation must be 0..4294967295");
    ei_x_buff x;
    to_etf(L, 3, &x, "port_call");
    edrv_reply r;
    int rc = edrv_port_call(self_proc(L), port, (unsigned)op, x.buff, (size_t)x.index, &r);
    ei_x_free(&x);
    if (rc < 0)
        return raise_rc(L, "port_call", rc);
    /* Copy out before decoding, which may raise. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, r.data, r.len);
    luaL_pushresult(&b);
    edrv_reply_free(&r);
    size_t len;
    const char *etf = lua_tolstring(L, -1, &len);
    push_etf(L, etf, len, "port_call");
    return 1;
}

static int l_port_close(lua_State *L) {
    edrv_port port = check_port(L, 1, "port_close");
    int rc = edrv_port_close(self_proc(L), port);
    if (rc < 0)
        return raise_rc(L, "port_close", rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_port_info(lua_State *L) {
    edrv_port port = check_port(L, 1, "port_info");
    edrv_port_status st;
    int rc = edrv_port_info(port, &st);
    if (rc == EDRV_ECLOSED || rc == EDRV_ENOPORT) {
        push_atom(L, "undefined");
        return 1;
    }
    if (rc < 0)
        return raise_rc(L, "port_info", rc);
    lua_createtable(L, 0, 6);
    luaL_setmetatable(L, MT_MAP);
    push_atom(L, "name");
    lua_pushstring(L, st.name);
    lua_rawset(L, -3);
    push_atom(L, "driver");
    lua_pushstring(L, st.driver);
    lua_rawset(L, -3);
    push_atom(L, "id");
    lua_pushinteger(L, (lua_Integer)st.id);
    lua_rawset(L, -3);
    push_atom(L, "connected");
    push_pid(L, (unsigned)st.connected, (unsigned)(st.connected >> 32));
    lua_rawset(L, -3);
    push_atom(L, "binary");
    lua_pushboolean(L, st.binary);
    lua_rawset(L, -3);
    push_atom(L, "pending_jobs");
    lua_pushinteger(L, (lua_Integer)st.pending_jobs);
    lua_rawset(L, -3);
    push_atom(L, "os_pid");
    if (st.os_pid < 0)
        push_atom(L, "undefined");
    else
        lua_pushinteger(L, (lua_Integer)st.os_pid);
    lua_rawset(L, -3);
    return 1;
}

/* The next message from the mailbox (not the saved ones), or nothing. */
static int next_message(lua_State *L, long timeout_ms) {
    /* Decoded where it lies: the box holds it meanwhile, so that the next
     * call (or the box's end) frees it if decoding raises. */
    lproc *b = self_box(L);
    edrv_msg_free(&b->pending);
    int rc = edrv_receive(b->proc, timeout_ms, &b->pending);
    if (rc == EDRV_ETIMEDOUT)
        return 0;
    if (rc < 0)
        return raise_rc(L, "receive", rc);
    push_etf(L, b->pending.data, b->pending.len, "receive");
    edrv_msg_free(&b->pending);
    return 1;
}

/* A receive's timeout in ms: none (nil, "infinity" or the atom) waits
 * without limit; a negative or non-number one is badarg, as in Erlang. */
static long timeout_arg(lua_State *L, int idx) {
    if (lua_isnoneornil(L, idx))
        return -1;
    if (lua_type(L, idx) == LUA_TSTRING && strcmp(lua_tostring(L, idx), "infinity") == 0)
        return -1;
    if (lua_istable(L, idx) && kind_of(L, idx) == K_ATOM) {
        lua_getfield(L, idx, "name");
        bool inf = strcmp(lua_tostring(L, -1), "infinity") == 0;
        lua_pop(L, 1);
        if (inf)
            return -1;
    }
    lua_Number t = lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : -1;
    if (!(t >= 0)) /* negative, NaN, or not a number */
        raise(L, "receive", "badarg",
              "the timeout must be a number of ms, 0 or more, or infinity (nil waits too)");
    return t > 1e12 ? (long)1e12 : (long)t;
}

/* Deadlines are in ns: one in ms would let a wait end up to 1 ms early
 * (receive after T waits at least T, as in Erlang). */
static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The deadline of a timeout in ms: -1 for none. */
static int64_t deadline_of(long timeout) {
    return timeout < 0 ? -1 : now_ns() + (int64_t)timeout * 1000000;
}

/* The ms to wait from now until deadline, rounded up (-1: no deadline). */
static long ms_until(int64_t deadline, int64_t now) {
    if (deadline < 0)
        return -1;
    return deadline > now ? (long)((deadline - now + 999999) / 1000000) : 0;
}

/* -- the scheduler: the run queue and the timer heap -- */

static void rq_push(lsched *s, lproc *p) {
    p->state = P_READY;
    p->next = NULL;
    if (s->rq_tail)
        s->rq_tail->next = p;
    else
        s->rq_head = p;
    s->rq_tail = p;
}

static lproc *rq_pop(lsched *s) {
    lproc *p = s->rq_head;
    if (p && !(s->rq_head = p->next))
        s->rq_tail = NULL;
    return p;
}

static void heap_swap(lsched *s, int i, int j) {
    lproc *t = s->heap[i];
    s->heap[i] = s->heap[j];
    s->heap[j] = t;
    s->heap[i]->heap_at = i;
    s->heap[j]->heap_at = j;
}

static void heap_fix(lsched *s, int i) {
    while (i > 0 && s->heap[(i - 1) / 2]->deadline > s->heap[i]->deadline) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < s->heap_n && s->heap[l]->deadline < s->heap[m]->deadline)
            m = l;
        if (l + 1 < s->heap_n && s->heap[l + 1]->deadline < s->heap[m]->deadline)
            m = l + 1;
        if (m == i)
            return;
        heap_swap(s, i, m);
        i = m;
    }
}

static void heap_del(lsched *s, lproc *p) {
    int i = p->heap_at;
    if (i < 0)
        return;
    p->heap_at = -1;
    if (i != --s->heap_n) {
        s->heap[i] = s->heap[s->heap_n];
        s->heap[i]->heap_at = i;
        heap_fix(s, i);
    }
}

/* p waits until its deadline (or a message). */
static void heap_add(lua_State *L, lsched *s, lproc *p) {
    if (s->heap_n == s->heap_cap) {
        int cap = s->heap_cap ? 2 * s->heap_cap : 16;
        lproc **h = realloc(s->heap, (size_t)cap * sizeof *h);
        if (!h)
            raise(L, "receive", "enomem", "out of memory for the timer heap");
        s->heap = h;
        s->heap_cap = cap;
    }
    p->heap_at = s->heap_n++;
    s->heap[p->heap_at] = p;
    heap_fix(s, p->heap_at);
}

/* A waiting process becomes ready (a message, or its deadline). */
static void wake(lsched *s, lproc *p) {
    if (p->state != P_WAITING)
        return;
    heap_del(s, p);
    rq_push(s, p);
}

static void end_proc(lua_State *L, lsched *s, lproc *p, int status);
static void check_alive(lua_State *L, const char *fn);

/* Resumes p's coroutine until it waits, yields or ends. */
static void run_proc(lua_State *L, lsched *s, lproc *p) {
    lproc *prev = s->current;
    s->current = p;
    p->state = P_RUNNING;
    int nres, nargs = p->started ? 0 : lua_gettop(p->co) - 1;
    p->started = true;
    int st = lua_resume(p->co, L, nargs, &nres);
    s->current = prev;
    if (st == LUA_YIELD) {
        lua_pop(p->co, nres);
        if (p->state == P_RUNNING) /* coroutine.yield or edrv.yield: ready again */
            rq_push(s, p);
        return;
    }
    end_proc(L, s, p, st);
}

/* Runs the others until `self` hears of news (a message, its end) or its
 * deadline passes; used by a process that cannot yield to the loop: the
 * script's own, or one waiting inside a coroutine of its own making. */
static void run_others(lua_State *L, lsched *s, lproc *self, int64_t deadline) {
    self->notified = false;
    for (;;) {
        for (lproc *p; !self->notified && (p = rq_pop(s));)
            run_proc(L, s, p);
        if (self->notified)
            return;
        int64_t now = now_ns();
        while (s->heap_n && s->heap[0]->deadline <= now)
            wake(s, s->heap[0]);
        if (s->rq_head)
            continue;
        if (deadline >= 0 && now >= deadline)
            return;
        int64_t until = deadline;
        if (s->heap_n && (until < 0 || s->heap[0]->deadline < until))
            until = s->heap[0]->deadline;
        void *tags[64];
        int n = edrv_waitset_wait(s->ws, ms_until(until, now), tags, 64);
        for (int i = 0; i < n; i++) {
            lproc *p = tags[i];
            p->notified = true;
            wake(s, p);
        }
    }
}

/* The calling process waits for news until deadline: a spawned process in
 * its own coroutine yields to the loop (and k continues the call when it is
 * resumed); any other runs the loop itself, and returns. */
static void wait_news(lua_State *L, int64_t deadline, lua_KFunction k) {
    lsched *s = sched_of(L);
    lproc *self = self_box(L);
    if (!s->ws) { /* no process was ever spawned: nobody else to run (sleep) */
        int64_t left = deadline - now_ns();
        if (deadline >= 0 && left > 0)
            nanosleep(&(struct timespec){left / 1000000000, (long)(left % 1000000000)}, NULL);
        return;
    }
    if (self->co == L && lua_isyieldable(L)) {
        self->state = P_WAITING;
        self->deadline = deadline;
        if (deadline >= 0)
            heap_add(L, s, self);
        lua_yieldk(L, 0, 0, k); /* does not return */
    }
    run_others(L, s, self, deadline);
}

/* The first saved message (receive_match put it aside), taken, or nothing. */
static int take_saved(lua_State *L, lproc *b) {
    if (b->saved_ref == LUA_NOREF)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->saved_ref);
    int saved = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, saved);
    if (n == 0) {
        lua_pop(L, 1);
        return 0;
    }
    lua_rawgeti(L, saved, 1);
    for (lua_Integer k = 1; k < n; k++) {
        lua_rawgeti(L, saved, k + 1);
        lua_rawseti(L, saved, k);
    }
    lua_pushnil(L);
    lua_rawseti(L, saved, n);
    lua_remove(L, saved);
    return 1;
}

/* receive's body, and its continuation after a yield: [1] is the deadline. */
static int receive_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    for (;;) {
        if (next_message(L, 0))
            return 1;
        int64_t deadline = lua_tointeger(L, 1);
        if (deadline >= 0 && now_ns() >= deadline) {
            lua_pushnil(L);
            return 1;
        }
        wait_news(L, deadline, receive_k);
    }
}

static int l_receive(lua_State *L) {
    long timeout = timeout_arg(L, 1);
    lproc *b = self_box(L);
    /* Messages put aside by receive_match come first, in order. */
    if (take_saved(L, b))
        return 1;
    if (!sched_of(L)->live) { /* nobody else to run: wait in the mailbox */
        if (next_message(L, timeout) == 0)
            lua_pushnil(L);
        return 1;
    }
    lua_settop(L, 0);
    lua_pushinteger(L, deadline_of(timeout));
    return receive_k(L, LUA_OK, 0);
}

/* edrv.sleep(ms): waits, leaving messages where they are (receive after
 * Ms -> ok end). [1] is the deadline. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    int64_t deadline = lua_tointeger(L, 1);
    check_alive(L, "sleep"); /* an exit signal that ended it stops it here */
    while (now_ns() < deadline) {
        wait_news(L, deadline, sleep_k);
        check_alive(L, "sleep");
    }
    return 0;
}

static int l_sleep(lua_State *L) {
    long ms = timeout_arg(L, 1);
    if (ms < 0)
        return raise(L, "sleep", "badarg", "sleep takes a number of ms");
    lua_settop(L, 0);
    lua_pushinteger(L, deadline_of(ms));
    return sleep_k(L, LUA_OK, 0);
}

/* edrv.yield(): lets the ready processes run (erlang:yield/0); true. */
static int yield_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    check_alive(L, "yield");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_yield(lua_State *L) {
    lsched *s = sched_of(L);
    lproc *self = self_box(L);
    if (self->co == L)
        return lua_yieldk(L, 0, 0, yield_k); /* run_proc queues it again */
    /* the others that are ready now run once each */
    size_t n = 0;
    for (lproc *p = s->rq_head; p; p = p->next)
        n++;
    for (lproc *p; n-- && (p = rq_pop(s));)
        run_proc(L, s, p);
    return yield_k(L, LUA_OK, 0);
}

/* -- processes: spawn, exit, links, monitors, send, names -- */

static uint64_t check_pid(lua_State *L, int idx, const char *fn) {
    if (lua_type(L, idx) != LUA_TTABLE || kind_of(L, idx) != K_PID)
        raise(L, fn, "badarg", lua_pushfstring(L, "argument %d must be a pid", idx));
    return (uint64_t)field_int(L, idx, "num") | (uint64_t)field_int(L, idx, "serial") << 32;
}

static void push_pid64(lua_State *L, uint64_t pid) {
    push_pid(L, (unsigned)pid, (unsigned)(pid >> 32));
}


/* The reference of monitor ref as a term object (edrv.h says its words). */
static void push_ref(lua_State *L, uint64_t ref) {
    erlang_ref r = {.node = "nonode@nohost",
                    .len = 3,
                    .n = {(unsigned)(ref & 0x3ffff), (unsigned)(ref >> 18), (unsigned)(ref >> 50)}};
    char buf[64];
    int i = 0;
    ei_encode_version(buf, &i);
    ei_encode_ref(buf, &i, &r);
    push_etf(L, buf, (size_t)i, "monitor");
}

/* The monitor number of a reference object, or 0. */
static uint64_t ref_number(lua_State *L, int idx) {
    if (lua_type(L, idx) != LUA_TTABLE || kind_of(L, idx) != K_OTHER)
        return 0;
    lua_getfield(L, idx, "etf");
    size_t n;
    const char *etf = lua_tolstring(L, -1, &n);
    erlang_ref r;
    int i = 0;
    uint64_t id = 0;
    if (etf && ei_decode_ref(etf, &i, &r) == 0 && (size_t)i == n && r.len == 3 &&
        strcmp(r.node, "nonode@nohost") == 0)
        id = (uint64_t)r.n[0] | (uint64_t)r.n[1] << 18 | (uint64_t)r.n[2] << 50;
    lua_pop(L, 1);
    return id;
}

/* The exit reason of a process whose function raised, as ETF: [1] the
 * error value, [2] the dead coroutine (light userdata), [3] its pid. The
 * reason of edrv.exit(Reason) is Reason; any other error's {Reason, Stack}
 * as in Erlang (Reason: an edrv error's reason as an atom, a term as
 * itself, anything else as its text; Stack: the text with its traceback),
 * and it is reported on stderr, as Erlang's error logger does. */
static int crash_reason(lua_State *L) {
    lua_State *co = lua_touserdata(L, 2);
    uint64_t pid = (uint64_t)lua_tointeger(L, 3);
    bool is_err = false;
    if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, MT_ERROR);
        is_err = lua_rawequal(L, -1, -2);
        lua_settop(L, 3);
        if (is_err && lua_getfield(L, 1, "exit_etf") == LUA_TSTRING)
            return 1; /* edrv.exit(Reason) */
        lua_settop(L, 3);
    }
    const char *msg = luaL_tolstring(L, 1, NULL); /* 4 */
    luaL_traceback(L, co, msg, 0);                /* 5 */
    size_t tlen;
    const char *trace = lua_tolstring(L, 5, &tlen);
    fprintf(stderr, "edrv: error in process <0.%llu.0>: %s\n", (unsigned long long)pid, trace);
    const char *atom = NULL;
    if (is_err) {
        lua_getfield(L, 1, "reason"); /* 6 */
        atom = lua_tostring(L, 6);
    }
    ei_x_buff r;
    ei_x_new(&r);
    int coded = atom && ei_x_encode_atom(&r, atom) == 0;
    if (!coded) {
        r.index = 0;
        lua_pushvalue(L, 1);
        coded = encode(L, lua_gettop(L), &r, 0) == 0;
    }
    if (!coded) {
        r.index = 0;
        ei_x_encode_binary(&r, msg, (long)strlen(msg));
    }
    ei_x_buff x;
    ei_x_new_with_version(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_append_buf(&x, r.buff, r.index);
    ei_x_encode_binary(&x, trace, (long)tlen);
    ei_x_free(&r);
    lua_pushlstring(L, x.buff, (size_t)x.index);
    ei_x_free(&x);
    return 1;
}

/* A process's end: its reason goes to its links and monitors. */
static void end_proc(lua_State *L, lsched *s, lproc *p, int status) {
    ei_x_buff x;
    ei_x_new_with_version(&x);
    edrv_msg why;
    bool signalled = false;
    if (status == LUA_OK) {
        ei_x_encode_atom(&x, "normal");
    } else if (edrv_proc_exit_reason(p->proc, &why) == 0) {
        edrv_msg_free(&why); /* an exit signal ended it: its links know */
        signalled = true;
    } else {
        /* The reason, built on L (the coroutine is dead: nothing may run
         * on it) and protected (a __tostring may raise). */
        lua_pushcfunction(L, crash_reason);
        lua_xmove(p->co, L, 1); /* the error value */
        lua_pushlightuserdata(L, p->co);
        lua_pushinteger(L, (lua_Integer)edrv_proc_pid(p->proc));
        if (lua_pcall(L, 3, 1, 0) == LUA_OK) {
            size_t n;
            const char *etf = lua_tolstring(L, -1, &n);
            ei_x_append_buf(&x, etf + 1, (int)n - 1);
        } else {
            ei_x_encode_atom(&x, "lua_error"); /* its __tostring raised */
        }
        lua_pop(L, 1);
    }
    if (signalled)
        edrv_proc_free(p->proc);
    else
        edrv_proc_exit(p->proc, x.buff, (size_t)x.index);
    ei_x_free(&x);
    p->proc = NULL;
    p->state = P_DONE;
    heap_del(s, p);
    s->live--;
    if (p->saved_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, p->saved_ref);
        p->saved_ref = LUA_NOREF;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &procs_key);
    lua_pushnil(L);
    lua_rawsetp(L, -2, p); /* the box, its coroutine: garbage now */
    lua_pop(L, 1);
}

static int spawn_as(lua_State *L, const char *fn, bool link, bool monitor) {
    if (lua_type(L, 1) != LUA_TFUNCTION)
        return raise(L, fn, "badarg", "argument 1 must be a function");
    lsched *s = sched_of(L);
    lproc *self = self_box(L);
    if (!s->ws) {
        s->ws = edrv_waitset_new();
        if (!s->ws || edrv_waitset_add(s->ws, s->main->proc, s->main) < 0)
            return raise(L, fn, "enomem", edrv_last_error());
    }
    int nargs = lua_gettop(L); /* the function and its arguments */
    lproc *p = lua_newuserdatauv(L, sizeof *p, 1);
    *p = (lproc){.saved_ref = LUA_NOREF, .heap_at = -1, .deadline = -1};
    luaL_setmetatable(L, MT_PROC);
    int box = lua_gettop(L);
    if (!(p->proc = edrv_proc_new()))
        return raise(L, fn, "enomem", edrv_last_error());
    if (edrv_waitset_add(s->ws, p->proc, p) < 0)
        return raise_rc(L, fn, EDRV_ENOMEM);
    p->co = lua_newthread(L);
    lua_setiuservalue(L, box, 1); /* the box keeps its coroutine */
    for (int i = 1; i <= nargs; i++)
        lua_pushvalue(L, i);
    lua_xmove(L, p->co, nargs);
    uint64_t pid = edrv_proc_pid(p->proc), ref = 0;
    int rc = link ? edrv_link(self->proc, pid) : 0;
    if (rc == 0 && monitor)
        rc = edrv_monitor(self->proc, pid, &ref);
    if (rc < 0)
        return raise_rc(L, fn, rc); /* the box frees the process */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &procs_key);
    lua_pushvalue(L, box);
    lua_rawsetp(L, -2, p);
    s->live++;
    rq_push(s, p);
    push_pid64(L, pid);
    if (!monitor)
        return 1;
    push_ref(L, ref);
    return 2;
}

static int l_spawn(lua_State *L) {
    return spawn_as(L, "spawn", false, false);
}

static int l_spawn_link(lua_State *L) {
    return spawn_as(L, "spawn_link", true, false);
}

static int l_spawn_monitor(lua_State *L) {
    return spawn_as(L, "spawn_monitor", false, true);
}

/* A call that may have ended the calling process (a signal to itself). */
static void check_alive(lua_State *L, const char *fn) {
    edrv_proc *self = self_proc(L);
    if (!edrv_is_process_alive(edrv_proc_pid(self))) {
        edrv_proc_status st;
        int rc = edrv_proc_info(self, &st); /* EDRV_EEXITED, and its detail */
        raise_rc(L, fn, rc < 0 ? rc : EDRV_ENOPROC);
    }
}

/* exit(Reason) ends the calling process; exit(Pid, Reason) sends a signal. */
static int l_exit(lua_State *L) {
    if (lua_gettop(L) >= 2) {
        uint64_t pid = check_pid(L, 1, "exit");
        ei_x_buff x;
        to_etf(L, 2, &x, "exit");
        int rc = edrv_exit(self_proc(L), pid, x.buff, (size_t)x.index);
        ei_x_free(&x);
        if (rc < 0)
            return raise_rc(L, "exit", rc);
        check_alive(L, "exit");
        lua_pushboolean(L, 1);
        return 1;
    }
    luaL_checkany(L, 1);
    ei_x_buff x;
    to_etf(L, 1, &x, "exit");
    char *text = NULL;
    edrv_term_format(x.buff, (size_t)x.index, &text);
    push_error(L, "exit", "exit", text ? text : "");
    free(text);
    lua_pushlstring(L, x.buff, (size_t)x.index);
    lua_setfield(L, -2, "exit_etf");
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "exit_reason");
    ei_x_free(&x);
    return lua_error(L);
}

static int l_link(lua_State *L) {
    int rc = edrv_link(self_proc(L), check_pid(L, 1, "link"));
    if (rc < 0)
        return raise_rc(L, "link", rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_unlink(lua_State *L) {
    int rc = edrv_unlink(self_proc(L), check_pid(L, 1, "unlink"));
    if (rc < 0)
        return raise_rc(L, "unlink", rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_monitor(lua_State *L) {
    const char *type = name_of(L, 1);
    if (!type || strcmp(type, "process") != 0)
        return raise(L, "monitor", "badarg", "only processes can be monitored (\"process\")");
    uint64_t ref;
    int rc = edrv_monitor(self_proc(L), check_pid(L, 2, "monitor"), &ref);
    if (rc < 0)
        return raise_rc(L, "monitor", rc);
    push_ref(L, ref);
    return 1;
}

/* Whether a message is {'DOWN', Ref, ...} for the reference at ref. */
static bool is_down_of(lua_State *L, int msg, int ref) {
    if (lua_type(L, msg) != LUA_TTABLE || kind_of(L, msg) != K_TUPLE || lua_rawlen(L, msg) != 5)
        return false;
    lua_rawgeti(L, msg, 1);
    const char *tag = name_of(L, -1);
    bool down = tag && strcmp(tag, "DOWN") == 0;
    lua_rawgeti(L, msg, 2);
    down = down && lua_compare(L, -1, ref, LUA_OPEQ);
    lua_pop(L, 2);
    return down;
}

/* demonitor(Ref [, {"flush", "info"}]) */
static int l_demonitor(lua_State *L) {
    uint64_t id = ref_number(L, 1);
    if (!id)
        return raise(L, "demonitor", "badarg", "argument 1 must be a monitor's reference");
    bool flush = false, info = false;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, 2); i++) {
            lua_rawgeti(L, 2, i);
            const char *o = name_of(L, -1);
            if (o && strcmp(o, "flush") == 0)
                flush = true;
            else if (o && strcmp(o, "info") == 0)
                info = true;
            else
                return raise(L, "demonitor", "badarg", "the options are \"flush\" and \"info\"");
            lua_pop(L, 1);
        }
    }
    lproc *b = self_box(L);
    int rc = edrv_demonitor(b->proc, id);
    if (rc < 0)
        return raise_rc(L, "demonitor", rc);
    if (flush) {
        /* its DOWN message, if it came: every message goes to the saved
         * list (in order), and the DOWN leaves it */
        if (b->saved_ref == LUA_NOREF) {
            lua_newtable(L);
            b->saved_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, b->saved_ref);
        int saved = lua_gettop(L);
        while (next_message(L, 0))
            lua_rawseti(L, saved, (lua_Integer)lua_rawlen(L, saved) + 1);
        lua_Integer n = (lua_Integer)lua_rawlen(L, saved), to = 0;
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, saved, i);
            if (is_down_of(L, lua_gettop(L), 1))
                lua_pop(L, 1);
            else
                lua_rawseti(L, saved, ++to);
        }
        for (lua_Integer i = to + 1; i <= n; i++) {
            lua_pushnil(L);
            lua_rawseti(L, saved, i);
        }
        lua_settop(L, saved - 1);
    }
    lua_pushboolean(L, info ? rc : 1);
    return 1;
}

/* send(Dest, Msg): Dest a pid or a registered name; Msg. */
static int l_send(lua_State *L) {
    luaL_checkany(L, 2);
    check_alive(L, "send"); /* a process that an exit signal ended sends nothing */
    uint64_t pid;
    const char *name = name_of(L, 1);
    if (name) {
        if (!(pid = edrv_whereis(name)))
            return raise(L, "send", "badarg",
                         lua_pushfstring(L, "no process is registered as '%s'", name));
    } else {
        pid = check_pid(L, 1, "send");
    }
    ei_x_buff x;
    to_etf(L, 2, &x, "send");
    int rc = edrv_send(pid, x.buff, (size_t)x.index);
    ei_x_free(&x);
    if (rc < 0)
        return raise_rc(L, "send", rc);
    lua_settop(L, 2);
    return 1;
}

static int l_register(lua_State *L) {
    const char *name = name_of(L, 1);
    if (!name)
        return raise(L, "register", "badarg", "argument 1 must be a name (a string or an atom)");
    int rc = edrv_register(name, check_pid(L, 2, "register"));
    if (rc < 0)
        return raise_rc(L, "register", rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_unregister(lua_State *L) {
    const char *name = name_of(L, 1);
    int rc = name ? edrv_unregister(name) : EDRV_EBADARG;
    if (rc < 0)
        return raise_rc(L, "unregister", rc);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_whereis(lua_State *L) {
    const char *name = name_of(L, 1);
    if (!name)
        return raise(L, "whereis", "badarg", "argument 1 must be a name (a string or an atom)");
    uint64_t pid = edrv_whereis(name);
    if (pid)
        push_pid64(L, pid);
    else
        push_atom(L, "undefined");
    return 1;
}

static int l_is_process_alive(lua_State *L) {
    lua_pushboolean(L, edrv_is_process_alive(check_pid(L, 1, "is_process_alive")));
    return 1;
}

static int l_self(lua_State *L) {
    uint64_t pid = edrv_proc_pid(self_proc(L));
    push_pid(L, (unsigned)pid, (unsigned)(pid >> 32));
    return 1;
}

static int l_monotonic_time(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000000000 + ts.tv_nsec);
    return 1;
}

static int l_memory(lua_State *L) {
    edrv_mem_stats st;
    edrv_memory(&st);
    lua_createtable(L, 0, EDRV_MEM_TYPES + 1);
    size_t total = 0;
    for (int i = 0; i < EDRV_MEM_TYPES; i++) {
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, (lua_Integer)st.bytes[i]);
        lua_setfield(L, -2, "bytes");
        lua_pushinteger(L, (lua_Integer)st.blocks[i]);
        lua_setfield(L, -2, "blocks");
        lua_setfield(L, -2, edrv_mem_type_name((edrv_mem_type)i));
        total += st.bytes[i];
    }
    lua_pushinteger(L, (lua_Integer)total);
    lua_setfield(L, -2, "total");
    lua_pushstring(L, edrv_allocator());
    lua_setfield(L, -2, "allocator");
    return 1;
}

static int l_pool(lua_State *L) {
    edrv_pool_stats st;
    edrv_pool(&st);
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, st.threads);
    lua_setfield(L, -2, "threads");
    lua_pushinteger(L, (lua_Integer)st.submitted);
    lua_setfield(L, -2, "submitted");
    lua_pushinteger(L, (lua_Integer)st.started);
    lua_setfield(L, -2, "started");
    lua_pushinteger(L, (lua_Integer)st.ready_async);
    lua_setfield(L, -2, "ready_async");
    lua_pushinteger(L, (lua_Integer)st.freed);
    lua_setfield(L, -2, "freed");
    lua_pushinteger(L, (lua_Integer)st.cancelled);
    lua_setfield(L, -2, "cancelled");
    lua_pushinteger(L, (lua_Integer)(st.submitted - st.started - st.cancelled));
    lua_setfield(L, -2, "queued");
    return 1;
}

/* edrv.isatty(fd): whether fd (default 1) is a terminal, e.g. to draw a
 * progress bar on stderr only for a person. */
/* edrv.strerror(reason): the C library's text for a POSIX error, named as
 * erl_errno_id names it ("enoent") or by its number; the name itself when
 * it is not one. */
static int l_strerror(lua_State *L) {
    if (lua_isinteger(L, 1)) {
        lua_pushstring(L, strerror((int)lua_tointeger(L, 1)));
        return 1;
    }
    const char *name = name_of(L, 1);
    if (!name)
        return raise(L, "strerror", "badarg", "a POSIX error's name or number");
    for (int e = 1; e < 256; e++)
        if (strcmp(erl_errno_id(e), name) == 0) {
            lua_pushstring(L, strerror(e));
            return 1;
        }
    lua_pushstring(L, name);
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_optinteger(L, 1, 1)));
    return 1;
}

/* edrv.type(x): the term kind of a value. */
static int l_type(lua_State *L) {
    luaL_checkany(L, 1);
    const char *t;
    switch (lua_type(L, 1)) {
    case LUA_TBOOLEAN: t = "atom"; break;
    case LUA_TNUMBER: t = lua_isinteger(L, 1) ? "integer" : "float"; break;
    case LUA_TSTRING: t = "binary"; break;
    case LUA_TTABLE: {
        term_kind mt = kind_of(L, 1);
        t = mt == K_ATOM ? "atom" : mt == K_TUPLE ? "tuple" : mt == K_LIST ? "list"
            : mt == K_MAP ? "map" : mt == K_PID ? "pid" : mt == K_PORT ? "port"
            : mt == K_OTHER ? "other" : "table";
        break;
    }
    default: t = luaL_typename(L, 1);
    }
    lua_pushstring(L, t);
    return 1;
}

/* ---- matching -------------------------------------------------------------------------------- */

/* Matches the value at v against the pattern at p; binds edrv.var captures
 * into the table at b. */
static int match(lua_State *L, int v, int p, int b, int depth) {
    if (depth > 1000)
        raise(L, "match", "badarg", "a pattern nested deeper than 1000 levels (a cycle?)");
    luaL_checkstack(L, 8, "pattern too deep"); /* three slots a level, as encode */
    if (luaL_testudata(L, p, MT_ANY))
        return 1;
    if (luaL_testudata(L, p, MT_VAR)) {
        lua_getiuservalue(L, p, 1); /* the name */
        if (lua_rawget(L, b) != LUA_TNIL) { /* bound already: must be equal */
            int eq = lua_compare(L, -1, v, LUA_OPEQ);
            lua_pop(L, 1);
            return eq;
        }
        lua_pop(L, 1);
        lua_getiuservalue(L, p, 1);
        lua_pushvalue(L, v);
        lua_rawset(L, b);
        return 1;
    }
    if (lua_type(L, p) != LUA_TTABLE || lua_type(L, v) != LUA_TTABLE)
        return lua_compare(L, v, p, LUA_OPEQ);
    term_kind mp = kind_of(L, p), mv = kind_of(L, v);
    if (mp == K_ATOM || mp == K_PID || mp == K_PORT || mp == K_OTHER)
        return lua_compare(L, v, p, LUA_OPEQ);
    if (mp != mv && !(mp == K_NONE && mv == K_LIST) && !(mp == K_NONE && mv == K_MAP))
        return 0;
    int is_map = mp == K_MAP || (mp == K_NONE && mv == K_MAP);
    if (!is_map && lua_rawlen(L, p) != lua_rawlen(L, v))
        return 0;
    /* Every key of the pattern must match (a map pattern may be partial). */
    for (lua_pushnil(L); lua_next(L, p); lua_pop(L, 1)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, v);
        int ok = !lua_isnil(L, -1) &&
                 match(L, lua_gettop(L), lua_gettop(L) - 1, b, depth + 1);
        lua_pop(L, 1);
        if (!ok) {
            lua_pop(L, 2);
            return 0;
        }
    }
    if (!is_map) { /* an improper tail in the value needs one in the pattern */
        int tv = lua_getfield(L, v, "tail") != LUA_TNIL;
        int tp = lua_getfield(L, p, "tail") != LUA_TNIL;
        lua_pop(L, 2);
        if (tv != tp)
            return 0;
    }
    return 1;
}

static int l_match(lua_State *L) {
    luaL_checkany(L, 1);
    luaL_checkany(L, 2);
    lua_newtable(L);
    int b = lua_gettop(L);
    if (!match(L, 1, 2, b, 0))
        lua_pushnil(L);
    else
        lua_pushvalue(L, b);
    return 1;
}

static int l_var(lua_State *L) {
    luaL_checkstring(L, 1);
    lua_newuserdatauv(L, 1, 1);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    luaL_setmetatable(L, MT_VAR);
    return 1;
}

/* receive_match(pattern [, timeout_ms]): the first message that matches, and
 * its bindings; the others stay, in order, for later receives. */
static int receive_match_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    /* [1] pattern, [2] deadline, [3] saved messages, [4] bindings */
    for (;;) {
        int64_t deadline = lua_tointeger(L, 2);
        long wait = 0; /* with nobody else to run, it waits in the mailbox */
        if (!sched_of(L)->live)
            wait = ms_until(deadline, now_ns());
        if (next_message(L, wait)) {
            if (match(L, 5, 1, 4, 0)) {
                lua_pushvalue(L, 4);
                return 2;
            }
            lua_rawseti(L, 3, (lua_Integer)lua_rawlen(L, 3) + 1);
            lua_newtable(L);
            lua_replace(L, 4);
            continue;
        }
        if (deadline >= 0 && now_ns() >= deadline) {
            lua_pushnil(L);
            return 1;
        }
        if (sched_of(L)->live)
            wait_news(L, deadline, receive_match_k);
    }
}

static int l_receive_match(lua_State *L) {
    luaL_checkany(L, 1);
    long timeout = timeout_arg(L, 2);
    lproc *b = self_box(L);
    lua_settop(L, 1);
    lua_pushinteger(L, deadline_of(timeout)); /* 2 */
    if (b->saved_ref == LUA_NOREF) {
        lua_newtable(L);
        b->saved_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, b->saved_ref); /* 3 */
    lua_newtable(L);                                 /* 4: bindings */
    lua_Integer n = (lua_Integer)lua_rawlen(L, 3);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        if (match(L, lua_gettop(L), 1, 4, 0)) {
            /* remove it from the saved list */
            for (lua_Integer k = i; k < n; k++) {
                lua_rawgeti(L, 3, k + 1);
                lua_rawseti(L, 3, k);
            }
            lua_pushnil(L);
            lua_rawseti(L, 3, n);
            lua_pushvalue(L, 4);
            return 2;
        }
        lua_pop(L, 1);
        lua_newtable(L);
        lua_replace(L, 4);
    }
    return receive_match_k(L, LUA_OK, 0);
}

/* ---- the module ----------------------------------------------------------------------------------- */

static const luaL_Reg funcs[] = {
    {"load_driver", l_load_driver},
    {"unload_driver", l_unload_driver},
    {"open_port", l_open_port},
    {"port_command", l_port_command},
    {"port_control", l_port_control},
    {"port_call", l_port_call},
    {"port_close", l_port_close},
    {"port_info", l_port_info},
    {"receive", l_receive},
    {"receive_match", l_receive_match},
    {"match", l_match},
    {"compare", l_compare},
    {"process_flag", l_process_flag},
    {"sort", l_sort},
    {"var", l_var},
    {"self", l_self},
    {"spawn", l_spawn},
    {"spawn_link", l_spawn_link},
    {"spawn_monitor", l_spawn_monitor},
    {"exit", l_exit},
    {"link", l_link},
    {"unlink", l_unlink},
    {"monitor", l_monitor},
    {"demonitor", l_demonitor},
    {"send", l_send},
    {"register", l_register},
    {"unregister", l_unregister},
    {"whereis", l_whereis},
    {"is_process_alive", l_is_process_alive},
    {"sleep", l_sleep},
    {"yield", l_yield},
    {"monotonic_time", l_monotonic_time},
    {"memory", l_memory},
    {"pool", l_pool},
    {"atom", l_atom},
    {"tuple", l_tuple},
    {"list", l_list},
    {"map", l_map},
    {"string", l_string},
    {"type", l_type},
    {"isatty", l_isatty},
    {"strerror", l_strerror},
    {"format", l_format},
    {"iolist_to_binary", l_iolist_to_binary},
    {"list_to_binary", l_iolist_to_binary},
    {"binary_to_list", l_binary_to_list},
    {"term_to_binary", l_term_to_binary},
    {"binary_to_term", l_binary_to_term},
    {NULL, NULL},
};

static void new_term_mt(lua_State *L, const char *name, term_kind kind, lua_CFunction eq) {
    luaL_newmetatable(L, name);
    lua_pushinteger(L, kind);
    lua_rawsetp(L, -2, &kind_key);
    lua_pushcfunction(L, term_tostring);
    lua_setfield(L, -2, "__tostring");
    if (eq) {
        lua_pushcfunction(L, eq);
        lua_setfield(L, -2, "__eq");
    }
    lua_pushstring(L, name + 5); /* "Atom", "Tuple", ... */
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

int edrv_lua_open(lua_State *L, int async_threads) {
    int owns = 0;
    edrv_options o = {.async_threads = async_threads};
    int rc = edrv_start(&o);
    if (rc == 0)
        owns = 1;
    else if (rc != EDRV_ERUNNING)
        return luaL_error(L, "edrv: cannot start the runtime: %s", edrv_last_error());

    new_term_mt(L, MT_ATOM, K_ATOM, NULL);
    new_term_mt(L, MT_TUPLE, K_TUPLE, NULL);
    new_term_mt(L, MT_LIST, K_LIST, NULL);
    new_term_mt(L, MT_MAP, K_MAP, NULL);
    new_term_mt(L, MT_PID, K_PID, pid_eq);
    new_term_mt(L, MT_PORT, K_PORT, port_eq);
    new_term_mt(L, MT_OTHER, K_OTHER, other_eq);
    luaL_newmetatable(L, MT_ERROR);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    luaL_newmetatable(L, MT_ANY);
    lua_pop(L, 1);
    luaL_newmetatable(L, MT_VAR);
    lua_pop(L, 1);

    lua_newtable(L); /* interned atoms, weak values */
    lua_createtable(L, 0, 1);
    lua_pushstring(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_ATOMS);
    lua_newtable(L); /* interned pids, weak values */
    lua_createtable(L, 0, 1);
    lua_pushstring(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_PIDS);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &procs_key);

    lua_createtable(L, D_PORTS, 0); /* the decoder's cache (decode), weak values */
    static const struct {
        int at;
        const char *mt;
    } mts[] = {{D_TUPLE, MT_TUPLE}, {D_LIST, MT_LIST}, {D_MAP, MT_MAP}, {D_PORT, MT_PORT}};
    for (size_t i = 0; i < sizeof mts / sizeof mts[0]; i++) {
        luaL_getmetatable(L, mts[i].mt);
        lua_rawseti(L, -2, mts[i].at);
    }
    lua_pushstring(L, "id");
    lua_rawseti(L, -2, D_ID);
    lua_createtable(L, 0, 1);
    lua_pushstring(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &decode_key);

    /* The runtime (if this state started it) outlives the process: the
     * runtime box is created first, so lua_close collects it last. */
    runtime_box *rb = lua_newuserdatauv(L, sizeof *rb, 0);
    rb->owns_runtime = owns;
    luaL_newmetatable(L, MT_RUNTIME);
    lua_pushcfunction(L, runtime_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "edrv.runtime");

    /* The scheduler before the script's process, so that lua_close
     * collects it after every process (the wait set must be empty). */
    lsched *sc = lua_newuserdatauv(L, sizeof *sc, 1);
    *sc = (lsched){0};
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, sched_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lproc *pb = lua_newuserdatauv(L, sizeof *pb, 0);
    *pb = (lproc){.saved_ref = LUA_NOREF, .heap_at = -1, .deadline = -1};
    pb->proc = edrv_proc_new();
    luaL_newmetatable(L, MT_PROC);
    lua_pushcfunction(L, proc_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if (!pb->proc)
        return luaL_error(L, "edrv: cannot create a process: %s", edrv_last_error());
    sc->main = sc->current = pb;
    lua_setiuservalue(L, -2, 1); /* the scheduler keeps the script's process */
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &proc_key);

    luaL_newlibtable(L, funcs);
    lua_insert(L, -2);                  /* the table, then UP_PROC */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &decode_key); /* UP_DECODE */
    luaL_setfuncs(L, funcs, 2);
    lua_newuserdatauv(L, 0, 0);
    luaL_setmetatable(L, MT_ANY);
    lua_setfield(L, -2, "_"); /* the wildcard of match patterns */
    lua_pushstring(L, EDRV_VERSION_STRING);
    lua_setfield(L, -2, "version");
    return 1;
}

int edrv_lua_renew_process(lua_State *L) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &proc_key);
    lsched *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lproc *m = s ? s->main : NULL;
    edrv_msg why;
    if (!m || !m->proc || edrv_proc_exit_reason(m->proc, &why) != 0)
        return 0;
    char *text = NULL;
    edrv_term_format(why.data, why.len, &text);
    edrv_msg_free(&why);
    edrv_proc *np = edrv_proc_new();
    if (!np) {
        free(text);
        return -1;
    }
    uint64_t old = edrv_proc_pid(m->proc);
    edrv_msg_free(&m->pending);
    edrv_proc_free(m->proc);
    m->proc = np;
    if (m->saved_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, m->saved_ref);
        m->saved_ref = LUA_NOREF;
    }
    if (s->ws)
        edrv_waitset_add(s->ws, np, m);
    s->current = m;
    fprintf(stderr, "edrv: an exit signal ended the shell's process <0.%llu.0>: %s; "
            "<0.%llu.0> takes its place\n", (unsigned long long)old, text ? text : "?",
            (unsigned long long)edrv_proc_pid(np));
    free(text);
    return 1;
}

/* require "edrv" from a stock lua5.4: the pool size comes from
 * $EDRV_ASYNC_THREADS (default: the number of CPUs). */
LUALIB_API int luaopen_edrv(lua_State *L) {
    /* lua5.4 opens C modules with RTLD_LOCAL, which would hide libedrv's
     * driver API from the drivers it loads: make libedrv global. */
    Dl_info info;
    if (dladdr((void *)edrv_start, &info) && info.dli_fname &&
        !dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL))
        return luaL_error(L, "edrv: cannot make %s global: %s", info.dli_fname, dlerror());
    const char *env = getenv("EDRV_ASYNC_THREADS");
    return edrv_lua_open(L, env ? atoi(env) : 0);
}
