#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time under ASan+UBSan, starting
# from its seed corpus, and fails on the first crash, leak, timeout or
# out-of-memory. Inputs it finds stay in BUILD/fuzz-work/TARGET/corpus (the
# seeds in the repository are not touched); a crash is written to
# BUILD/fuzz-work/TARGET/crash-*.
#
#   tests/fuzz/run.sh BUILD [SECONDS] [TARGET...]   (default: 20 s, every target)
set -euo pipefail
build=${1:?usage: run.sh BUILD [SECONDS] [TARGET...]}
secs=${2:-20}
shift $(($# < 2 ? $# : 2))
src=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(etf format call spec lua node)

# Each target's seed corpora (tests/fuzz/CMakeLists.txt says the same).
corpora_of() { case $1 in spec) echo spec ;; lua) echo etf lua ;; node) echo node ;; *) echo etf ;; esac; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$src/lsan.supp}
status=0
for t in "${targets[@]}"; do
  work=$build/fuzz-work/$t
  mkdir -p "$work/corpus"
  # Seeds within -max_len only: a larger one (the deep term of corpus/lua,
  # for the regression test) would make libFuzzer try 4096-byte inputs from
  # the start instead of growing them, at a tenth of the speed.
  for c in $(corpora_of "$t"); do
    find "$src/corpus/$c" -type f -size -4097c -exec cp -n {} "$work/corpus/" \;
  done
  # Bounded memory: an input that makes the code ask for a huge block is
  # reported as such, not left to exhaust the machine.
  if ! "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -max_len=4096 -timeout=10 \
       -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$work/" "$work/corpus" > "$work/log" 2>&1; then
    status=1
    echo "fuzz_$t: FAILED; the end of $work/log:"
    tail -n 60 "$work/log"
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$work/log" | tail -n 1)
  echo "fuzz_$t: ${secs} s, $runs executions, $rate exec/s, $cov"
done
exit $status
