//! A model's weight tensors, named as in llama.cpp's `llama_layer` (absent ones are None).

use ggml::Tensor;

/// One transformer block's weights. Shapes are in ggml order, e.g. `wq`: [n_embd, n_embd_q].
#[derive(Clone, Default, Debug)]
pub struct LayerWeights {
    pub attn_norm: Option<Tensor>,
    pub wq: Option<Tensor>,
    pub wk: Option<Tensor>,
    pub wv: Option<Tensor>,
    /// Fused [q|k|v] projection.
    pub wqkv: Option<Tensor>,
    pub wq_b: Option<Tensor>,
    pub wk_b: Option<Tensor>,
    pub wv_b: Option<Tensor>,
    pub wqkv_b: Option<Tensor>,
    pub wo: Option<Tensor>,
    pub wo_b: Option<Tensor>,
    pub attn_q_norm: Option<Tensor>,
    pub attn_k_norm: Option<Tensor>,
    pub attn_post_norm: Option<Tensor>,
    pub rope_freqs: Option<Tensor>,
    /// Phi-3 RoPE factors for contexts beyond / within the original one.
    pub rope_long: Option<Tensor>,
    pub rope_short: Option<Tensor>,

    pub ffn_norm: Option<Tensor>,
    pub ffn_gate: Option<Tensor>,
    pub ffn_up: Option<Tensor>,
    pub ffn_down: Option<Tensor>,
    pub ffn_gate_b: Option<Tensor>,
    pub ffn_up_b: Option<Tensor>,
    pub ffn_down_b: Option<Tensor>,
    pub ffn_post_norm: Option<Tensor>,

    /// Mixture of experts: router [n_embd, n_expert] and stacked experts [.., .., n_expert].
    pub ffn_gate_inp: Option<Tensor>,
    pub ffn_gate_exps: Option<Tensor>,
    pub ffn_up_exps: Option<Tensor>,
    pub ffn_down_exps: Option<Tensor>,
}

/// All of a model's weights.
#[derive(Clone, Debug)]
pub struct Weights {
    /// [n_embd, n_vocab]
    pub tok_embd: Tensor,
    /// [n_embd]
    pub output_norm: Tensor,
    /// [n_embd, n_vocab]; the embedding itself when the model ties them.
    pub output: Tensor,
    /// [n_vocab] (Qwen 2, Phi-3 may have one)
    pub output_b: Option<Tensor>,
    pub layers: Vec<LayerWeights>,
}

/// Unwraps a weight an architecture file requires (its loader made it mandatory).
pub fn w(t: &Option<Tensor>) -> &Tensor {
    t.as_ref().expect("weight required by this architecture was declared mandatory at load time")
}
