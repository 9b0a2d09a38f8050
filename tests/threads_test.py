#!/usr/bin/python3
"""Each rank sizes its OpenMP threads to its share of the node's CPUs (common/cpu_threads.h):
checked through `bench decode --json` (threads_per_rank is rank 0's omp_get_max_threads())
and the line the node's lowest rank logs, under mpirun with and without binding and with an
explicit OMP_NUM_THREADS; and launch/mpirun.sh's binding (pinned only when the ranks outnumber
the CPUs).

usage: threads_test.py SWITCHYARD MODEL"""
import json
import os
import subprocess
import sys

binary, model = sys.argv[1], sys.argv[2]
cpus = len(os.sched_getaffinity(0))
root = ["--allow-run-as-root"] if os.getuid() == 0 else []
root += ["--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo"]


def run(np, mpirun_flags, env_extra, *layout):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_extra)
    cmd = ["mpirun", *root, "--oversubscribe", *mpirun_flags, "-np", str(np), binary, "bench",
           "decode", "--model", model, *layout, "--tokens", "4", "--repeats", "1", "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    lines = [l for l in p.stderr.splitlines() if " info: threads on node " in l]
    warnings = [l for l in p.stderr.splitlines() if " warning: " in l]
    return json.loads(p.stdout)["threads_per_rank"], lines, warnings


# 4 unbound ranks share the node: CPUs / 4 each (at least 1), warned when they exceed it.
threads, lines, warnings = run(4, ["--bind-to", "none"], {}, "--ep", "2", "--pp", "2")
want = max(1, cpus // 4)
assert threads == want, (threads, want, lines)
assert len(lines) == 1 and f"4 ranks (0-3) on {cpus} CPU" in lines[0], lines
assert "share" in lines[0], lines
assert bool(warnings) == (cpus < 4), (cpus, warnings)

# An explicit OMP_NUM_THREADS wins (and is reported as such).
threads, lines, _ = run(2, ["--bind-to", "none", "-x", "OMP_NUM_THREADS"],
                        {"OMP_NUM_THREADS": "3"}, "--ep", "2")
assert threads == 3, threads
assert "as OMP_NUM_THREADS=3 says" in lines[0], lines

# Ranks bound to one core each run one thread on their own core.
if cpus >= 2:
    threads, lines, warnings = run(2, ["--bind-to", "core", "--map-by", "core"], {}, "--ep", "2")
    assert threads == 1, (threads, lines)
    assert "launcher bound" in lines[0] and not warnings, (lines, warnings)

# launch/mpirun.sh pins ranks one to a CPU, round-robin, only when they outnumber the CPUs
# (launch/binding.sh): seen in the CPU list each rank's operation costs record in preflight.
def cpu_lists(np):
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"threads-test-{os.getpid()}.json")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["SWITCHYARD_BIN"] = binary
    cmd = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "launch", "mpirun.sh"),
           str(np), "preflight", "--model", model, "--max-step-tokens", "2", "--latency-iters",
           "2", "--bandwidth-iters", "1", "--bandwidth-bytes", "4KiB", "--copy-bytes", "1MiB",
           "--matmul-k", "256", "--matmul-n", "256",
           "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, (cmd, p.stdout, p.stderr)
    with open(out) as f:
        ranks = json.load(f)["ranks"]
    os.remove(out)
    return [r["operations"]["cpu_list"] for r in ranks]


own = sorted(os.sched_getaffinity(0))
if cpus <= 4:
    lists = cpu_lists(cpus)
    assert lists == [own] * cpus, (lists, own)
    lists = cpu_lists(2 * cpus)
    assert lists == [[own[r % cpus]] for r in range(2 * cpus)], (lists, own)
else:
    print(f"launch/mpirun.sh binding: not checked on {cpus} CPUs (it would start {2 * cpus} ranks)")

# One process (no mpirun): every CPU it may use.
p = subprocess.run([binary, "bench", "decode", "--model", model, "--tokens", "4", "--repeats", "1",
                    "--json"], capture_output=True, text=True, timeout=120,
                   env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
assert p.returncode == 0, p.stderr
assert json.loads(p.stdout)["threads_per_rank"] == cpus, (p.stdout, cpus)
assert f"rank 0 on {cpus} CPU" in p.stderr, p.stderr
print(f"threads: 5 checks passed on {cpus} CPUs")
