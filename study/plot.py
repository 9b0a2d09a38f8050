#!/usr/bin/python3
"""Pictures of a scaling study: `switchyard study plot` runs this (Debian's python3-matplotlib).

    switchyard study simulate ... --append study.jsonl      (once per configuration)
    switchyard study plot --in study.jsonl --out plots/ [--batch 64]

Input: files of `study simulate --json` objects, one per line (or one object or an array per
file). Each is one configuration (model, cluster, nodes, EP x PP, decode at its batches, and
serving when simulated). Writes PNG and SVG of each picture into --out:

- throughput_vs_nodes: tokens/s per GPU against nodes, one line per model, PP and what was
  measured (serving throughput where the configuration was served, else decode at --batch,
  lines joining equal batches per GPU);
- itl_vs_throughput: the inter-token latency against tokens/s per GPU, one curve per
  configuration over its decode batches (and its serving point, marked);
- step_breakdown: the decode step at --batch split into its parts (weights, attention,
  dispatch, combine, head, control, bubble, cores), one stacked bar per configuration;
- traffic_heatmap: dispatch + combine bytes per step between every rank pair, for the first
  configuration that carries the matrix (jobs of up to 64 ranks).

--batch: the decode batch of the per-configuration pictures (default: each configuration's
largest). Exit status: 0 written (the files are listed), 1 bad input (the message names the
file and line), 2 usage.
"""
import argparse
import json
import os
import sys

PARTS = ["weights_s", "attention_s", "dispatch_s", "combine_s", "head_s", "control_s", "bubble_s",
         "cores_s"]


def read(paths):
    records = []
    for path in paths:
        try:
            text = open(path).read()
        except OSError as e:
            raise ValueError(f"{path}: {e.strerror}")
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"{path}: empty")
        items = []
        if stripped[0] == "[" or (stripped[0] == "{" and "\n{" not in stripped):
            try:
                got = json.loads(stripped)
            except ValueError as e:
                raise ValueError(f"{path}: not JSON ({e})")
            items = [(1, x) for x in (got if isinstance(got, list) else [got])]
        else:
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        items.append((n, json.loads(line)))
                    except ValueError as e:
                        raise ValueError(f"{path}: line {n}: not JSON ({e})")
        for n, r in items:
            if not isinstance(r, dict) or not isinstance(r.get("decode"), list) or not r["decode"]:
                raise ValueError(f"{path}: line {n}: not a `study simulate --json` object "
                                 "(no decode results)")
            for key in ("ep", "pp", "nodes", "model"):
                if key not in r:
                    raise ValueError(f"{path}: line {n}: no \"{key}\"")
            r["_where"] = f"{path}:{n}"
            records.append(r)
    return records


def label(r):
    return f"{os.path.basename(str(r['model']))} {r['nodes']}n ep{r['ep']}xpp{r['pp']}"


def at_batch(r, batch):
    """The decode entry at `batch`, or the largest batch when not given or not simulated."""
    d = sorted(r["decode"], key=lambda x: x["batch"])
    if batch:
        for x in d:
            if x["batch"] == batch:
                return x
    return d[-1]


def save(fig, out, name, written):
    for ext in ("png", "svg"):
        path = os.path.join(out, f"{name}.{ext}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("inputs", nargs="+")
    a = ap.parse_args()
    try:
        records = read(a.inputs)
    except ValueError as e:
        print(f"study plot: {e}", file=sys.stderr)
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(a.out, exist_ok=True)
    written = []

    # Throughput per GPU against nodes.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = {}
    for r in records:
        if r.get("serving"):
            y, what = r["serving"]["output_tokens_per_s_per_gpu"], "serving"
        else:
            d = at_batch(r, a.batch)
            # Configurations of different sizes compare at the same batch per GPU.
            per_gpu = d["batch"] / (r["ep"] * r["pp"])
            y, what = d["tokens_per_s_per_gpu"], f"decode, {per_gpu:g} sequences per GPU"
        key = (os.path.basename(str(r["model"])), r["pp"], what)
        lines.setdefault(key, []).append((r["nodes"], y))
    for (model, pp, what), pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"{model}, pp {pp}, {what}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("tokens/s per GPU")
    ax.set_title("Throughput per GPU")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, a.out, "throughput_vs_nodes", written)
    plt.close(fig)

    # ITL against throughput: each configuration over its batches.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        d = sorted(r["decode"], key=lambda x: x["batch"])
        line, = ax.plot([x["tokens_per_s_per_gpu"] for x in d], [x["step_s"] * 1e3 for x in d],
                        marker="o", label=label(r))
        for x in d:
            ax.annotate(str(x["batch"]), (x["tokens_per_s_per_gpu"], x["step_s"] * 1e3),
                        fontsize=6, xytext=(2, 2), textcoords="offset points")
        if r.get("serving"):
            s = r["serving"]
            ax.plot([s["output_tokens_per_s_per_gpu"]], [s["itl_s"]["p50"] * 1e3], marker="*",
                    markersize=12, color=line.get_color(), linestyle="none")
    ax.set_xlabel("tokens/s per GPU")
    ax.set_ylabel("inter-token latency, ms (decode step; * serving p50)")
    ax.set_title("Latency against throughput (labels: decode batch)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, a.out, "itl_vs_throughput", written)
    plt.close(fig)

    # The step's parts at the batch.
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(records)), 4.5))
    names = [f"{label(r)}\nbatch {at_batch(r, a.batch)['batch']}" for r in records]
    bottom = [0.0] * len(records)
    for part in PARTS:
        h = [at_batch(r, a.batch)["breakdown"].get(part, 0) * 1e3 for r in records]
        ax.bar(range(len(records)), h, bottom=bottom, label=part[:-2])
        bottom = [b + x for b, x in zip(bottom, h)]
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels(names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("ms per decode step")
    ax.set_title("Where the decode step goes")
    ax.legend(fontsize=7)
    save(fig, a.out, "step_breakdown", written)
    plt.close(fig)

    # The traffic between ranks.
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    carrying = [r for r in records if "pair_bytes" in at_batch(r, a.batch)]
    if carrying:
        r = carrying[0]
        d = at_batch(r, a.batch)
        m = [[x / 1e6 for x in row] for row in d["pair_bytes"]]
        im = ax.imshow(m, cmap="viridis")
        fig.colorbar(im, ax=ax, label="MB per decode step")
        ax.set_xlabel("to rank")
        ax.set_ylabel("from rank")
        ax.set_title(f"Dispatch + combine traffic, {label(r)}, batch {d['batch']}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no configuration of at most 64 ranks", ha="center", va="center")
        ax.set_axis_off()
    save(fig, a.out, "traffic_heatmap", written)
    plt.close(fig)

    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
