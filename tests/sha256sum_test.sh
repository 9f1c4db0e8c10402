#!/usr/bin/env bash
# The main job against findutils and coreutils: on generated trees (empty
# and large files, odd names, nested and empty directories, symbolic links,
# FIFOs, devices, paths that cannot be read), `edrv examples/sha256sum.lua
# PATH...` must write exactly what
#   find PATH... -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
# writes in the C locale: the same standard output, the same standard error,
# and a failing status exactly when the pipeline fails (with pipefail: find
# or sha256sum).
# usage: sha256sum_test.sh EDRV_BINARY SCRIPT DRIVERS_DIR
set -uo pipefail
export LC_ALL=C
edrv=$(realpath "$1") script=$(realpath "$2") drivers=$(realpath "$3")
tmp=$(mktemp -d)
trap 'chmod -R u+rwx "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
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
mkfifo tree/fifo
ln -s loop tree/loop
# names for error messages
mkdir -p odd
for n in "new
line" "it's" 'a b' 'a\b' $'\xff\xfe' '$x' 'x"y' '#h' '~t'; do mkdir -p "odd/$n"; done

# Runs the pipeline and edrv on the same paths; compares what they write.
# Runs them as $as (a user) when set.
as=""
compare() { # name, paths...
  local name=$1; shift
  local run=()
  [ -n "$as" ] && run=(setpriv --reuid="$as" --regid="$as" --clear-groups --)
  "${run[@]}" bash -c 'set -o pipefail; find "$@" -type f -print0 | sort -z | xargs -0 -r sha256sum' \
    x "$@" > want.out 2> want.err
  local want_status=$?
  "${run[@]}" "$edrv" -A 2 "$script" --drivers "$drivers" "$@" > got.out 2> got.err
  local got_status=$?
  if cmp -s want.out got.out && cmp -s want.err got.err &&
     [ $((want_status == 0)) -eq $((got_status == 0)) ] && [ $got_status -le 1 ]; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name: status $got_status (the pipeline's: $want_status)"
    diff want.out got.out | head -10
    diff want.err got.err | head -10
  fi
}

compare tree tree
compare trailing_slash tree/
compare several_paths tree/a "tree/sp ace" tree/empty
compare a_file tree/one_byte
compare empty_dir tree/empty_dir
compare dot_path ./tree/a/b
compare nothing_found tree/empty_dir tree/fifo
# named on the command line: a FIFO, a device, links (not followed, as find
# -P; with a trailing slash the link to a directory is followed)
compare fifo_named tree/fifo tree/one_byte
compare device_named /dev/zero /dev/null tree/one_byte
compare links_named tree/link_to_file tree/link_to_dir tree/dangling tree/one_byte
compare link_to_dir_slash tree/link_to_dir/
# find's errors, in find's order, names quoted as find quotes them
compare missing tree/a/b/c missing
compare errors_in_order missing1 tree/a/b/c missing2 "tree/one_byte/x" tree/loop/ "odd/new
line/x" "odd/it's/x" 'odd/a b/x' 'odd/a\b/x' $'odd/\xff\xfe/x' tree/sp\ ace
compare name_too_long "tree/$(printf 'n%.0s' $(seq 1 300))"
compare odd_names odd

# Paths that cannot be read, as a user other than root (root reads all):
# find's errors for directories, sha256sum's for files, both quoted.
runs_as_nobody() {
  setpriv --reuid=65534 --regid=65534 --clear-groups -- \
    "$edrv" -e "edrv.load_driver('$drivers', 'file_drv') io.open('$script'):close()" 2> /dev/null
}
if [ "$(id -u)" -eq 0 ] && command -v setpriv > /dev/null && runs_as_nobody; then
  mkdir -p locked/open locked/shut "locked/shut ' dir"
  for n in ok "it's" 'a b' "new
line" '$dollar' plain; do printf '%s' "$n" > "locked/open/$n"; done
  chmod 000 locked/open/plain "locked/open/it's" 'locked/open/a b' "locked/open/new
line" 'locked/open/$dollar'
  chmod 000 locked/shut "locked/shut ' dir"
  as=65534 compare unreadable locked # nobody
  as=""
  # the case must have met what it is for: both tools' errors
  if ! grep -q "^find: 'locked/shut': Permission denied" want.err ||
     ! grep -q "^sha256sum: \"locked/open/it's\": Permission denied" want.err; then
    failed=$((failed + 1)); echo "FAIL unreadable: the pipeline met no unreadable path:"; cat want.err
  fi
  chmod -R u+rwx locked
else
  echo "skip unreadable (needs root, setpriv, and a build that user nobody can run)"
fi

# A write error on standard output: reported, status 1, as sha256sum does.
"$edrv" "$script" --drivers "$drivers" tree/a > /dev/full 2> err.txt
status=$?
if [ $status -eq 1 ] && [ "$(cat err.txt)" = "sha256sum: write error" ]; then
  passed=$((passed + 1)); echo "ok   write_error"
else
  failed=$((failed + 1)); echo "FAIL write_error: status $status"; cat err.txt
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
