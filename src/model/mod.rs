//! The architectures ferrite runs (one enum, one dispatch `match`), their hyper-parameters and
//! weights, and loading a model from a GGUF file.

pub mod export_lora;
pub mod hparams;
pub mod loader;
pub mod lora;
pub mod weights;

pub use hparams::{HParams, RopeScaling};
pub use loader::{LoadOptions, Offload, TensorLoader, WeightMemory};
pub use weights::{LayerWeights, Weights};

use crate::arch;
use crate::bail_input;
use crate::gguf::GgufFile;
use anyhow::Result;

/// A supported architecture (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Phi3,
    Gemma2,
    Gemma3,
}

impl Arch {
    pub const ALL: &'static [Arch] = &[Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Qwen3Moe, Arch::Phi3, Arch::Gemma2, Arch::Gemma3];

    /// The GGUF name, also the prefix of the architecture's metadata keys.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Phi3 => "phi3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }

    pub fn from_gguf(f: &GgufFile) -> Result<Arch> {
        let name = f.architecture()?;
        match Arch::ALL.iter().find(|a| a.name() == name) {
            Some(&a) => Ok(a),
            None => {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                bail_input!("{}: general.architecture: '{name}' is not supported (supported: {})", f.path().display(), names.join(", "))
            }
        }
    }

    /// Reads the hyper-parameters: the common ones, then the architecture's own.
    pub fn load_hparams(self, f: &GgufFile) -> Result<HParams> {
        let mut hp = HParams::load_common(f, self)?;
        match self {
            Arch::Llama => arch::llama::load_hparams(f, &mut hp)?,
            Arch::Qwen2 => arch::qwen2::load_hparams(f, &mut hp)?,
            Arch::Qwen3 | Arch::Qwen3Moe => arch::qwen3::load_hparams(f, &mut hp)?,
            Arch::Phi3 => arch::phi3::load_hparams(f, &mut hp)?,
            Arch::Gemma2 => arch::gemma2::load_hparams(f, &mut hp)?,
            Arch::Gemma3 => arch::gemma3::load_hparams(f, &mut hp)?,
        }
        Ok(hp)
    }

    /// Declares the architecture's tensors (names, shapes, uses) to the loader.
    pub fn load_tensors(self, hp: &HParams, ld: &mut TensorLoader) -> Result<Weights> {
        match self {
            Arch::Llama => arch::llama::load_tensors(hp, ld),
            Arch::Qwen2 => arch::qwen2::load_tensors(hp, ld),
            Arch::Qwen3 | Arch::Qwen3Moe => arch::qwen3::load_tensors(hp, ld),
            Arch::Phi3 => arch::phi3::load_tensors(hp, ld),
            Arch::Gemma2 => arch::gemma2::load_tensors(hp, ld),
            Arch::Gemma3 => arch::gemma3::load_tensors(hp, ld),
        }
    }

    /// Builds the forward graph for one micro-batch; returns the logits tensor.
    pub fn build_graph(self, g: &mut crate::graph::GraphBuilder) -> ggml::Tensor {
        match self {
            Arch::Llama => arch::llama::build_graph(g),
            Arch::Qwen2 => arch::qwen2::build_graph(g),
            Arch::Qwen3 | Arch::Qwen3Moe => arch::qwen3::build_graph(g),
            Arch::Phi3 => arch::phi3::build_graph(g),
            Arch::Gemma2 => arch::gemma2::build_graph(g),
            Arch::Gemma3 => arch::gemma3::build_graph(g),
        }
    }

    /// Architecture-specific hyper-parameters worth showing (`ferrite info`).
    pub fn describe(self, hp: &HParams) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if hp.has_swa() {
            v.push(("sliding_window", hp.n_swa.to_string()));
            let n = hp.swa_layers.iter().filter(|&&s| s).count();
            v.push(("swa_layers", format!("{n} of {}", hp.n_layer)));
            v.push(("rope_freq_base_swa", hp.rope_freq_base_swa.to_string()));
        }
        if hp.f_attn_logit_softcapping > 0.0 {
            v.push(("attn_logit_softcapping", hp.f_attn_logit_softcapping.to_string()));
        }
        if hp.f_final_logit_softcapping > 0.0 {
            v.push(("final_logit_softcapping", hp.f_final_logit_softcapping.to_string()));
        }
        if hp.n_expert > 0 {
            v.push(("n_expert", hp.n_expert.to_string()));
            v.push(("n_expert_used", hp.n_expert_used.to_string()));
            if hp.n_ff_exp > 0 {
                v.push(("n_ff_exp", hp.n_ff_exp.to_string()));
            }
        }
        v
    }
}

/// A loaded model: the mapped file, hyper-parameters and weights bound to ggml tensors.
pub struct Model {
    pub file: GgufFile,
    pub arch: Arch,
    pub hparams: HParams,
    pub weights: Weights,
    /// (buffer type, bytes, tensor count) per weight buffer.
    pub buffers: Vec<(String, usize, usize)>,
    /// The offload devices and which layers they hold (see `LoadOptions::offload`).
    pub offload: Offload,
    pub placement: crate::placement::Placement,
    _loaded: loader::LoadedWeights,
}

impl Model {
    /// Opens, validates and loads a model. `progress(done, total)` reports bytes copied.
    pub fn load(path: &std::path::Path, opts: LoadOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<Model> {
        Ok(Model::load_alongside(path, opts, progress, |_| ())?.0)
    }

    /// [`Model::load`], running `side` on the validated file in another thread while the weights
    /// load (the tokenizer's construction, so that it adds nothing to the time to first token).
    pub fn load_alongside<T: Send>(
        path: &std::path::Path,
        opts: LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
        side: impl FnOnce(&GgufFile) -> T + Send,
    ) -> Result<(Model, T)> {
        let file = GgufFile::open(path)?;
        let arch = Arch::from_gguf(&file)?;
        let hparams = arch.load_hparams(&file)?;
        check_vocab(&file, &hparams)?;
        let offload = opts.offload.clone();
        let (loaded, side_out) = std::thread::scope(|s| {
            let side = s.spawn(|| side(&file));
            let weights = (|| {
                let mut ld = TensorLoader::new(&file, &hparams, opts, false)?;
                let weights = arch.load_tensors(&hparams, &mut ld)?;
                let placement = ld.placement().clone();
                Ok::<_, anyhow::Error>((weights, placement, ld.finish(progress)?))
            })();
            (weights, side.join())
        });
        let (weights, placement, loaded) = loaded?;
        let side_out = side_out.map_err(|_| anyhow::anyhow!("internal error: a loading thread panicked"))?;
        let buffers = loaded.buffers.clone();
        Ok((Model { file, arch, hparams, weights, buffers, offload, placement, _loaded: loaded }, side_out))
    }

    /// Validates a file as `load` would, without allocating the weights (for `ferrite info`).
    pub fn check(file: &GgufFile) -> Result<(Arch, HParams)> {
        let arch = Arch::from_gguf(file)?;
        let hparams = arch.load_hparams(file)?;
        check_vocab(file, &hparams)?;
        let mut ld = TensorLoader::new(file, &hparams, LoadOptions::default(), true)?;
        arch.load_tensors(&hparams, &mut ld)?;
        ld.finish(&mut |_, _| {})?;
        Ok((arch, hparams))
    }

    /// The plain buffer type of a place: its offload device's, else the CPU's (never a repacked
    /// CPU layout).
    fn place_buffer_type(&self, place: crate::placement::Place) -> ggml::BufferType {
        match place {
            crate::placement::Place::Device(d) => self.offload.devices[d].buffer_type(),
            crate::placement::Place::Cpu => ggml::BufferType::cpu(),
        }
    }

    /// The buffer type of block `il`'s KV cache: its offload device's, else the CPU's.
    pub fn layer_buffer_type(&self, il: usize) -> ggml::BufferType {
        self.place_buffer_type(self.placement.layers.get(il).copied().unwrap_or(crate::placement::Place::Cpu))
    }

    /// The buffer type of the weight named `name`'s device: where tensors that work beside it
    /// belong (LoRA pairs).
    pub fn weight_buffer_type(&self, name: &str) -> ggml::BufferType {
        self.place_buffer_type(self.placement.of_tensor(name, false))
    }

    /// Where the layers went, for the user (None without offload devices): which blocks each
    /// device holds, the output layer's device, and what stayed on the CPU.
    pub fn offload_summary(&self) -> Option<String> {
        use crate::placement::Place;
        if self.offload.devices.is_empty() {
            return None;
        }
        let n_layer = self.placement.layers.len();
        let ranges = |p: Place| -> Vec<String> {
            let mut out = Vec::new();
            let mut il = 0;
            while il < n_layer {
                if self.placement.layers[il] != p {
                    il += 1;
                    continue;
                }
                let start = il;
                while il < n_layer && self.placement.layers[il] == p {
                    il += 1;
                }
                out.push(if il - start == 1 { format!("{start}") } else { format!("{start}-{}", il - 1) });
            }
            out
        };
        let n_off = self.placement.layers.iter().filter(|p| **p != Place::Cpu).count() + usize::from(self.placement.output != Place::Cpu);
        let mut parts = Vec::new();
        for (d, dev) in self.offload.devices.iter().enumerate() {
            let r = ranges(Place::Device(d));
            let out = if self.placement.output == Place::Device(d) { " + output" } else { "" };
            if !r.is_empty() {
                parts.push(format!("{} ({}) blocks {}{out}", dev.name(), dev.description(), r.join(",")));
            } else if !out.is_empty() {
                parts.push(format!("{} ({}) output", dev.name(), dev.description()));
            }
        }
        let cpu = ranges(Place::Cpu);
        let out = if self.placement.output == Place::Cpu { " + output" } else { "" };
        parts.push(format!(
            "CPU {}{out}",
            if cpu.is_empty() { "the input embedding".to_string() } else { format!("blocks {}", cpu.join(",")) }
        ));
        Some(format!("offloaded {n_off}/{} layers: {}", n_layer + 1, parts.join("; ")))
    }

    /// The offload devices that hold a layer or the output.
    pub fn used_devices(&self) -> Vec<ggml::Device> {
        use crate::placement::Place;
        let used = |d: usize| self.placement.output == Place::Device(d) || self.placement.layers.contains(&Place::Device(d));
        (0..self.offload.devices.len()).filter(|&d| used(d)).map(|d| self.offload.devices[d]).collect()
    }

    pub fn n_tensors(&self) -> usize {
        self.file.tensors().len()
    }
}

/// The tokenizer metadata must be valid and match the model's vocabulary size.
fn check_vocab(file: &GgufFile, hp: &HParams) -> Result<()> {
    let n = crate::gguf::vocab::VocabMeta::check(file)?;
    if n != hp.n_vocab as usize {
        return Err(file.error("tokenizer.ggml.tokens", format!("has {n} tokens but the model's vocabulary has {}", hp.n_vocab)));
    }
    Ok(())
}
