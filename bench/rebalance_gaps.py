#!/usr/bin/python3
"""Benchmark: does an online expert move (serve --rebalance-interval) stall decoding?

A decode-only load, so that nothing but the move can lengthen a gap: STREAMS greedy streams
start together (their prompts are prefilled in the first steps), all ask for the same number
of tokens with ignore_eos, and the planning window (--interval steps) ends well after the
last prompt was prefilled and well before the first stream ends. Only the gaps between two
tokens of a stream taken while every stream was decoding count. The move is found in the
job's log (rank 0's "rebalance: the last ..." line when it was planned and "placement 1 in
use" when every rank switched); the gaps spanning it are compared with the median gap of the
same run, the bound the design sets being twice the median (docs/benchmarks.md). Each run
starts a fresh cluster (launch/cluster.sh) and prints one JSON line; the last line sums up.

    /usr/bin/python3 bench/rebalance_gaps.py build/cli/switchyard [--ep 4] [--streams 8]
        [--max-tokens 200] [--interval 32] [--runs 5] [--model DIR] [--work DIR]

Without --model, a tiny model whose routers prefer a few experts is made
(make-synthetic-model --preset tiny --router-skew 1): the shortest steps, so the hardest case
for the bound. Needs Debian's python3-grpcio and the generated stubs (build/python).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from grpc_wire import require_grpc  # noqa: E402

require_grpc("rebalance_gaps.py")
import grpc  # noqa: E402
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

CLUSTER = os.path.join(ROOT, "launch", "cluster.sh")


def log_time(log, pattern):
    """Wall-clock time of rank 0's first log line matching `pattern`, or None."""
    m = re.search(r"^(\S+ \S+) rank 0 info: rebalance: " + pattern, log, re.M)
    if m is None:
        return None
    stamp = m.group(1)
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float(stamp[19:])


def one_run(args, model, run):
    cluster = os.path.join(args.work, f"cluster{run}")
    r = subprocess.run([CLUSTER, "start", cluster, str(args.ep), str(args.ep), "1", args.binary,
                        model, "--kv-memory", "0", "--rebalance-interval", str(args.interval),
                        "--rebalance-redundant", str(args.redundant)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit(r.stdout + r.stderr)
    try:
        with open(os.path.join(cluster, "port")) as f:
            channel = grpc.insecure_channel(f"127.0.0.1:{f.read().strip()}")
        stub = switchyard_pb2_grpc.SwitchyardStub(channel)
        # Connected and warm before the streams start together (a few steps of the window).
        stub.Complete(switchyard_pb2.GenerateRequest(token_ids=[1, 5, 6], max_tokens=2),
                      timeout=120)
        times = [None] * args.streams
        errors = []
        start = threading.Barrier(args.streams)

        def stream(i):
            prompt = [1] + [(37 * i + 11 * j) % 4000 + 3 for j in range(12)]
            request = switchyard_pb2.GenerateRequest(token_ids=prompt, max_tokens=args.max_tokens,
                                                     ignore_eos=True)
            stamps = []
            start.wait()
            try:
                for msg in stub.Generate(request, timeout=600):
                    now = time.time()
                    stamps.extend([now] * len(msg.token_ids))
                times[i] = stamps
            except grpc.RpcError as e:
                errors.append(f"stream {i}: {e.code()} {e.details()}")

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(args.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            sys.exit("; ".join(errors))
    finally:
        stop = subprocess.run([CLUSTER, "stop", cluster], capture_output=True, text=True,
                              timeout=120)
    if stop.returncode != 0:
        sys.exit(stop.stdout + stop.stderr)
    with open(os.path.join(cluster, "log")) as f:
        log = f.read()
    planned_at = log_time(log, "the last")
    switched_at = log_time(log, "placement 1 in use")
    # Decode-only: after every stream's first token, before any stream's last.
    begin = max(s[0] for s in times)
    end = min(s[-1] for s in times)
    gaps = [(a, b) for s in times for a, b in zip(s, s[1:]) if a >= begin and b <= end and b > a]
    lengths = sorted(b - a for a, b in gaps)
    median = statistics.median(lengths)
    row = {"run": run, "ep": args.ep, "streams": args.streams, "decode_gaps": len(lengths),
           "median_gap_ms": round(median * 1e3, 3),
           "p99_gap_ms": round(lengths[int(0.99 * (len(lengths) - 1))] * 1e3, 3),
           "max_gap_ms": round(lengths[-1] * 1e3, 3)}
    if planned_at is None or switched_at is None:
        row["move"] = "none"
        return row
    # The server's own account (coordinator/rebalancer.h, MoveTiming): step intervals on the
    # step thread, free of the client's scheduling.
    m = re.search(r"rebalance: placement 1: longest step interval ([0-9.]+) ms from the plan "
                  r"through the first step after the switch \((\d+) intervals\), ([0-9.]+)x the "
                  r"median of the (\d+) before the plan \(([0-9.]+) ms; the longest of them "
                  r"([0-9.]+) ms; of \d+ consecutive ones, the longest is ([0-9.]+) ms at the "
                  r"median\); the rebalancer's own work on the step thread ([0-9.]+) ms", log)
    if m:
        row.update({"server_longest_interval_ms": float(m.group(1)),
                    "server_intervals_watched": int(m.group(2)),
                    "server_ratio_to_median": float(m.group(3)),
                    "server_median_interval_ms": float(m.group(5)),
                    "server_longest_before_ms": float(m.group(6)),
                    "server_same_length_window_longest_before_ms": float(m.group(7)),
                    "server_own_work_ms": float(m.group(8))})
    around = [b - a for a, b in gaps if b >= planned_at and a <= switched_at]
    others = [b - a for a, b in gaps if not (b >= planned_at and a <= switched_at)]
    row.update({
        "move_in_decode_window": bool(begin <= planned_at and switched_at <= end),
        "move_ms": round((switched_at - planned_at) * 1e3, 2),
        "gaps_spanning_move": len(around),
        "max_gap_spanning_move_ms": round(max(around, default=0) * 1e3, 3),
        "max_gap_elsewhere_ms": round(max(others, default=0) * 1e3, 3),
        "ratio_to_median": round(max(around, default=0) / median, 2),
        "bound_ratio": 2.0,
    })
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary")
    p.add_argument("--ep", type=int, default=4)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--interval", type=int, default=32)
    p.add_argument("--redundant", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model")
    p.add_argument("--work", default="/tmp/rebalance_gaps")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model = args.model
    if model is None:
        model = os.path.join(args.work, "skewed")
        subprocess.run([args.binary, "make-synthetic-model", "--preset", "tiny", "--layers", "4",
                        "--seed", "3", "--router-skew", "1", "--out", model, "--tokenizer",
                        "/nonexistent"], check=True, capture_output=True)
    rows = []
    for run in range(args.runs):
        row = one_run(args, model, run)
        print(json.dumps(row), flush=True)
        rows.append(row)
    moved = [r for r in rows if r.get("move_in_decode_window")]
    summary = {"runs": len(rows), "moves_in_decode_window": len(moved)}
    if moved:
        ratios = sorted(r["ratio_to_median"] for r in moved)
        server = sorted(r["server_ratio_to_median"] for r in moved if "server_ratio_to_median" in r)
        if server:
            summary.update({"server_ratio_to_median_median": statistics.median(server),
                            "server_ratio_to_median_worst": server[-1]})
        summary.update({"ratio_to_median_median": statistics.median(ratios),
                        "ratio_to_median_worst": ratios[-1], "bound_ratio": 2.0,
                        "median_gap_ms_median": statistics.median(r["median_gap_ms"] for r in moved),
                        "move_ms_median": statistics.median(r["move_ms"] for r in moved)})
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
