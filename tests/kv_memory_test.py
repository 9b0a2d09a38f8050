#!/usr/bin/python3
"""`serve --kv-memory` sizes the KV cache: the bytes given (rounded down to whole blocks),
never less than one full-context sequence, never more than --max-running of them.
  kv_memory_test.py SWITCHYARD MODEL WORKDIR   (PYTHONPATH: the generated stubs)"""
import os
import subprocess
import sys
import time

import grpc
from switchyard.v1 import switchyard_pb2 as pb, switchyard_pb2_grpc as pbg

binary, model, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
MiB = 1 << 20
# brown-moe: 4 layers, 2 KV heads of 32 (kv_dim 64), context 1024, fp32 K and V:
block = 2 * 4 * 16 * 64 * 4  # bytes of one 16-token block
one_context = 1024 // 16 * block  # 2 MiB


def kv_bytes(*flags):
    port_file = os.path.join(work, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    proc = subprocess.Popen([binary, "serve", "--model", model, "--listen", "127.0.0.1:0",
                             "--port-file", port_file, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
                break
            if proc.poll() is not None:
                raise AssertionError(f"serve {flags} exited: {proc.stdout.read()}")
            time.sleep(0.05)
        port = open(port_file).read().strip()
        stub = pbg.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        status = stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=30)
        return [r.kv_bytes for r in status.ranks]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stdout.read()


assert kv_bytes("--kv-memory", "0") == [one_context]
assert kv_bytes("--kv-memory", "1KiB") == [one_context], "at least one full context"
assert kv_bytes("--kv-memory", "20MiB") == [20 * MiB], "the budget, in whole blocks"
assert kv_bytes("--kv-memory", "20000000") == [20000000 // block * block]
assert kv_bytes("--kv-memory", "1GiB", "--max-running", "3") == [3 * one_context], "--max-running caps it"
assert kv_bytes("--kv-blocks", "100", "--kv-memory", "1GiB") == [100 * block], "--kv-blocks wins"
assert kv_bytes() == [64 * one_context], "default: 1GiB holds all 64 --max-running sequences"
print("kv-memory sizing: 7 checks passed")
