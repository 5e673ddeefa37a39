//! Qwen 2 / 2.5: Llama's decoder with NEOX RoPE and biases on the Q, K and V projections.
//! After llama.cpp `src/models/qwen2.cpp`.

use crate::gguf::GgufFile;
use crate::graph::{AttnSpec, GraphBuilder};
use crate::model::{HParams, LayerWeights, TensorLoader, Weights};
use anyhow::Result;
use ggml::{RopeMode, Tensor};

// ---- hyper-parameters ----------------------------------------------------------------------

pub fn load_hparams(f: &GgufFile, hp: &mut HParams) -> Result<()> {
    hp.require_rms_eps(f)?;
    hp.require_ffn(f)?;
    hp.require_equal_heads(f)?;
    hp.rope_type = RopeMode::Neox;
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, false)?;
    for il in 0..hp.n_layer as usize {
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, false)?;
        ld.feed_forward(hp, il, &mut l)?;
        wt.layers.push(l);
    }
    Ok(wt)
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let kq_scale = 1.0 / (g.hp.n_embd_head_k as f32).sqrt();
    super::llama::decoder(g, |_| AttnSpec { qk_norm: false, rope_factors: None, q_scale: None, kq_scale })
}
