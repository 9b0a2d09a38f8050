#!/usr/bin/env bash
# Builds Switchyard's libFuzzer targets in build-fuzz/ (clang, ASan + UBSan + libFuzzer
# coverage, UBSan fatal) and runs each on a copy of its seed corpus.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 15)
#
# Environment:
#   FUZZ_BUILD     build directory (default build-fuzz; launch/sanitize.sh fuzz uses build-asan,
#                  whose tests are built with the same flags)
#   FUZZ_TARGETS   space-separated subset of the targets (default: all four)
#   FUZZ_TIMEOUT   per-input timeout in seconds (default 10)
#   FUZZ_JOBS      build parallelism (default 2)
#   FUZZ_ARGS      extra libFuzzer flags for every target
#   FUZZ_VALUE_PROFILE=0  turn off -use_value_profile=1 (on by default: comparisons such as the
#                  parsers' range checks become coverage, which leads the fuzzer to the values
#                  near the limits where the size arithmetic overflows)
#   FUZZ_KEEP_GOING=1  keep fuzzing after a finding (libFuzzer fork mode with one child at a
#                  time, -ignore_crashes/-ignore_timeouts/-ignore_ooms): every crashing input is
#                  kept, for long runs where a known bug would otherwise end the run at once
#
# Prints one line per target: executions, coverage (cov: of libFuzzer's final stats line; with
# FUZZ_KEEP_GOING, of the final corpus replayed) and findings (crash/leak/UB, timeout or
# out-of-memory inputs, kept under build-fuzz/fuzz-runs/<stamp>/<target>/), then one line per
# distinct report. Exits 1 when any target has a finding, 2 when the configure or build fails.
set -euo pipefail

SECONDS_PER_TARGET="${1:-15}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD:-$ROOT/build-fuzz}"
TARGETS=(${FUZZ_TARGETS:-safetensors_fuzzer config_fuzzer placement_fuzzer request_fuzzer})
TIMEOUT="${FUZZ_TIMEOUT:-10}"
JOBS="${FUZZ_JOBS:-2}"

# Every object of the tree gets the instrumentation (the libraries under test most of all);
# only the fuzzer binaries link libFuzzer's main (-fsanitize=fuzzer, see fuzz/CMakeLists.txt).
# The flags: launch/sanitizers/configure.sh (asan).
cd "$ROOT"
source launch/sanitizers/configure.sh
configure_sanitized asan "$BUILD" || exit 2
if ! cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"; then
  echo "fuzz/run.sh: build failed" >&2
  exit 2
fi

RUNS="$BUILD/fuzz-runs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUNS"
# The safetensors harness writes every input to a file: on tmpfs when there is one.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
# Leak checking at exit and per input (libFuzzer's -detect_leaks), symbolized reports.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:symbolize=1}"

# The report of one run, reduced to what identifies the bug (kind and place, not values).
signature_of_log() {
  local sig
  sig="$(grep -m1 -oE '[^ ]+: runtime error: [^:]+|SUMMARY: AddressSanitizer: [^ ]+ [^ ]+|ERROR: LeakSanitizer: [a-z ]+|terminate called after throwing an instance of .[^ ]+|==FUZZ INVARIANT== .{0,100}|ERROR: libFuzzer: [a-z -]+' "$1" || true)"
  # The thrown exception's what() says which one it was.
  if [[ "$sig" == terminate* ]]; then
    sig+=" ($(grep -m1 -oE 'what\(\): +\[[^]]+\]' "$1" || true))"
    # The innermost frame in project code (not the harness).
    sig+=" at $(grep -oE "$ROOT/[^ ]+:[0-9]+" "$1" | grep -v "^$ROOT/fuzz/" | head -1 \
                | sed "s|^$ROOT/||" || true)"
  fi
  echo "${sig:-unclassified (see the log)}"
}
signature() {  # BINARY INPUT
  local log
  log="$(mktemp)"
  timeout 120 "$1" "$2" >"$log" 2>&1 || true
  signature_of_log "$log"
  rm -f "$log"
}

summary=()
failed=0
for t in "${TARGETS[@]}"; do
  dir="$RUNS/$t"
  mkdir -p "$dir/corpus"
  cp -r "$ROOT/fuzz/corpus/$t/." "$dir/corpus/"
  dict=()
  [ -f "$ROOT/fuzz/dict/$t.dict" ] && dict=(-dict="$ROOT/fuzz/dict/$t.dict")
  echo "== $t: ${SECONDS_PER_TARGET}s (log: $dir/log.txt)" >&2
  mode=()
  [ "${FUZZ_VALUE_PROFILE:-1}" = 1 ] && mode+=(-use_value_profile=1)
  keep_going=0
  if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    keep_going=1
    mode+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  fi
  rc=0
  # One process at a time (no -jobs; -fork=1 runs one child): a core stays free for whoever
  # shares the machine.
  # shellcheck disable=SC2086
  "$BUILD/fuzz/$t" "$dir/corpus" "${dict[@]}" "${mode[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout="$TIMEOUT" \
    -print_final_stats=1 -print_funcs=0 -artifact_prefix="$dir/" ${FUZZ_ARGS:-} \
    >"$dir/log.txt" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log.txt" | tail -1)"
  if [ -z "$execs" ] || [ "$keep_going" = 1 ]; then
    # Fork mode (the parent's "#N: cov: ..." lines count every child's executions), or a run
    # that died before its final stats: the last status line's #N.
    execs="$(grep -oE '^#[0-9]+' "$dir/log.txt" | tail -1 | tr -d '#')"
  fi
  cov="$(grep -oE 'cov: [0-9]+' "$dir/log.txt" | tail -1 | awk '{print $2}')"
  if [ "$keep_going" = 1 ]; then
    # Fork mode's cov: counts in other units; report the final corpus replayed instead.
    cov="$("$BUILD/fuzz/$t" -runs=0 -print_funcs=0 "$dir/corpus" 2>&1 \
           | grep -oE 'cov: [0-9]+' | tail -1 | awk '{print $2}')"
  fi
  artifacts=()
  while IFS= read -r -d '' f; do artifacts+=("$f"); done \
    < <(find "$dir" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
          -o -name 'oom-*' \) -print0 | sort -z)
  findings="none"
  if [ "$rc" -ne 0 ] || [ "${#artifacts[@]}" -gt 0 ]; then
    failed=1
    findings="${#artifacts[@]} input(s) in $dir/ (exit $rc)"
    # One line per distinct report: the first 50 artifacts replayed, reports deduplicated.
    : >"$dir/signatures.txt"
    for f in "${artifacts[@]:0:50}"; do
      case "$(basename "$f")" in
        timeout-*) echo "libFuzzer: timeout (over ${TIMEOUT}s)" ;;
        oom-*) echo "libFuzzer: out-of-memory (over 2048 MB)" ;;
        *) signature "$BUILD/fuzz/$t" "$f" ;;
      esac >>"$dir/signatures.txt"
    done
    [ "${#artifacts[@]}" -eq 0 ] && signature_of_log "$dir/log.txt" >>"$dir/signatures.txt"
  fi
  summary+=("$(printf '%-20s executions=%-10s cov=%-6s findings=%s' "$t" "${execs:-?}" "${cov:-?}" "$findings")")
  if [ -s "$dir/signatures.txt" ]; then
    while IFS= read -r line; do summary+=("    $line"); done \
      < <(sort "$dir/signatures.txt" | uniq -c | sort -rn)
  fi
done

echo "fuzz results (${SECONDS_PER_TARGET}s per target; logs and artifacts under $RUNS):"
printf '%s\n' "${summary[@]}"
exit "$failed"
