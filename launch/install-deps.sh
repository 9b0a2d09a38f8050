#!/usr/bin/env bash
# Installs the Debian packages Switchyard needs to build, test and run. Idempotent: does
# nothing (and prints nothing) when everything is already installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libgtest-dev libgmock-dev libbenchmark-dev
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libssl-dev libspdlog-dev
  libcpp-httplib-dev prometheus-cpp-dev prometheus
  libopenmpi-dev openmpi-bin
  python3 python3-grpcio python3-protobuf python3-numpy python3-matplotlib
  clang libclang-rt-14-dev libomp-14-dev llvm-14
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
