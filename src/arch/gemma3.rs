//! Gemma 3 (text): the embedding scaled by sqrt(n_embd); each block is RMSNorm → attention with
//! RMS-normalised Q and K, NEOX RoPE and queries scaled by 1/sqrt(key length) → post-attention
//! RMSNorm → residual → RMSNorm → GeGLU FFN → post-FFN RMSNorm → residual. Five of every six
//! layers attend through a sliding window with their own RoPE base. After llama.cpp
//! `src/models/gemma3.cpp`.

use crate::gguf::GgufFile;
use crate::graph::{AttnSpec, FfnOp, GraphBuilder};
use crate::model::loader::Usage;
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.require_ffn(f)?;
    hp.rope_type = RopeMode::Neox;
    hp.load_sliding_window(f, 0)?;
    if hp.n_swa > 0 {
        hp.load_swa_pattern(f, 6)?;
        if let Some(b) = hp.get_rope_base_swa(f)? {
            hp.rope_freq_base_swa = b;
        }
    }
    hp.f_final_logit_softcapping = f.get_f32(&hp.key("final_logit_softcapping"))?.unwrap_or(0.0);
    // Gemma 3 27B scales by the model width per head, the others by the key length.
    // ref: google/gemma_pytorch gemma/config.py (query_pre_attn_scalar)
    hp.f_attention_scale =
        if hp.n_layer == 62 { 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt() } else { 1.0 / (hp.n_embd_head_k as f32).sqrt() };
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, false)?;
    let n_embd = hp.n_embd as i64;
    for il in 0..hp.n_layer as usize {
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, true)?;
        l.attn_post_norm = Some(ld.tensor(&format!("blk.{il}.post_attention_norm.weight"), &[n_embd], Usage::Mul)?);
        ld.feed_forward(hp, il, &mut l)?;
        l.ffn_post_norm = Some(ld.tensor(&format!("blk.{il}.post_ffw_norm.weight"), &[n_embd], Usage::Mul)?);
        wt.layers.push(l);
    }
    Ok(wt)
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let (hp, wt) = (g.hp, g.w);
    let mut inp_l = g.inp_embd(&wt.tok_embd, (hp.n_embd as f32).sqrt()); // F32 [n_embd, n_tokens]
    g.cb(&inp_l, "inp_scaled", usize::MAX);
    let inp_pos = g.inp_pos(); // I32 [n_tokens]
    g.inp_attn();
    let inp_out_ids = g.inp_out_ids(); // I32 [n_outputs]
    blocks(g, &mut inp_l, &inp_pos, &inp_out_ids, true);
    g.lm_head(&inp_l)
}

/// The Gemma 2/3 block stack: attention and FFN each wrapped in a pre-norm and a post-norm.
pub(super) fn blocks(g: &mut GraphBuilder, inp_l: &mut Tensor, inp_pos: &Tensor, inp_out_ids: &Tensor, qk_norm: bool) {
    let (hp, wt) = (g.hp, g.w);
    for il in 0..hp.n_layer as usize {
        let l = &wt.layers[il];

        // self-attention
        let cur = g.rms_norm(inp_l, l.attn_norm.as_ref(), il);
        g.cb(&cur, "attn_norm", il);
        // ref: google/gemma_pytorch gemma/model.py — queries are scaled before the product
        let spec = AttnSpec { qk_norm, rope_factors: None, q_scale: Some(hp.f_attention_scale), kq_scale: 1.0 };
        let mut cur = g.self_attention(l, &cur, inp_pos, spec, il);
        if il == hp.n_layer as usize - 1 {
            cur = g.ctx.get_rows(&cur, inp_out_ids);
            *inp_l = g.ctx.get_rows(inp_l, inp_out_ids);
        }
        let cur = g.rms_norm(&cur, l.attn_post_norm.as_ref(), il);
        g.cb(&cur, "attn_post_norm", il);
        let sa_out = g.ctx.add(&cur, inp_l);
        g.cb(&sa_out, "sa_out", il);

        // feed-forward network
        let cur = g.rms_norm(&sa_out, l.ffn_norm.as_ref(), il);
        g.cb(&cur, "ffn_norm", il);
        let cur = g.feed_forward(l, &cur, FfnOp::Gelu, il);
        let cur = g.rms_norm(&cur, l.ffn_post_norm.as_ref(), usize::MAX);
        g.cb(&cur, "ffn_post_norm", il);

        let cur = g.ctx.add(&cur, &sa_out);
        g.cb(&cur, "l_out", il);
        *inp_l = cur;
    }
}
