#!/usr/bin/python3
"""`switchyard trace`: the router's choices for every token of a text, the same however the
job is split. Traces tests/data's text on one process and under mpirun on 4 ranks as
EP 2 x PP 2 (with a small step so the text crosses steps and micro-batches), EP 4 and PP 4:
the same experts for every token and layer, weights within 1e-5; every row top-k distinct
experts by descending weight summing to 1. The trace then feeds `switchyard plan --load` and
launch/plot_load.py. A server on 4 ranks returns each generated token's routing
(return_routing, streamed and unary) as the trace gives it for the row the token came from.
Bad input: an id outside the vocabulary, neither --file nor --tokens.

  trace_test.py SWITCHYARD MODEL TEXT WORKDIR
"""
import json
import os
import subprocess
import sys

binary, model, text, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
mpirun = ["mpirun", *root, "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
          "--mca", "oob_tcp_if_include", "lo", "-np", "4"]
HERE = os.path.dirname(os.path.abspath(__file__))


def run(*args, launcher=(), ok=True):
    r = subprocess.run([*launcher, binary, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, (args, r.stderr[-3000:])
    return r


def read(path):
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    return lines[0], lines[1:]


one = os.path.join(work, "one.jsonl")
run("trace", "--model", model, "--file", text, "--out", one)
header, rows = read(one)
L, E, K = header["layers"], header["experts"], header["top_k"]
assert header["tokens"] == len(rows) > 16, header
for i, row in enumerate(rows):
    assert row["position"] == i, row
    assert len(row["experts"]) == L and len(row["weights"]) == L, row
    for experts, weights in zip(row["experts"], row["weights"]):
        assert len(set(experts)) == K and all(0 <= e < E for e in experts), row
        assert all(a >= b for a, b in zip(weights, weights[1:])), row
        assert abs(sum(weights) - 1) < 1e-5, row
assert rows[0]["token"] == "<s>", rows[0]
# The trace does not depend on the chunking: ids in, the same rows out.
ids = " ".join(str(r["token_id"]) for r in rows)
by_ids = os.path.join(work, "ids.jsonl")
run("trace", "--model", model, "--tokens", ids, "--out", by_ids, "--max-step-tokens", "7")
assert [r["experts"] for r in read(by_ids)[1]] == [r["experts"] for r in rows]

for ep, pp in ((2, 2), (4, 1), (1, 4)):
    out = os.path.join(work, f"ep{ep}pp{pp}.jsonl")
    run("trace", "--model", model, "--file", text, "--out", out, "--ep", str(ep), "--pp", str(pp),
        "--max-step-tokens", "16", launcher=mpirun)
    h, got = read(out)
    assert h == header, (h, header)
    assert len(got) == len(rows)
    for a, b in zip(got, rows):
        assert a["token_id"] == b["token_id"] and a["experts"] == b["experts"], (ep, pp, a, b)
        err = max(abs(x - y) for wa, wb in zip(a["weights"], b["weights"]) for x, y in zip(wa, wb))
        assert err < 1e-5, (ep, pp, a, b)
    print(f"EP {ep} x PP {pp}: {len(got)} tokens x {L} layers routed as on one process")

# The trace is a load: plan a placement from it, and draw it.
plan = run("plan", "--model", model, "--ep", "2", "--pp", "1", "--load", one, "--redundant", "1")
assert "placement planned from --load" in plan.stdout, plan.stdout
png = os.path.join(work, "trace.png")
r = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "..", "launch", "plot_load.py"),
                    "--load", one, "--out", png], capture_output=True, text=True, timeout=120)
assert r.returncode == 0 and os.path.getsize(png) > 1000, r.stderr

# A served request's routing (return_routing), on 4 ranks as EP 2 x PP 2: per generated token,
# the trace's row that token was sampled from (prompt + completion traced on one process).
cluster = os.path.join(work, "cluster")
launch = os.path.join(HERE, "..", "launch", "cluster.sh")
r = subprocess.run([launch, "start", cluster, "4", "2", "2", binary, model], capture_output=True,
                   text=True, timeout=300)
assert r.returncode == 0, r.stdout + r.stderr
try:
    with open(os.path.join(cluster, "port")) as f:
        target = f"127.0.0.1:{f.read().strip()}"
    for how in ("generate", "complete"):
        got = json.loads(run("client", how, "--target", target, "--prompt", "The jury said that",
                             "--max-tokens", "12", "--return-routing", "--json").stdout)
        ids, routing = got["token_ids"], got["routing"]
        assert len(routing) == len(ids) > 0, got
        prompt = json.loads(run("client", "tokenize", "--target", target, "--text",
                                "The jury said that", "--json").stdout)["token_ids"]
        traced = os.path.join(work, f"served-{how}.jsonl")
        run("trace", "--model", model, "--tokens", " ".join(map(str, prompt + ids[:-1])),
            "--out", traced)
        rows = read(traced)[1]
        for i, token in enumerate(routing):
            row = rows[len(prompt) - 1 + i]
            assert [layer["experts"] for layer in token] == row["experts"], (how, i, token, row)
            for layer, weights in zip(token, row["weights"]):
                assert all(abs(a - b) < 1e-5 for a, b in zip(layer["weights"], weights)), (i, token)
        print(f"served ({how}) on EP 2 x PP 2: the routing of {len(ids)} tokens as traced")
    plain = json.loads(run("client", "complete", "--target", target, "--prompt", "It was",
                           "--max-tokens", "4", "--json").stdout)
    assert "routing" not in plain, plain
finally:
    subprocess.run([launch, "stop", cluster], capture_output=True, timeout=120)

bad = run("trace", "--model", model, "--tokens", "1 999999", "--out", os.path.join(work, "x"),
          ok=False)
assert bad.returncode != 0 and "--tokens: id 999999 outside [0, " in bad.stderr, bad.stderr
neither = run("trace", "--model", model, "--out", os.path.join(work, "x"), ok=False)
assert neither.returncode != 0 and "exactly one of --file and --tokens" in neither.stderr
print("PASS")
