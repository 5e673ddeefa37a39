//! Hyper-parameters common to every architecture, parsed once from GGUF metadata.
//! Key names and defaults follow llama.cpp (`llama_model_base::load_hparams`).

use super::Arch;
use crate::gguf::GgufFile;
use anyhow::Result;
use ggml::RopeMode;

/// llama.cpp's LLAMA_MAX_LAYERS: a sane bound on `block_count`.
pub const MAX_LAYERS: u32 = 512;
/// llama.cpp's LLAMA_MAX_EXPERTS.
pub const MAX_EXPERTS: u32 = 512;
/// Bounds that keep hostile sizes from reaching allocation arithmetic.
pub const MAX_EMBD: u32 = 1 << 17;
pub const MAX_HEADS: u32 = 1 << 12;
pub const MAX_VOCAB: u32 = 1 << 22;

/// How RoPE frequencies are scaled beyond the training context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeScaling {
    None,
    Linear,
    Yarn,
    LongRope,
}

/// Hyper-parameters of a decoder-only transformer (names as in llama.cpp's `llama_hparams`).
#[derive(Clone, Debug)]
pub struct HParams {
    pub arch: Arch,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_embd_head_k: u32,
    pub n_embd_head_v: u32,
    pub n_rot: u32,
    pub n_vocab: u32,
    pub f_norm_eps: f32,
    pub f_norm_rms_eps: f32,

    pub rope_type: RopeMode,
    pub rope_freq_base: f32,
    pub rope_freq_scale: f32,
    pub rope_scaling: RopeScaling,
    pub n_ctx_orig_yarn: u32,
    /// RoPE base and scale of sliding-window layers.
    pub rope_freq_base_swa: f32,
    pub rope_freq_scale_swa: f32,

    /// Sliding-window size (0: no sliding window).
    pub n_swa: u32,
    /// Per layer: does it attend through the sliding window?
    pub swa_layers: Vec<bool>,

    /// Attention scale; 0 means 1/sqrt(n_embd_head_k).
    pub f_attention_scale: f32,
    /// tanh soft-capping of attention logits (0: off).
    pub f_attn_logit_softcapping: f32,
    /// tanh soft-capping of output logits (0: off).
    pub f_final_logit_softcapping: f32,

    pub n_expert: u32,
    pub n_expert_used: u32,
    /// FFN width of each expert (MoE).
    pub n_ff_exp: u32,
}

impl HParams {
    pub fn n_embd_k_gqa(&self) -> u32 {
        self.n_embd_head_k * self.n_head_kv
    }

    pub fn n_embd_v_gqa(&self) -> u32 {
        self.n_embd_head_v * self.n_head_kv
    }

    pub fn is_swa(&self, il: usize) -> bool {
        self.n_swa > 0 && self.swa_layers.get(il).copied().unwrap_or(false)
    }

    pub fn has_swa(&self) -> bool {
        self.n_swa > 0 && self.swa_layers.iter().any(|&s| s)
    }

    /// Marks layers as sliding-window with llama.cpp's pattern rule: in each group of
    /// `n_pattern` layers all but the last use the window (n_pattern 0: all of them).
    pub fn set_swa_pattern(&mut self, n_pattern: u32) {
        self.swa_layers = (0..self.n_layer).map(|il| n_pattern == 0 || il % n_pattern < n_pattern - 1).collect();
    }

    /// Reads the sliding-window layer pattern: an explicit per-layer bool array, or a period
    /// (`default_period` when the key is absent).
    pub fn load_swa_pattern(&mut self, f: &GgufFile, default_period: u32) -> Result<()> {
        let key = self.key("attention.sliding_window_pattern");
        if let Some(crate::gguf::Value::Array(a)) = f.get(&key) {
            let v = a.as_i64s().ok_or_else(|| f.error(&key, "must be an array of bools"))?;
            if v.len() != self.n_layer as usize {
                return Err(f.error(&key, format!("has {} elements, expected {}", v.len(), self.n_layer)));
            }
            self.swa_layers = v.iter().map(|&x| x != 0).collect();
            return Ok(());
        }
        let n = f.get_u32(&key)?.unwrap_or(default_period);
        self.set_swa_pattern(n);
        Ok(())
    }

    /// `<arch>.attention.sliding_window` (`default` when absent), bounded so that window
    /// arithmetic (window + micro-batch, positions as i32) cannot overflow.
    pub fn load_sliding_window(&mut self, f: &GgufFile, default: u32) -> Result<()> {
        let key = self.key("attention.sliding_window");
        let n = f.get_u32(&key)?.unwrap_or(default);
        let max = crate::decoder::MAX_CTX;
        if n > max {
            return Err(f.error(&key, format!("{n} is out of range 0..={max}")));
        }
        self.n_swa = n;
        Ok(())
    }

    /// `<arch>.rope.freq_base_swa`, which must be positive when present.
    pub fn get_rope_base_swa(&self, f: &GgufFile) -> Result<Option<f32>> {
        let key = self.key("rope.freq_base_swa");
        match f.get_f32(&key)? {
            Some(b) if b <= 0.0 => Err(f.error(&key, format!("{b} must be positive"))),
            v => Ok(v),
        }
    }

    /// "<arch>.<suffix>": the architecture-prefixed metadata key.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch.name())
    }

    /// Parameters common to all architectures; `Arch::load_hparams` adds the rest.
    pub(super) fn load_common(f: &GgufFile, arch: Arch) -> Result<HParams> {
        let k = |s: &str| format!("{}.{s}", arch.name());
        let req_u32 = |s: &str| f.require(&k(s), f.get_u32(&k(s)));
        let bounded = |s: &str, v: u32, lo: u32, hi: u32| -> Result<u32> {
            if v < lo || v > hi {
                return Err(f.error(&k(s), format!("{v} is out of range {lo}..={hi}")));
            }
            Ok(v)
        };

        let n_layer = bounded("block_count", req_u32("block_count")?, 1, MAX_LAYERS)?;
        let n_embd = bounded("embedding_length", req_u32("embedding_length")?, 1, MAX_EMBD)?;
        let n_ctx_train = bounded("context_length", req_u32("context_length")?, 1, u32::MAX)?;
        let per_layer = |s: &str, required: bool| -> Result<Option<u32>> {
            let key = k(s);
            match f.get(&key) {
                None if required => Err(f.error(&key, "missing required key")),
                None => Ok(None),
                Some(crate::gguf::Value::Array(_)) => {
                    let v = f.get_int_array(&key, Some(n_layer as usize))?.expect("present");
                    let first = v[0];
                    if v.iter().any(|&x| x != first) {
                        return Err(f.error(&key, "per-layer values that differ between layers are not supported"));
                    }
                    if !(0..=u32::MAX as i64).contains(&first) {
                        return Err(f.error(&key, format!("{first} is out of range")));
                    }
                    Ok(Some(first as u32))
                }
                Some(_) => Ok(Some(f.require(&key, f.get_u32(&key))?)),
            }
        };
        let n_head = bounded("attention.head_count", per_layer("attention.head_count", true)?.expect("required"), 1, MAX_HEADS)?;
        let n_head_kv = per_layer("attention.head_count_kv", false)?.unwrap_or(n_head);
        let n_head_kv = bounded("attention.head_count_kv", n_head_kv, 1, n_head)?;
        if n_head % n_head_kv != 0 {
            return Err(f.error(&k("attention.head_count_kv"), format!("{n_head_kv} does not divide head_count {n_head}")));
        }
        let n_ff = per_layer("feed_forward_length", false)?.unwrap_or(0);
        let n_ff = bounded("feed_forward_length", n_ff, 0, MAX_EMBD * 64)?;

        // Without explicit head sizes the head size is n_embd / n_head, which must be exact.
        let heads_explicit = f.get(&k("attention.key_length")).is_some() && f.get(&k("attention.value_length")).is_some();
        if !heads_explicit && n_embd % n_head != 0 {
            return Err(f.error(
                &k("attention.head_count"),
                format!("{n_head} does not divide embedding_length {n_embd} (and no attention.key_length/value_length give the head size)"),
            ));
        }
        let n_embd_head_k = f.get_u32(&k("attention.key_length"))?.unwrap_or(n_embd / n_head);
        let n_embd_head_k = bounded("attention.key_length", n_embd_head_k, 1, MAX_EMBD)?;
        let n_embd_head_v = f.get_u32(&k("attention.value_length"))?.unwrap_or(n_embd / n_head);
        let n_embd_head_v = bounded("attention.value_length", n_embd_head_v, 1, MAX_EMBD)?;
        let n_rot = f.get_u32(&k("rope.dimension_count"))?.unwrap_or(n_embd_head_k);
        if n_rot == 0 || n_rot > n_embd_head_k || n_rot % 2 != 0 {
            return Err(f.error(&k("rope.dimension_count"), format!("{n_rot} must be even and in 2..={n_embd_head_k}")));
        }

        let n_vocab = match f.get_u32(&k("vocab_size"))? {
            Some(n) => n,
            None => match f.get_array("tokenizer.ggml.tokens")? {
                Some(a) => a.len() as u32,
                None => return Err(f.error("tokenizer.ggml.tokens", "missing required key (and no vocab_size)")),
            },
        };
        if n_vocab == 0 || n_vocab > MAX_VOCAB {
            return Err(f.error(&k("vocab_size"), format!("{n_vocab} is out of range 1..={MAX_VOCAB}")));
        }

        let rope_freq_base = f.get_f32(&k("rope.freq_base"))?.unwrap_or(10000.0);
        if rope_freq_base <= 0.0 {
            return Err(f.error(&k("rope.freq_base"), format!("{rope_freq_base} must be positive")));
        }
        let rope_scaling = match f.get_str(&k("rope.scaling.type"))?.unwrap_or("linear") {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear,
            "yarn" => RopeScaling::Yarn,
            "longrope" => RopeScaling::LongRope,
            other => return Err(f.error(&k("rope.scaling.type"), format!("unknown RoPE scaling '{other}'"))),
        };
        let factor = match f.get_f32(&k("rope.scaling.factor"))? {
            Some(x) => x,
            None => f.get_f32(&k("rope.scale_linear"))?.unwrap_or(0.0),
        };
        if factor < 0.0 {
            return Err(f.error(&k("rope.scaling.factor"), format!("{factor} must not be negative")));
        }
        let rope_freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
        let n_ctx_orig_yarn = f.get_u32(&k("rope.scaling.original_context_length"))?.unwrap_or(n_ctx_train);

        let n_expert = f.get_u32(&k("expert_count"))?.unwrap_or(0);
        let n_expert = bounded("expert_count", n_expert, 0, MAX_EXPERTS)?;
        let n_expert_used = f.get_u32(&k("expert_used_count"))?.unwrap_or(0);
        let n_expert_used = bounded("expert_used_count", n_expert_used, 0, n_expert)?;
        if n_expert > 0 && n_expert_used == 0 {
            return Err(f.error(&k("expert_used_count"), "must be at least 1 in a mixture-of-experts model"));
        }

        let rms = f.get_f32(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(0.0);
        let eps = f.get_f32(&k("attention.layer_norm_epsilon"))?.unwrap_or(0.0);

        Ok(HParams {
            arch,
            n_ctx_train,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            n_embd_head_k,
            n_embd_head_v,
            n_rot,
            n_vocab,
            f_norm_eps: eps,
            f_norm_rms_eps: rms,
            rope_type: RopeMode::Normal,
            rope_freq_base,
            rope_freq_scale,
            rope_scaling,
            n_ctx_orig_yarn,
            rope_freq_base_swa: 10000.0,
            rope_freq_scale_swa: 1.0,
            n_swa: 0,
            swa_layers: vec![false; n_layer as usize],
            f_attention_scale: 0.0,
            f_attn_logit_softcapping: 0.0,
            f_final_logit_softcapping: 0.0,
            n_expert,
            n_expert_used,
            n_ff_exp: 0,
        })
    }

    /// A dense FFN width is required (`<arch>.feed_forward_length`).
    pub fn require_ffn(&self, f: &GgufFile) -> Result<()> {
        if self.n_ff == 0 {
            return Err(f.error(&self.key("feed_forward_length"), "missing required key (or 0)"));
        }
        Ok(())
    }

    /// Key and value heads must have the same size (the architectures that assume it).
    pub fn require_equal_heads(&self, f: &GgufFile) -> Result<()> {
        if self.n_embd_head_k != self.n_embd_head_v {
            return Err(f.error(
                &self.key("attention.value_length"),
                format!("{} must equal attention.key_length {}", self.n_embd_head_v, self.n_embd_head_k),
            ));
        }
        Ok(())
    }

    /// A required `<arch>.attention.layer_norm_rms_epsilon` (llama.cpp requires it for RMSNorm models).
    pub fn require_rms_eps(&mut self, f: &GgufFile) -> Result<()> {
        let key = self.key("attention.layer_norm_rms_epsilon");
        let v = f.require(&key, f.get_f32(&key))?;
        if !(0.0..1.0).contains(&v) {
            return Err(f.error(&key, format!("{v} is out of range [0, 1)")));
        }
        self.f_norm_rms_eps = v;
        Ok(())
    }
}
