#!/usr/bin/python3
"""Peer benchmark: a straightforward PyTorch eager Mixtral with a KV cache.

Loads the same Hugging Face checkpoint (safetensors parsed with numpy; bf16 weights widened to
fp32 once, the fastest eager choice on a CPU), then times batch-1 greedy decode and prompt
prefill the way `switchyard bench decode|prefill` does, and prints JSON.

Usage: /usr/bin/python3 bench/torch_peer.py --model models/brown-moe [--tokens 128]
       [--prompt-len 16] [--prefill-len 512] [--threads 2] [--device cpu|cuda]
       [--dtype fp32|bf16]
Needs Debian's python3-torch and python3-numpy (a CUDA build of torch for --device cuda, the
peer of bench_decode_cuda on a GPU machine; there use --dtype bf16, the weights' own type).
"""
import argparse
import glob
import json
import os
import struct
import time

import numpy as np
import torch


def load_safetensors(model_dir):
    tensors = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            raw = np.frombuffer(data[b:e], dtype=np.uint16 if info["dtype"] in ("BF16", "F16") else np.float32)
            if info["dtype"] == "BF16":
                arr = (raw.astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] == "F16":
                arr = raw.view(np.float16).astype(np.float32)
            else:
                arr = raw
            tensors[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return tensors


class Mixtral:
    def __init__(self, model_dir, device="cpu", dtype=torch.float32):
        self.cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.device = torch.device(device)
        self.w = {k: v.to(device=self.device, dtype=dtype) for k, v in load_safetensors(model_dir).items()}
        c = self.cfg
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads", self.n_heads)
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.n_heads
        self.eps = c["rms_norm_eps"]
        self.top_k = c["num_experts_per_tok"]
        self.n_exp = c["num_local_experts"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.inv_freq = inv.to(self.device)
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def rope(self, x, pos):
        freqs = pos[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos()[None].to(x.dtype), emb.sin()[None].to(x.dtype)
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def forward(self, ids, start, cache):
        T = ids.shape[0]
        pos = torch.arange(start, start + T, device=self.device)
        h = self.w["model.embed_tokens.weight"][ids]
        for l in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = self.rms(h, self.w[p + "input_layernorm.weight"])
            q = (x @ self.w[p + "self_attn.q_proj.weight"].T).view(T, self.n_heads, self.head_dim).transpose(0, 1)
            k = (x @ self.w[p + "self_attn.k_proj.weight"].T).view(T, self.n_kv, self.head_dim).transpose(0, 1)
            v = (x @ self.w[p + "self_attn.v_proj.weight"].T).view(T, self.n_kv, self.head_dim).transpose(0, 1)
            q, k = self.rope(q, pos), self.rope(k, pos)
            if l in cache:
                k = torch.cat([cache[l][0], k], 1)
                v = torch.cat([cache[l][1], v], 1)
            cache[l] = (k, v)
            rep = self.n_heads // self.n_kv
            kk, vv = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            att = (q @ kk.transpose(1, 2)) / self.head_dim ** 0.5
            S = kk.shape[1]
            mask = torch.arange(S, device=self.device)[None, :] > (
                torch.arange(T, device=self.device)[:, None] + start)
            att = att.float().masked_fill(mask, float("-inf")).softmax(-1).to(vv.dtype)
            o = (att @ vv).transpose(0, 1).reshape(T, -1) @ self.w[p + "self_attn.o_proj.weight"].T
            h = h + o
            x = self.rms(h, self.w[p + "post_attention_layernorm.weight"])
            logits = x @ self.w[p + "block_sparse_moe.gate.weight"].T
            probs = logits.float().softmax(-1)
            wts, sel = probs.topk(self.top_k, -1)
            wts = wts / wts.sum(-1, keepdim=True)
            out = torch.zeros_like(x)
            for e in range(self.n_exp):
                tok, slot = torch.where(sel == e)
                if tok.numel() == 0:
                    continue
                ep = p + f"block_sparse_moe.experts.{e}."
                xe = x[tok]
                y = (torch.nn.functional.silu(xe @ self.w[ep + "w1.weight"].T) * (xe @ self.w[ep + "w3.weight"].T)) @ self.w[ep + "w2.weight"].T
                out.index_add_(0, tok, y * wts[tok, slot, None].to(y.dtype))
            h = h + out
        return self.rms(h, self.w["model.norm.weight"]) @ self.lm_head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_peer.py: --device cuda but torch sees no CUDA device")
    m = Mixtral(a.model, a.device, torch.bfloat16 if a.dtype == "bf16" else torch.float32)
    V = m.cfg["vocab_size"]
    g = torch.Generator().manual_seed(1)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    res = {"peer": "pytorch-eager", "torch": torch.__version__, "threads": a.threads,
           "device": a.device if a.device == "cpu" else torch.cuda.get_device_name(),
           "dtype": a.dtype}
    with torch.no_grad():
        rates = []
        for r in range(a.repeats + 1):
            prompt = torch.randint(3, V, (a.prompt_len,), generator=g).to(m.device)
            cache = {}
            logits = m.forward(prompt, 0, cache)
            nxt = int(logits[-1].argmax())
            pos = a.prompt_len
            t0 = time.perf_counter()
            for i in range(a.tokens - 1):
                logits = m.forward(torch.tensor([nxt], device=m.device), pos, cache)
                nxt = int(logits[-1].argmax())
                pos += 1
            if r > 0:
                rates.append((a.tokens - 1) / (time.perf_counter() - t0))
        res["decode_tokens_per_s_median"] = sorted(rates)[len(rates) // 2]
        rates = []
        for r in range(a.repeats + 1):
            prompt = torch.randint(3, V, (a.prefill_len,), generator=g).to(m.device)
            sync()
            t0 = time.perf_counter()
            m.forward(prompt, 0, {})
            sync()
            if r > 0:
                rates.append(a.prefill_len / (time.perf_counter() - t0))
        res["prefill_tokens_per_s_median"] = sorted(rates)[len(rates) // 2]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
