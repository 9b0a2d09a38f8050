#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (unit, golden, multi-rank,
# end-to-end). GPU tests skip where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install-deps.sh
launch/build.sh -DSWITCHYARD_WERROR=ON  # a new warning fails CI
cd build
ctest --output-on-failure -j "${JOBS:-2}" --timeout 600
