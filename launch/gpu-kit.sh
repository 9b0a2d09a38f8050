#!/usr/bin/env bash
# Packs the GPU checks for a machine that has a GPU and the CUDA 13 runtime, cuBLAS and NCCL
# but none of this project's Debian packages (and no network): the binaries built here, the
# shared libraries they need that such a machine lacks (gRPC, protobuf, abseil, Open MPI's
# libraries, SentencePiece), a relocatable Open MPI with mpirun (launch/pack-openmpi.sh), and
# the Python stubs, into .gpukit/kit.tar.xz (git-ignored).
# On the GPU machine, from a copy of this repository with .gpukit beside it:
#   launch/gpu-check.sh OUTDIR      # unpacks the kit, runs the GPU tests and benchmarks
# The kit's libraries go on the library path of the kit's binaries only (gpu_check.py), so
# PyTorch keeps its own cuBLAS and NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install-deps.sh
# Its own build, for any x86-64 server with AVX2 (not -march=native: the GPU machine's CPU may
# lack this one's instructions), of just what the checks run.
B=build-gpukit
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_NATIVE=OFF \
  -DCMAKE_CXX_FLAGS="-march=x86-64-v3" > /dev/null
cmake --build $B -j "${JOBS:-2}" --target switchyard kernels_cuda_test cuda_executor_test \
  nccl_communicator_test distributed_cuda_test serve_e2e_test bench_decode_cuda bench_grouped_gemm_cuda \
  bench_dispatch_cuda sy_sentencepiece_module python_protos
kit=$(mktemp -d /tmp/switchyard-gpukit.XXXXXX)
trap 'rm -rf "$kit"' EXIT
mkdir -p "$kit/bin" "$kit/lib" "$kit/python"
bins=($B/cli/switchyard $B/kernels/cuda/kernels_cuda_test $B/worker/cuda_executor_test
      $B/comm/nccl_communicator_test $B/tests/distributed_cuda_test $B/tests/serve_e2e_test
      $B/bench/cuda/bench_decode_cuda $B/bench/cuda/bench_grouped_gemm_cuda
      $B/bench/cuda/bench_dispatch_cuda)
cp "${bins[@]}" $B/lib/libsy_sentencepiece_module.so "$kit/bin/"
cp -r $B/python/. "$kit/python/"
echo "$PWD" > "$kit/source-root"  # where the tests look for models/ and tests/data/
# Open MPI for the multi-rank GPU tests (the GPU machine has none): a relocatable copy.
launch/pack-openmpi.sh "$kit/ompi" > /dev/null
# Every library the binaries load, except the C runtime and CUDA's own (the GPU machine has
# newer ones of both, which stay compatible).
for b in "${bins[@]}" $B/lib/libsy_sentencepiece_module.so; do ldd "$b"; done |
  awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/usr/local/cuda|/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+)\.so|ld-linux' |
  while read -r lib; do cp -L "$lib" "$kit/lib/"; done
mkdir -p .gpukit
tar -C "$kit" -cJf .gpukit/kit.tar.xz .
echo "wrote .gpukit/kit.tar.xz ($(du -h .gpukit/kit.tar.xz | cut -f1)): carry .gpukit and run launch/gpu-check.sh there"
