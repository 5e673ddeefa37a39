//! Gemma 3 (text): the embedding scaled by sqrt(n_embd); each block is RMSNorm → attention with
//! RMS-normalised Q and K, NEOX RoPE and the attention scale from the key length → post-attention
//! RMSNorm → residual → RMSNorm → GeGLU FFN → post-FFN RMSNorm → residual. Five of every six
//! layers attend through a sliding window with their own RoPE base. Graph after llama.cpp
//! `src/models/gemma3.cpp`.

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
    hp.rope_type = RopeMode::Neox;
    hp.n_swa = f.get_u32(&hp.key("attention.sliding_window"))?.unwrap_or(0);
    if hp.n_swa > 0 {
        hp.load_swa_pattern(f, 6)?;
        if let Some(b) = f.get_f32(&hp.key("rope.freq_base_swa"))? {
            hp.rope_freq_base_swa = b;
        }
    }
    hp.f_final_logit_softcapping = f.get_f32(&hp.key("final_logit_softcapping"))?.unwrap_or(0.0);
    if hp.n_ff == 0 {
        return Err(f.error(&hp.key("feed_forward_length"), "missing required key"));
    }
    // Gemma 3 27B scales by the model width per head; the others by the key length.
    // ref: google/gemma_pytorch gemma/config.py (query_pre_attn_scalar)
    hp.f_attention_scale = if hp.n_layer == 62 {
        1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt()
    } else {
        1.0 / (hp.n_embd_head_k as f32).sqrt()
    };
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let (n_embd, n_ff) = (hp.n_embd as i64, hp.n_ff as i64);
    let n_embd_head_k = hp.n_embd_head_k as i64;
    let n_embd_q = (hp.n_embd_head_k * hp.n_head) as i64;
    let (n_k, n_v) = (hp.n_embd_k_gqa() as i64, hp.n_embd_v_gqa() as i64);
    let (tok_embd, output_norm, output) = super::llama::load_io(hp, ld)?;
    let mut layers = Vec::with_capacity(hp.n_layer as usize);
    for il in 0..hp.n_layer as usize {
        let b = |s: &str| format!("blk.{il}.{s}");
        let mut l = LayerWeights { attn_norm: Some(ld.tensor(&b("attn_norm.weight"), &[n_embd], Usage::Mul)?), ..Default::default() };
        super::llama::load_qkv(ld, &mut l, il, n_embd, n_embd_q, n_k, n_v)?;
        l.wo = Some(ld.tensor(&b("attn_output.weight"), &[n_embd_q, n_embd], Usage::MatMul)?);
        l.attn_post_norm = Some(ld.tensor(&b("post_attention_norm.weight"), &[n_embd], Usage::Mul)?);
        l.attn_k_norm = Some(ld.tensor(&b("attn_k_norm.weight"), &[n_embd_head_k], Usage::Mul)?);
        l.attn_q_norm = Some(ld.tensor(&b("attn_q_norm.weight"), &[n_embd_head_k], Usage::Mul)?);
        l.ffn_norm = Some(ld.tensor(&b("ffn_norm.weight"), &[n_embd], Usage::Mul)?);
        l.ffn_gate = Some(ld.tensor(&b("ffn_gate.weight"), &[n_embd, n_ff], Usage::MatMul)?);
        l.ffn_up = Some(ld.tensor(&b("ffn_up.weight"), &[n_embd, n_ff], Usage::MatMul)?);
        l.ffn_down = Some(ld.tensor(&b("ffn_down.weight"), &[n_ff, n_embd], Usage::MatMul)?);
        l.ffn_post_norm = Some(ld.tensor(&b("post_ffw_norm.weight"), &[n_embd], Usage::Mul)?);
        layers.push(l);
    }
    Ok(Weights { tok_embd, output_norm, output, layers })
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let (hp, wt) = (g.hp, g.w);
    let n_embd_head = hp.n_embd_head_k as i64;

    let mut inp_l = g.inp_embd(&wt.tok_embd, (hp.n_embd as f32).sqrt()); // F32 [n_embd, n_tokens]
    g.cb(&inp_l, "inp_scaled", usize::MAX);
    let inp_pos = g.inp_pos(); // I32 [n_tokens]
    g.inp_attn();
    let inp_out_ids = g.inp_out_ids(); // I32 [n_outputs]

    for il in 0..hp.n_layer as usize {
        let l = &wt.layers[il];

        let cur = g.rms_norm(&inp_l, l.attn_norm.as_ref(), il);
        g.cb(&cur, "attn_norm", il);

        // self-attention
        let (q, k, v) = g.qkv(l, &cur, n_embd_head, hp.n_head as i64, hp.n_head_kv as i64, il);
        let q = g.rms_norm(&q, l.attn_q_norm.as_ref(), il);
        g.cb(&q, "Qcur_normed", il);
        let q = g.rope(&q, &inp_pos, None, il);
        let k = g.rms_norm(&k, l.attn_k_norm.as_ref(), il);
        g.cb(&k, "Kcur_normed", il);
        let k = g.rope(&k, &inp_pos, None, il);
        g.cb(&q, "Qcur", il);
        g.cb(&k, "Kcur", il);
        g.cb(&v, "Vcur", il);
        // ref: google/gemma_pytorch gemma/model.py — queries are scaled before the product
        let q = g.ctx.scale(&q, hp.f_attention_scale);
        let mut cur = g.attn(il, w(&l.wo), None, &q, &k, &v, 1.0);

        if il == hp.n_layer as usize - 1 {
            cur = g.ctx.get_rows(&cur, &inp_out_ids);
            inp_l = g.ctx.get_rows(&inp_l, &inp_out_ids);
        }
        let cur = g.rms_norm(&cur, l.attn_post_norm.as_ref(), il);
        g.cb(&cur, "attn_post_norm", il);
        let sa_out = g.ctx.add(&cur, &inp_l);
        g.cb(&sa_out, "sa_out", il);

        // feed-forward network
        let cur = g.rms_norm(&sa_out, l.ffn_norm.as_ref(), il);
        g.cb(&cur, "ffn_norm", il);
        let cur = g.ffn(&cur, l.ffn_up.as_ref(), None, l.ffn_gate.as_ref(), None, l.ffn_down.as_ref(), None, FfnOp::Gelu, FfnGate::Par, il);
        g.cb(&cur, "ffn_out", il);
        let cur = g.rms_norm(&cur, l.ffn_post_norm.as_ref(), usize::MAX);
        g.cb(&cur, "ffn_post_norm", il);

        let cur = g.ctx.add(&cur, &sa_out);
        g.cb(&cur, "l_out", il);
        inp_l = cur;
    }

    let cur = g.rms_norm(&inp_l, Some(&wt.output_norm), usize::MAX);
    g.cb(&cur, "result_norm", usize::MAX);
    let mut cur = g.mm(&wt.output, &cur);
    if hp.f_final_logit_softcapping > 0.0 {
        let cap = hp.f_final_logit_softcapping;
        cur = g.ctx.scale(&cur, 1.0 / cap);
        cur = g.ctx.tanh(&cur);
        cur = g.ctx.scale(&cur, cap);
    }
    g.cb(&cur, "result_output", usize::MAX);
    cur
}
