//! Quantizing model files (`ferrite quantize`): llama-quantize's choice of a type per tensor and
//! its file layout, ggml's own quantization routines, rows spread over threads with rayon.
//!
//! The method is llama.cpp's `src/llama-quant.cpp`, in our words, so that the output has the same
//! bytes: tensors in the loader's order (outside blocks first, then `blk.N` in numeric order, by
//! name within each), only tensors of 2+ dimensions named `*weight` quantized (not norms, expert
//! gates, position or token-type embeddings, …), the `_S/_M/_L` mixes that promote attention-v,
//! ffn-down, output and embedding tensors by layer, the fallbacks when a row is not a multiple of
//! the type's block, and the metadata copied with `general.quantization_version` and
//! `general.file_type` set last. Not supported (refused): importance matrices, so the IQ types
//! that need one; layer pruning; split files. The 70B-specific attention-v promotion (which needs
//! llama.cpp's model-size table) is not applied.

use crate::gguf::writer::{TensorEntry, Writer};
use crate::gguf::{GgufFile, TensorInfo, Value};
use anyhow::Result;
use ggml::Type;
use rayon::prelude::*;
use std::path::Path;

/// llama.cpp's file types (`llama_ftype`): name, id.
pub const FTYPES: &[(&str, u32)] = &[
    ("F32", 0),
    ("F16", 1),
    ("BF16", 32),
    ("Q4_0", 2),
    ("Q4_1", 3),
    ("Q5_0", 8),
    ("Q5_1", 9),
    ("Q8_0", 7),
    ("Q2_K", 10),
    ("Q2_K_S", 21),
    ("Q3_K_S", 11),
    ("Q3_K_M", 12),
    ("Q3_K_L", 13),
    ("Q4_K_S", 14),
    ("Q4_K_M", 15),
    ("Q5_K_S", 16),
    ("Q5_K_M", 17),
    ("Q6_K", 18),
    ("IQ2_XXS", 19),
    ("IQ2_XS", 20),
    ("IQ2_S", 28),
    ("IQ2_M", 29),
    ("IQ1_S", 24),
    ("IQ1_M", 31),
    ("IQ3_XXS", 23),
    ("IQ3_XS", 22),
    ("IQ3_S", 26),
    ("IQ3_M", 27),
    ("IQ4_NL", 25),
    ("IQ4_XS", 30),
    ("TQ1_0", 36),
    ("TQ2_0", 37),
];

/// The file type named `s` (llama-quantize's names, `Q4_K` etc. for the `_M` mix, or its number).
pub fn parse_ftype(s: &str) -> Option<u32> {
    let up = s.to_ascii_uppercase();
    let up = match up.as_str() {
        "Q3_K" | "Q4_K" | "Q5_K" => format!("{up}_M"),
        _ => up,
    };
    FTYPES.iter().find(|(n, _)| *n == up).map(|&(_, id)| id).or_else(|| s.parse().ok().filter(|id| FTYPES.iter().any(|(_, i)| i == id)))
}

/// The name of file type `id`.
pub fn ftype_name(id: u32) -> &'static str {
    FTYPES.iter().find(|(_, i)| *i == id).map_or("?", |(n, _)| n)
}

/// The tensor type a file type mostly uses (`llama_ftype_get_default_type`).
fn default_type(ftype: u32) -> Type {
    let name = match ftype {
        0 => "f32",
        1 => "f16",
        32 => "bf16",
        2 => "q4_0",
        3 => "q4_1",
        8 => "q5_0",
        9 => "q5_1",
        7 => "q8_0",
        10 | 21 => "q2_K",
        22 => "iq3_s",
        11..=13 => "q3_K",
        14 | 15 => "q4_K",
        16 | 17 => "q5_K",
        18 => "q6_K",
        19 => "iq2_xxs",
        20 | 28 => "iq2_xs",
        29 => "iq2_s",
        23 => "iq3_xxs",
        24 => "iq1_s",
        31 => "iq1_m",
        25 => "iq4_nl",
        30 => "iq4_xs",
        26 | 27 => "iq3_s",
        36 => "tq1_0",
        37 => "tq2_0",
        _ => "",
    };
    Type::from_name(name).unwrap_or(Type::F32)
}

fn ty(name: &str) -> Type {
    Type::from_name(name).unwrap_or(Type::F32)
}

/// What llama-quantize's options say.
#[derive(Clone, Debug)]
pub struct Params {
    pub ftype: u32,
    pub allow_requantize: bool,
    pub pure: bool,
    /// `--leave-output-tensor`: `output.weight` is copied.
    pub leave_output: bool,
    pub output_tensor_type: Option<Type>,
    pub token_embedding_type: Option<Type>,
    /// `--tensor-type PATTERN=TYPE`, the first pattern found in a name wins.
    pub tensor_types: Vec<(regex::Regex, Type)>,
    pub n_threads: usize,
    /// `--imatrix FILE`: the importance matrix and the file name as given (recorded in the
    /// output's metadata, as llama-quantize records it).
    pub imatrix: Option<(crate::imatrix::Imatrix, String)>,
}

/// What a quantization wrote.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub n_tensors: usize,
    pub n_quantized: usize,
    pub size_in: u64,
    pub size_out: u64,
    /// Tensors whose rows did not fit the type's block (a fallback type was used).
    pub n_fallback: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        TokenEmbd
    } else if name.contains("attn_qkv.weight") {
        AttnQkv
    } else if name.contains("attn_kv_b.weight") {
        AttnKvB
    } else if name.contains("attn_v.weight") {
        AttnV
    } else if name.contains("attn_k.weight") {
        AttnK
    } else if name.contains("attn_q.weight") {
        AttnQ
    } else if name.contains("attn_output.weight") {
        AttnOutput
    } else if name.contains("ffn_up") {
        FfnUp
    } else if name.contains("ffn_gate") {
        FfnGate
    } else if name.contains("ffn_down") {
        FfnDown
    } else {
        Other
    }
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// ggml's `ggml_n_dims`: dimensions up to the last one larger than 1.
fn n_dims(t: &TensorInfo) -> usize {
    (1..4).rev().find(|&i| t.ne[i] > 1).map_or(1, |i| i + 1)
}

/// The layer of `blk.N.…` names (llama.cpp reads it with `sscanf("blk.%d.")`), else -1.
fn layer_of(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else { return -1 };
    let end =
        rest.char_indices().find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+')))).map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().unwrap_or(-1)
}

/// Counters and model facts the type choice reads (llama.cpp's `quantize_state_impl`).
struct State<'a> {
    p: &'a Params,
    arch: String,
    n_gqa: u32,
    n_expert: u32,
    n_attention_wv: i64,
    i_attention_wv: i64,
    n_layer: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    n_fallback: usize,
    tied: bool,
}

fn allows_quantization(p: &Params, t: &TensorInfo) -> bool {
    if n_dims(t) < 2 {
        return false;
    }
    let n = t.name.as_str();
    let mut q = n.ends_with("weight");
    q &= !n.contains("_norm.weight");
    q &= !(p.leave_output && n == "output.weight");
    for part in [
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ] {
        q &= !n.contains(part);
    }
    q &= n != "position_embd.weight" && n != "token_types.weight";
    q
}

impl State<'_> {
    /// The mix's type for a tensor (llama.cpp's `llama_tensor_get_type_impl`). Branches stay
    /// one per llama.cpp condition, even where two give the same type, so the two read side by side.
    #[allow(clippy::if_same_then_else)]
    fn mix_type(&mut self, mut new: Type, t: &TensorInfo, cat: Category) -> Result<Type> {
        let ft = self.p.ftype;
        let (q2_k, q3_k, q4_k, q5_k, q6_k, q8_0) = (ty("q2_K"), ty("q3_K"), ty("q4_K"), ty("q5_K"), ty("q6_K"), ty("q8_0"));
        let (iq2_xxs, iq2_s, iq3_xxs, iq3_s) = (ty("iq2_xxs"), ty("iq2_s"), ty("iq3_xxs"), ty("iq3_s"));
        let falcon = self.arch == "falcon";
        let use_more_bits = |i: i64, n: i64| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let layer = |i: i64, n: i64| -> Result<(i64, i64)> {
            if self.n_expert > 1 {
                let l = layer_of(&t.name);
                if l < 0 || l >= n {
                    anyhow::bail!("cannot tell the layer of tensor {} (of {n})", t.name);
                }
                return Ok((l, n));
            }
            Ok((i, n))
        };
        const IQ2_XXS: u32 = 19;
        const IQ2_XS: u32 = 20;
        const Q2_K_S: u32 = 21;
        const IQ3_XS: u32 = 22;
        const IQ3_XXS: u32 = 23;
        const IQ1_S: u32 = 24;
        const IQ4_NL: u32 = 25;
        const IQ3_S: u32 = 26;
        const IQ3_M: u32 = 27;
        const IQ2_S: u32 = 28;
        const IQ2_M: u32 = 29;
        const IQ4_XS: u32 = 30;
        const IQ1_M: u32 = 31;
        let very_low = [IQ2_XXS, IQ2_XS, IQ1_S, IQ2_S, IQ2_M, IQ1_M].contains(&ft);
        let (gqa, n_expert) = (self.n_gqa, self.n_expert);
        let has_imatrix = self.p.imatrix.is_some();

        if cat == Category::Output || (self.tied && cat == Category::TokenEmbd) {
            if let Some(o) = self.p.output_tensor_type {
                new = o;
            } else {
                let nx = t.ne[0];
                if falcon || nx % new.block_size() != 0 {
                    new = q8_0;
                } else if [IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ2_S, IQ2_M, IQ1_M].contains(&ft) {
                    new = q5_k;
                } else if new != q8_0 {
                    new = q6_k;
                }
            }
        } else if cat == Category::TokenEmbd {
            if let Some(e) = self.p.token_embedding_type {
                new = e;
            } else if [IQ2_XXS, IQ2_XS, IQ1_S, IQ1_M].contains(&ft) {
                new = q2_k;
            } else if [IQ2_S, IQ2_M, IQ3_XXS].contains(&ft) {
                new = iq3_s;
            } else if [36, 37].contains(&ft) {
                new = q4_k;
            }
        } else if very_low {
            if is_attn_v(cat) {
                new = if gqa >= 4 || n_expert >= 4 {
                    q4_k
                } else if ft == IQ2_S || ft == IQ2_M {
                    iq3_s
                } else {
                    q2_k
                };
                self.i_attention_wv += 1;
            } else if n_expert == 8 && cat == Category::AttnK {
                new = q4_k;
            } else if cat == Category::FfnDown {
                if self.i_ffn_down < self.n_layer / 8 {
                    new = if ft == IQ2_S || ft == IQ2_M { iq3_s } else { q2_k };
                }
                self.i_ffn_down += 1;
            } else if cat == Category::AttnOutput {
                if n_expert == 8 {
                    new = q5_k;
                } else if ft == IQ1_S || ft == IQ1_M {
                    new = iq2_xxs;
                } else if ft == IQ2_S || ft == IQ2_M {
                    new = iq3_s;
                }
            }
        } else if is_attn_v(cat) {
            let i = self.i_attention_wv;
            if ft == 10 {
                new = if gqa >= 4 { q4_k } else { q3_k };
            } else if ft == Q2_K_S && gqa >= 4 {
                new = q4_k;
            } else if ft == IQ3_XXS {
                new = if gqa >= 4 {
                    q4_k
                } else if !has_imatrix {
                    iq3_s
                } else {
                    iq3_xxs
                };
            } else if (ft == IQ3_XS || ft == IQ3_S) && gqa >= 4 {
                new = q4_k;
            } else if ft == IQ3_M {
                new = q4_k;
            } else if ft == 12 {
                new = if i < 2 { q5_k } else { q4_k };
            } else if ft == 13 {
                new = q5_k;
            } else if (ft == IQ4_NL || ft == IQ4_XS) && gqa >= 4 {
                new = q5_k;
            } else if (ft == 15 || ft == 17) && use_more_bits(i, self.n_attention_wv) {
                new = q6_k;
            } else if ft == 14 && i < 4 {
                new = q5_k;
            }
            if n_expert == 8 {
                new = q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttnK {
            if n_expert == 8 {
                new = q8_0;
            } else if ft == IQ3_XS {
                new = iq3_xxs;
            } else if ft == IQ3_XXS {
                new = iq2_s;
            }
        } else if cat == Category::AttnQ {
            if ft == IQ3_XS {
                new = iq3_xxs;
            } else if ft == IQ3_XXS {
                new = iq2_s;
            }
        } else if cat == Category::FfnDown {
            let (il, n) = layer(self.i_ffn_down, self.n_layer)?;
            if ft == 10 {
                new = q3_k;
            } else if ft == Q2_K_S {
                if il < n / 8 {
                    new = q4_k;
                }
            } else if ft == IQ3_XXS && !has_imatrix {
                new = if il < n / 8 { q4_k } else { q3_k };
            } else if ft == 12 {
                new = if il < n / 16 {
                    q5_k
                } else if !falcon || use_more_bits(il, n) {
                    q4_k
                } else {
                    q3_k
                };
            } else if ft == IQ3_M && (il < n / 8 || (n_expert == 8 && use_more_bits(il, n))) {
                new = q4_k;
            } else if ft == 13 {
                new = if falcon { q4_k } else { q5_k };
            } else if ft == 15 {
                if falcon {
                    new = if il < n / 16 {
                        q6_k
                    } else if use_more_bits(il, n) {
                        q5_k
                    } else {
                        q4_k
                    };
                } else if use_more_bits(il, n) {
                    new = q6_k;
                }
            } else if il < n / 8 && (ft == IQ4_NL || ft == IQ4_XS) && !has_imatrix {
                new = q5_k;
            } else if ft == 17 && use_more_bits(il, n) {
                new = q6_k;
            } else if ft == 14 && !falcon && il < n / 8 {
                new = q5_k;
            } else if (ft == 2 || ft == 8) && has_imatrix && il < n / 8 {
                // llama.cpp guards the first ffn_down layers of Q4_0/Q5_0 when an imatrix is given
                new = if ft == 2 { ty("q4_1") } else { ty("q5_1") };
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if !falcon {
                if n_expert == 8 {
                    if [10, IQ3_XS, IQ3_XXS, 11, 12, IQ4_NL, 14, 15, IQ3_S, IQ3_M, IQ4_XS].contains(&ft) {
                        new = q5_k;
                    }
                } else if ft == 10 {
                    new = q3_k;
                } else if ft == IQ3_XXS {
                    new = iq3_s;
                } else if ft == 12 || ft == IQ3_M {
                    new = q4_k;
                } else if ft == 13 {
                    new = q5_k;
                }
            } else if ft == 13 {
                new = q4_k;
            }
        } else if cat == Category::AttnQkv {
            if ft == 12 || ft == 13 || ft == IQ3_M {
                new = q4_k;
            } else if ft == 15 {
                new = q5_k;
            } else if ft == 17 {
                new = q6_k;
            }
        } else if cat == Category::FfnGate {
            let (il, n) = layer(self.i_ffn_gate, self.n_layer)?;
            if ft == IQ3_XS && il >= n / 8 && il < 7 * n / 8 {
                new = iq3_xxs;
            }
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            let (il, n) = layer(self.i_ffn_up, self.n_layer)?;
            if ft == IQ3_XS && il >= n / 8 && il < 7 * n / 8 {
                new = iq3_xxs;
            }
            self.i_ffn_up += 1;
        }
        Ok(new)
    }

    /// A type whose block divides the rows (llama.cpp's `tensor_type_fallback`).
    fn fallback(&mut self, t: &TensorInfo, target: Type) -> Result<Type> {
        let ncols = t.ne[0];
        if ncols % target.block_size() == 0 {
            return Ok(target);
        }
        self.n_fallback += 1;
        let name = target.name();
        let mut ret = match name {
            "iq1_s" | "iq1_m" | "iq2_xxs" | "iq2_xs" | "iq2_s" | "iq3_xxs" | "iq3_s" | "iq4_xs" => ty("iq4_nl"),
            "q2_K" | "q3_K" | "tq1_0" | "tq2_0" => ty("q4_0"),
            "q4_K" => ty("q5_0"),
            "q5_K" => ty("q5_1"),
            "q6_K" => ty("q8_0"),
            _ if target.block_size() <= 32 => target,
            _ => anyhow::bail!("no fallback type is defined for {name}"),
        };
        if ncols % ret.block_size() != 0 {
            ret = Type::F16;
        }
        Ok(ret)
    }

    /// The type tensor `t` is written in (llama.cpp's `llama_tensor_get_type`).
    fn target(&mut self, t: &TensorInfo, default: Type, cat: Category) -> Result<Type> {
        let p = self.p;
        if !allows_quantization(p, t) {
            return Ok(t.ty);
        }
        if let (Some(e), Category::TokenEmbd) = (p.token_embedding_type, cat) {
            let named = t.name == "per_layer_token_embd.weight" && p.tensor_types.iter().any(|(re, _)| re.is_match(&t.name));
            if !named {
                return Ok(e);
            }
        }
        if let (Some(o), Category::Output) = (p.output_tensor_type, cat) {
            return Ok(o);
        }
        let mut new = default;
        if default.is_quantized() {
            let manual = p.tensor_types.iter().find(|(re, _)| re.is_match(&t.name)).map(|&(_, ty)| ty);
            if let Some(m) = manual {
                new = m;
            } else if !p.pure {
                new = self.mix_type(new, t, cat)?;
            }
            new = self.fallback(t, new)?;
        }
        Ok(new)
    }
}

/// Does this type, chosen for this tensor, need an importance matrix (llama.cpp's
/// `tensor_requires_imatrix`)?
fn requires_imatrix(name: &str, t: Type, ftype: u32) -> bool {
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" || name == "output.weight" {
        return false;
    }
    match t.name() {
        "iq3_xxs" | "iq2_xxs" | "iq2_xs" | "iq2_s" | "iq1_m" | "iq1_s" => true,
        "q2_K" => ftype == 21,
        _ => false,
    }
}

/// Quantizes the model at `input` to `output` as `p` says. `progress` hears (tensors done,
/// total, name).
pub fn quantize(input: &Path, output: &Path, p: &Params, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<Summary> {
    let f = GgufFile::open(input)?;
    crate::gguf::writer::check_target(output, input, "quantized model", "input model")?;
    if !FTYPES.iter().any(|&(_, id)| id == p.ftype) {
        crate::bail_input!("file type {} is not one ferrite writes", p.ftype);
    }
    let arch = f.get_str("general.architecture")?.unwrap_or("").to_string();
    // a number, or per-layer arrays, of which llama.cpp's n_gqa() reads layer 0
    let key_u32 = |k: &str| -> u32 {
        let key = format!("{arch}.{k}");
        match f.get(&key) {
            Some(Value::U32(x)) => *x,
            Some(Value::I32(x)) => *x as u32,
            Some(Value::U64(x)) => *x as u32,
            Some(Value::Array(_)) => f.get_int_array(&key, None).ok().flatten().and_then(|v| v.first().copied()).unwrap_or(0) as u32,
            _ => 0,
        }
    };
    let (n_head, n_head_kv) = (key_u32("attention.head_count"), key_u32("attention.head_count_kv"));
    let n_head_kv = if n_head_kv == 0 { n_head } else { n_head_kv };
    let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0);

    // the loader's order: outside blocks first, then by block number, by name within
    let mut tensors: Vec<&TensorInfo> = f.tensors().iter().collect();
    tensors.sort_by(|a, b| layer_of(&a.name).cmp(&layer_of(&b.name)).then_with(|| a.name.cmp(&b.name)));
    let cats: Vec<Category> = tensors.iter().map(|t| category(&t.name)).collect();
    let mut st = State {
        p,
        arch: arch.clone(),
        n_gqa,
        n_expert: key_u32("expert_count"),
        n_attention_wv: cats.iter().filter(|c| is_attn_v(**c)).count() as i64,
        i_attention_wv: 0,
        n_layer: key_u32("block_count") as i64,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        n_fallback: 0,
        tied: !cats.contains(&Category::Output),
    };
    let default = default_type(p.ftype);
    let mut entries = Vec::with_capacity(tensors.len());
    for (t, &cat) in tensors.iter().zip(&cats) {
        let target = st.target(t, default, cat)?;
        if allows_quantization(p, t) && requires_imatrix(&t.name, target, p.ftype) && p.imatrix.is_none() {
            crate::bail_input!("{} as {} needs an importance matrix (--imatrix FILE; `ferrite imatrix` makes one)", t.name, target.name());
        }
        if target != t.ty && t.ty.is_quantized() && !p.allow_requantize {
            crate::bail_input!("{} is already {}: requantizing is disabled (--allow-requantize)", t.name, t.ty.name());
        }
        entries.push(TensorEntry { name: t.name.clone(), ty: target, ne: t.ne, n_dims: t.n_dims });
    }

    let mut kv: Vec<(String, Value)> = f.metadata().to_vec();
    for (k, v) in [("general.quantization_version", Value::U32(2)), ("general.file_type", Value::U32(p.ftype))] {
        kv.retain(|(key, _)| key != k);
        kv.push((k.to_string(), v));
    }
    kv.retain(|(k, _)| !matches!(k.as_str(), "split.no" | "split.count" | "split.tensors.count"));
    if let Some((m, file)) = &p.imatrix {
        // llama-quantize's overrides: strings cut to 127 bytes, counts as u32
        let cut = |s: &str| String::from_utf8_lossy(&s.as_bytes()[..s.len().min(127)]).into_owned();
        let mut set = vec![("quantize.imatrix.file", Value::Str(cut(file)))];
        if let Some(d) = m.datasets.first() {
            set.push(("quantize.imatrix.dataset", Value::Str(cut(d))));
        }
        set.push(("quantize.imatrix.entries_count", Value::U32(m.entries.len() as u32)));
        if m.chunk_count > 0 {
            set.push(("quantize.imatrix.chunks_count", Value::U32(m.chunk_count)));
        }
        for (k, v) in set {
            kv.retain(|(key, _)| key != k);
            kv.push((k.to_string(), v));
        }
    }

    let pool = rayon::ThreadPoolBuilder::new().num_threads(p.n_threads.max(1)).build()?;
    let mut w = Writer::create(output, &kv, entries.clone(), crate::gguf::writer::DEFAULT_ALIGNMENT)?;
    let mut s = Summary { n_tensors: tensors.len(), n_fallback: st.n_fallback, ..Default::default() };
    for (i, (t, e)) in tensors.iter().zip(&entries).enumerate() {
        progress(i, tensors.len(), &t.name);
        let data = f.tensor_data(t);
        s.size_in += data.len() as u64;
        if e.ty == t.ty {
            w.write_tensor(data)?;
            s.size_out += data.len() as u64;
            continue;
        }
        let imatrix = match &p.imatrix {
            Some((m, _)) => importance(m, t, requires_imatrix(&t.name, e.ty, p.ftype))?,
            None => None,
        };
        let out = pool.install(|| convert(t, data, e.ty, imatrix))?;
        w.write_tensor(&out)?;
        s.size_out += out.len() as u64;
        s.n_quantized += 1;
    }
    progress(tensors.len(), tensors.len(), "");
    w.finish()?;
    Ok(s)
}

/// The importance values of tensor `t` (one row's worth per expert), as llama-quantize finds
/// them: by name; a missing entry is only an error where the type needs one, a wrong size an
/// error except for the token embedding.
fn importance<'m>(m: &'m crate::imatrix::Imatrix, t: &TensorInfo, required: bool) -> Result<Option<&'m [f32]>> {
    let found = match m.entries.get(&t.name) {
        None => None,
        Some(v) if v.len() as i64 == t.ne[0] * t.ne[2] => Some(v.as_slice()),
        Some(v) if t.name == "token_embd.weight" => {
            let _ = v;
            None
        }
        Some(v) => crate::bail_input!("the importance matrix has {} values for {}, which needs {}", v.len(), t.name, t.ne[0] * t.ne[2]),
    };
    if found.is_none() && required {
        crate::bail_input!("the importance matrix has no entry for {}, which its type needs", t.name);
    }
    Ok(found)
}

/// Rows of `t` (its bytes `data`) in type `to`: to f32 with the source type's routine, then
/// ggml's quantization (weighted by `imatrix`, one row of values per expert), rows spread over
/// the pool's threads (rows are independent, so the bytes do not depend on how they are split;
/// a chunk never crosses from one expert to the next).
fn convert(t: &TensorInfo, data: &[u8], to: Type, imatrix: Option<&[f32]>) -> Result<Vec<u8>> {
    let n_per_row = t.ne[0] as usize;
    let n_rows = (t.ne[1] * t.ne[2] * t.ne[3]) as usize;
    let rows_per_expert = (t.ne[1] as usize).max(1);
    let src_row = t.ty.row_size(t.ne[0]);
    let dst_row = to.row_size(t.ne[0]);
    // chunks of about 16k values, as llama-quantize hands its threads
    let rows_per_chunk = (16384 / n_per_row.max(1)).max(1);
    let starts: Vec<usize> =
        (0..n_rows).step_by(rows_per_expert).flat_map(|e0| (e0..(e0 + rows_per_expert).min(n_rows)).step_by(rows_per_chunk)).collect();
    let chunks: Vec<Result<Vec<u8>>> = starts
        .into_par_iter()
        .map(|r0| {
            let r1 = (r0 + rows_per_chunk).min(n_rows).min((r0 / rows_per_expert + 1) * rows_per_expert);
            let weights = imatrix.map(|m| &m[(r0 / rows_per_expert) * n_per_row..][..n_per_row]);
            let src = &data[r0 * src_row..r1 * src_row];
            let f32s: Vec<f32> = if t.ty == Type::F32 {
                src.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            } else {
                ggml::dequantize(t.ty, src, n_per_row)?
            };
            Ok(ggml::quantize_weighted(to, &f32s, n_per_row, weights)?)
        })
        .collect();
    let mut out = Vec::with_capacity(n_rows * dst_row);
    for c in chunks {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_layers() {
        assert_eq!(parse_ftype("q4_k_m"), Some(15));
        assert_eq!(parse_ftype("Q4_K"), Some(15));
        assert_eq!(parse_ftype("7"), Some(7));
        assert_eq!(parse_ftype("Q9"), None);
        assert_eq!(layer_of("blk.12.attn_q.weight"), 12);
        assert_eq!(layer_of("output.weight"), -1);
        assert_eq!(category("blk.0.ffn_gate_exps.weight"), Category::FfnGate);
        assert_eq!(ftype_name(15), "Q4_K_M");
    }
}
