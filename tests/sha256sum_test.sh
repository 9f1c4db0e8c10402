#!/usr/bin/env bash
# The main job against coreutils: on a generated tree (empty files, large
# files, odd names, nested and empty directories, symlinks that find -type f
# skips), `edrv examples/sha256sum.lua PATH...` prints exactly what
#   find PATH... -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
# prints.
# usage: sha256sum_test.sh EDRV_BINARY SCRIPT DRIVERS_DIR
set -uo pipefail
edrv=$(realpath "$1") script=$(realpath "$2") drivers=$(realpath "$3")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
passed=0 failed=0

mkdir -p tree/a/b/c tree/empty_dir "tree/sp ace" tree/deep/1/2/3/4/5/6/7/8
: > tree/empty
printf 'x' > tree/one_byte
head -c 33554432 /dev/urandom > tree/a/large      # 32 MiB: many read chunks
head -c 262145 /dev/urandom > tree/a/b/chunk_plus_one
for i in $(seq 1 300); do printf 'file %d\n' "$i" > "tree/a/b/c/f$i"; done
printf 'n' > "tree/sp ace/new
line"
printf 'b' > 'tree/back\slash'
printf 'r' > "tree/carriage"$'\r'"return"
printf 'u' > 'tree/ünïcødé'
printf 'd' > 'tree/-dash'
printf 'q' > "tree/quote'\""
printf 'z' > tree/deep/1/2/3/4/5/6/7/8/bottom
ln -s one_byte tree/link_to_file
ln -s a tree/link_to_dir
ln -s nowhere tree/dangling

run() { # name, paths...
  local name=$1; shift
  local want got
  want=$(find "$@" -type f -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum; echo x)
  got=$("$edrv" -A 2 "$script" --drivers "$drivers" "$@" 2>/dev/null; echo x)
  if [ "$want" == "$got" ]; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"
    diff <(echo "$want") <(echo "$got") | head -10
  fi
}

run tree tree
run trailing_slash tree/
run several_paths tree/a "tree/sp ace" tree/empty
run a_file tree/one_byte
run empty_dir tree/empty_dir
run dot_path ./tree/a/b

# A missing path: reported on stderr, exit status 1, the rest still done.
out=$("$edrv" "$script" --drivers "$drivers" tree/a/b/c missing 2> err.txt)
status=$?
if [ $status -eq 1 ] && grep -q "missing': No such file or directory" err.txt &&
   [ "$(echo "$out" | wc -l)" -eq 300 ]; then
  passed=$((passed + 1)); echo "ok   missing_path"
else
  failed=$((failed + 1)); echo "FAIL missing_path: status $status"; cat err.txt
fi

# -v: the summary on stderr.
"$edrv" "$script" --drivers "$drivers" -v tree/a > /dev/null 2> err.txt
if grep -qE '^30[0-9] files, [0-9]+ bytes in .* pool: [0-9]+ threads' err.txt; then
  passed=$((passed + 1)); echo "ok   summary"
else
  failed=$((failed + 1)); echo "FAIL summary:"; cat err.txt
fi

# A usage error.
"$edrv" "$script" > /dev/null 2>&1
if [ $? -eq 2 ]; then passed=$((passed + 1)); echo "ok   usage"; else failed=$((failed + 1)); echo "FAIL usage"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
