#!/usr/bin/env bash
# Status (2026-12-03): not yet in CI and not yet run to completion. Known blocker: an ASan
# process cannot dlopen the SentencePiece module with RTLD_DEEPBIND (model/sentencepiece_shim.cc),
# so tests that load a tokenizer abort under asan until the shim avoids DEEPBIND there.
#
# Builds and runs the tests under sanitizers, each in its own build directory (CUDA off: the
# device code has compute-sanitizer in launch/gpu-check.sh).
#   launch/sanitize.sh asan    AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer:
#                              every unit, multi-rank and end-to-end test (build-asan/)
#   launch/sanitize.sh tsan    ThreadSanitizer: the scheduler, server and liveness tests
#                              (build-tsan/)
# Any report fails the run. Suppressions (launch/sanitizers/*.supp) cover only libraries
# Debian builds without instrumentation (Open MPI, gRPC, abseil, libgomp), each explained
# there; never Switchyard's own code. Warnings are not errors here (GCC's -Wmaybe-uninitialized
# misfires inside libstdc++ under sanitizer instrumentation); the release build in
# launch/test.sh keeps -Werror.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-asan}
JOBS="${JOBS:-2}"
supp="$PWD/launch/sanitizers"
case "$kind" in
asan)
  dir=build-asan
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
    -DSWITCHYARD_CUDA=OFF -DSWITCHYARD_WERROR=OFF -DSWITCHYARD_SANITIZE=address,undefined > /dev/null
  cmake --build "$dir" -j "$JOBS"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  (cd "$dir" && ctest --output-on-failure -j "$JOBS" --timeout 900)
  ;;
tsan)
  dir=build-tsan
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
    -DSWITCHYARD_CUDA=OFF -DSWITCHYARD_WERROR=OFF -DSWITCHYARD_SANITIZE=thread > /dev/null
  cmake --build "$dir" -j "$JOBS" --target scheduler_test server_test liveness_test \
    coordinator_test
  export TSAN_OPTIONS="suppressions=$supp/tsan.supp:halt_on_error=1:second_deadlock_stack=1"
  for t in coordinator/scheduler_test coordinator/server/server_test comm/liveness_test \
           coordinator/coordinator_test; do
    echo "== $t (ThreadSanitizer)"
    "$dir/$t" --gtest_brief=1
  done
  ;;
*)
  echo "usage: launch/sanitize.sh asan|tsan" >&2; exit 2 ;;
esac
