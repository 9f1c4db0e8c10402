/* lua_edrv.h: the Lua module edrv (lua_edrv.c), for the edrv command. */
#ifndef EDRV_LUA_EDRV_H
#define EDRV_LUA_EDRV_H

#include <lua.h>

/* Opens the module (pushes its table), starting the runtime with
 * async_threads pool threads (0: one per CPU) unless it is running already;
 * a runtime this call started stops when the state closes. */
int edrv_lua_open(lua_State *L, int async_threads);
/* The entry point for require "edrv". */
int luaopen_edrv(lua_State *L);

#endif
