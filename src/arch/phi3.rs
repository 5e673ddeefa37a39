//! Phi-3 / 3.5 / 4-mini: Llama's decoder with a fused [q|k|v] projection, a fused [gate|up] FFN
//! projection (2·n_ff wide, SwiGLU over its halves), NEOX RoPE with optional long/short
//! frequency factors, and queries scaled before the attention product. After llama.cpp
//! `src/models/phi3.cpp`. llama.cpp ignores Phi-3's sliding-window metadata (its converters
//! write it wrongly; llama.cpp PR 13676), and so does ferrite, to give the same answers.

use crate::gguf::GgufFile;
use crate::graph::{AttnSpec, GraphBuilder};
use crate::model::loader::Usage;
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.require_ffn(f)?;
    hp.require_equal_heads(f)?;
    hp.rope_type = RopeMode::Neox;
    hp.n_swa = 0;
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, false)?;
    let (n_embd, n_ff) = (hp.n_embd as i64, hp.n_ff as i64);
    let factors = [(hp.n_rot / 2) as i64];
    for il in 0..hp.n_layer as usize {
        let b = |s: &str| format!("blk.{il}.{s}");
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, false)?;
        l.ffn_norm = Some(ld.tensor(&b("ffn_norm.weight"), &[n_embd], Usage::Mul)?);
        l.ffn_down = Some(ld.tensor(&b("ffn_down.weight"), &[n_ff, n_embd], Usage::MatMul)?);
        l.ffn_up = Some(ld.tensor(&b("ffn_up.weight"), &[n_embd, 2 * n_ff], Usage::MatMul)?);
        l.rope_long = ld.shared(il, "rope_factors_long.weight", &factors, Usage::Rope)?;
        l.rope_short = ld.shared(il, "rope_factors_short.weight", &factors, Usage::Rope)?;
        wt.layers.push(l);
    }
    Ok(wt)
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let q_scale = 1.0 / (g.hp.n_embd_head_k as f32).sqrt();
    // llama.cpp's get_rope_factors: the long factors when the context exceeds the original one
    let long = g.cparams.n_ctx > g.hp.n_ctx_orig_yarn;
    super::llama::decoder(g, |l| {
        let rope_factors = if long { l.rope_long.as_ref() } else { l.rope_short.as_ref() };
        AttnSpec { qk_norm: false, rope_factors, q_scale: Some(q_scale), kq_scale: 1.0 }
    })
}
