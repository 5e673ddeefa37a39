//! Llama (Llama 2/3, Mistral 7B, SmolLM2, TinyLlama, Mixtral-style MoE): pre-norm blocks of
//! RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU FFN (or a top-k
//! mixture of SwiGLU experts) → residual; final RMSNorm and the LM head, tied to the embedding
//! when `output.weight` is absent. Graph after llama.cpp `src/models/llama.cpp`.

use crate::gguf::GgufFile;
use crate::graph::{FfnGate, FfnOp, GraphBuilder};
use crate::model::loader::Usage;
use crate::model::weights::w;
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.rope_type = RopeMode::Normal;
    if hp.n_rot != hp.n_embd_head_k {
        return Err(f.error(&hp.key("rope.dimension_count"), format!("{} must equal the head size {}", hp.n_rot, hp.n_embd_head_k)));
    }
    if hp.n_embd_head_k != hp.n_embd_head_v {
        return Err(f.error(&hp.key("attention.value_length"), "must equal attention.key_length"));
    }
    if hp.n_expert == 0 && hp.n_ff == 0 {
        return Err(f.error(&hp.key("feed_forward_length"), "missing required key"));
    }
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

/// Shared with architectures whose attention block is Llama's (separate or fused Q/K/V).
pub fn load_qkv(ld: &mut TensorLoader, l: &mut LayerWeights, il: usize, n_embd: i64, n_q: i64, n_k: i64, n_v: i64) -> Result<()> {
    let b = |s: &str| format!("blk.{il}.{s}");
    l.wqkv = ld.optional(&b("attn_qkv.weight"), &[n_embd, n_q + n_k + n_v], Usage::MatMul)?;
    if l.wqkv.is_some() {
        l.wqkv_b = ld.optional(&b("attn_qkv.bias"), &[n_q + n_k + n_v], Usage::Add)?;
        if l.wqkv_b.is_none() {
            l.wq_b = ld.optional(&b("attn_q.bias"), &[n_q], Usage::Add)?;
            l.wk_b = ld.optional(&b("attn_k.bias"), &[n_k], Usage::Add)?;
            l.wv_b = ld.optional(&b("attn_v.bias"), &[n_v], Usage::Add)?;
        }
    } else {
        l.wq = Some(ld.tensor(&b("attn_q.weight"), &[n_embd, n_q], Usage::MatMul)?);
        l.wk = Some(ld.tensor(&b("attn_k.weight"), &[n_embd, n_k], Usage::MatMul)?);
        l.wv = Some(ld.tensor(&b("attn_v.weight"), &[n_embd, n_v], Usage::MatMul)?);
        l.wq_b = ld.optional(&b("attn_q.bias"), &[n_q], Usage::Add)?;
        l.wk_b = ld.optional(&b("attn_k.bias"), &[n_k], Usage::Add)?;
        l.wv_b = ld.optional(&b("attn_v.bias"), &[n_v], Usage::Add)?;
    }
    Ok(())
}

/// The embedding, final norm and LM head (tied to the embedding when `output.weight` is absent).
pub fn load_io(hp: &HParams, ld: &mut TensorLoader) -> Result<(Tensor, Tensor, Tensor)> {
    let (n_embd, n_vocab) = (hp.n_embd as i64, hp.n_vocab as i64);
    let tok_embd = ld.tensor("token_embd.weight", &[n_embd, n_vocab], Usage::GetRows)?;
    let output_norm = ld.tensor("output_norm.weight", &[n_embd], Usage::Mul)?;
    let output = match ld.optional("output.weight", &[n_embd, n_vocab], Usage::MatMul)? {
        Some(t) => t,
        None => ld.duplicate("token_embd.weight", &[n_embd, n_vocab], Usage::MatMul)?,
    };
    Ok((tok_embd, output_norm, output))
}

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let (n_embd, n_ff) = (hp.n_embd as i64, hp.n_ff as i64);
    let n_embd_q = (hp.n_embd_head_k * hp.n_head) as i64;
    let (n_k, n_v) = (hp.n_embd_k_gqa() as i64, hp.n_embd_v_gqa() as i64);
    let (tok_embd, output_norm, output) = load_io(hp, ld)?;
    let mut layers = Vec::with_capacity(hp.n_layer as usize);
    for il in 0..hp.n_layer as usize {
        let b = |s: &str| format!("blk.{il}.{s}");
        let mut l = LayerWeights { attn_norm: Some(ld.tensor(&b("attn_norm.weight"), &[n_embd], Usage::Mul)?), ..Default::default() };
        load_qkv(ld, &mut l, il, n_embd, n_embd_q, n_k, n_v)?;
        l.wo = Some(ld.tensor(&b("attn_output.weight"), &[n_embd_q, n_embd], Usage::MatMul)?);
        l.wo_b = ld.optional(&b("attn_output.bias"), &[n_embd], Usage::Add)?;
        l.ffn_norm = Some(ld.tensor(&b("ffn_norm.weight"), &[n_embd], Usage::Mul)?);
        // Llama 3 frequency factors: one tensor shared by every layer.
        let rope = [(hp.n_rot / 2) as i64];
        l.rope_freqs = if il == 0 {
            ld.optional("rope_freqs.weight", &rope, Usage::Rope)?
        } else {
            ld.optional_duplicate("rope_freqs.weight", &rope, Usage::Rope)?
        };
        if hp.n_expert == 0 {
            l.ffn_gate = Some(ld.tensor(&b("ffn_gate.weight"), &[n_embd, n_ff], Usage::MatMul)?);
            l.ffn_down = Some(ld.tensor(&b("ffn_down.weight"), &[n_ff, n_embd], Usage::MatMul)?);
            l.ffn_up = Some(ld.tensor(&b("ffn_up.weight"), &[n_embd, n_ff], Usage::MatMul)?);
            l.ffn_gate_b = ld.optional(&b("ffn_gate.bias"), &[n_ff], Usage::Add)?;
            l.ffn_down_b = ld.optional(&b("ffn_down.bias"), &[n_embd], Usage::Add)?;
            l.ffn_up_b = ld.optional(&b("ffn_up.bias"), &[n_ff], Usage::Add)?;
        } else {
            let n_expert = hp.n_expert as i64;
            l.ffn_gate_inp = Some(ld.tensor(&b("ffn_gate_inp.weight"), &[n_embd, n_expert], Usage::MatMul)?);
            l.ffn_gate_exps = Some(ld.tensor(&b("ffn_gate_exps.weight"), &[n_embd, n_ff, n_expert], Usage::MatMulId)?);
            l.ffn_down_exps = Some(ld.tensor(&b("ffn_down_exps.weight"), &[n_ff, n_embd, n_expert], Usage::MatMulId)?);
            l.ffn_up_exps = Some(ld.tensor(&b("ffn_up_exps.weight"), &[n_embd, n_ff, n_expert], Usage::MatMulId)?);
        }
        layers.push(l);
    }
    Ok(Weights { tok_embd, output_norm, output, layers })
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let (hp, wt) = (g.hp, g.w);
    let n_embd_head = hp.n_embd_head_v as i64;
    let kq_scale = if hp.f_attention_scale == 0.0 { 1.0 / (n_embd_head as f32).sqrt() } else { hp.f_attention_scale };

    let mut inp_l = g.inp_embd(&wt.tok_embd, 1.0); // F32 [n_embd, n_tokens]
    let inp_pos = g.inp_pos(); // I32 [n_tokens]
    g.inp_attn();
    let inp_out_ids = g.inp_out_ids(); // I32 [n_outputs]

    for il in 0..hp.n_layer as usize {
        let l = &wt.layers[il];
        let mut inp_sa = inp_l.clone();

        let cur = g.rms_norm(&inp_l, l.attn_norm.as_ref(), il);
        g.cb(&cur, "attn_norm", il);

        // self-attention
        let (q, k, v) = g.qkv(l, &cur, n_embd_head, hp.n_head as i64, hp.n_head_kv as i64, il);
        let q = g.rope(&q, &inp_pos, l.rope_freqs.as_ref(), il);
        let k = g.rope(&k, &inp_pos, l.rope_freqs.as_ref(), il);
        g.cb(&q, "Qcur", il);
        g.cb(&k, "Kcur", il);
        g.cb(&v, "Vcur", il);
        let mut cur = g.attn(il, w(&l.wo), l.wo_b.as_ref(), &q, &k, &v, kq_scale);
        g.cb(&cur, "attn_out", il);

        if il == hp.n_layer as usize - 1 {
            cur = g.ctx.get_rows(&cur, &inp_out_ids);
            inp_sa = g.ctx.get_rows(&inp_sa, &inp_out_ids);
        }
        let ffn_inp = g.ctx.add(&cur, &inp_sa);
        g.cb(&ffn_inp, "ffn_inp", il);

        // feed-forward network
        let cur = g.rms_norm(&ffn_inp, l.ffn_norm.as_ref(), il);
        g.cb(&cur, "ffn_norm", il);
        let cur = if l.ffn_gate_inp.is_none() {
            g.ffn(&cur, l.ffn_up.as_ref(), l.ffn_up_b.as_ref(), l.ffn_gate.as_ref(), l.ffn_gate_b.as_ref(), l.ffn_down.as_ref(), l.ffn_down_b.as_ref(), FfnOp::Silu, FfnGate::Par, il)
        } else {
            g.moe_ffn(&cur, l, crate::graph::MoeGating::Softmax { norm_w: true }, il)
        };
        g.cb(&cur, "ffn_out", il);

        let cur = g.ctx.add(&cur, &ffn_inp);
        g.cb(&cur, "l_out", il);
        inp_l = cur;
    }

    let cur = g.rms_norm(&inp_l, Some(&wt.output_norm), usize::MAX);
    g.cb(&cur, "result_norm", usize::MAX);
    let cur = g.mm(&wt.output, &cur);
    g.cb(&cur, "result_output", usize::MAX);
    cur
}
