#!/usr/bin/python3
"""`serve --kv-memory` sizes the KV cache: the bytes given (rounded down to whole blocks),
never less than one full-context sequence, never more than --max-running of them.
  kv_memory_test.py SWITCHYARD MODEL WORKDIR   (PYTHONPATH: the generated stubs)"""
import os
import sys

from switchyard.v1 import switchyard_pb2 as pb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import ServeProcess  # noqa: E402

binary, model, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
MiB = 1 << 20
# brown-moe: 4 layers, 2 KV heads of 32 (kv_dim 64), context 1024, fp32 K and V (the CPU
# cache, chosen explicitly: on a GPU machine `auto` would pick the bf16 device cache):
block = 2 * 4 * 16 * 64 * 4  # bytes of one 16-token block
one_context = 1024 // 16 * block  # 2 MiB


def kv_bytes(*flags):
    with ServeProcess(binary, model, work, "--device", "cpu", *flags) as server:
        status = server.stub().GetClusterStatus(pb.GetClusterStatusRequest(), timeout=30)
        return [r.kv_bytes for r in status.ranks]


assert kv_bytes("--kv-memory", "0") == [one_context]
assert kv_bytes("--kv-memory", "1KiB") == [one_context], "at least one full context"
assert kv_bytes("--kv-memory", "20MiB") == [20 * MiB], "the budget, in whole blocks"
assert kv_bytes("--kv-memory", "20000000") == [20000000 // block * block]
assert kv_bytes("--kv-memory", "1GiB", "--max-running", "3") == [3 * one_context], "--max-running caps it"
assert kv_bytes("--kv-blocks", "100", "--kv-memory", "1GiB") == [100 * block], "--kv-blocks wins"
assert kv_bytes() == [64 * one_context], "default: 1GiB holds all 64 --max-running sequences"
print("kv-memory sizing: 7 checks passed")
