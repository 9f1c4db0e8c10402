#!/usr/bin/env bash
# In a sanitizer build, every driver in DRIVERS_DIR is instrumented (it needs
# the sanitizer's runtime, so ASan/TSan see the drivers' own bugs), and none
# of the plain copies in ERL_DIR is (erl, which loads them, has no runtime).
# usage: sanitized_drivers.sh DRIVERS_DIR ERL_DIR RUNTIME (asan or tsan)
set -euo pipefail
drivers=$1 erl=$2 runtime=$3
needs() { readelf -d "$1" | grep -q "NEEDED.*lib$runtime\.so"; }
n=0
for so in "$drivers"/*.so; do
  [ "$(basename "$so")" = ld_notelf.so ] && continue # not an ELF file at all
  needs "$so" || { echo "not instrumented: $so"; exit 1; }
  plain="$erl/$(basename "$so")"
  [ -f "$plain" ] || { echo "no plain copy: $plain"; exit 1; }
  needs "$plain" && { echo "instrumented, but erl loads it: $plain"; exit 1; }
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "no drivers in $drivers"; exit 1; }
echo "$n drivers instrumented with lib$runtime, their copies for erl plain"
