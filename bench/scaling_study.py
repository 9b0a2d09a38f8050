#!/usr/bin/python3
"""The simulated scaling study of docs/scaling.md: Mixtral 8x7B and 8x22B on 1 to 64 nodes of
8 H100 (NVLink within a node, one 400 Gbit/s NIC per GPU between nodes), from `switchyard
study simulate` with the `h100` preset. Every figure it prints is the simulator's, not a
measurement.

    bench/scaling_study.py [--out-dir DIR] [--plots DIR]

1. For each model, node count (1, 2, 4, ..., 64) and pipeline depth (1, 2, 4, 8; EP = the
   rest of the ranks): batch 1 (latency) and 64 sequences per GPU (throughput) at context
   2048, and whether weights, buffers and an eighth of a context of KV fit. Where EP is
   larger than the 8 experts, the placement replicates them so that every rank holds one
   expert of each layer (`switchyard plan --load` of a uniform load with EP - 8 extra
   replicas; the default plan leaves the ranks past the eighth without experts). Lines of
   the study go to DIR/study.jsonl (`study simulate --append`).
2. Per model and node count, the configuration with the most tokens/s per GPU and the one
   with the shortest batch-1 step, with the share of the step spent in dispatch and combine.
3. Skew: Mixtral 8x7B on one node (EP 8) with routing skew 1 (the hottest expert of a layer
   gets 37% of its tokens), placed as planned for uniform routing and with 2 and 4 extra
   replicas placed by `switchyard plan --load` from the same skewed load, at 64 and 512
   sequences per GPU.
4. With --plots, `switchyard study plot` of the pipeline-depth-1 configurations.
Prints markdown tables.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "cli", "switchyard")
NODES = [1, 2, 4, 8, 16, 32, 64]
PP = [1, 2, 4, 8]
CONTEXT = 2048
PER_GPU = 64

# The Hugging Face configurations of the two models (their config.json fields the planner
# reads), for `switchyard plan`, which takes a checkpoint folder.
CONFIGS = {
    "mixtral-8x7b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000},
    "mixtral-8x22b": {"hidden_size": 6144, "intermediate_size": 16384, "num_hidden_layers": 56,
                      "num_attention_heads": 48, "num_key_value_heads": 8, "vocab_size": 32768},
}


def replicated(cfg, model, ep, pp, work):
    """A placement file with EP - 8 extra replicas per layer from a uniform load (one expert
    of each layer per rank when EP is a multiple of 8)."""
    layers = CONFIGS[model]["num_hidden_layers"]
    load = os.path.join(work, f"{model}-uniform.json")
    if not os.path.exists(load):
        with open(load, "w") as f:
            json.dump({"expert_token_counts": [[1000] * 8 for _ in range(layers)]}, f)
    out = os.path.join(work, f"{model}-ep{ep}-pp{pp}.json")
    r = subprocess.run([BIN, "plan", "--model", cfg, "--ep", str(ep), "--pp", str(pp), "--load",
                        load, "--redundant", str(ep - 8), "--out", out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"plan --ep {ep} --pp {pp}: {r.stderr.strip()}")
    return out


def simulate(args):
    r = subprocess.run([BIN, "study", "simulate", "--hardware", "h100", "--json", *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"study simulate {' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def write_config(model, work):
    d = os.path.join(work, model)
    os.makedirs(d, exist_ok=True)
    c = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
         "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 65536,
         "rms_norm_eps": 1e-5, "rope_theta": 1e6, "tie_word_embeddings": False,
         "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16", **CONFIGS[model]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    return d


def share(d, parts):
    b = d["breakdown"]
    return sum(b[p] for p in parts) / d["step_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=None, help="keep study.jsonl here")
    ap.add_argument("--plots", default=None, help="draw the PP-1 configurations here")
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: build first (launch/build.sh)")
    work = a.out_dir or tempfile.mkdtemp(prefix="sy-study-")
    os.makedirs(work, exist_ok=True)
    study = os.path.join(work, "study.jsonl")
    flat = os.path.join(work, "study-pp1.jsonl")
    for p in (study, flat):
        if os.path.exists(p):
            os.remove(p)

    print("## Best configuration per node count (simulated: h100 preset, bf16, context "
          f"{CONTEXT})\n")
    print("| model | nodes | GPUs | best for throughput | tokens/s per GPU | dispatch+combine | "
          "best for latency | batch-1 step | dispatch+combine | configurations that fit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in CONFIGS:
        cfg = write_config(model, work)
        for n in NODES:
            world = 8 * n
            fits = []
            for pp in PP:
                if world % pp or pp > CONFIGS[model]["num_hidden_layers"]:
                    continue
                ep = world // pp
                args = ["--model", cfg, "--nodes", str(n), "--ep", str(ep), "--pp", str(pp),
                        "--batch", f"1,{PER_GPU * world}", "--context", str(CONTEXT),
                        "--append", study]
                if ep > 8:
                    args += ["--placement", replicated(cfg, model, ep, pp, work)]
                j = simulate(args)
                if pp == 1:
                    with open(flat, "a") as f:
                        f.write(json.dumps(j) + "\n")
                if j["memory"]["fits"]:
                    fits.append(j)
            if not fits:
                print(f"| {model} | {n} | {world} | none fits | | | | | | 0 |")
                continue
            tp = max(fits, key=lambda j: j["decode"][1]["tokens_per_s_per_gpu"])
            lat = min(fits, key=lambda j: j["decode"][0]["step_s"])
            comm = ["dispatch_s", "combine_s"]
            print(f"| {model} | {n} | {world} | EP {tp['ep']} x PP {tp['pp']} | "
                  f"{tp['decode'][1]['tokens_per_s_per_gpu']:.0f} | "
                  f"{share(tp['decode'][1], comm) * 100:.0f}% | EP {lat['ep']} x PP {lat['pp']} | "
                  f"{lat['decode'][0]['step_s'] * 1e3:.2f} ms | "
                  f"{share(lat['decode'][0], comm) * 100:.0f}% | {len(fits)} |")

    # Skew and replication.
    cfg = os.path.join(work, "mixtral-8x7b")
    L, E, skew = 32, 8, 1.0
    load = [[(1 + ((e + l) % E)) ** -skew for e in range(E)] for l in range(L)]
    load_file = os.path.join(work, "skewed-load.json")
    with open(load_file, "w") as f:
        json.dump({"expert_token_counts": [[round(1e6 * x) for x in row] for row in load]}, f)
    print(f"\n## Skew 1 on one node (EP 8, context {CONTEXT}; simulated)\n")
    print("| batch | placement | decode step | tokens/s per GPU | slowest rank's excess (imbal) |")
    print("| --- | --- | --- | --- | --- |")
    rows = [("uniform plan, uniform routing", ["--skew", "0"]),
            ("uniform plan, skewed routing", ["--expert-load", load_file])]
    for extra in (2, 4):
        placement = os.path.join(work, f"placement-r{extra}.json")
        r = subprocess.run([BIN, "plan", "--model", cfg, "--ep", "8", "--pp", "1", "--load",
                            load_file, "--redundant", str(extra), "--out", placement],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"plan: {r.stderr.strip()}")
        rows.append((f"planned from the load, {extra} extra replicas per layer",
                     ["--expert-load", load_file, "--placement", placement]))
    for batch in (PER_GPU * 8, 512 * 8):
        for name, extra in rows:
            j = simulate(["--model", cfg, "--ep", "8", "--batch", str(batch), "--context",
                          str(CONTEXT), *extra])
            d = j["decode"][0]
            print(f"| {batch} | {name} | {d['step_s'] * 1e3:.2f} ms | "
                  f"{d['tokens_per_s_per_gpu']:.0f} | {d['breakdown']['imbalance_s'] * 1e3:.2f} ms |")

    if a.plots:
        r = subprocess.run([BIN, "study", "plot", "--in", flat, "--out", a.plots],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"study plot: {r.stderr.strip()}")
        print("\npictures:", " ".join(r.stdout.split()))
    print(f"\nstudy lines: {study}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
