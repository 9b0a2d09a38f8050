#!/usr/bin/env bash
# Configures and builds Switchyard into build/ (Release, CUDA when nvcc is present).
# Usage: launch/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-2}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$JOBS"
