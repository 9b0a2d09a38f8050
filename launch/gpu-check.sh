#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a GPU (CUDA 13 driver, runtime, cuBLAS, NCCL)
# and a copy of this repository with .gpukit/kit.tar.xz from launch/gpu-kit.sh beside it:
# the CUDA tests, `switchyard generate` and `serve` with --device cuda (the end-to-end tests
# against it), and the GPU benchmarks on a Mixtral-shaped synthetic shard, with the PyTorch
# eager peer. Everything is logged to OUTDIR/gpu-check.log; the exit code counts failures.
#   launch/gpu-check.sh OUTDIR [LAYERS]      (LAYERS of the synthetic shard, default 2)
# SWITCHYARD_CHECK_DEVICE=cpu rehearses the kit on a machine without a GPU (the serving and
# generation steps on the CPU; the GPU tests skip; no benchmarks). PYTHON names the Python
# interpreter (default python3: it needs grpcio, protobuf, numpy and torch).
set -uo pipefail
out=${1:?usage: gpu-check.sh OUTDIR [LAYERS]}
layers=${2:-2}
cd "$(dirname "$0")/.."
repo=$PWD
mkdir -p "$out"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
kit=/tmp/switchyard-kit
rm -rf "$kit" && mkdir -p "$kit" && tar -C "$kit" -xJf .gpukit/kit.tar.xz || exit 1
# CUDA's libraries from wherever this machine keeps them (toolkit or Python wheels).
libdirs="$kit/lib"
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  f=$(find /usr/local /usr/lib /opt -name "$so" 2>/dev/null | head -1)
  [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")" || echo "warning: $so not found"
done
export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
export SWITCHYARD_SPM_MODULE="$kit/bin/libsy_sentencepiece_module.so"
# The tests find models/ and tests/data/ under the source root they were built in.
root=$(cat "$kit/source-root")
if [ -n "$root" ] && [ "$root" != "$repo" ] && [ ! -e "$root" ]; then
  mkdir -p "$(dirname "$root")" && ln -s "$repo" "$root"
fi
bin="$kit/bin"
device=${SWITCHYARD_CHECK_DEVICE:-cuda}
python=${PYTHON:-python3}  # one with grpcio, protobuf, numpy and torch
fail=0
step() { echo; echo "=== $*"; }
run() { local t=$1; shift; timeout "$t" "$@"; local rc=$?; [ $rc -eq 0 ] || { echo "FAILED ($rc): $*"; fail=$((fail + 1)); }; }

step "device"
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step "CUDA kernel tests";     run 180 "$bin/kernels_cuda_test"
step "CUDA executor tests";   run 180 "$bin/cuda_executor_test"
step "NCCL communicator tests (one rank; two ranks on one GPU need NCCL >= 2.30)"
run 120 "$bin/nccl_communicator_test"
step "generate: cpu and $device"
for d in cpu $device; do
  run 60 "$bin/switchyard" generate --model models/brown-moe --device $d \
    --prompt "The jury said that" --max-tokens 20 --json
done
step "serve --device $device: end-to-end tests (C++ and Python clients)"
e2e=/tmp/switchyard-gpu-e2e && rm -rf $e2e && mkdir -p $e2e
"$bin/switchyard" serve --model models/brown-moe --device $device --listen 127.0.0.1:0 \
  --port-file $e2e/port --kv-blocks 256 > $e2e/log 2>&1 &
spid=$!
for _ in $(seq 1 300); do [ -s $e2e/port ] && break; sleep 0.2; done
if [ -s $e2e/port ]; then
  SWITCHYARD_E2E_DIR=$e2e run 300 "$bin/serve_e2e_test"
  SWITCHYARD_E2E_DIR=$e2e PYTHONPATH="$kit/python" run 120 "$python" tests/serve_e2e_test.py
  kill -TERM $spid; wait $spid; echo "serve exit: $?"
else
  echo "FAILED: serve did not start"; fail=$((fail + 1)); kill $spid
fi
cat $e2e/log
if [ "$device" != cuda ]; then step "done (rehearsal): $fail failed step(s)"; exit $fail; fi
step "benchmarks on a $layers-layer Mixtral 8x7B-shaped shard"
mx=/tmp/switchyard-mx$layers
[ -f $mx/config.json ] || run 300 "$bin/switchyard" make-synthetic-model --preset mixtral-8x7b \
  --layers "$layers" --out $mx
run 180 "$bin/bench_decode_cuda" --model $mx --batches 1,8,64
run 120 "$bin/bench_grouped_gemm_cuda" --tokens 4096 --experts 8 --top-k 2 --padded
run 120 "$bin/bench_dispatch_cuda" --tokens 1,8,128,4096
step "PyTorch eager peer, same shard, same GPU"
run 300 "$python" bench/torch_peer.py --model $mx --device cuda --dtype bf16 --tokens 64 \
  --prefill-len 512 --repeats 2
step "done: $fail failed step(s)"
exit $fail
