#!/usr/bin/python3
"""Per-layer expert-load heatmap (PNG or SVG, by the --out suffix) from the live counters of a
serving job or from a load file, and, with --placement, the load each rank would carry.

    build/cli/switchyard client status --json > status.json
    launch/plot_load.py --load status.json --out load.png [--placement placement.json --ep 4]

--load takes what `switchyard plan --load` takes: the JSON of `switchyard client status
--json` (its expert_token_counts), {"expert_token_counts": [[...], ...]}, or [[...], ...] (one
row per layer, one number per expert); or a routing trace (`switchyard trace --out t.jsonl`),
counted per layer and expert. Each cell is the expert's share of its layer's routed
tokens; with --placement (a placement file, e.g. from `switchyard plan --out`) a second panel
shows each EP rank's expected share per layer (an expert's load split evenly over its
replicas), the straggler rank of each layer marked. Needs Debian's python3-matplotlib.
Exit status: 0 written, 1 bad input (the message names the file and the problem).
"""
import argparse
import json
import sys


def trace_rows(path, text):
    """Per-layer expert counts from a `switchyard trace` file (JSON lines: a header with layers
    and experts, then one line per token with its experts per layer)."""
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        header = json.loads(lines[0])
        rows = [[0.0] * int(header["experts"]) for _ in range(int(header["layers"]))]
        for n, line in enumerate(lines[1:], start=2):
            token = json.loads(line)
            for layer, chosen in enumerate(token["experts"]):
                for e in chosen:
                    rows[layer][e] += 1
    except (ValueError, KeyError, IndexError, TypeError) as e:
        where = f"line {n}" if "n" in locals() else "its header"
        raise ValueError(f"{path}: not a switchyard trace ({where}: {e})")
    return rows


def load_rows(path):
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        if text.lstrip().startswith("{") and "\n{" in text:  # JSON lines: a routing trace
            return trace_rows(path, text)
        raise ValueError(f"{path}: neither JSON nor a switchyard trace")
    if isinstance(data, dict):
        if "expert_token_counts" not in data:
            raise ValueError(f"{path}: want expert_token_counts or an array of per-layer arrays")
        data = data["expert_token_counts"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: want one row per layer")
    rows = []
    for layer, row in enumerate(data):
        if isinstance(row, dict):
            row = row.get("tokens", [])
        if not isinstance(row, list) or not row:
            raise ValueError(f"{path}: layer {layer}: want one number per expert")
        try:
            values = [float(v) for v in row]  # protobuf's JSON writes int64 as strings
        except (TypeError, ValueError):
            raise ValueError(f"{path}: layer {layer}: not a number in {row}")
        if any(v < 0 for v in values):
            raise ValueError(f"{path}: layer {layer}: a negative count")
        if len(values) != len(rows[0] if rows else values):
            raise ValueError(f"{path}: layer {layer}: {len(values)} experts, layer 0 has {len(rows[0])}")
        rows.append(values)
    return rows


def expert_ranks(placement_path, layers, experts, ep):
    """[layer][expert] -> EP ranks, as Switchyard reads a placement file (defaults e mod ep)."""
    with open(placement_path) as f:
        plan = json.load(f)
    ep = plan.get("ep", ep)
    if not ep:
        raise ValueError(f"{placement_path}: no \"ep\"; pass --ep")
    every = {int(e): ranks for e, ranks in plan.get("experts", {}).items()}
    out = []
    for layer in range(layers):
        over = {int(e): r for e, r in plan.get("layer_experts", {}).get(str(layer), {}).items()}
        out.append([over.get(e, every.get(e, [e % ep])) for e in range(experts)])
    return out, ep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--load", required=True, help="status JSON, per-layer rows, or a trace")
    ap.add_argument("--out", required=True, help="output image: .png or .svg")
    ap.add_argument("--placement", help="placement file: also plot each rank's share")
    ap.add_argument("--ep", type=int, default=0, help="EP ranks when the placement omits ep")
    ap.add_argument("--title", default="", help="figure title")
    a = ap.parse_args()
    if not a.out.endswith((".png", ".svg")):
        print(f"--out {a.out}: want a .png or .svg file", file=sys.stderr)
        return 1
    try:
        rows = load_rows(a.load)
        ranks = expert_ranks(a.placement, len(rows), len(rows[0]), a.ep) if a.placement else None
    except (OSError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [[v / sum(r) if sum(r) > 0 else 0.0 for v in r] for r in rows]
    panels = 2 if ranks else 1
    layers, experts = len(rows), len(rows[0])
    fig, axes = plt.subplots(1, panels, figsize=(4 + 0.5 * experts * panels, 2 + 0.3 * layers),
                             squeeze=False)
    ax = axes[0][0]
    im = ax.imshow(shares, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title("share of routed tokens")
    ax.set_xticks(range(experts))
    fig.colorbar(im, ax=ax)
    if ranks:
        placement, ep = ranks
        per_rank = []
        for layer in range(layers):
            load = [0.0] * ep
            for e, holders in enumerate(placement[layer]):
                for r in holders:
                    load[r] += shares[layer][e] / len(holders)
            per_rank.append(load)
        ax = axes[0][1]
        im = ax.imshow(per_rank, aspect="auto", cmap="magma", vmin=0)
        for layer, load in enumerate(per_rank):
            top = max(range(ep), key=lambda r: load[r])
            ax.text(top, layer, "max", ha="center", va="center", color="cyan", fontsize=7)
        ax.set_xlabel("EP rank")
        ax.set_ylabel("layer")
        ax.set_title("share per rank (placement)")
        ax.set_xticks(range(ep))
        fig.colorbar(im, ax=ax)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"wrote {a.out}: {layers} layers x {experts} experts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
