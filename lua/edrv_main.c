/*
 * edrv_main.c: the edrv command. It starts the runtime, opens a Lua 5.4
 * state with the edrv module loaded as the global `edrv`, and runs a script,
 * code given with -e, or a REPL (-i, with line editing and history).
 *
 * Exit status: 0 on success, 1 when the script fails, 2 on a usage error.
 */
#include "lua_edrv.h"
#include "node.h"

#include <edrv.h>
#include <lauxlib.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <stdarg.h>
#include <signal.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if EDRV_LUA_MIMALLOC
#include <mimalloc.h>
#endif

static const char usage[] =
    "usage: edrv [options] [SCRIPT.lua [ARGS...]]\n"
    "Runs Erlang linked-in drivers from Lua scripts.\n"
    "\n"
    "  -e CODE                 run CODE (may be given more than once)\n"
    "  -i                      enter the interactive REPL after the rest\n"
    "  -A N, --async-threads N size of the async thread pool (1..1024;\n"
    "                          default: the number of online CPUs)\n"
    "  -S N, --schedulers N    scheduler threads, which run queued calls,\n"
    "                          timers, fd events and finished async jobs\n"
    "                          (1..1024; default: $EDRV_SCHEDULERS, else 1)\n"
    "  --no-immediate          queue every call to a scheduler (by default the\n"
    "                          script's thread runs its own calls when it can);\n"
    "                          with -S 1, every driver callback runs on one thread\n"
    "  -h, --help              show this help and exit\n"
    "  -v, --version           show the version and exit\n"
    "  --                      stop handling options\n"
    "\n"
    "SCRIPT is a Lua 5.4 file; '-' reads it from standard input. ARGS are in\n"
    "the global table arg (arg[0] is SCRIPT). The module edrv is the global\n"
    "`edrv`; see `edrv -e 'for k in pairs(edrv) do print(k) end'`.\n"
    "Exit status: 0 on success, 1 on a script error, 2 on a usage error.\n";

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "edrv: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'edrv --help'.\n");
    va_end(ap);
    return 2;
}

/* The message handler: the error's text (error objects print through their
 * __tostring) with a traceback. */
static const char normal_exit; /* the error edrv.exit(normal) raised */

static int msghandler(lua_State *L) {
    if (lua_type(L, 1) == LUA_TTABLE && lua_getfield(L, 1, "reason") == LUA_TSTRING &&
        strcmp(lua_tostring(L, -1), "exit") == 0 && lua_getfield(L, 1, "detail") == LUA_TSTRING &&
        strcmp(lua_tostring(L, -1), "normal") == 0) {
        /* The script's process exited with reason normal: a success, as
         * when the script ends. */
        lua_pushlightuserdata(L, (void *)&normal_exit);
        return 1;
    }
    lua_settop(L, 1);
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int docall(lua_State *L, int nargs, int nres) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nres, base);
    lua_remove(L, base);
    return rc;
}

static int report(lua_State *L, int rc) {
    if (rc != LUA_OK && lua_touserdata(L, -1) == &normal_exit) {
        lua_pop(L, 1);
        rc = LUA_OK;
    }
    if (rc != LUA_OK) {
        fprintf(stderr, "edrv: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    return rc;
}

static int run_chunk(lua_State *L, int loadrc) {
    return report(L, loadrc == LUA_OK ? docall(L, 0, 0) : loadrc);
}

/* ---- the REPL -------------------------------------------------------------------- */

static int incomplete(lua_State *L, int rc) {
    if (rc == LUA_ERRSYNTAX) {
        size_t len;
        const char *msg = lua_tolstring(L, -1, &len);
        if (len >= 5 && strcmp(msg + len - 5, "<eof>") == 0) {
            lua_pop(L, 1);
            return 1;
        }
    }
    return 0;
}

/* Compiles a line as an expression ("return LINE") first, then as
 * statements, reading more lines while the chunk is incomplete. */
static int load_interactive(lua_State *L, char *line) {
    const char *ret = lua_pushfstring(L, "return %s", line);
    int rc = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");
    lua_remove(L, -2);
    if (rc == LUA_OK) {
        add_history(line);
        free(line);
        return LUA_OK;
    }
    lua_pop(L, 1);
    lua_pushstring(L, line);
    for (;;) {
        size_t len;
        const char *code = lua_tolstring(L, -1, &len);
        rc = luaL_loadbuffer(L, code, len, "=stdin");
        if (!incomplete(L, rc))
            break;
        char *more = readline(">> ");
        if (!more) { /* the input ended inside a chunk: its syntax error */
            rc = luaL_loadbuffer(L, code, len, "=stdin");
            break;
        }
        lua_pushfstring(L, "%s\n%s", lua_tostring(L, -1), more);
        lua_remove(L, -2); /* what we had */
        free(more);
    }
    const char *all = lua_tostring(L, rc == LUA_OK || rc == LUA_ERRSYNTAX ? -2 : -1);
    if (all)
        add_history(all);
    lua_remove(L, -2);
    free(line);
    return rc;
}

static void print_results(lua_State *L) {
    int n = lua_gettop(L);
    if (n == 0)
        return;
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        report(L, LUA_ERRRUN);
}

static void repl(lua_State *L) {
    char history[4096] = "";
    const char *home = getenv("HOME");
    if (home) {
        snprintf(history, sizeof history, "%s/.edrv_history", home);
        read_history(history);
    }
    printf("edrv %s (Lua 5.4); Ctrl-D to quit\n", EDRV_VERSION_STRING);
    for (char *line; (line = readline("edrv> ")) != NULL;) {
        if (!line[0]) {
            free(line);
            continue;
        }
        lua_settop(L, 0);
        int rc = load_interactive(L, line);
        if (rc == LUA_OK)
            rc = docall(L, 0, LUA_MULTRET);
        if (rc == LUA_OK)
            print_results(L);
        else
            report(L, rc);
        /* An exit signal that ended the shell's process: a new one takes
         * over, as the Erlang shell starts a new evaluator. */
        edrv_lua_renew_process(L);
    }
    printf("\n");
    if (history[0])
        write_history(history);
}

/* ---- main ---------------------------------------------------------------------------- */

/* The folder rel (relative to the folder of this executable, as installed)
 * if it exists: 1 and its path in out. */
static int installed_dir(const char *rel, char *out, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    if ((size_t)snprintf(out, cap, "%s/%s", exe, rel) >= cap)
        return 0;
    struct stat st;
    return stat(out, &st) == 0 && S_ISDIR(st.st_mode);
}

static int parse_threads(const char *s, int *out) {
    char *end;
    long n = strtol(s, &end, 10);
    if (!s[0] || *end || n < 1 || n > 1024)
        return -1;
    *out = (int)n;
    return 0;
}

/* print, then a look at standard output: with SIGPIPE ignored (as erl
 * ignores it), a reader that went away shows as a write error, which ends
 * the script (status 1) instead of letting it print for nothing. */
static int checked_print(lua_State *L) {
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, 0);
    if (ferror(stdout) || fflush(stdout) == EOF) {
        int e = errno;
        clearerr(stdout);
        return luaL_error(L, "standard output: %s", strerror(e));
    }
    return 0;
}

/* ---- the Lua state ------------------------------------------------------------
 * Its memory comes from the allocator behind driver_alloc (edrv_allocator):
 * with mimalloc, a script that receives messages, each a few tables, spends
 * a fifth less time than on glibc's malloc. Otherwise luaL_newstate's. The
 * panic and warning functions are then lauxlib's, done again: it does not
 * export them. */
#if EDRV_LUA_MIMALLOC
static void *mi_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        mi_free(ptr);
        return NULL;
    }
    return mi_realloc(ptr, nsize);
}

static int panic(lua_State *L) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                      : "error object is not a string";
    fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n", msg);
    fflush(stderr);
    return 0;
}

/* Warnings, as lauxlib: off until "@on"; a message may come in pieces. */
static int warn_on;
static void warn_fn(void *ud, const char *msg, int tocont) {
    static int cont; /* a piece of a message came before */
    (void)ud;
    if (!cont && !tocont && *msg == '@') {
        if (strcmp(msg, "@off") == 0)
            warn_on = 0;
        else if (strcmp(msg, "@on") == 0)
            warn_on = 1;
        return;
    }
    if (warn_on) {
        fprintf(stderr, "%s%s", cont ? "" : "Lua warning: ", msg);
        if (!tocont)
            fputc('\n', stderr);
        fflush(stderr);
    }
    cont = tocont;
}
#endif

static lua_State *new_state(void) {
#if EDRV_LUA_MIMALLOC
    if (strcmp(edrv_allocator(), "mimalloc") == 0) {
        lua_State *L = lua_newstate(mi_lua_alloc, NULL);
        if (L) {
            lua_atpanic(L, panic);
            lua_setwarnf(L, warn_fn, NULL);
        }
        return L;
    }
#endif
    return luaL_newstate();
}

int main(int argc, char **argv) {
    if (edrv_node_wanted(argc, argv))
        return edrv_node_main(argc, argv);
    int threads = 0, schedulers = 0, interactive = 0, script = 0, no_immediate = 0;
    const char *code[64];
    int ncode = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            script = i + 1 < argc ? i + 1 : 0;
            break;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            printf("edrv %s (erl_driver %d.%d, %s)\n", EDRV_VERSION_STRING,
                   ERL_DRV_EXTENDED_MAJOR_VERSION, ERL_DRV_EXTENDED_MINOR_VERSION, LUA_RELEASE);
            return 0;
        } else if (strcmp(a, "-i") == 0) {
            interactive = 1;
        } else if (strcmp(a, "--no-immediate") == 0) {
            no_immediate = 1;
        } else if (strcmp(a, "-e") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs an argument", a);
            if (ncode == 64)
                return usage_error("too many %s options", a);
            code[ncode++] = argv[++i];
        } else if (strcmp(a, "-A") == 0 || strcmp(a, "--async-threads") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs an argument", a);
            if (parse_threads(argv[++i], &threads) < 0)
                return usage_error("the pool size must be 1..1024, not '%s'", argv[i]);
        } else if (strncmp(a, "--async-threads=", 16) == 0) {
            if (parse_threads(a + 16, &threads) < 0)
                return usage_error("the pool size must be 1..1024, not '%s'", a + 16);
        } else if (strncmp(a, "-A", 2) == 0 && a[2]) {
            if (parse_threads(a + 2, &threads) < 0)
                return usage_error("the pool size must be 1..1024, not '%s'", a + 2);
        } else if (strcmp(a, "-S") == 0 || strcmp(a, "--schedulers") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs an argument", a);
            if (parse_threads(argv[++i], &schedulers) < 0)
                return usage_error("the schedulers must be 1..1024, not '%s'", argv[i]);
        } else if (strncmp(a, "--schedulers=", 13) == 0) {
            if (parse_threads(a + 13, &schedulers) < 0)
                return usage_error("the schedulers must be 1..1024, not '%s'", a + 13);
        } else if (strncmp(a, "-S", 2) == 0 && a[2]) {
            if (parse_threads(a + 2, &schedulers) < 0)
                return usage_error("the schedulers must be 1..1024, not '%s'", a + 2);
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else {
            script = i;
            break;
        }
    }
    if (!script && !ncode && !interactive)
        return usage_error("%s", "nothing to run: give a SCRIPT, -e CODE or -i");

    /* Ignored as erl ignores it: a driver that writes to a closed pipe gets
     * EPIPE, and this thread may run driver callbacks itself (edrv.h). */
    signal(SIGPIPE, SIG_IGN);
    edrv_options opts = {
        .async_threads = threads, .no_immediate = no_immediate, .schedulers = schedulers};
    int rc = edrv_start(&opts);
    if (rc < 0) {
        fprintf(stderr, "edrv: cannot start the runtime: %s\n", edrv_last_error());
        return 1;
    }
    lua_State *L = new_state();
    if (!L) {
        fprintf(stderr, "edrv: cannot create a Lua state\n");
        edrv_stop();
        return 1;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "print");
    lua_pushcclosure(L, checked_print, 1);
    lua_setglobal(L, "print");
    /* The module, as the global edrv and for require "edrv". */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    edrv_lua_open(L, threads);
    /* Where an installed edrv keeps its example drivers: edrv.drivers_dir
     * (nil in a build tree). */
    char drivers_dir[PATH_MAX];
    if (installed_dir(EDRV_REL_DRIVERS, drivers_dir, sizeof drivers_dir)) {
        lua_pushstring(L, drivers_dir);
        lua_setfield(L, -2, "drivers_dir");
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "edrv");
    lua_setglobal(L, "edrv");
    lua_pop(L, 1);

    /* arg: the script at 0, its arguments from 1, the rest below 0. */
    int base = script ? script : 0;
    lua_createtable(L, argc - base, base);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - base);
    }
    lua_setglobal(L, "arg");

    int status = 0;
    for (int i = 0; i < ncode && !status; i++)
        status = run_chunk(L, luaL_loadbuffer(L, code[i], strlen(code[i]), "=(command line)"));
    if (!status && script) {
        const char *path = strcmp(argv[script], "-") == 0 ? NULL : argv[script];
        /* A bare name that is not here: the installed scripts' folder
         * (edrv sha256sum.lua PATH... after make install). */
        char shared[PATH_MAX];
        if (path && !strchr(path, '/') && access(path, F_OK) != 0 &&
            installed_dir(EDRV_REL_SCRIPTS, shared, sizeof shared) &&
            strlen(shared) + 1 + strlen(path) < sizeof shared) {
            strcat(shared, "/");
            strcat(shared, path);
            if (access(shared, R_OK) == 0)
                path = shared;
        }
        int loadrc = luaL_loadfile(L, path);
        if (loadrc == LUA_OK) {
            int nargs = argc - script - 1;
            luaL_checkstack(L, nargs, "too many arguments");
            for (int i = script + 1; i < argc; i++)
                lua_pushstring(L, argv[i]);
            status = report(L, docall(L, nargs, 0));
        } else {
            status = report(L, loadrc);
        }
    }
    if (!status && interactive)
        repl(L);
    lua_close(L);
    edrv_stop();
    if (fflush(stdout) == EOF || ferror(stdout)) {
        if (!status)
            fprintf(stderr, "edrv: standard output: %s\n", strerror(errno));
        status = 1;
    }
    return status ? 1 : 0;
}
