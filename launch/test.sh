#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (unit, golden, multi-rank,
# end-to-end). GPU tests skip where there is no GPU. Then the same suite under
# AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer, the libFuzzer targets for a
# bounded time, and the threaded tests under ThreadSanitizer (launch/sanitize.sh; each in its
# own build directory). SWITCHYARD_SANITIZERS=0 runs the release suite only.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install-deps.sh
launch/build.sh -DSWITCHYARD_WERROR=ON  # a new warning fails CI
(cd build && ctest --output-on-failure -j "${JOBS:-2}" --timeout 600)
if [ "${SWITCHYARD_SANITIZERS:-1}" != 0 ]; then
  launch/sanitize.sh asan
  launch/sanitize.sh fuzz 15
  launch/sanitize.sh tsan
fi
