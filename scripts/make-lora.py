#!/usr/bin/env python3
"""Writes a small random LoRA adapter for a base GGUF model, in llama.cpp's adapter format, for
the tests (tests/lora.rs): per adapted weight W [k, m] (ggml order) a pair W.lora_a [k, r] and
W.lora_b [r, m] of F32 (or F16) values, `adapter.lora.alpha`, the base's architecture.

usage: scripts/make-lora.py BASE.gguf OUT.gguf [--rank 8] [--alpha 16] [--seed 1]
                            [--targets attn_q,attn_v,ffn_up] [--type f32|f16] [--magnitude 0.05]
"""
import argparse

import gguf
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("base")
p.add_argument("out")
p.add_argument("--rank", type=int, default=8)
p.add_argument("--alpha", type=float, default=16.0)
p.add_argument("--seed", type=int, default=1)
p.add_argument("--targets", default="attn_q,attn_v,ffn_up")
p.add_argument("--type", choices=["f32", "f16"], default="f32")
p.add_argument("--magnitude", type=float, default=0.05)
a = p.parse_args()

base = gguf.GGUFReader(a.base)
arch = bytes(base.fields["general.architecture"].parts[-1]).decode()
targets = [t.strip() for t in a.targets.split(",") if t.strip()]
rng = np.random.default_rng(a.seed)
dtype = np.float32 if a.type == "f32" else np.float16

w = gguf.GGUFWriter(a.out, arch)
w.add_string("general.type", "adapter")
w.add_string("adapter.type", "lora")
w.add_float32("adapter.lora.alpha", a.alpha)
n = 0
for t in base.tensors:
    parts = t.name.split(".")
    shape = [int(x) for x in t.shape]  # ggml order
    if t.name == "token_embd.weight" and "token_embd" in targets:
        # llama.cpp's transposed pair for the embedding: lora_a [r, n_vocab], lora_b [r, n_embd]
        n_embd, n_vocab = shape[0], shape[1]
        la = (rng.standard_normal((n_vocab, a.rank)) * a.magnitude).astype(dtype)
        lb = (rng.standard_normal((n_embd, a.rank)) * a.magnitude).astype(dtype)
    elif len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets or parts[3] != "weight":
        continue
    elif len(shape) == 3:
        # MoE experts: one pair per expert, lora_a [k, r, n_expert], lora_b [r, m, n_expert]
        k, m, e = shape
        la = (rng.standard_normal((e, a.rank, k)) * a.magnitude).astype(dtype)
        lb = (rng.standard_normal((e, m, a.rank)) * a.magnitude).astype(dtype)
    else:
        k, m = shape[0], shape[1]
        # numpy shapes are the reverse of ggml's: lora_a [k, r] is (r, k), lora_b [r, m] is (m, r)
        la = (rng.standard_normal((a.rank, k)) * a.magnitude).astype(dtype)
        lb = (rng.standard_normal((m, a.rank)) * a.magnitude).astype(dtype)
    w.add_tensor(t.name + ".lora_a", la)
    w.add_tensor(t.name + ".lora_b", lb)
    n += 1
if n == 0:
    raise SystemExit(f"no tensor of {a.base} matches --targets {a.targets}")
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"{a.out}: {n} weights adapted, rank {a.rank}, alpha {a.alpha}")
