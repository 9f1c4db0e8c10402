#!/usr/bin/env bash
# The installed library works as a user would use it: install into a scratch
# prefix, build the example host program with pkg-config (shared, then
# static), and run it against the example driver.
# usage: install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" > /dev/null
pc="$prefix/lib/pkgconfig"
[ -d "$pc" ] || pc=$(dirname "$(find "$prefix" -name edrv.pc)")
export PKG_CONFIG_PATH=$pc
cc="${CC:-cc} ${EDRV_SAN_FLAGS:-}" # a sanitizer build links its runtime too
# shellcheck disable=SC2046
$cc -o "$prefix/host" "$src/examples/host.c" $(pkg-config --cflags --libs edrv) \
  -Wl,-rpath,"$(pkg-config --variable=libdir edrv)"
"$prefix/host" "$build/drivers" | grep -q 'received  {#Port<0.1>,{data,<<"hello">>}}'
# Static, as the README says: edrv-static.pc links libedrv.a.
# shellcheck disable=SC2046
$cc -o "$prefix/host-static" "$src/examples/host.c" $(pkg-config --cflags --libs edrv-static)
if ldd "$prefix/host-static" | grep -q libedrv; then
  echo "host-static links libedrv.so: not static" >&2; exit 1
fi
"$prefix/host-static" "$build/drivers" | grep -q 'control 1 -> SHOUT'
echo "installed library: shared and static builds of the example host work"

# The installed command, outside the source tree and with no environment:
# it starts (its run path finds libedrv), finds its example drivers and
# scripts, and runs the main job as the pipeline does. (A sanitizer build's
# drivers need the sanitizer runtime, which the command has: same check.)
data=$(mktemp -d)
trap 'rm -rf "$prefix" "$data"' EXIT
mkdir -p "$data/t/d"
printf 'one' > "$data/t/a"
printf 'two' > "$data/t/d/b"
want=$(cd "$data" && find t -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
got=$(cd "$data" && env -u EDRV_DRIVERS -u LD_LIBRARY_PATH "$prefix/bin/edrv" sha256sum.lua t)
[ "$got" = "$want" ] || { echo "installed main job: got '$got', want '$want'" >&2; exit 1; }
got=$(cd / && "$prefix/bin/edrv" -e 'print(edrv.load_driver(edrv.drivers_dir, "echo_drv"))')
[ "$got" = "ok" ] || { echo "installed drivers: $got" >&2; exit 1; }
echo "installed command: it starts, and runs sha256sum.lua with its drivers"

# The installed Erlang application: erl finds it through ERL_LIBS, as
# docs/node.md says, and it is the edrv application of this build.
lib=$(find "$prefix" -path '*/lib/erlang/lib' -type d | head -1)
[ -n "$lib" ] || { echo "installed Erlang application: no lib/erlang/lib under the prefix" >&2; exit 1; }
got=$(cd / && ERL_LIBS=$lib erl -noshell -eval '
  ok = application:load(edrv),
  {module, edrv} = code:ensure_loaded(edrv),
  true = lists:prefix(os:getenv("ERL_LIBS"), code:which(edrv)),
  io:format("~s", [edrv:format_error(noconnection)]), halt().')
[ "$got" = "the edrv node cannot be reached" ] ||
  { echo "installed Erlang application: got '$got'" >&2; exit 1; }
echo "installed Erlang application: erl loads it from ERL_LIBS"
