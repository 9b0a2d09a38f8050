#!/usr/bin/python3
"""`switchyard plan --load`: a placement planned from a skewed per-expert load (Zipf 1.2 per
layer, tests/data/brown-moe-skewed-load.json) balances it better than the default and never
worse than DeepSeek's EPLB; the placement file it writes is valid, and a 4-rank job serving
with it generates exactly the single-process tokens. --device-memory bounds the replicas;
flags without --load are usage errors.

usage: plan_load_test.py SWITCHYARD MODEL LOAD WORK"""
import json
import os
import subprocess
import sys

binary, model, load, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
out = os.path.join(work, "placement.json")
root = ["--allow-run-as-root"] if os.getuid() == 0 else []


def run(*args, check=True):
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


p = run("plan", "--model", model, "--ep", "4", "--pp", "1", "--load", load, "--redundant", "2",
        "--out", out, "--json")
result = json.loads(p.stdout)
balance = result["balance"]
given = balance["given"]["max_over_mean"]
eplb = balance["eplb"]["max_over_mean"]
ours = balance["switchyard"]["max_over_mean"]
assert ours <= eplb + 1e-9 and eplb < given, balance
assert ours < 1.1 < given, balance  # the skew is real, and the plan removes most of it
for planner in ("eplb", "switchyard"):
    for layer in balance[planner]["layers"]:
        assert layer["max"] >= layer["mean"] > 0, layer

placement = json.load(open(out))
assert placement["ep"] == 4 and placement["pp"] == 1, placement
config = json.load(open(os.path.join(model, "config.json")))
for rank in result["ranks"]:  # a rank holds at most ceil((8 + 2) / 4) = 3 experts of a layer
    assert all(1 <= len(held) <= 3 for held in rank["experts"]), rank
for layer in range(config["num_hidden_layers"]):
    held = [e for rank in result["ranks"] for e in rank["experts"][layer]]
    assert set(held) == set(range(config["num_local_experts"])), (layer, held)
    assert len(held) <= config["num_local_experts"] + 2, (layer, held)

# The text form prints the comparison and writes the same file.
text = run("plan", "--model", model, "--ep", "4", "--pp", "1", "--load", load, "--redundant", "2",
           "--out", out).stdout
assert "max / mean" in text and "switchyard" in text and "placement planned from --load" in text, text

# Served with the planned placement, the job generates the single-process tokens.
prompt = ["--prompt", "The President told reporters", "--max-tokens", "24", "--json"]
alone = json.loads(run("generate", "--model", model, *prompt).stdout)
mpirun = ["mpirun", *root, "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
          "--mca", "oob_tcp_if_include", "lo", "-np", "4"]
job = subprocess.run([*mpirun, binary, "generate", "--model", model, "--ep", "4", "--placement", out,
                      *prompt], capture_output=True, text=True, timeout=300)
assert job.returncode == 0, job.stderr
together = json.loads(job.stdout.strip().splitlines()[-1])
assert together["token_ids"] == alone["token_ids"], (together, alone)

# Memory bounds the replicas: 12 MiB per rank leaves room for two experts of each layer only
# (no replica), 11 MiB not even for one of each.
p = run("plan", "--model", model, "--ep", "4", "--pp", "1", "--load", load, "--redundant", "4",
        "--device-memory", "12MiB", "--json")
tight = json.loads(p.stdout)
assert all(len(held) <= 2 for rank in tight["ranks"] for held in rank["experts"]), tight["ranks"]
p = run("plan", "--model", model, "--ep", "4", "--pp", "1", "--load", load, "--redundant", "4",
        "--device-memory", "11MiB", check=False)
assert p.returncode == 1 and "fewer than its 8 experts within --device-memory 11MiB" in p.stderr, p.stderr

# Flags that only mean something with --load are refused without it.
for flags in (["--redundant", "2"], ["--out", out]):
    p = run("plan", "--model", model, "--ep", "4", "--pp", "1", *flags, check=False)
    assert p.returncode == 2 and "--load" in p.stderr, (flags, p.returncode, p.stderr)
# A load that does not fit the model names the file.
bad = os.path.join(work, "bad.json")
with open(bad, "w") as f:
    f.write("[[1, 2, 3]]")
p = run("plan", "--model", model, "--ep", "4", "--pp", "1", "--load", bad, check=False)
assert p.returncode == 1 and f"{bad}: want one row per layer (4)" in p.stderr, p.stderr
print(f"ok: max/mean given {given:.3f}, eplb {eplb:.3f}, switchyard {ours:.3f}")
