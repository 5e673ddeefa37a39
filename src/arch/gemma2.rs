//! Gemma 2: Gemma 3's sandwich-normed blocks without Q/K norms, with tanh soft-capping of the
//! attention logits and of the final logits, and a sliding window on every other layer (with
//! the same RoPE base). The LM head is always the embedding. After llama.cpp
//! `src/models/gemma2.cpp`.

use crate::gguf::GgufFile;
use crate::graph::GraphBuilder;
use crate::model::loader::Usage;
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.require_ffn(f)?;
    hp.rope_type = RopeMode::Neox;
    // defaults of Gemma 2 (llama.cpp's llama_hparams): window 4096, caps 50 and 30
    hp.load_sliding_window(f, 4096)?;
    hp.load_swa_pattern(f, 2)?;
    hp.rope_freq_base_swa = hp.get_rope_base_swa(f)?.unwrap_or(hp.rope_freq_base);
    hp.rope_freq_scale_swa = hp.rope_freq_scale;
    hp.f_attn_logit_softcapping = f.get_f32(&hp.key("attn_logit_softcapping"))?.unwrap_or(50.0);
    hp.f_final_logit_softcapping = f.get_f32(&hp.key("final_logit_softcapping"))?.unwrap_or(30.0);
    for (k, v) in [("attn_logit_softcapping", hp.f_attn_logit_softcapping), ("final_logit_softcapping", hp.f_final_logit_softcapping)] {
        if v <= 0.0 {
            return Err(f.error(&hp.key(k), format!("{v} must be positive")));
        }
    }
    // ref: google/gemma_pytorch gemma/config.py — 27B (46 layers) scales by width per head
    hp.f_attention_scale =
        if hp.n_layer == 46 { 1.0 / ((hp.n_embd / hp.n_head) as f32).sqrt() } else { 1.0 / (hp.n_embd_head_k as f32).sqrt() };
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, true)?;
    let n_embd = hp.n_embd as i64;
    for il in 0..hp.n_layer as usize {
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, false)?;
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
    let inp_l = g.inp_embd(&wt.tok_embd, 1.0);
    let mut inp_l = g.ctx.scale(&inp_l, (hp.n_embd as f32).sqrt()); // F32 [n_embd, n_tokens]
    g.cb(&inp_l, "inp_scaled", usize::MAX);
    let inp_pos = g.inp_pos();
    g.inp_attn();
    let inp_out_ids = g.inp_out_ids();
    super::gemma3::blocks(g, &mut inp_l, &inp_pos, &inp_out_ids, false);
    g.lm_head(&inp_l)
}
