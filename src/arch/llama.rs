//! Llama (Llama 2/3, Mistral 7B, SmolLM2, TinyLlama, Mixtral-style MoE): pre-norm blocks of
//! RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → SwiGLU FFN (or a top-k
//! mixture of SwiGLU experts with renormalised softmax weights) → residual; final RMSNorm and the
//! LM head, tied to the embedding when `output.weight` is absent. After llama.cpp
//! `src/models/llama.cpp`.

use crate::gguf::GgufFile;
use crate::graph::{AttnSpec, FfnOp, GraphBuilder};
use crate::model::loader::Usage;
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
    hp.require_equal_heads(f)?;
    hp.require_ffn(f)?;
    if hp.n_expert > 0 {
        // Mixtral-style experts have the dense FFN's width
        hp.n_ff_exp = hp.n_ff;
    }
    Ok(())
}

// ---- tensors -------------------------------------------------------------------------------

pub fn load_tensors(hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
    let mut wt = ld.io(hp, false)?;
    for il in 0..hp.n_layer as usize {
        let mut l = LayerWeights::default();
        ld.attention(hp, il, &mut l, false)?;
        // Llama 3 frequency factors: one tensor shared by every layer
        l.rope_freqs = ld.shared(il, "rope_freqs.weight", &[(hp.n_rot / 2) as i64], Usage::Rope)?;
        ld.feed_forward(hp, il, &mut l)?;
        wt.layers.push(l);
    }
    Ok(wt)
}

// ---- graph ---------------------------------------------------------------------------------

pub fn build_graph(g: &mut GraphBuilder) -> Tensor {
    let hp = g.hp;
    let kq_scale = if hp.f_attention_scale == 0.0 { 1.0 / (hp.n_embd_head_v as f32).sqrt() } else { hp.f_attention_scale };
    decoder(g, |l| AttnSpec { qk_norm: false, rope_factors: l.rope_freqs.as_ref(), q_scale: None, kq_scale })
}

/// The Llama decoder: embedding, the pre-norm block stack, LM head. Architectures that differ
/// from Llama only in their attention details (Qwen 2/3, Phi-3) reuse it with their own `spec`.
pub(super) fn decoder<'w>(g: &mut GraphBuilder<'w>, spec: impl Fn(&'w LayerWeights) -> AttnSpec<'w>) -> Tensor {
    let (hp, wt) = (g.hp, g.w);
    let mut inp_l = g.inp_embd(&wt.tok_embd, 1.0); // F32 [n_embd, n_tokens]
    let inp_pos = g.inp_pos(); // I32 [n_tokens]
    g.inp_attn();
    let inp_out_ids = g.inp_out_ids(); // I32 [n_outputs]

    for il in 0..hp.n_layer as usize {
        let l = &wt.layers[il];
        let mut inp_sa = inp_l.clone();

        // self-attention
        let cur = g.rms_norm(&inp_l, l.attn_norm.as_ref(), il);
        g.cb(&cur, "attn_norm", il);
        let mut cur = g.self_attention(l, &cur, &inp_pos, spec(l), il);

        if il == hp.n_layer as usize - 1 {
            cur = g.ctx.get_rows(&cur, &inp_out_ids);
            inp_sa = g.ctx.get_rows(&inp_sa, &inp_out_ids);
        }
        let ffn_inp = g.ctx.add(&cur, &inp_sa);
        g.cb(&ffn_inp, "ffn_inp", il);

        // feed-forward network
        let cur = g.rms_norm(&ffn_inp, l.ffn_norm.as_ref(), il);
        g.cb(&cur, "ffn_norm", il);
        let cur = g.feed_forward(l, &cur, FfnOp::Silu, il);

        let cur = g.ctx.add(&cur, &ffn_inp);
        g.cb(&cur, "l_out", il);
        inp_l = cur;
    }
    g.lm_head(&inp_l)
}
