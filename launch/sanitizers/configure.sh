# Sourced by launch/sanitize.sh and fuzz/run.sh: configures a sanitizer build directory.
#
#   configure_sanitized asan DIR [cmake args...]
#       clang, AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer, every report fatal,
#       libFuzzer coverage on every object (-fsanitize=fuzzer-no-link) so that the same tree
#       builds the unit tests and the libFuzzer targets (SWITCHYARD_FUZZ=ON), and
#       _GLIBCXX_ASSERTIONS (bounds-checked std::vector/std::string indexing).
#   configure_sanitized tsan DIR [cmake args...]
#       clang, ThreadSanitizer.
#
# -O1 with line tables: stacks name file and line at a tolerable speed and build time. The CPU
# kernels (kernels/CMakeLists.txt, SWITCHYARD_KERNEL_FLAGS), where every test that runs the
# model spends its time, are built at -O2 and without libFuzzer's coverage (no fuzz target
# reaches them) and without UBSan's pointer-overflow check (it defeats vectorisation and costs
# those loops 1.5x; an out-of-range pointer they dereference is still AddressSanitizer's):
# 4x faster model steps, checks otherwise the same. CUDA off: nvcc takes none of these flags
# (the device code has compute-sanitizer in launch/gpu-check.sh). Warnings are not errors here;
# the release build of launch/test.sh keeps -Werror.
configure_sanitized() {
  local kind="$1" dir="$2"
  shift 2
  local flags="-fno-omit-frame-pointer"
  local extra=()
  case "$kind" in
    asan)
      flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all $flags"
      flags+=" -D_GLIBCXX_ASSERTIONS"
      extra=(-DSWITCHYARD_FUZZ=ON
             "-DSWITCHYARD_KERNEL_FLAGS=-O2 -fno-sanitize=fuzzer-no-link -fno-sanitize=pointer-overflow") ;;
    tsan)
      flags="-fsanitize=thread $flags"
      extra=("-DSWITCHYARD_KERNEL_FLAGS=-O2") ;;
    *) echo "configure_sanitized: unknown kind $kind" >&2; return 2 ;;
  esac
  mkdir -p "$dir"
  cmake -S . -B "$dir" -G Ninja "${extra[@]}" -DSWITCHYARD_CUDA=OFF -DSWITCHYARD_NATIVE=OFF \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" "$@" >"$dir/configure.log" 2>&1 || {
    cat "$dir/configure.log" >&2
    echo "configure_sanitized: configuring $dir failed" >&2
    return 2
  }
}
