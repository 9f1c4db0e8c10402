#!/usr/bin/env bash
# libedrv exports exactly the driver API of OTP's erl_driver.h and edrv_*:
# every function the header declares, and nothing else (libei stays hidden).
# With --all-of, the file (a program linked with libedrv.a) need only export
# all of the driver API, whatever else it exports.
# usage: exports.sh [--all-of] LIBEDRV.so|PROGRAM ERL_DRIVER_H
set -euo pipefail
all_of=0
if [[ ${1:-} == --all-of ]]; then all_of=1; shift; fi
lib=$1 header=$2
want=$(mktemp) have=$(mktemp)
trap 'rm -f "$want" "$have"' EXIT
# Declarations are "EXTERN <type> name(" possibly across lines: join, then pick.
tr '\n' ' ' < "$header" | grep -oE 'EXTERN[^;(]*\(' | sed -E 's/.*[^A-Za-z0-9_]([A-Za-z0-9_]+)[[:space:]]*\($/\1/' \
  | grep -v '^[A-Z_]*$' | sort -u > "$want"
echo driver_term_nil >> "$want"
nm -D --defined-only "$lib" | awk '{print $3}' | sort -u > "$have"
missing=$(comm -23 <(sort -u "$want") "$have")
extra=$(comm -13 <(sort -u "$want") "$have" | grep -v -e '^edrv_' -e '^driver_async_cancel$' -e '^__odr_asan' || true)
# driver_async_cancel: the original API's, declared in edrv.h; __odr_asan: ASan's markers
status=0
[ -z "$missing" ] || { echo "not exported: $missing"; status=1; }
[ -z "$extra" ] || ((all_of)) || { echo "exported but not driver API or edrv_*: $extra"; status=1; }
echo "$(wc -l < "$want") driver API symbols, $(grep -c '^edrv_' "$have") edrv_ symbols exported"
exit $status
