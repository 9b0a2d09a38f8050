#!/usr/bin/python3
"""`make-synthetic-model --router-skew`: the routers of a skewed tiny model send most tokens to
a few experts, the hottest the one the option names for each layer, while a plain model
spreads them; counted by a real server (GetClusterStatus) over token-id requests.

usage: router_skew_test.py SWITCHYARD WORK"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from grpc_wire import require_grpc  # noqa: E402

require_grpc("router_skew_test.py")
from serve_process import ServeProcess  # noqa: E402
from switchyard.v1 import switchyard_pb2  # noqa: E402

binary, work = sys.argv[1:3]
LAYERS, EXPERTS = 4, 4  # the tiny preset has 4 experts


def shares(skew):
    model = os.path.join(work, f"skew-{skew}")
    subprocess.run([binary, "make-synthetic-model", "--preset", "tiny", "--layers", str(LAYERS),
                    "--seed", "3", "--router-skew", str(skew), "--out", model,
                    "--tokenizer", "/nonexistent"], check=True, capture_output=True)
    run = os.path.join(work, f"serve-{skew}")
    os.makedirs(run, exist_ok=True)
    with ServeProcess(binary, model, run, "--kv-memory", "0") as server:
        stub = server.stub()
        for i in range(16):
            prompt = [1] + [(37 * i + 11 * j) % 4000 + 3 for j in range(12)]
            stub.Complete(switchyard_pb2.GenerateRequest(token_ids=prompt, max_tokens=16,
                                                         ignore_eos=True), timeout=60)
        # Every token through the model, top-2 per layer; the counts refresh every second.
        want = 16 * (13 + 16 - 1) * 2
        deadline = time.time() + 15
        while True:
            status = stub.GetClusterStatus(switchyard_pb2.GetClusterStatusRequest())
            rows = [list(layer.tokens) for layer in status.expert_token_counts]
            if all(sum(r) == want for r in rows) or time.time() > deadline:
                break
            time.sleep(0.2)
    assert len(rows) == LAYERS and all(sum(r) == want for r in rows), (rows, want)
    return [[t / sum(r) for t in r] for r in rows]


plain = shares(0)
skewed = shares(1)
print("plain ", [[round(x, 2) for x in r] for r in plain])
print("skewed", [[round(x, 2) for x in r] for r in skewed])
# top-2 routing: an expert chosen by every token holds half the layer's assignments.
assert all(max(r) >= 0.45 for r in skewed), skewed
assert sum(max(r) for r in plain) / LAYERS < 0.4, plain
named = sum(1 for layer, r in enumerate(skewed)
            if r[(EXPERTS - layer % EXPERTS) % EXPERTS] >= max(r) - 0.02)
assert named >= 3, skewed  # the hottest expert is the one the option names
print("ok")
