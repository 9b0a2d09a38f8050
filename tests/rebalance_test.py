#!/usr/bin/python3
"""Online expert rebalancing (serve --rebalance-interval) on a cluster that keeps serving.

A tiny model whose routers prefer a few experts (make-synthetic-model --router-skew 1) is
served on 4 ranks as EP 4 (one expert per rank per layer as started, so the rank holding a
layer's hot expert carries about half its load) with --rebalance-interval 8: under three
waves of concurrent
greedy streams the rank-0 scheduler plans a placement from the routed load, every rank reads
its new experts in beside the running ones, and all switch before the same step. Checked:
every request ends OK with the tokens one process gives for it (replicas compute the same
function); the job logs the move; GetClusterStatus then shows every rank on the new
placement, with replicated experts; the job
drains and exits 0. The largest gap between two tokens of a stream against the median, and
rank 0's logged account of the move's step intervals, are printed (figures, not bounds:
speed is not tested here; bench/rebalance_gaps.py measures it).

usage: rebalance_test.py SWITCHYARD WORK"""
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from grpc_wire import require_grpc  # noqa: E402

require_grpc("rebalance_test.py")
import grpc  # noqa: E402
from serve_process import ServeProcess  # noqa: E402
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

binary, work = sys.argv[1:3]
os.makedirs(work, exist_ok=True)
model = os.path.join(work, "skewed")
subprocess.run([binary, "make-synthetic-model", "--preset", "tiny", "--layers", "4", "--seed", "3",
                "--router-skew", "1", "--out", model, "--tokenizer", "/nonexistent"],
               check=True, capture_output=True)
PROMPTS = [[1] + [(37 * i + 11 * j) % 4000 + 3 for j in range(10 + i % 5)] for i in range(36)]
MAX_TOKENS = 40


def request(prompt):
    return switchyard_pb2.GenerateRequest(token_ids=prompt, max_tokens=MAX_TOKENS, ignore_eos=True)


# What one process generates for each prompt.
alone_dir = os.path.join(work, "alone")
os.makedirs(alone_dir, exist_ok=True)
with ServeProcess(binary, model, alone_dir, "--kv-memory", "0") as server:
    stub = server.stub()
    want = [list(stub.Complete(request(p), timeout=120).token_ids) for p in PROMPTS]

cluster = os.path.join(work, "cluster")
launch = os.path.join(HERE, "..", "launch", "cluster.sh")
r = subprocess.run([launch, "start", cluster, "4", "4", "1", binary, model, "--kv-memory", "0",
                    "--rebalance-interval", "8", "--rebalance-redundant", "2"],
                   capture_output=True, text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
log_path = os.path.join(cluster, "log")
try:
    with open(os.path.join(cluster, "port")) as f:
        channel = grpc.insecure_channel(f"127.0.0.1:{f.read().strip()}")
    stub = switchyard_pb2_grpc.SwitchyardStub(channel)
    got, errors, gaps = {}, [], []
    lock = threading.Lock()

    def stream(i):
        try:
            ids, times = [], []
            for msg in stub.Generate(request(PROMPTS[i]), timeout=300):
                ids.extend(msg.token_ids)
                times.extend([time.time()] * len(msg.token_ids))
            with lock:
                got[i] = ids
                gaps.extend((a, b) for a, b in zip(times, times[1:]) if b > a)
        except grpc.RpcError as e:
            with lock:
                errors.append(f"request {i}: {e.code()} {e.details()}")

    for wave in range(3):
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(wave * 12, wave * 12 + 12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    wrong = [i for i in range(len(PROMPTS)) if got.get(i) != want[i]]
    assert not wrong, [(i, got.get(i), want[i]) for i in wrong]

    with open(log_path) as f:
        log = f.read()
    moves = re.findall(r"rebalance: placement (\d+) in use from step (\d+)", log)
    assert moves, "no placement was switched to:\n" + log[-3000:]
    planned = re.findall(r"max/mean rank load ([0-9.]+) now, ([0-9.]+) planned", log)
    assert planned and float(planned[0][1]) < float(planned[0][0]), planned
    # The cluster status (refreshed every second) shows the placement in use on every rank.
    deadline = time.time() + 10
    while True:
        status = stub.GetClusterStatus(switchyard_pb2.GetClusterStatusRequest(), timeout=30)
        placements = {rank.expert_placement for rank in status.ranks}
        if placements == {int(moves[-1][0])} or time.time() > deadline:
            break
        time.sleep(0.2)
    assert placements == {int(moves[-1][0])}, (placements, moves)
    holders = {}
    for rank in status.ranks:
        for i, ids in enumerate(rank.experts):
            for e in ids.ids:
                holders.setdefault((rank.layer_begin + i, e), set()).add(rank.ep_rank)
    replicated = [k for k, v in holders.items() if len(v) > 1]
    assert replicated, holders
    # The gaps that span the move (from the plan's log line to the switch's), against the
    # median gap of every stream: the switch must not stall decoding.
    def stamp(pattern):
        line = re.search(r"^(\S+ \S+) rank 0 info: rebalance: " + pattern, log, re.M).group(1)
        return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + float(line[19:])
    planned_at, switched_at = stamp("the last"), stamp("placement 1 in use")
    # Rank 0's own account of the move (step intervals on its clock), once the first step on
    # the new placement ran: present, and consistent with itself.
    timing = re.search(r"rebalance: placement 1: longest step interval ([0-9.]+) ms from the "
                       r"plan through the first step after the switch \((\d+) intervals\), "
                       r"([0-9.]+)x the median of the \d+ before the plan \(([0-9.]+) ms;.*"
                       r"intervals ([0-9., .]+) ms", log)
    assert timing, "no timing line for the move:\n" + log[-3000:]
    listed = timing.group(5).split(", ")
    each = [float(x) for x in listed if x != "..."]
    assert 0 < len(each) <= int(timing.group(2)) and max(each) <= float(timing.group(1)), \
        timing.group(0)
    assert len(each) == int(timing.group(2)) or listed[-1] == "...", timing.group(0)
    lengths = [b - a for a, b in gaps]
    median = statistics.median(lengths)
    around = [b - a for a, b in gaps if b >= planned_at and a <= switched_at]
    print(f"{len(PROMPTS)} streams OK with the single-process tokens across {len(moves)} move(s) "
          f"(first planned max/mean {planned[0][0]} -> {planned[0][1]}); {len(replicated)} "
          f"(layer, expert) replicated; inter-token gap median {median * 1000:.1f} ms; the "
          f"move took {(switched_at - planned_at) * 1000:.0f} ms, the largest of the "
          f"{len(around)} gaps spanning it {max(around, default=0) * 1000:.1f} ms "
          f"({max(around, default=0) / median:.1f}x the median; largest of all gaps "
          f"{max(lengths) * 1000:.1f} ms); on rank 0's clock the longest step interval "
          f"{timing.group(1)} ms, {timing.group(3)}x the median {timing.group(4)} ms")
finally:
    stop = subprocess.run([launch, "stop", cluster], capture_output=True, text=True, timeout=120)
assert stop.returncode == 0, stop.stdout + stop.stderr
print("PASS")
