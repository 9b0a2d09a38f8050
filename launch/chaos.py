#!/usr/bin/python3
"""Chaos trials against a serving cluster on this machine: each trial starts a cluster,
puts it under streaming load, kills (SIGKILL) or stops (SIGSTOP) one rank, and measures
what Switchyard promises (docs/reliability.md):

- a failed worker: every stream in flight ends UNAVAILABLE with a message naming that rank
  (detection = fault -> first such error), none ends OK with a partial answer, and every
  process of the job exits;
- a failed rank 0: clients lose the connection and every process exits (detection = fault ->
  the last rank gone);
- within --bound seconds of the fault, or the trial counts as a hang; processes still alive
  after it are orphans (killed by this script).

    launch/chaos.py --switchyard build/cli/switchyard --model models/brown-moe --trials 100
    launch/chaos.py ... --schedule kill:1,stop:2,kill:0,stop:0 --bound 15   # CI: one each

Needs PYTHONPATH to hold the generated stubs (build/python). Prints one JSON line per trial
and a summary; --json FILE writes both. Exits 1 if any trial broke a promise."""
import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc
from switchyard_health import health_pb2, health_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_TOKENS = 96


def rank_pids(mpirun_pid):
    """World rank -> pid of the processes mpirun started."""
    out = subprocess.run(["pgrep", "-P", str(mpirun_pid)], capture_output=True, text=True)
    ranks = {}
    for pid in out.stdout.split():
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(kv.split(b"=", 1)[1])] = int(pid)
    return ranks


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


class Load:
    """Clients streaming Generate calls until the server fails them."""

    def __init__(self, port, clients):
        self.port = port
        self.events = []  # (time, code, details, tokens)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def client(self):
        stub = switchyard_pb2_grpc.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{self.port}"))
        while not self.stop.is_set():
            req = switchyard_pb2.GenerateRequest(text="The old man said that", max_tokens=MAX_TOKENS,
                                                 temperature=0.8, seed=random.randrange(1 << 30),
                                                 ignore_eos=True)
            tokens = 0
            try:
                for msg in stub.Generate(req, timeout=60):
                    tokens += len(msg.token_ids)
                code, details = "OK", ""
            except grpc.RpcError as e:
                code, details = e.code().name, e.details() or ""
            with self.lock:
                self.events.append((time.monotonic(), code, details, tokens))
            if code != "OK":
                return

    def join(self, timeout):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def health_watch(port, stop, seen):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    while not stop.is_set():
        # Stamped when the probe is sent: a SERVING answer to a probe sent after a client was
        # told of the failure breaks the promise; one sent before may be answered after it.
        sent = time.monotonic()
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
            seen.append((sent, health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)))
        except grpc.RpcError as e:
            seen.append((sent, e.code().name))
        time.sleep(0.1)


def trial(args, index, fault, target):
    work = tempfile.mkdtemp(prefix="switchyard-chaos.")
    start = subprocess.run([os.path.join(HERE, "cluster.sh"), "start", work, str(args.ranks), str(args.ep),
                            str(args.pp), args.switchyard, args.model, *args.serve_flags],
                           capture_output=True, text=True)
    if start.returncode != 0:
        return {"trial": index, "error": "cluster did not start", "log": start.stdout[-2000:]}
    port = open(os.path.join(work, "port")).read().strip()
    mpirun = int(open(os.path.join(work, "pid")).read())
    ranks = rank_pids(mpirun)
    load = Load(port, args.clients)
    load.start()
    time.sleep(random.uniform(0.5, 1.5))  # streams in flight
    health, health_stop = [], threading.Event()
    watcher = threading.Thread(target=health_watch, args=(port, health_stop, health), daemon=True)
    watcher.start()
    victim = ranks[target]
    t_fault = time.monotonic()
    os.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    deadline = t_fault + args.bound
    # Wait for every process of the job to be gone (mpirun and every rank, the stopped one
    # too: the job must end it), or the bound.
    while time.monotonic() < deadline:
        if not alive(mpirun) and not any(alive(p) for p in ranks.values()):
            break
        time.sleep(0.05)
    t_gone = time.monotonic()
    clients_done = load.join(max(0.0, deadline - time.monotonic()) + 1)
    load.stop.set()
    health_stop.set()
    watcher.join(2)
    orphans = [r for r, p in ranks.items() if alive(p)]
    for p in ranks.values():  # leave nothing behind
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(p, sig)
            except OSError:
                pass
    try:
        os.kill(mpirun, signal.SIGKILL)
    except OSError:
        pass
    after = [e for e in load.events if e[0] >= t_fault]
    named = [e for e in after if e[1] == "UNAVAILABLE" and f"rank {target} " in e[2]]
    partial_ok = [e for e in after if e[1] == "OK" and e[3] != MAX_TOKENS]
    # A failed worker: health must not say SERVING once a client was told. (A stopped rank 0
    # may answer probes queued while it was stopped when it resumes to be torn down.)
    serving_after = [h for h in health if target != 0 and named and h[0] > named[0][0]
                     and h[1] == "SERVING"]
    hang = t_gone - t_fault >= args.bound or not clients_done
    if target == 0:
        detect = t_gone - t_fault
    else:
        detect = named[0][0] - t_fault if named else None
    log = open(os.path.join(work, "log"), errors="replace").read()
    result = {
        "trial": index, "fault": fault, "rank": target,
        "detect_s": None if detect is None else round(detect, 3),
        "all_exited_s": round(t_gone - t_fault, 3),
        "hang": hang,
        "orphans": orphans,
        "named_rank": bool(named) if target != 0 else None,
        "errors": sorted({f"{e[1]}: {e[2][:160]}" for e in after if e[1] != "OK"})[:3],
        "partial_ok": len(partial_ok),
        "serving_after_failure": len(serving_after),
    }
    ok = (not hang and not result["orphans"] and not partial_ok and not serving_after
          and (target == 0 or bool(named)) and detect is not None and detect <= args.bound)
    result["ok"] = ok
    if not ok:
        result["log_tail"] = log[-3000:]
    subprocess.run(["rm", "-rf", work])
    return result


def summarize(results):
    summary = {}
    for kind in ("kill", "stop"):
        for who in ("worker", "rank0"):
            rows = [r for r in results if r.get("fault") == kind and (r["rank"] == 0) == (who == "rank0")]
            if not rows:
                continue
            d = sorted(r["detect_s"] for r in rows if r["detect_s"] is not None)
            q = lambda f: d[min(len(d) - 1, int(f * len(d)))] if d else None  # noqa: E731
            summary[f"{kind} {who}"] = {
                "trials": len(rows), "detect_min_s": d[0] if d else None,
                "detect_median_s": statistics.median(d) if d else None, "detect_p90_s": q(0.9),
                "detect_max_s": d[-1] if d else None,
                "all_exited_max_s": max(r["all_exited_s"] for r in rows),
                "hangs": sum(r["hang"] for r in rows), "orphans": sum(len(r["orphans"]) for r in rows),
                "partial_ok": sum(r["partial_ok"] for r in rows),
                "failed_trials": sum(not r["ok"] for r in rows),
            }
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--switchyard", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--schedule", default="", help="fault:rank,... (overrides --trials; else random)")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--ep", type=int, default=2)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--bound", type=float, default=15.0, help="seconds from fault to everything gone")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the trials and the summary here")
    p.add_argument("serve_flags", nargs="*", help="extra serve flags (after --)")
    args = p.parse_args()
    random.seed(args.seed)
    if args.schedule:
        plan = [(f, int(r)) for f, r in (x.split(":") for x in args.schedule.split(","))]
    else:
        plan = [(random.choice(["kill", "stop"]), random.randrange(args.ranks)) for _ in range(args.trials)]
    results = []
    for i, (fault, target) in enumerate(plan):
        r = trial(args, i, fault, target)
        results.append(r)
        print(json.dumps(r), flush=True)
    summary = summarize([r for r in results if "fault" in r])
    print(json.dumps({"summary": summary}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"trials": results, "summary": summary}, f, indent=1)
    sys.exit(0 if all(r.get("ok") for r in results) else 1)


if __name__ == "__main__":
    main()
