#!/usr/bin/python3
"""`switchyard preflight` end to end: under mpirun on 4 ranks it prints the rank x rank
bandwidth and latency matrices, each rank's figures and its findings, and writes a calibration
file whose matrices and per-rank figures are complete (every pair measured, latency
symmetric, one link class on one machine); --json prints the same file; one process alone
measures itself with no pairs. A rank that stops answering (SIGSTOP while the pairs are
measured) ends the job within --liveness-timeout plus a margin, with an error naming it and
no other rank. With --model, every rank's operation costs at that model's shapes are in the
file, and `study simulate` reads its compute from them. Usage errors name the flag. Speed is
not tested (figures on 2 shared cores say little).

  preflight_test.py SWITCHYARD WORKDIR MODEL
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

binary, work, model = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
root = ["--allow-run-as-root"] if os.geteuid() == 0 else []


def mpirun(np):
    return ["mpirun", *root, "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
            "--mca", "oob_tcp_if_include", "lo", "-np", str(np)]


SMALL = ["--latency-iters", "10", "--bandwidth-bytes", "1MiB", "--bandwidth-iters", "2",
         "--copy-bytes", "16MiB", "--matmul-n", "1024", "--matmul-k", "1024",
         "--prefill-rows", "16"]

# 4 ranks: the report and the calibration file.
cal = os.path.join(work, "calibration.json")
r = subprocess.run([*mpirun(4), binary, "preflight", "--out", cal, *SMALL], capture_output=True,
                   text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
out = r.stdout
assert "preflight: 4 rank(s) on 1 host(s), mpi transport, cpu" in out, out
assert "bandwidth, GB/s (row: from rank, column: to rank)" in out, out
assert "latency, us (one way)" in out, out
assert "link class within_node: 12 ordered pairs" in out, out
assert out.count("findings:") == 1, out
assert f"calibration written to {cal}" in out, out
for k in range(1, 4):
    assert f"preflight: pairs, round {k} of 3" in r.stderr, r.stderr
with open(cal) as f:
    c = json.load(f)
assert c["kind"] == "switchyard-calibration" and c["version"] == 1, c
assert c["world"] == 4 and c["transport"] == "mpi" and c["device"] == "cpu", c
assert len(set(c["hosts"])) == 1 and list(c["links"]) == ["within_node"], c["links"]
assert c["links"]["within_node"]["ordered_pairs"] == 12, c["links"]
lat, bw = c["matrix"]["latency_s"], c["matrix"]["bandwidth_bytes_per_s"]
for s in range(4):
    rank = c["ranks"][s]
    assert rank["rank"] == s and rank["copy_bytes_per_s"] > 0, rank
    assert rank["decode_weight_bytes_per_s"] > 0 and rank["prefill_flops"] > 0, rank
    for d in range(4):
        if s == d:
            assert lat[s][d] == 0 and bw[s][d] == 0, (s, lat, bw)
        else:
            assert lat[s][d] > 0 and lat[s][d] == lat[d][s] and bw[s][d] > 0, (s, d, lat, bw)
assert c["options"]["large_bytes"] == 1 << 20 and c["options"]["latency_iters"] == 10, c
print(f"4 ranks: median {c['links']['within_node']['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s, "
      f"{c['links']['within_node']['latency_s'] * 1e6:.1f} us within the node; "
      f"{len(c['findings'])} finding(s); {c['seconds']:.1f} s")

# --json: the calibration on stdout, nothing else there.
r = subprocess.run([*mpirun(2), binary, "preflight", "--json", *SMALL], capture_output=True,
                   text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
j = json.loads(r.stdout)
assert j["world"] == 2 and j["links"]["within_node"]["ordered_pairs"] == 2, j

# --model: the operations of both ranks at the demo model's shapes, then the simulator on them.
cal_ops = os.path.join(work, "calibration-ops.json")
r = subprocess.run([*mpirun(2), binary, "preflight", "--model", model, "--max-step-tokens", "16",
                    "--out", cal_ops, *SMALL], capture_output=True, text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
with open(cal_ops) as f:
    c = json.load(f)
for rank in c["ranks"]:
    ops = rank["operations"]
    assert ops["shape"]["hidden"] == 256 and ops["shape"]["vocab"] == 4096, ops["shape"]
    assert ops["layers"] == 4 and ops["rows"] == [1, 2, 4, 8, 16], ops
    assert all(x > 0 for x in ops["expert_s"] + ops["head_s"]), ops
r = subprocess.run([binary, "study", "simulate", "--model", model, "--calibration", cal_ops,
                    "--ep", "2", "--batch", "1,8", "--json"], capture_output=True, text=True,
                   timeout=60)
assert r.returncode == 0, r.stdout + r.stderr
j = json.loads(r.stdout)
assert j["costs"] == "operations" and j["decode"][1]["step_s"] > j["decode"][0]["step_s"], j
# Another model's shapes: the rates, said so.
r = subprocess.run([binary, "study", "simulate", "--preset", "mixtral-8x7b", "--calibration",
                    cal_ops, "--ep", "2", "--batch", "1"], capture_output=True, text=True,
                   timeout=60)
assert r.returncode == 0, r.stdout + r.stderr
assert "compute costs: multiply rates (no operations measured at this model's shapes)" in \
    r.stdout, r.stdout
r = subprocess.run([binary, "preflight", "--model", work], capture_output=True, text=True,
                   timeout=60)
assert r.returncode == 1 and "config.json" in r.stderr, (r.returncode, r.stderr)

# One process, no mpirun: itself only.
r = subprocess.run([binary, "preflight", *SMALL], capture_output=True, text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
assert "preflight: 1 rank(s) on 1 host(s)" in r.stdout and "bandwidth, GB/s" not in r.stdout, \
    r.stdout

# Usage errors name the flag.
for bad, flag in ((["--bandwidth-bytes", "0"], "--bandwidth-bytes"),
                  (["--model", "/nonexistent"], "--model"),
                  (["--copy-bytes", "12parsecs"], "--copy-bytes"),
                  (["--outlier-factor", "1"], "--outlier-factor")):
    r = subprocess.run([binary, "preflight", *bad], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and flag in r.stderr, (bad, r.returncode, r.stderr)

# A rank stopped while the pairs are measured: the job ends, naming it, within the deadline.
TIMEOUT = 2
proc = subprocess.Popen([*mpirun(3), binary, "preflight", "--liveness-timeout", str(TIMEOUT),
                         "--latency-iters", "1000000"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
lines, victim = [], None
try:
    # Once the pairs are being measured (MPI is up: a rank stopped inside MPI's own start-up
    # would hang the others there, where no deadline of ours applies), rank 2, found by its
    # environment among mpirun's children.
    for line in proc.stdout:
        lines.append(line)
        if "preflight: pairs, round 1 of 3" in line:
            break
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"OMPI_COMM_WORLD_RANK=2" in f.read().split(b"\0"):
                    victim = int(pid)
        except OSError:
            continue
    assert victim is not None, "rank 2 not found: " + "".join(lines)
    stopped_at = time.time()
    os.kill(victim, signal.SIGSTOP)
    rest, _ = proc.communicate(timeout=TIMEOUT + 30)
    took = time.time() - stopped_at
    output = "".join(lines) + rest
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if victim is not None:  # never leave a stopped rank behind
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
assert "preflight: pairs, round 1 of 3" in output, output
assert proc.returncode != 0, output
# Named by the liveness channel (not by a communication deadline, which would also catch the
# live ranks that wait on it), and no other rank blamed.
assert f"rank 2 (pid {victim} on " in output and "has not answered for" in output, output
assert not re.search(r"rank [01] \(pid \d+ on ", output), output
assert took < TIMEOUT + 10, (took, output)
print(f"a stopped rank 2: the job ended {took:.1f} s later (--liveness-timeout {TIMEOUT}), "
      "naming it")
print("PASS")
