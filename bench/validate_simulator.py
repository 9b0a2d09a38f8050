#!/usr/bin/python3
"""Checks `switchyard study simulate` against measured runs on this machine.

    bench/validate_simulator.py [--runs 3] [--out table.md] [--json results.json]
                                [--configs 1x1,2x1,1x2,2x2] [--batch 1,8,64]
                                [--concurrency 1,8,64]

1. For each EP x PP in 1x1, 2x1, 1x2, 2x2, --runs times: `switchyard preflight --model
   models/brown-moe` on as many ranks (a calibration file, with the runtime's operations
   timed at the model's shapes on every rank), then at once `switchyard bench decode --batch
   B` for B in 1, 8, 64 (prompt 16, 64 decode steps): the mean decode step time. Calibrating
   right before each run lets the prediction and the run see the machine in the same state
   (a shared machine's speed drifts by tens of percent over minutes). The calibrations are
   the simulator's only input from this machine (it never sees the runs it is checked
   against); each figure's prediction is the median over the configuration's calibrations.
2. Then, per EP x PP:
   - a serving cluster of the demo model (launch/cluster.sh), a warm-up, then
     `switchyard loadgen` at concurrency 1, 8 and 64 (prompt 16 tokens, 64 generated, EOS
     ignored), --runs times each: the output tokens/s, TTFT p50 and ITL p50.
3. The serving front end's own costs on this machine (per step, per token, and the client's
   turnaround per request), for each EP x PP: measured with a model whose steps cost next to
   nothing (two layers, hidden 64) served by as many ranks in the same layout, so that the
   ranks waiting on their cores are there as they are when the demo model serves: the wall
   time of loadgen runs less the server's time inside steps (its step metric); and the CPU
   time the client (loadgen's cpu_s) and the server's network threads take beside the steps.
4. On two emulated nodes (launch/netns-cluster.sh, root only: network namespaces joined by a
   veth link shaped to --netns, 1 Gbit/s by default), one rank each: `preflight --model` there,
   then `bench decode --ep 2` at each batch, --runs times.
5. `switchyard study simulate` with the job size's calibration: the decode step at each batch
   (context 48, the middle of the decode) and the same serving workload (the real scheduler
   in virtual time) with the front end's costs.
6. The table: per point the measured median, its run-to-run variation ((max - min) / 2 over
   the median), the prediction and its error. The bar (issue 12) covers the decode step times
   (the emulated nodes' too) and the serving throughput: median absolute error <= max(10%, twice the median
   variation), worst <= 25%. TTFT and ITL percentiles are reported beside their measurements
   without a bar.

Needs the release build (build/cli/switchyard) and Open MPI. Takes about 13 minutes on 2 cores;
run it on a quiet machine.
"""
import argparse
import glob
import itertools
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
BATCH = [1, 8, 64]
PROMPT, OUTPUT = 16, 64


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def launcher(world):
    return [os.path.join(ROOT, "launch", "mpirun.sh"), str(world)] if world > 1 else [BIN]


def preflight(world, out):
    run(launcher(world) + ["preflight", "--model", MODEL, "--out", out])


# The expert exchange of runs and predictions (--exchange): by default the all-to-alls (what
# GPUs and groups spread over several hosts use, and what the table in docs/scaling.md was
# measured with); `--exchange shm` checks the shared memory CPU ranks of one host use by
# default.
EXCHANGE = ["--no-shared-memory"]


def bench_steps(ep, pp, runs, work):
    """({batch: [mean decode step seconds, ...]}, {batch: [predicted seconds, ...]},
    [calibration files]): per run, a fresh calibration (preflight --model) and right after
    it one bench process per batch, so that each prediction and the runs it is checked
    against see the machine in the same state (a shared machine's speed drifts over minutes)."""
    out = {b: [] for b in BATCH}
    pred = {b: [] for b in BATCH}
    cals = []
    for i in range(runs):
        cal = os.path.join(work, f"cal-{ep}x{pp}-{i}.json")
        preflight(ep * pp, cal)
        cals.append(cal)
        for b, p in predict_steps(ep, pp, cal).items():
            pred[b].append(p)
        for b in BATCH:
            r = run(launcher(ep * pp) + ["bench", "decode", "--model", MODEL, "--ep", str(ep),
                                         "--pp", str(pp), "--batch", str(b), "--prompt-len",
                                         str(PROMPT), "--tokens", str(OUTPUT), "--repeats", "1",
                                         "--json"] + EXCHANGE)
            out[b].append(json.loads(r.stdout)["decode_step_s_median"])
    for b in BATCH:
        print(f"  {ep}x{pp} bench decode batch {b}: " +
              ", ".join(f"{s * 1e3:.3f} ms" for s in out[b]) + " (predicted " +
              ", ".join(f"{s * 1e3:.3f}" for s in pred[b]) + ")", flush=True)
    return out, pred, cals


def requests_for(c):
    return max(16, 8 * c)


def measure(ep, pp, runs, work):
    """{concurrency: [(tokens_per_s, ttft_p50_s, itl_p50_s), ...]} from one serving cluster."""
    d = os.path.join(work, f"cluster-{ep}x{pp}")
    start = [os.path.join(ROOT, "launch", "cluster.sh"), "start", d, str(ep * pp), str(ep),
             str(pp), BIN, MODEL] + EXCHANGE
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
            return (j["output_tokens_per_s"], j["ttft_ms"]["p50"] / 1e3,
                    j["itl_ms"]["p50"] / 1e3)

        loadgen(8, 16)  # warm-up
        for c in CONCURRENCY:
            out[c] = [loadgen(c, requests_for(c)) for _ in range(runs)]
            print(f"  {ep}x{pp} loadgen concurrency {c}: " +
                  ", ".join(f"{tps:.0f} tok/s (ITL {itl * 1e3:.2f} ms)" for tps, _, itl in out[c]),
                  flush=True)
    finally:
        subprocess.run([os.path.join(ROOT, "launch", "cluster.sh"), "stop", d],
                       capture_output=True)
    return out


def metrics(port):
    """(steps, seconds inside steps) from the server's /metrics."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    got = {}
    for line in text.splitlines():
        for name in ("switchyard_step_duration_seconds_count", "switchyard_step_duration_seconds_sum"):
            if line.startswith(name + " "):
                got[name] = float(line.split()[-1])
    return got["switchyard_step_duration_seconds_count"], got["switchyard_step_duration_seconds_sum"]


def network_cpu_seconds(pids):
    """CPU seconds so far of the threads of processes `pids` that the runtime did not start
    (its own threads, steps included, carry the program's name; gRPC's carry their own)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for task in glob.glob(f"/proc/{pid}/task/*/stat"):
            try:
                stat = open(task).read()
            except OSError:
                continue  # the thread ended
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            if name != "switchyard":
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def fit(rows):
    """Non-negative coefficients whose sums over each row's terms (all but its last value)
    best match its measured total (its last value), in relative terms (each row weighs the
    same whatever its size): least squares over every subset of the terms, the best one with
    no negative coefficient."""
    import numpy  # with python3-matplotlib
    a = numpy.array([r[:-1] for r in rows], dtype=float)
    y = numpy.array([r[-1] for r in rows], dtype=float)
    w = 1 / numpy.maximum(y, 1e-12)
    n = a.shape[1]
    best, best_err = (0.0,) * n, float("inf")
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            x, *_ = numpy.linalg.lstsq(a[:, cols] * w[:, None], y * w, rcond=None)
            if (x < 0).any():
                continue
            full = numpy.zeros(n)
            full[list(cols)] = x
            err = float(numpy.sum(((a @ full - y) * w) ** 2))
            if err < best_err:
                best, best_err = tuple(float(v) for v in full), err
    return best


def front_end_costs(ep, pp, runs, work):
    """(step_s, token_s, turnaround_s, cpu_step_s, cpu_token_s): what the serving front end
    costs on this machine beyond the steps, measured with a model whose steps cost next to
    nothing (two layers, hidden 64: make-synthetic-model --preset tiny --layers 2) served by
    ep x pp ranks, with loadgen at concurrency 1, 8 and 64, `runs` times each. Per run, the
    server's step metric gives the time inside steps; the rest of the run's wall time is the
    front end's, fitted over every run as step_s x steps + token_s x tokens, plus
    turnaround_s x requests at concurrency 1 (fit). The CPU time the client (its cpu_s) and
    the server's network threads take in a run is fitted as cpu_step_s x steps + cpu_token_s
    x tokens."""
    model = os.path.join(work, "front-end-model")
    if not os.path.isdir(model):
        run([BIN, "make-synthetic-model", "--preset", "tiny", "--layers", "2", "--out", model,
             "--tokenizer", os.path.join(MODEL, "tokenizer.model")])
    d = os.path.join(work, f"front-end-{ep}x{pp}")
    run([os.path.join(ROOT, "launch", "cluster.sh"), "start", d, str(ep * pp), str(ep), str(pp),
         BIN, model, "--http-listen", "127.0.0.1:0", "--http-port-file",
         os.path.join(d + "-http")] + EXCHANGE)
    port = open(os.path.join(d, "port")).read().strip()
    http = open(d + "-http").read().strip()
    ranks = subprocess.run(["pgrep", "-P", open(os.path.join(d, "pid")).read().strip()],
                           capture_output=True, text=True).stdout.split()
    points = {}
    try:
        def one(c):
            n0, s0 = metrics(http)
            cpu0 = network_cpu_seconds(ranks)
            r = run([BIN, "loadgen", "--target", f"127.0.0.1:{port}", "--concurrency", str(c),
                     "--requests", str(requests_for(c)), "--prompt-len", str(PROMPT),
                     "--max-tokens", str(OUTPUT), "--ignore-eos", "--json"])
            cpu = network_cpu_seconds(ranks) - cpu0
            n1, s1 = metrics(http)
            j = json.loads(r.stdout)
            steps = n1 - n0
            # (steps, tokens, requests, time outside the steps, CPU time beside them)
            return (steps, j["output_tokens"], j["requests_ok"], j["wall_s"] - (s1 - s0),
                    j["cpu_s"] + cpu)

        one(8)  # warm-up
        for c in (1, 8, 64):
            points[c] = [one(c) for _ in range(runs)]
    finally:
        subprocess.run([os.path.join(ROOT, "launch", "cluster.sh"), "stop", d],
                       capture_output=True)
    # The wait: per step, per token, and the client's turnaround per request, which keeps
    # the ranks idle only at concurrency 1 (with more clients, others' steps run meanwhile).
    # The CPU work: per step and per token. (Not per request: every request has the same
    # tokens, so a cost per request cannot be told from one per token.)
    runs = [(c, p) for c in points for p in points[c]]
    step_s, token_s, turnaround_s = fit([(p[0], p[1], p[2] if c == 1 else 0, p[3])
                                         for c, p in runs])
    cpu_step_s, cpu_token_s = fit([(p[0], p[1], p[4]) for _, p in runs])
    costs = (step_s, token_s, turnaround_s, cpu_step_s, cpu_token_s)
    print(f"  {ep}x{pp} front end (two-layer hidden-64 model): {step_s * 1e6:.1f} us per step, "
          f"{token_s * 1e6:.1f} us per token, turnaround {turnaround_s * 1e6:.0f} us per request; "
          f"CPU beside the steps {cpu_step_s * 1e6:.1f} us per step, {cpu_token_s * 1e6:.1f} us "
          "per token", flush=True)
    return costs


def netns_steps(runs, rate, work):
    """The decode step on two emulated nodes (launch/netns-cluster.sh, a link shaped to
    `rate`), one rank each, EP 2: ({batch: [measured seconds]}, {batch: predicted}), or None
    (with the reason printed) where the emulation cannot be built."""
    script = os.path.join(ROOT, "launch", "netns-cluster.sh")
    if os.geteuid() != 0:
        print("emulated two-node cluster: skipped (needs root)", flush=True)
        return None
    up = subprocess.run([script, "up", "--rate", rate], capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run([script, "down"], capture_output=True)
        print(f"emulated two-node cluster: skipped ({up.stderr.strip()})", flush=True)
        return None
    try:
        cal = os.path.join(work, "cal-netns.json")
        run([script, "run", "1", "preflight", "--model", MODEL, "--out", cal])
        link = json.load(open(cal))["links"]["between_nodes"]
        print(f"emulated two-node cluster, {rate}: preflight measured "
              f"{link['bandwidth_bytes_per_s'] / 1e6:.0f} MB/s, {link['latency_s'] * 1e6:.1f} us",
              flush=True)
        measured = {}
        for b in BATCH:
            measured[b] = []
            for _ in range(runs):
                r = run([script, "run", "1", "bench", "decode", "--model", MODEL, "--ep", "2",
                         "--batch", str(b), "--prompt-len", str(PROMPT), "--tokens",
                         str(OUTPUT), "--repeats", "1", "--json"])
                measured[b].append(json.loads(r.stdout)["decode_step_s_median"])
            print(f"  netns 2x1 bench decode batch {b}: " +
                  ", ".join(f"{x * 1e3:.3f} ms" for x in measured[b]), flush=True)
        return measured, predict_steps(2, 1, cal)
    finally:
        subprocess.run([script, "down"], capture_output=True)


def predict_steps(ep, pp, calibration):
    """{batch: predicted decode step seconds}."""
    r = run([BIN, "study", "simulate", "--model", MODEL, "--calibration", calibration,
             "--ep", str(ep), "--pp", str(pp), "--batch", ",".join(map(str, BATCH)),
             "--context", str(PROMPT + OUTPUT // 2), "--json"] + EXCHANGE)
    return {d["batch"]: d["step_s"] for d in json.loads(r.stdout)["decode"]}


def predict_serving(ep, pp, c, calibration, host):
    """(tokens_per_s, ttft_p50_s, itl_p50_s) predicted for loadgen at concurrency c, with the
    front end's costs `host` (step_s, token_s, turnaround_s, cpu_step_s, cpu_token_s)."""
    r = run([BIN, "study", "simulate", "--model", MODEL, "--calibration", calibration,
             "--ep", str(ep), "--pp", str(pp), "--batch", str(c), "--context",
             str(PROMPT + OUTPUT // 2), "--requests", str(requests_for(c)), "--concurrency",
             str(c), "--prompt-len", str(PROMPT), "--output-len", str(OUTPUT),
             "--host-step-us", str(host[0] * 1e6), "--host-token-us", str(host[1] * 1e6),
             "--turnaround-us", str(host[2] * 1e6), "--host-cpu-step-us", str(host[3] * 1e6),
             "--host-cpu-token-us", str(host[4] * 1e6), "--json"] + EXCHANGE)
    s = json.loads(r.stdout)["serving"]
    return s["output_tokens_per_s"], s["ttft_s"]["p50"], s["itl_s"]["p50"]


def row(ep, pp, what, figure, vals, pred, bar):
    med = statistics.median(vals)
    return {"ep": ep, "pp": pp, "point": what, "figure": figure, "measured": vals,
            "median": med, "variation": (max(vals) - min(vals)) / 2 / med, "predicted": pred,
            "error": (pred - med) / med, "bar": bar}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default="1x1,2x1,1x2,2x2", help="EPxPP list")
    ap.add_argument("--batch", default="1,8,64", help="bench decode batch list")
    ap.add_argument("--concurrency", default="1,8,64",
                    help="loadgen concurrency list ('none': decode steps only)")
    ap.add_argument("--exchange", default="all-to-all", choices=["all-to-all", "shm"],
                    help="the expert exchange runs and predictions use (the table in "
                         "docs/scaling.md: all-to-all)")
    ap.add_argument("--netns", default="1gbit",
                    help="link rate of the emulated two-node cluster (root only; 'none': skip)")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args()
    global CONFIGS, CONCURRENCY, BATCH, EXCHANGE
    CONFIGS = [tuple(int(x) for x in c.split("x")) for c in a.configs.split(",")]
    BATCH = [int(b) for b in a.batch.split(",")]
    CONCURRENCY = [] if a.concurrency == "none" else [int(c) for c in a.concurrency.split(",")]
    EXCHANGE = ["--no-shared-memory"] if a.exchange == "all-to-all" else []
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: build first (launch/build.sh)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sy-validate-") as work:
        host = {}
        for ep, pp in CONFIGS:
            steps, predicted, cals = bench_steps(ep, pp, a.runs, work)
            for b in BATCH:
                rows.append(row(ep, pp, f"batch {b}", "decode step", steps[b],
                                statistics.median(predicted[b]), True))
            measured = measure(ep, pp, a.runs, work) if CONCURRENCY else {}
            if CONCURRENCY:
                host[(ep, pp)] = front_end_costs(ep, pp, a.runs, work)
            for c in CONCURRENCY:
                # The median over the configuration's calibrations; and, to show what it
                # adds, the same without the front end's CPU work beside the steps.
                preds = [predict_serving(ep, pp, c, cal, host[(ep, pp)]) for cal in cals]
                wait_only = host[(ep, pp)][:3] + (0.0, 0.0)
                plain = [predict_serving(ep, pp, c, cal, wait_only)[0] for cal in cals]
                for i, figure in enumerate(("tokens/s", "TTFT p50", "ITL p50")):
                    r = row(ep, pp, f"concurrency {c}", figure, [m[i] for m in measured[c]],
                            statistics.median(p[i] for p in preds), i == 0)
                    if i == 0:
                        r["predicted_without_front_end_cpu"] = statistics.median(plain)
                    rows.append(r)
        if a.netns != "none":
            got = netns_steps(a.runs, a.netns, work)
            if got is not None:
                for b in BATCH:
                    rows.append(row(2, 1, f"batch {b}, two nodes ({a.netns})", "decode step",
                                    got[0][b], got[1][b], True))
    barred = [r for r in rows if r["bar"]]
    errs = sorted(abs(r["error"]) for r in barred)
    var = statistics.median(r["variation"] for r in barred)
    med_err, worst = statistics.median(errs), errs[-1]
    bar = max(0.10, 2 * var)
    ok = med_err <= bar and worst <= 0.25
    lines = ["| EP x PP | point | figure | measured (median) | run-to-run | predicted | error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = (lambda v: f"{v:.0f}") if r["figure"] == "tokens/s" else (
            lambda v: f"{v * 1e3:.3f} ms")
        lines.append(f"| {r['ep']}x{r['pp']} | {r['point']} | {r['figure']}"
                     f"{'' if r['bar'] else ' (no bar)'} | {unit(r['median'])} | "
                     f"±{r['variation'] * 100:.1f}% | {unit(r['predicted'])} | "
                     f"{r['error'] * 100:+.1f}% |")
    if CONCURRENCY:
        lines.append("")
        lines.append("Front end (measured with a two-layer hidden-64 model in each layout): " +
                     "; ".join(f"{ep}x{pp} {h[0] * 1e6:.1f} us per step, {h[1] * 1e6:.1f} us "
                               f"per token, turnaround {h[2] * 1e6:.0f} us per request, CPU "
                               f"beside the steps {h[3] * 1e6:.1f} us per step and "
                               f"{h[4] * 1e6:.1f} us per token"
                               for (ep, pp), h in host.items()) + ".")
        plain = sorted(abs(r["predicted_without_front_end_cpu"] - r["median"]) / r["median"]
                       for r in rows if "predicted_without_front_end_cpu" in r)
        lines.append("")
        lines.append("Serving throughput predicted without the front end's CPU work beside the "
                     f"steps: median absolute error {statistics.median(plain) * 100:.1f}%, worst "
                     f"{plain[-1] * 100:.1f}%.")
    lines.append("")
    for figure in ("decode step", "tokens/s"):
        e = sorted(abs(r["error"]) for r in barred if r["figure"] == figure)
        if not e:
            continue
        lines.append(f"- {figure}: median absolute error {statistics.median(e) * 100:.1f}%, "
                     f"worst {e[-1] * 100:.1f}%.")
    lines.append("")
    lines.append(f"Over the {len(barred)} points with a bar: median absolute error "
                 f"{med_err * 100:.1f}% (bar: {bar * 100:.1f}%, the larger of 10% and twice the "
                 f"median run-to-run variation {var * 100:.1f}%); worst {worst * 100:.1f}% "
                 f"(bar: 25%): {'PASS' if ok else 'FAIL'}.")
    text = "\n".join(lines)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")
    if a.json:
        json.dump({"rows": rows,
                   "front_end": {f"{ep}x{pp}": {"step_s": h[0], "token_s": h[1],
                                                "turnaround_s": h[2], "cpu_step_s": h[3],
                                                "cpu_token_s": h[4]}
                                 for (ep, pp), h in host.items()},
                   "median_abs_error": med_err, "worst": worst,
                   "median_variation": var, "pass": ok}, open(a.json, "w"), indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
