/*
 * fuzz_lua: the Lua module's term conversion (lua/lua_edrv.c, compiled into
 * this program for its static functions): push_etf, the ETF -> Lua decoder,
 * and to_etf, the Lua -> ETF encoder.
 *
 * push_etf decodes what edrv hands the script, messages and port_call
 * replies, which edrv__etf_measure has passed; so the bytes are decoded when
 * they measure as one term, as on those paths. Then the round trip: the value
 * encodes (unless it holds an opaque term or nests too deep for the
 * encoder), its encoding measures as one term, and decoding and encoding that
 * again gives the same bytes: the first trip may normalize (a charlist of
 * small integers becomes a string, a pid loses its node), the second changes
 * nothing. A map whose keys are tables may come out in another order, so
 * there only the length must match.
 */
#include "lua_edrv.c"

#include "fuzz_common.h"
#include "fuzz_known.h"

#include <lualib.h>

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_runtime(); /* so that edrv_lua_open finds it running */
    L = luaL_newstate();
    FUZZ_CHECK(L, "luaL_newstate");
    edrv_lua_open(L, 1);
    lua_pop(L, 1);
    return 0;
}

/* Whether the term has a map anywhere (bytes from the encoder: sound). */
static bool has_map(const char *buf) {
    int idx = 1, type, size, arity;
    uint64_t need = 1;
    while (need--) {
        ei_get_type(buf, &idx, &type, &size);
        if (type == ERL_MAP_EXT)
            return true;
        if (type == ERL_SMALL_TUPLE_EXT || type == ERL_LARGE_TUPLE_EXT) {
            ei_decode_tuple_header(buf, &idx, &arity);
            need += (uint64_t)arity;
        } else if (type == ERL_LIST_EXT) {
            ei_decode_list_header(buf, &idx, &arity);
            need += (uint64_t)arity + 1;
        } else {
            FUZZ_CHECK(ei_skip_term(buf, &idx) == 0, "skip at %d", idx);
        }
    }
    return false;
}

/* Encodes the value on top of the stack into x (ei_x_free'd by the caller on
 * success); false when the encoder refuses it for its one reason (nesting). */
static bool encode_top(ei_x_buff *x) {
    ei_x_new_with_version(x);
    int top = lua_gettop(L);
    if (encode(L, top, x, 0) == 0) {
        lua_settop(L, top);
        return true;
    }
    const char *why = lua_gettop(L) > top ? lua_tostring(L, -1) : NULL;
    FUZZ_CHECK(why && (strstr(why, "nesting deeper than")),
               "the encoder refused a decoded value: %s", why ? why : "(no reason)");
    ei_x_free(x);
    lua_settop(L, top);
    return false;
}

/* The two encodings, freed after each input, since decoding may raise. */
static ei_x_buff e1, e2;
static int stage; /* 1: e1 holds the first encoding */

/* Under lua_pcall: decoding may raise (badarg, or a NaN map key Lua refuses). */
static int trip(lua_State *l) {
    const char *buf = lua_touserdata(l, 1);
    size_t len = (size_t)lua_tointeger(l, 2);
    lua_settop(l, 0);
    push_etf(l, buf, len, "fuzz");
    if (!encode_top(&e1))
        return 0;
    stage = 1;
    FUZZ_CHECK(edrv__etf_measure(e1.buff, (size_t)e1.index) == (ssize_t)e1.index, "encoded %d bytes "
               "that are not one term", e1.index);
    lua_settop(l, 0);
    push_etf(l, e1.buff, (size_t)e1.index, "fuzz");
    FUZZ_CHECK(encode_top(&e2), "the second encoding failed");
    stage = 2;
    FUZZ_CHECK(e1.index == e2.index, "round trip: %d bytes, then %d", e1.index, e2.index);
    FUZZ_CHECK(has_map(e1.buff) || memcmp(e1.buff, e2.buff, (size_t)e1.index) == 0,
               "round trip: other bytes");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *buf = fuzz_fence(data, size);
    if (edrv__etf_measure(buf, size) != (ssize_t)size || fuzz_skip(buf, size))
        return 0;
    stage = 0;
    lua_settop(L, 0);
    lua_pushcfunction(L, trip);
    lua_pushlightuserdata(L, (void *)buf);
    lua_pushinteger(L, (lua_Integer)size);
    int rc = lua_pcall(L, 2, 0, 0);
    /* A raised error is a clean refusal of the input, not of the encoder's
     * own bytes. */
    FUZZ_CHECK(rc == LUA_OK || stage == 0, "the encoder's bytes do not decode: %s",
               lua_tostring(L, -1));
    lua_settop(L, 0);
    if (stage >= 1)
        ei_x_free(&e1);
    if (stage >= 2)
        ei_x_free(&e2);
    return 0;
}
