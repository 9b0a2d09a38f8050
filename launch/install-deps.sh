#!/usr/bin/env bash
# Installs the Debian packages Switchyard needs to build, test and run, and the npm client the
# HTTP tests use. Idempotent: does nothing (and prints nothing) when everything is installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libssl-dev libspdlog-dev
  libcpp-httplib-dev prometheus-cpp-dev prometheus
  libopenmpi-dev openmpi-bin slurm-wlm munge
  python3 python3-grpcio python3-protobuf python3-numpy python3-matplotlib
  python3-jinja2 python3-sentencepiece curl iproute2
  clang libclang-rt-14-dev libomp-14-dev llvm-14
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The official OpenAI client for Node (npm's openai, pinned in tests/node/package-lock.json)
# for the HTTP API's end-to-end test, with the machine's Node.js; that test skips, saying
# why, when npm or its registry is not there.
NODE_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/node"
if [ ! -d "$NODE_DIR/node_modules/openai" ] && command -v npm >/dev/null 2>&1; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1) ||
    echo "npm ci in tests/node failed: the OpenAI Node client test will skip" >&2
fi
