//! LoRA adapters in llama.cpp's GGUF format: loaded, validated against their base model as
//! hostile input, and held as ggml tensors the graph adds to the products they adapt
//! (`graph::GraphBuilder::mm`, after llama.cpp's `build_lora_mm`).
//!
//! Format (llama.cpp's `src/llama-adapter.cpp`, `convert_lora_to_gguf.py`): `general.type` =
//! `adapter`, `adapter.type` = `lora`, `adapter.lora.alpha` (0 or missing: no alpha scaling),
//! the base's `general.architecture`, and for an adapted weight `W` ([k, m] in ggml order) the
//! pair `W.lora_a` [k, r] and `W.lora_b` [r, m]. At run time `W·x + s·B(A·x)` with
//! `s = scale · alpha / r`, never merged.

use crate::gguf::GgufFile;
use anyhow::Result;
use ggml::{BufferType, Context, Tensor, Type};
use std::collections::HashMap;
use std::path::Path;

/// Ranks above this are refused (llama.cpp's adapters are at most a few hundred).
const MAX_RANK: i64 = 4096;

/// An adapted weight's name with its adapter's A and B tensors in the file.
type Part<'f> = (String, &'f crate::gguf::TensorInfo, &'f crate::gguf::TensorInfo);

/// One loaded adapter.
pub struct LoraAdapter {
    pub path: String,
    /// `adapter.lora.alpha` (0: none).
    pub alpha: f32,
    /// Per adapted weight's GGUF name: (A [k, r], B [r, m]).
    pairs: HashMap<String, (Tensor, Tensor)>,
    /// Bytes of the adapter's tensors.
    pub bytes: usize,
    /// One context and buffer per buffer type the pairs live in (see `load`).
    _held: Vec<(Context, Option<ggml::Buffer>)>,
}

impl LoraAdapter {
    /// Loads the adapter at `path` for `base` (its GGUF file) into CPU memory. Anything that does
    /// not fit the base refuses the whole adapter, naming the file and the tensor.
    pub fn load(path: &Path, base: &GgufFile) -> Result<LoraAdapter> {
        Self::load_with(path, base, &|_| BufferType::cpu())
    }

    /// [`load`](Self::load), each pair in the buffer type `buft_of` gives for the weight it
    /// adapts: beside the weight when the weight's layer is offloaded (as llama.cpp's
    /// `llama_adapter_lora_init` places them), so the scheduler does not copy activations to the
    /// CPU and back for every adapted product.
    pub fn load_with(path: &Path, base: &GgufFile, buft_of: &dyn Fn(&str) -> BufferType) -> Result<LoraAdapter> {
        let f = GgufFile::open(path)?;
        let name = path.display().to_string();
        if f.get_str("general.type")? != Some("adapter") {
            return Err(f.error("general.type", "must be \"adapter\" (this file is not a LoRA adapter)"));
        }
        if f.get_str("adapter.type")? != Some("lora") {
            return Err(f.error("adapter.type", "must be \"lora\""));
        }
        let (arch, base_arch) = (f.get_str("general.architecture")?, base.get_str("general.architecture")?);
        if arch != base_arch {
            return Err(f.error(
                "general.architecture",
                format!("is {:?}, the model's is {:?}", arch.unwrap_or("missing"), base_arch.unwrap_or("missing")),
            ));
        }
        let alpha = f.get_f32("adapter.lora.alpha")?.unwrap_or(0.0);
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(f.error("adapter.lora.alpha", format!("{alpha} is not a finite non-negative number")));
        }
        // pair up the tensors: W.lora_a and W.lora_b for each adapted W
        let mut halves: HashMap<&str, [Option<&crate::gguf::TensorInfo>; 2]> = HashMap::new();
        for t in f.tensors() {
            let (w, half) = if let Some(w) = t.name.strip_suffix(".lora_a") {
                (w, 0)
            } else if let Some(w) = t.name.strip_suffix(".lora_b") {
                (w, 1)
            } else {
                return Err(f.error(&t.name, "is not a LoRA tensor (names end in .lora_a or .lora_b)"));
            };
            halves.entry(w).or_default()[half] = Some(t);
        }
        let mut parts: Vec<Part> = Vec::new();
        for (w, [a, b]) in halves {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(f.error(w, "has only half of its A/B pair"));
            };
            // llama.cpp ignores adapters of norms
            if w.ends_with("_norm.weight") {
                continue;
            }
            let Some(bw) = base.tensor(w) else {
                return Err(f.error(w, "adapts a tensor the model does not have"));
            };
            let misfit = |want: String| {
                f.error(
                    w,
                    format!("shapes do not fit the weight {:?}: lora_a {:?}, lora_b {:?} (want {want})", bw.shape(), a.shape(), b.shape()),
                )
            };
            let r = b.ne[0];
            if w == "token_embd.weight" {
                // llama.cpp's transposed pair, looked up by token: lora_a [r, n_vocab], lora_b [r, n_embd]
                if base.tensor("output.weight").is_none() {
                    return Err(f.error(
                        w,
                        "the model's output head is the token embedding (tied), which an embedding adapter cannot adapt (llama.cpp aborts here)",
                    ));
                }
                if a.n_dims != 2 || b.n_dims != 2 || a.ne[1] != bw.ne[1] || b.ne[1] != bw.ne[0] || a.ne[0] != r {
                    return Err(misfit(format!("[r, {}] and [r, {}]", bw.ne[1], bw.ne[0])));
                }
            } else if bw.n_dims == 3 {
                // experts of a mixture: one pair per expert
                let ok = a.n_dims == 3
                    && b.n_dims == 3
                    && a.ne[0] == bw.ne[0]
                    && b.ne[1] == bw.ne[1]
                    && a.ne[1] == r
                    && a.ne[2] == bw.ne[2]
                    && b.ne[2] == bw.ne[2];
                if !ok {
                    return Err(misfit(format!("[{}, r, {}] and [r, {}, {}]", bw.ne[0], bw.ne[2], bw.ne[1], bw.ne[2])));
                }
            } else if bw.n_dims != 2 || a.n_dims != 2 || b.n_dims != 2 || a.ne[0] != bw.ne[0] || b.ne[1] != bw.ne[1] || a.ne[1] != r {
                return Err(misfit(format!("[{}, r] and [r, {}]", bw.ne[0], bw.ne[1])));
            }
            if !(1..=MAX_RANK).contains(&r) {
                return Err(f.error(w, format!("rank {r} is out of range 1..={MAX_RANK}")));
            }
            for t in [a, b] {
                if !matches!(t.ty, Type::F32 | Type::F16 | Type::BF16 | Type::Q8_0) {
                    return Err(f.error(&t.name, format!("type {:?} is not one adapters use (F32, F16, BF16, Q8_0)", t.ty)));
                }
            }
            parts.push((w.to_string(), a, b));
        }
        if parts.is_empty() {
            crate::bail_input!("{name}: the adapter adapts no weight");
        }
        parts.sort_by(|x, y| x.0.cmp(&y.0));
        // the pairs grouped by buffer type, in name order within each group
        let mut groups: Vec<(BufferType, Vec<&Part>)> = Vec::new();
        for part in &parts {
            let buft = buft_of(&part.0);
            match groups.iter_mut().find(|(b, _)| *b == buft) {
                Some((_, g)) => g.push(part),
                None => groups.push((buft, vec![part])),
            }
        }
        let mut pairs = HashMap::new();
        let mut held = Vec::new();
        let mut bytes = 0;
        for (buft, group) in groups {
            let ctx = Context::new(2 * group.len(), 0)?;
            let mut made = Vec::new();
            for (w, a, b) in group {
                let ta = ctx.new_tensor(a.ty, a.shape());
                ta.set_name(&a.name);
                let tb = ctx.new_tensor(b.ty, b.shape());
                tb.set_name(&b.name);
                made.push((ta.clone(), *a));
                made.push((tb.clone(), *b));
                pairs.insert(w.clone(), (ta, tb));
            }
            let buffer = buft.alloc_ctx_tensors(&ctx)?;
            for (t, info) in made {
                let data = f.tensor_data(info);
                t.write_bytes(data)?;
                bytes += data.len();
            }
            held.push((ctx, buffer));
        }
        Ok(LoraAdapter { path: name, alpha, pairs, bytes, _held: held })
    }

    /// The (A, B) pair adapting the weight named `w`, and its rank.
    pub fn pair(&self, w: &str) -> Option<(&Tensor, &Tensor, i64)> {
        self.pairs.get(w).map(|(a, b)| (a, b, b.ne()[0]))
    }

    /// Number of weights it adapts.
    pub fn n_targets(&self) -> usize {
        self.pairs.len()
    }

    /// llama.cpp's effective scale: `scale · alpha / rank`, or `scale` without an alpha.
    pub fn scale(&self, scale: f32, rank: i64) -> f32 {
        if self.alpha != 0.0 {
            scale * self.alpha / rank as f32
        } else {
            scale
        }
    }
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoraAdapter({}, alpha {}, {} weights)", self.path, self.alpha, self.pairs.len())
    }
}

/// Adapters in use with their user scales (zero scales dropped: exactly no adapter).
pub type Loras = Vec<(std::rc::Rc<LoraAdapter>, f32)>;
