//! Qwen 3 (dense and MoE): Llama's decoder with NEOX RoPE, per-head RMSNorm of Q and K before
//! RoPE, and a head size given by `attention.key_length` rather than n_embd / n_head. The MoE
//! variant (`qwen3moe`) routes each token to the top-k of its experts (softmax, renormalised),
//! each `expert_feed_forward_length` wide. After llama.cpp `src/models/qwen3.cpp`, `qwen3moe.cpp`.

use crate::gguf::GgufFile;
use crate::graph::{AttnSpec, GraphBuilder};
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.require_equal_heads(f)?;
    hp.rope_type = RopeMode::Neox;
    if hp.n_rot != hp.n_embd_head_k {
        return Err(f.error(&hp.key("rope.dimension_count"), format!("{} must equal the head size {}", hp.n_rot, hp.n_embd_head_k)));
    }
    if hp.arch == crate::model::Arch::Qwen3Moe {
        if hp.n_expert == 0 {
            return Err(f.error(&hp.key("expert_count"), "missing: qwen3moe needs experts"));
        }
        let key = hp.key("expert_feed_forward_length");
        hp.n_ff_exp = match f.get_u32(&key)? {
            Some(n) if n > 0 && n <= crate::model::hparams::MAX_EMBD * 64 => n,
            Some(n) => return Err(f.error(&key, format!("{n} is out of range"))),
            None if hp.n_ff > 0 => hp.n_ff / hp.n_expert_used,
            None => return Err(f.error(&key, "missing required key")),
        };
    } else {
        hp.require_ffn(f)?;
    }
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, false)?;
    for il in 0..hp.n_layer as usize {
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, true)?;
        ld.feed_forward(hp, il, &mut l)?;
        wt.layers.push(l);
    }
    Ok(wt)
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let kq_scale = 1.0 / (g.hp.n_embd_head_k as f32).sqrt();
    super::llama::decoder(g, |_| AttnSpec { qk_norm: true, rope_factors: None, q_scale: None, kq_scale })
}
