/* For the statically linked Lua only: there is no dlopen, so lpeg is
 * compiled in and offered through package.preload, which `require "lpeg"`
 * consults before the C searcher. linit.c is compiled with its
 * luaL_openlibs renamed to luaL_openlibs_base. */
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

void luaL_openlibs_base(lua_State *L);
int luaopen_lpeg(lua_State *L);

LUALIB_API void luaL_openlibs(lua_State *L) {
    luaL_openlibs_base(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_lpeg);
    lua_setfield(L, -2, "lpeg");
    lua_pop(L, 1);
}
