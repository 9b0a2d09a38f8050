#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a GPU (CUDA 13 driver, runtime, cuBLAS, NCCL)
# and a copy of this repository with .gpukit/kit.tar.xz from launch/gpu-kit.sh beside it:
# the CUDA tests (one of them under compute-sanitizer where the machine allows), `generate`
# and `serve` with --device cuda (the end-to-end tests against it), and the GPU benchmarks on
# a Mixtral-shaped synthetic shard, with the PyTorch eager peer. Under one deadline (450 s by
# default); OUTDIR gets summary.json, environment.txt, steps.log, bench.json and
# gtest-xml.tar.gz (launch/gpu_check.py says what each holds). Exit 0 only when every step
# passed.
#   launch/gpu-check.sh OUTDIR [--layers N] [--deadline S]
#   launch/gpu-check.sh OUTDIR --rerun-failed OUTDIR/summary.json     # the short mode
#   launch/gpu-check.sh OUTDIR --only kernels_cuda_test,generate      # a named subset
# SWITCHYARD_CHECK_DEVICE=cpu rehearses it on a machine without a GPU (`--build-tree build`
# uses this machine's build instead of the kit). PYTHON names the interpreter of the Python
# steps (default python3: grpcio, protobuf, numpy; torch for the peer).
set -uo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" launch/gpu_check.py "$@"
