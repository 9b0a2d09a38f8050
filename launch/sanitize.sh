#!/usr/bin/env bash
# The test suite under sanitizers, and the fuzz targets, each kind in its own build directory
# (clang; CUDA off: the device code has compute-sanitizer in launch/gpu-check.sh).
#
#   launch/sanitize.sh asan    AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer:
#                              the whole CTest suite (unit, multi-rank under mpirun, end-to-end)
#                              in build-asan/
#   launch/sanitize.sh fuzz [SECONDS]
#                              the libFuzzer targets, built in the same build-asan/ tree (the
#                              same instrumentation), each run SECONDS (default 15) from its
#                              seed corpus: fuzz/run.sh
#   launch/sanitize.sh tsan    ThreadSanitizer: the scheduler, liveness and session tests and
#                              the server tests that do not serve over gRPC (build-tsan/)
#
# launch/test.sh runs all three after the release build's tests (CI). Any sanitizer report
# fails the run. Suppressions (launch/sanitizers/*.supp) cover only libraries Debian builds
# without instrumentation, each explained there; never Switchyard's own code.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/sanitizers/configure.sh
kind=${1:-asan}
JOBS="${JOBS:-2}"
supp="$PWD/launch/sanitizers"

# Reports name file:line (llvm-symbolizer: Debian package llvm-14).
symbolizer="$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)"
if [ -n "$symbolizer" ]; then
  export ASAN_SYMBOLIZER_PATH="$symbolizer" TSAN_SYMBOLIZER_PATH="$symbolizer"
fi

case "$kind" in
asan)
  configure_sanitized asan build-asan
  cmake --build build-asan -j "$JOBS"
  # Open MPI's components stay mapped so that their leaks can be named (keep_modules.c).
  cc -shared -fPIC -O2 -o build-asan/libsy_keep_modules.so launch/sanitizers/keep_modules.c
  # Every process of a test (mpirun's ranks, the servers the end-to-end tests start) inherits
  # these. detect_stack_use_after_return stays off: Open MPI and gRPC hand stack addresses to
  # their own threads.
  export LD_PRELOAD="$PWD/build-asan/libsy_keep_modules.so"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0:strict_string_checks=1:check_initialization_order=1"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  # Left out, each for its reason (docs/reliability.md, Sanitizers):
  #   serve_single_rank_e2e_cpu  the 4-rank cluster's load test again on one rank: 64
  #                              concurrent and 200 cancelled streams run the whole model on
  #                              one process, over 15 minutes under the sanitizers; the same
  #                              calls run against the 4-rank cluster (serve_e2e_cpp/python).
  #   serve_oversized_prompt     measures how much memory glibc's allocator gives back, which
  #                              the sanitizer's allocator (with its quarantine) replaces.
  #   slurm_one_node_cluster     tests Slurm's launch, drain and failure paths (daemons of its
  #                              own, ranks started by slurmstepd with Open MPI's PMIx client);
  #                              the serving code it drives runs under the sanitizers in the
  #                              mpirun-launched tests.
  skip='^(serve_single_rank_e2e_cpu|serve_oversized_prompt|slurm_one_node_cluster)$'
  (cd build-asan && ctest --output-on-failure -j "$JOBS" --timeout 900 -E "$skip" \
     ${SANITIZE_CTEST_ARGS:-})
  ;;
fuzz)
  FUZZ_BUILD="$PWD/build-asan" fuzz/run.sh "${2:-15}"
  ;;
tsan)
  configure_sanitized tsan build-tsan
  targets=(scheduler_test server_test liveness_test model_session_test)
  cmake --build build-tsan -j "$JOBS" --target "${targets[@]}"
  # ignore_noninstrumented_modules: memory accesses made inside libraries Debian builds without
  # ThreadSanitizer (libomp, gRPC, abseil, protobuf, Open MPI) are not tracked, since TSan
  # cannot see those libraries' own synchronisation (it reported libomp's mutex initialisation
  # racing with its own lock); every access of Switchyard's code still is.
  export TSAN_OPTIONS="suppressions=$supp/tsan.supp:halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1"
  # The kernels' OpenMP loops: Archer (LLVM OpenMP's OMPT tool, in libomp-14-dev) tells
  # ThreadSanitizer about the runtime's barriers and tasks, so races between our loop bodies
  # are found and its synchronisation is not mistaken for races.
  archer=/usr/lib/llvm-14/lib/libarcher.so
  [ -f "$archer" ] && export OMP_TOOL_LIBRARIES="$archer"
  # server_test without the suites that serve over gRPC or HTTP (ServingTest, AuthTest,
  # KServeTest, KServeGeneratedBase, HttpTest; cpp-httplib's thread pool is not instrumented
  # either):
  # Debian's gRPC is not instrumented and hands each call's reactor and interceptor from one
  # of its threads to the next through its own completion queue (atomics and absl::Mutex
  # inside libgrpc), which ThreadSanitizer cannot see, so every access to a call's state is
  # reported (hundreds of reports, all on that hand-off). A suppression broad enough to
  # silence them would match every stack of the front end, ours included; docs/reliability.md.
  server_filter='RequestValidationTest.*:FinishReasonProto.*:CheckTlsFiles.*:KServeRequest.*:WorkPool.*:ServingMetrics.*'
  for t in "${targets[@]}"; do
    bin="$(find build-tsan -type f -name "$t" -perm -u+x | head -1)"
    echo "== $t (ThreadSanitizer)"
    filter='*'
    [ "$t" = server_test ] && filter="$server_filter"
    "$bin" --gtest_brief=1 --gtest_filter="$filter"
  done
  ;;
*)
  echo "usage: launch/sanitize.sh asan|fuzz [SECONDS]|tsan" >&2; exit 2 ;;
esac
