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
# Static: the archive in place of -ledrv, with the private libraries.
# shellcheck disable=SC2046
$cc -o "$prefix/host-static" "$src/examples/host.c" $(pkg-config --cflags edrv) \
  "$(pkg-config --variable=libdir edrv)/libedrv.a" \
  $(pkg-config --static --libs edrv | sed 's/-ledrv//')
"$prefix/host-static" "$build/drivers" | grep -q 'control 1 -> SHOUT'
echo "installed library: shared and static builds of the example host work"
