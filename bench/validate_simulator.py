#!/usr/bin/python3
"""Checks `switchyard study simulate` against measured serving runs on this machine.

    bench/validate_simulator.py [--runs 3] [--out table.md] [--json results.json]
                                [--configs 1x1,2x1,1x2,2x2] [--concurrency 1,8,64]

1. `switchyard preflight` for each job size (1, 2 and 4 ranks): the calibration files. They
   are the simulator's only input from this machine (it never sees the runs it is checked
   against).
2. For each EP x PP in 1x1, 2x1, 1x2, 2x2: a serving cluster of the demo model
   (launch/cluster.sh), a warm-up, then `switchyard loadgen` at concurrency 1, 8 and 64
   (prompt 16 tokens, 64 generated, EOS ignored), --runs times each. Measured: the median
   inter-token latency (the decode step at that batch, all streams decoding) and the output
   tokens/s.
3. `switchyard study simulate` with the job size's calibration and the same workload (the
   real scheduler in virtual time): the same two figures, predicted.
4. The table: per point the measured median, its run-to-run variation ((max - min) / 2 over
   the median), the prediction and its error; then the median absolute error and the worst,
   against the bar (median <= max(10%, twice the median variation), worst <= 25%).

Needs the release build (build/cli/switchyard) and Open MPI. Takes about 15 minutes on 2 cores;
run it on a quiet machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "cli", "switchyard")
MODEL = os.path.join(ROOT, "models", "brown-moe")
CONFIGS = [(1, 1), (2, 1), (1, 2), (2, 2)]
CONCURRENCY = [1, 8, 64]
PROMPT, OUTPUT = 16, 64


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def preflight(world, out):
    cmd = [os.path.join(ROOT, "launch", "mpirun.sh"), str(world)] if world > 1 else [BIN]
    cmd += ["preflight", "--out", out]
    run(cmd)


def requests_for(c):
    return max(8, 4 * c)


def measure(ep, pp, runs, work):
    """{concurrency: [(itl_p50_s, tokens_per_s), ...]} from one serving cluster."""
    d = os.path.join(work, f"cluster-{ep}x{pp}")
    start = [os.path.join(ROOT, "launch", "cluster.sh"), "start", d, str(ep * pp), str(ep),
             str(pp), BIN, MODEL]
    run(start)
    port = open(os.path.join(d, "port")).read().strip()
    out = {}
    try:
        def loadgen(c, n):
            r = run([BIN, "loadgen", "--target", f"127.0.0.1:{port}", "--concurrency", str(c),
                     "--requests", str(n), "--prompt-len", str(PROMPT), "--max-tokens",
                     str(OUTPUT), "--ignore-eos", "--json"])
            j = json.loads(r.stdout)
            if j["requests_failed"]:
                raise RuntimeError(f"loadgen: {j['requests_failed']} requests failed: {j['errors']}")
            return j["itl_ms"]["p50"] / 1e3, j["output_tokens_per_s"]

        loadgen(8, 16)  # warm-up
        for c in CONCURRENCY:
            out[c] = [loadgen(c, requests_for(c)) for _ in range(runs)]
            print(f"  {ep}x{pp} concurrency {c}: " +
                  ", ".join(f"{itl * 1e3:.2f} ms / {tps:.0f} tok/s" for itl, tps in out[c]),
                  flush=True)
    finally:
        subprocess.run([os.path.join(ROOT, "launch", "cluster.sh"), "stop", d],
                       capture_output=True)
    return out


def predict(ep, pp, c, calibration):
    r = run([BIN, "study", "simulate", "--model", MODEL, "--calibration", calibration,
             "--ep", str(ep), "--pp", str(pp), "--batch", str(c), "--context",
             str(PROMPT + OUTPUT // 2), "--requests", str(requests_for(c)), "--concurrency",
             str(c), "--prompt-len", str(PROMPT), "--output-len", str(OUTPUT), "--json"])
    s = json.loads(r.stdout)["serving"]
    return s["itl_s"]["p50"], s["output_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default="1x1,2x1,1x2,2x2", help="EPxPP list")
    ap.add_argument("--concurrency", default="1,8,64", help="loadgen concurrency list")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args()
    global CONFIGS, CONCURRENCY
    CONFIGS = [tuple(int(x) for x in c.split("x")) for c in a.configs.split(",")]
    CONCURRENCY = [int(c) for c in a.concurrency.split(",")]
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: build first (launch/build.sh)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sy-validate-") as work:
        cal = {}
        for world in sorted({ep * pp for ep, pp in CONFIGS}):
            cal[world] = os.path.join(work, f"cal-{world}.json")
            print(f"preflight, {world} rank(s)", flush=True)
            preflight(world, cal[world])
        for ep, pp in CONFIGS:
            measured = measure(ep, pp, a.runs, work)
            for c in CONCURRENCY:
                p_itl, p_tps = predict(ep, pp, c, cal[ep * pp])
                for name, idx, pred in (("ITL p50", 0, p_itl), ("tokens/s", 1, p_tps)):
                    vals = [m[idx] for m in measured[c]]
                    med = statistics.median(vals)
                    rows.append({"ep": ep, "pp": pp, "concurrency": c, "figure": name,
                                 "measured": vals, "median": med,
                                 "variation": (max(vals) - min(vals)) / 2 / med,
                                 "predicted": pred, "error": (pred - med) / med})
    errs = sorted(abs(r["error"]) for r in rows)
    var = statistics.median(r["variation"] for r in rows)
    med_err, worst = statistics.median(errs), errs[-1]
    bar = max(0.10, 2 * var)
    lines = ["| EP x PP | concurrency | figure | measured (median) | run-to-run | predicted | error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = (lambda v: f"{v * 1e3:.2f} ms") if r["figure"] == "ITL p50" else (lambda v: f"{v:.0f}")
        lines.append(f"| {r['ep']}x{r['pp']} | {r['concurrency']} | {r['figure']} | "
                     f"{unit(r['median'])} | ±{r['variation'] * 100:.1f}% | "
                     f"{unit(r['predicted'])} | {r['error'] * 100:+.1f}% |")
    lines.append("")
    lines.append(f"Median absolute error {med_err * 100:.1f}% (bar: {bar * 100:.1f}%, the larger "
                 f"of 10% and twice the median run-to-run variation {var * 100:.1f}%); worst "
                 f"{worst * 100:.1f}% (bar: 25%): "
                 f"{'PASS' if med_err <= bar and worst <= 0.25 else 'FAIL'}.")
    text = "\n".join(lines)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    if a.json:
        json.dump({"rows": rows, "median_abs_error": med_err, "worst": worst,
                   "median_variation": var}, open(a.json, "w"), indent=1)
    return 0 if med_err <= bar and worst <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
