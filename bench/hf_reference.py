#!/usr/bin/python3
"""The check the numerics chain rests on: Hugging Face transformers' own MixtralForCausalLM
against Switchyard's CPU path and the golden fixture, on the demo model and the tiny test model.

For every model and every fixture sequence (tests/data/<model>.json):
- logits at every position of the fixture's `score` sequences: transformers (fp32 weights),
  `switchyard score --device cpu`, and the fixture's independent reference; the max |difference|
  of each pair;
- greedy continuations of the fixture's prompts: transformers' argmax decoding, Switchyard's
  (`switchyard score` of the prefix, argmax of its last row, step by step), and the fixture's.
Prints a table, one `BENCH_JSON` summary line (launch/gpu_check.py collects it), and exits 1
when Switchyard's CPU logits differ from transformers' by more than --tolerance (the CPU
path's 1e-3 of tests/data/README.md) or a greedy continuation differs.

Usage: python3 bench/hf_reference.py --switchyard build/cli/switchyard [--device cuda|cpu]
           [--models brown-moe,tiny-odd] [--reference hf|fixture] [--switchyard-ld-path DIRS]
Needs torch and transformers (the bare GPU image has both). `--reference fixture` rehearses
everything but transformers: the fixture stands in for it (its own differences are then 0).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SWITCHYARD_ENV = dict(os.environ)  # the binary's environment (--switchyard-ld-path)


def switchyard_logits(binary, model_dir, tokens, work):
    out = os.path.join(work, "logits.npy")
    subprocess.run([binary, "score", "--model", model_dir, "--device", "cpu", "--tokens",
                    ",".join(str(t) for t in tokens), "--out", out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=SWITCHYARD_ENV)
    return np.load(out).astype(np.float64)


def switchyard_greedy(binary, model_dir, prompt, n, eos, work):
    ids = list(prompt)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(switchyard_logits(binary, model_dir, ids, work)[-1]))
        out.append(nxt)
        ids.append(nxt)
        if nxt == eos:
            break
    return out


class HfModel:
    """transformers' MixtralForCausalLM, fp32, on `device`."""

    def __init__(self, model_dir, device):
        import torch
        from transformers import MixtralForCausalLM
        self.torch = torch
        self.device = device
        self.model = MixtralForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        self.model.to(device).eval()
        self.eos = self.model.config.eos_token_id

    def logits(self, tokens):
        with self.torch.no_grad():
            ids = self.torch.tensor([tokens], device=self.device)
            return self.model(input_ids=ids).logits[0].double().cpu().numpy()

    def greedy(self, prompt, n):
        ids, out = list(prompt), []
        for _ in range(n):  # full recomputation each step: no cache differences in the way
            nxt = int(np.argmax(self.logits(ids)[-1]))
            out.append(nxt)
            ids.append(nxt)
            if nxt == self.eos:
                break
        return out


class FixtureModel:
    """The fixture standing in for transformers (rehearsal without torch)."""

    def __init__(self, fixture, data_dir):
        self.by_tokens = {}
        for sc in fixture["score"]:
            self.by_tokens[tuple(sc["tokens"])] = np.load(os.path.join(data_dir, sc["logits_file"]))
        self.by_prompt = {tuple(g["prompt_ids"]): g["greedy_ids"] for g in fixture["generate"]}

    def logits(self, tokens):
        return self.by_tokens[tuple(tokens)].astype(np.float64)

    def greedy(self, prompt, n):
        return self.by_prompt[tuple(prompt)][:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switchyard", required=True, help="the switchyard binary")
    ap.add_argument("--models", default="brown-moe,tiny-odd")
    ap.add_argument("--device", default="cuda", help="where transformers runs (cuda or cpu)")
    ap.add_argument("--reference", choices=["hf", "fixture"], default="hf")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--switchyard-ld-path", default="",
                    help="library folders for the switchyard binary only (a GPU kit's), so torch "
                         "keeps its own libraries")
    a = ap.parse_args()
    if a.switchyard_ld_path:
        SWITCHYARD_ENV["LD_LIBRARY_PATH"] = ":".join(
            [a.switchyard_ld_path, SWITCHYARD_ENV.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    data_dir = os.path.join(REPO, "tests", "data")
    work = tempfile.mkdtemp(prefix="hf-reference-")
    summary = {"bench": "hf_reference", "reference": a.reference, "device": a.device, "models": {}}
    ok = True
    for name in a.models.split(","):
        model_dir = os.path.join(REPO, "models", name)
        fixture = json.load(open(os.path.join(data_dir, name + ".json")))
        eos = json.load(open(os.path.join(model_dir, "config.json"))).get("eos_token_id", 2)
        ref = HfModel(model_dir, a.device) if a.reference == "hf" else FixtureModel(fixture, data_dir)
        m = {"logits": [], "greedy": []}
        for sc in fixture["score"]:
            tokens = sc["tokens"]
            gold = np.load(os.path.join(data_dir, sc["logits_file"])).astype(np.float64)
            hf = ref.logits(tokens)
            sy = switchyard_logits(a.switchyard, model_dir, tokens, work)
            row = {"positions": len(tokens),
                   "hf_vs_fixture": float(np.abs(hf - gold).max()),
                   "switchyard_vs_hf": float(np.abs(sy - hf).max()),
                   "switchyard_vs_fixture": float(np.abs(sy - gold).max())}
            ok &= row["switchyard_vs_hf"] <= a.tolerance
            m["logits"].append(row)
            print(f"{name} score[{len(tokens)} tokens]: max |hf - fixture| {row['hf_vs_fixture']:.2e}, "
                  f"|switchyard - hf| {row['switchyard_vs_hf']:.2e}, "
                  f"|switchyard - fixture| {row['switchyard_vs_fixture']:.2e}", flush=True)
        for g in fixture["generate"]:
            n = len(g["greedy_ids"])
            hf = ref.greedy(g["prompt_ids"], n)
            sy = switchyard_greedy(a.switchyard, model_dir, g["prompt_ids"], n, eos, work)
            row = {"prompt_tokens": len(g["prompt_ids"]), "tokens": n,
                   "hf_equals_fixture": hf == g["greedy_ids"],
                   "switchyard_equals_hf": sy == hf,
                   "min_top2_margin": g.get("min_top2_margin")}
            ok &= row["switchyard_equals_hf"]
            m["greedy"].append(row)
            print(f"{name} greedy[{n} tokens]: hf == fixture {row['hf_equals_fixture']}, "
                  f"switchyard == hf {row['switchyard_equals_hf']}", flush=True)
        summary["models"][name] = m
    summary["passed"] = bool(ok)
    print("BENCH_JSON " + json.dumps(summary))
    print("hf_reference: " + ("passed" if ok else "FAILED") +
          f" (switchyard CPU logits within {a.tolerance} of {a.reference}, greedy ids equal)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
