#!/usr/bin/env python3
"""Tiny random-weight GGUF models, one per architecture, for conformance checks
against llama.cpp (the oracle) on architectures with no real small model offline.

usage: scripts/tiny-models.py OUT_DIR [--tokenizer-from GGUF] [--seed N] [--only NAME...]

Every model borrows the tokenizer.* metadata of SmolLM2-135M (gpt2 BPE, 49152
tokens, pre-tokenizer 'smollm') verbatim.  Weights are random normal from a
fixed seed; each tensor's generator is seeded from (seed, model name, tensor
name), so the output bytes depend only on the seed and this file.

Carried into the repository from the project's shared kit (tools/tiny_models.py) so that a clone
needs nothing beside it; scripts/test.sh makes the models of seeds 1234, 7 and 99 with it.

Weight scales (deliberately not 0.02 everywhere): token_embd/output std 0.25
(0.05 for gemma, whose embeddings are multiplied by sqrt(n_embd)); every other
matrix std 1.5/sqrt(fan_in).  With std 0.02 everywhere, q.k is ~0.03 (attention
is a plain average, so RoPE / mask / sliding-window bugs would go unseen) and
the residual stream is the token embedding (tied models just repeat the last
prompt token).  Norm weights are 1 + N(0, 0.1) (gemma files store the
already-shifted 1+w: runners must not add 1 again).  Biases std 0.1.

Types: norms, biases, MoE routers F32; matrices F16 (token_embd Q8_0 when the
output head is untied, to stay ~11 MB).  Only llama_q8_0 uses Q8_0 matmuls:
llama.cpp quantizes activations to Q8_0 for those, which turns tiny float
differences into visible ones (its own flash-attn on/off greedy runs then
disagree), so the F16 models are the strict references.
"""
import argparse
import os
import sys
import zlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

DEFAULT_TOKENIZER = "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf"

STD_EMBD = 0.25   # token_embd / output.weight (gemma specs override, their embeddings get * sqrt(n_embd))
GAIN = 1.5        # every other matrix: std GAIN / sqrt(fan_in)
STD_NORM = 0.1
STD_BIAS = 0.1

# ---------------------------------------------------------------------------
# model specs
# common: vocab 49152 (borrowed), n_ctx_train 2048, n_embd 64, n_head 4, n_ff 128
# ---------------------------------------------------------------------------
BASE = dict(n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_ctx=2048, eps=1e-6, rope_base=10000.0)

SPECS = {
    # plain llama with GQA (4 q heads / 2 kv heads), untied output.weight, normal (interleaved) RoPE
    "llama": dict(arch="llama", n_layer=3, tied=False, eps=1e-5, rope_base=100000.0),
    # llama with every matrix Q8_0 (tied): exercises Q8_0 matmuls.  llama.cpp quantizes the
    # activations to Q8_0 for these, which amplifies tiny numeric differences: expect greedy ids
    # to drift (llama.cpp's own flash-attn on/off runs disagree here), compare logits loosely
    "llama_q8_0": dict(arch="llama", n_layer=2, tied=True, eps=1e-5, mat_type=QT.Q8_0, embd_type=QT.Q8_0),
    # mixtral-style MoE on the llama arch: 4 experts, top-2, softmax gating, renormalized weights
    "llama_moe": dict(arch="llama", n_layer=2, tied=True, eps=1e-5, n_expert=4, n_expert_used=2),
    # qwen2: q/k/v biases, NEOX RoPE, tied output
    "qwen2": dict(arch="qwen2", n_layer=3, tied=True, qkv_bias=True, rope_base=1000000.0),
    # qwen3: per-head q/k RMS norms, head_dim 32 != n_embd/n_head (like Qwen3-0.6B's 128 vs 64)
    "qwen3": dict(arch="qwen3", n_layer=3, tied=True, qk_norm=True, head_dim=32, rope_base=1000000.0),
    # qwen3moe: 4 experts, top-2, expert ffn 64, q/k norms
    "qwen3moe": dict(arch="qwen3moe", n_layer=2, tied=True, qk_norm=True, n_expert=4, n_expert_used=2,
                     n_ff_exp=64, rope_base=1000000.0),
    # phi3: fused attn_qkv ([q|k|v] rows) and fused ffn_up ([gate|up] rows, 2*n_ff), untied output
    "phi3": dict(arch="phi3", n_layer=3, tied=False, fused=True, eps=1e-5),
    # gemma2: embeddings * sqrt(n_embd), gelu, post-attn/post-ffw norms, attn & final logit
    # soft-capping, sliding window 8 on even layers (llama.cpp default pattern 2), tied output
    "gemma2": dict(arch="gemma2", n_layer=4, tied=True, post_norms=True, swa=8,
                   attn_softcap=5.0, final_softcap=2.0, std_embd=0.05),
    # gemma3: like gemma2 without soft-capping, plus q/k norms, head_dim 32 != 64/4,
    # 6 layers = llama.cpp's default pattern (5 sliding-window layers then 1 global),
    # global RoPE base 1e6, SWA RoPE base 1e4 (llama.cpp default for freq_base_swa)
    "gemma3": dict(arch="gemma3", n_layer=6, tied=True, post_norms=True, qk_norm=True, head_dim=32,
                   swa=8, rope_base=1000000.0, std_embd=0.05),
}


def spec_of(name):
    s = dict(BASE)
    s.update(SPECS[name])
    s.setdefault("head_dim", s["n_embd"] // s["n_head"])
    s.setdefault("mat_type", QT.F16)
    # tied: token_embd is also the lm head -> F16.  untied: token_embd is only a row lookup
    # (exact dequantization, no activation quantization) -> Q8_0 keeps the file ~11 MB
    s.setdefault("embd_type", QT.F16 if s["tied"] else QT.Q8_0)
    s.setdefault("out_type", s["mat_type"])
    return s


# ---------------------------------------------------------------------------

class Gen:
    def __init__(self, seed, model):
        self.seed, self.model = seed, model

    def rng(self, tname):
        h = zlib.crc32(f"{self.model}/{tname}".encode())
        return np.random.default_rng([self.seed, h])

    def normal(self, tname, shape, std, mean=0.0):
        return (mean + std * self.rng(tname).standard_normal(shape)).astype(np.float32)


def copy_tokenizer(w, src_path):
    r = gguf.GGUFReader(src_path)
    n_vocab = None
    for key, f in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        t0 = f.types[0]
        if t0 == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(f.parts[i]) for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(key, val, t0, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(val)
        elif t0 == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(f.parts[-1]), t0)
        else:
            w.add_key_value(key, f.parts[-1].tolist()[0], t0)
    assert n_vocab, "no tokenizer.ggml.tokens in " + src_path
    return n_vocab


def build(name, out_dir, tok_src, seed):
    s = spec_of(name)
    arch = s["arch"]
    g = Gen(seed, name)
    path = os.path.join(out_dir, f"tiny-{name.replace('_', '-')}.gguf")
    w = gguf.GGUFWriter(path, arch)

    n_embd, n_head, n_kv, hd, n_ff, L = s["n_embd"], s["n_head"], s["n_head_kv"], s["head_dim"], s["n_ff"], s["n_layer"]
    q_dim, kv_dim = n_head * hd, n_kv * hd

    # --- metadata -----------------------------------------------------------
    # general.name must not mention the arch: llama.cpp's vocab loader patches token
    # attributes by model name (e.g. a name containing "phi3" requires a "</s>" token)
    w.add_name("tiny-random")
    w.add_description(f"tiny random-weight {name} model for conformance checks, seed {seed}")
    w.add_type("model")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if s["mat_type"] == QT.F16 else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_block_count(L)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_rope_freq_base(s["rope_base"])
    if hd != n_embd // n_head:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch in ("llama", "phi3"):
        w.add_rope_dimension_count(hd)
    if s.get("n_expert"):
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        if s.get("n_ff_exp"):
            w.add_expert_feed_forward_length(s["n_ff_exp"])
    if s.get("swa"):
        w.add_sliding_window(s["swa"])
    if s.get("attn_softcap"):
        w.add_attn_logit_softcapping(s["attn_softcap"])
    if s.get("final_softcap"):
        w.add_final_logit_softcapping(s["final_softcap"])
    n_vocab = copy_tokenizer(w, tok_src)
    if arch == "llama":
        w.add_vocab_size(n_vocab)

    # --- tensors ------------------------------------------------------------
    tensors = []

    def mstd(shape):
        return GAIN / np.sqrt(shape[-1])

    def mat(tname, shape, std=None, qt=None):  # shape in numpy order (..., rows=out, cols=in)
        std = mstd(shape) if std is None else std
        tensors.append((tname, g.normal(tname, shape, std), qt or s["mat_type"]))

    def vec(tname, n, std, mean=0.0):
        tensors.append((tname, g.normal(tname, (n,), std, mean), QT.F32))

    def norm(tname, n):
        vec(tname, n, STD_NORM, 1.0)

    std_embd = s.get("std_embd", STD_EMBD)
    mat("token_embd.weight", (n_vocab, n_embd), std_embd, s["embd_type"])
    norm("output_norm.weight", n_embd)
    if not s["tied"]:
        mat("output.weight", (n_vocab, n_embd), std_embd, s["out_type"])

    for i in range(L):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", n_embd)
        if s.get("fused"):
            # phi3: rows [q (q_dim) | k (kv_dim) | v (kv_dim)]
            qkv = np.concatenate([g.normal(p + "attn_q", (q_dim, n_embd), mstd((q_dim, n_embd))),
                                  g.normal(p + "attn_k", (kv_dim, n_embd), mstd((kv_dim, n_embd))),
                                  g.normal(p + "attn_v", (kv_dim, n_embd), mstd((kv_dim, n_embd)))], axis=0)
            tensors.append((p + "attn_qkv.weight", qkv, s["mat_type"]))
        else:
            mat(p + "attn_q.weight", (q_dim, n_embd))
            mat(p + "attn_k.weight", (kv_dim, n_embd))
            mat(p + "attn_v.weight", (kv_dim, n_embd))
        if s.get("qkv_bias"):
            vec(p + "attn_q.bias", q_dim, STD_BIAS)
            vec(p + "attn_k.bias", kv_dim, STD_BIAS)
            vec(p + "attn_v.bias", kv_dim, STD_BIAS)
        if s.get("qk_norm"):
            norm(p + "attn_q_norm.weight", hd)
            norm(p + "attn_k_norm.weight", hd)
        mat(p + "attn_output.weight", (n_embd, q_dim))
        if s.get("post_norms"):
            norm(p + "post_attention_norm.weight", n_embd)
        norm(p + "ffn_norm.weight", n_embd)
        if s.get("n_expert"):
            E = s["n_expert"]
            ff = s.get("n_ff_exp") or n_ff
            # router kept F32, as llama-quantize and the HF converters leave it
            tensors.append((p + "ffn_gate_inp.weight", g.normal(p + "ffn_gate_inp", (E, n_embd), 0.25), QT.F32))
            mat(p + "ffn_gate_exps.weight", (E, ff, n_embd))
            mat(p + "ffn_up_exps.weight", (E, ff, n_embd))
            mat(p + "ffn_down_exps.weight", (E, n_embd, ff))
        elif s.get("fused"):
            # phi3: ffn_up rows [gate (n_ff) | up (n_ff)], out = down(silu(gate) * up)
            mat(p + "ffn_up.weight", (2 * n_ff, n_embd))
            mat(p + "ffn_down.weight", (n_embd, n_ff))
        else:
            mat(p + "ffn_gate.weight", (n_ff, n_embd))
            mat(p + "ffn_up.weight", (n_ff, n_embd))
            mat(p + "ffn_down.weight", (n_embd, n_ff))
        if s.get("post_norms"):
            norm(p + "post_ffw_norm.weight", n_embd)

    for tname, data, qt in tensors:
        if qt == QT.F32:
            w.add_tensor(tname, data.astype(np.float32))
        elif qt == QT.F16:
            w.add_tensor(tname, data.astype(np.float16))
        else:
            w.add_tensor(tname, gguf.quants.quantize(data, qt), raw_dtype=qt)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer-from", default=DEFAULT_TOKENIZER)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--only", nargs="*", help="subset of: " + " ".join(SPECS))
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for name in a.only or SPECS:
        path, s = build(name, a.out_dir, a.tokenizer_from, a.seed)
        print(f"{name:10s} {s['arch']:9s} n_embd={s['n_embd']} n_layer={s['n_layer']} head_dim={s['head_dim']} "
              f"{os.path.getsize(path)/1e6:.2f} MB  {path}")


if __name__ == "__main__":
    sys.exit(main())
