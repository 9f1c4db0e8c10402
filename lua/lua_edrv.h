/* lua_edrv.h: the Lua module edrv (lua_edrv.c), for the edrv command. */
#ifndef EDRV_LUA_EDRV_H
#define EDRV_LUA_EDRV_H

#include <lua.h>

/* Opens the module (pushes its table), starting the runtime with
 * async_threads pool threads (0: one per CPU) unless it is running already;
 * a runtime this call started stops when the state closes. */
int edrv_lua_open(lua_State *L, int async_threads);
/* For the REPL: when an exit signal has ended the script's process, a new
 * process takes its place (the old pid and the reason go to stderr).
 * Returns 1 then, 0 when the process lives, -1 when out of memory. */
int edrv_lua_renew_process(lua_State *L);
/* The entry point for require "edrv". */
int luaopen_edrv(lua_State *L);

#endif
