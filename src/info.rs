//! The model report behind `ferrite info`: architecture, hyper-parameters, tokenizer, tensors
//! and a memory plan for a context size, computed without loading the weights.

use crate::decoder::DEFAULT_CTX_CAP;
use crate::gguf::{GgufFile, Value};
use crate::model::{Arch, HParams};
use crate::placement::{Place, Placement};
use anyhow::Result;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// Default micro-batch used to estimate compute buffers.
const N_UBATCH: u64 = 512;

pub struct Report {
    pub path: String,
    pub name: Option<String>,
    pub arch: Arch,
    pub hp: HParams,
    pub file_size: u64,
    pub version: u32,
    pub n_tensors: usize,
    pub n_params: u64,
    pub tensor_types: BTreeMap<String, usize>,
    pub tokenizer_model: Option<String>,
    pub tokenizer_pre: Option<String>,
    pub special: Vec<(&'static str, u32)>,
    pub chat_template: bool,
    /// The model's chat template rendered on a sample conversation: Ok(bytes) or the error
    /// (None: no template, or not checked).
    pub template_check: Option<std::result::Result<usize, String>>,
    pub n_ctx: u32,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
    pub available_bytes: Option<u64>,
    pub extras: Vec<(&'static str, String)>,
    /// LoRA adapters checked against the model: (path, alpha, weights adapted, bytes).
    pub adapters: Vec<(String, f32, usize, u64)>,
    /// The plan per device when layers are offloaded (see `Report::split`); the CPU last.
    pub devices: Vec<DevicePlan>,
}

/// One device's part of the memory plan.
pub struct DevicePlan {
    /// Device name and description (the CPU: "CPU", "").
    pub name: String,
    pub description: String,
    pub blocks: usize,
    pub output: bool,
    pub weights: u64,
    pub kv: u64,
    /// Free memory the device reports (None for the CPU: see `available`).
    pub free: Option<u64>,
}

impl Report {
    pub fn new(file: &GgufFile, arch: Arch, hp: &HParams, n_ctx: Option<u32>) -> Result<Report> {
        let mut tensor_types = BTreeMap::new();
        let mut n_params = 0u64;
        let mut weights_bytes = 0u64;
        for t in file.tensors() {
            *tensor_types.entry(t.ty.name().to_string()).or_insert(0) += 1;
            n_params += t.nelements() as u64;
            weights_bytes += t.nbytes;
        }
        let want = n_ctx.filter(|&c| c > 0).unwrap_or(hp.n_ctx_train.min(DEFAULT_CTX_CAP));
        let n_ctx = want.div_ceil(256) * 256;
        let mut special = Vec::new();
        for (name, key) in [
            ("bos", "tokenizer.ggml.bos_token_id"),
            ("eos", "tokenizer.ggml.eos_token_id"),
            ("eot", "tokenizer.ggml.eot_token_id"),
            ("unk", "tokenizer.ggml.unknown_token_id"),
            ("pad", "tokenizer.ggml.padding_token_id"),
        ] {
            if let Some(id) = file.get_u32(key)? {
                special.push((name, id));
            }
        }
        Ok(Report {
            path: std::fs::canonicalize(file.path()).unwrap_or_else(|_| file.path().to_path_buf()).display().to_string(),
            name: file.get_str("general.name")?.map(str::to_string),
            arch,
            hp: hp.clone(),
            file_size: file.file_size(),
            version: file.version,
            n_tensors: file.tensors().len(),
            n_params,
            tensor_types,
            tokenizer_model: file.get_str("tokenizer.ggml.model")?.map(str::to_string),
            tokenizer_pre: file.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            special,
            chat_template: matches!(file.get("tokenizer.chat_template"), Some(Value::Str(_))),
            template_check: None,
            n_ctx,
            weights_bytes,
            kv_bytes: kv_bytes(hp, n_ctx),
            compute_bytes: compute_estimate(hp, n_ctx),
            available_bytes: available_memory(),
            extras: arch.describe(hp),
            adapters: Vec::new(),
            devices: Vec::new(),
        })
    }

    /// Splits the weights and the KV cache over `devices` ((name, description, free bytes)) as
    /// `placement` puts the layers: each block's tensors and cache with its block, the output
    /// norm and projection with the output layer (a tied projection is a copy of the embedding
    /// there), the input embedding on the CPU.
    pub fn split(&mut self, file: &GgufFile, placement: &Placement, devices: &[(String, String, u64)]) {
        let mut plans: Vec<DevicePlan> = devices
            .iter()
            .map(|(name, description, free)| DevicePlan {
                name: name.clone(),
                description: description.clone(),
                blocks: 0,
                output: false,
                weights: 0,
                kv: 0,
                free: Some(*free),
            })
            .collect();
        plans.push(DevicePlan { name: "CPU".into(), description: String::new(), blocks: 0, output: false, weights: 0, kv: 0, free: None });
        let cpu = plans.len() - 1;
        let at = |p: Place| match p {
            Place::Device(d) => d,
            Place::Cpu => cpu,
        };
        for (il, p) in placement.layers.iter().enumerate() {
            plans[at(*p)].blocks += 1;
            plans[at(*p)].kv += kv_layer_bytes(&self.hp, self.n_ctx, il);
        }
        plans[at(placement.output)].output = true;
        let tied = file.tensor_index("output.weight").is_none();
        for t in file.tensors() {
            plans[at(placement.of_tensor(&t.name, false))].weights += t.nbytes;
            if tied && t.name == "token_embd.weight" && placement.output != Place::Cpu {
                plans[at(placement.output)].weights += t.nbytes;
            }
        }
        self.devices = plans;
    }

    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes + self.adapter_bytes() + self.kv_bytes + self.compute_bytes
    }

    /// Bytes of the adapters' tensors.
    pub fn adapter_bytes(&self) -> u64 {
        self.adapters.iter().map(|a| a.3).sum()
    }

    pub fn fits(&self) -> Option<bool> {
        self.available_bytes.map(|a| self.total_bytes() <= a)
    }

    pub fn to_json(&self) -> Json {
        let hp = &self.hp;
        let mut extras = serde_json::Map::new();
        for (k, v) in &self.extras {
            extras.insert(k.to_string(), json!(v));
        }
        let devices: Vec<Json> = self
            .devices
            .iter()
            .map(|d| {
                json!({
                    "name": d.name,
                    "description": d.description,
                    "blocks": d.blocks,
                    "output": d.output,
                    "weights": d.weights,
                    "kv_cache": d.kv,
                    "free": d.free,
                })
            })
            .collect();
        json!({
            "path": self.path,
            "name": self.name,
            "architecture": self.arch.name(),
            "gguf_version": self.version,
            "file_size": self.file_size,
            "n_params": self.n_params,
            "tensors": self.n_tensors,
            "tensor_types": self.tensor_types,
            "n_layer": hp.n_layer,
            "n_embd": hp.n_embd,
            "n_head": hp.n_head,
            "n_head_kv": hp.n_head_kv,
            "n_embd_head_k": hp.n_embd_head_k,
            "n_embd_head_v": hp.n_embd_head_v,
            "n_ff": hp.n_ff,
            "n_vocab": hp.n_vocab,
            "n_ctx_train": hp.n_ctx_train,
            "n_rot": hp.n_rot,
            "rope_freq_base": hp.rope_freq_base,
            "rope_freq_scale": hp.rope_freq_scale,
            "rms_norm_eps": hp.f_norm_rms_eps,
            "arch_params": extras,
            "tokenizer": {
                "model": self.tokenizer_model,
                "pre": self.tokenizer_pre,
                "special": self.special.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "chat_template": self.chat_template,
                "chat_template_check": match &self.template_check {
                    None => Json::Null,
                    Some(Ok(n)) => json!({"ok": true, "sample_bytes": n}),
                    Some(Err(e)) => json!({"ok": false, "error": e}),
                },
            },
            "adapters": self.adapters.iter().map(|(path, alpha, n, bytes)| json!({ "path": path, "alpha": alpha, "weights": n, "bytes": bytes })).collect::<Vec<_>>(),
            "memory": {
                "n_ctx": self.n_ctx,
                "weights": self.weights_bytes,
                "adapters": self.adapter_bytes(),
                "kv_cache": self.kv_bytes,
                "compute_estimate": self.compute_bytes,
                "total": self.total_bytes(),
                "available": self.available_bytes,
                "fits": self.fits(),
                "devices": devices,
            },
            "build": {
                "version": env!("CARGO_PKG_VERSION"),
                "commit": crate::build_info::GIT_COMMIT,
                "ggml": ggml::version(),
                "llama_cpp_sys": crate::build_info::LLAMA_CPP_SYS,
                "cpu_features": crate::build_info::required_features(),
            },
        })
    }

    pub fn to_text(&self) -> String {
        let hp = &self.hp;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22} {v}\n"));
        line("path", self.path.clone());
        if let Some(n) = &self.name {
            line("name", n.clone());
        }
        line("architecture", self.arch.name().to_string());
        line("file", format!("{} (GGUF v{})", gib(self.file_size), self.version));
        line("parameters", format!("{:.2} M", self.n_params as f64 / 1e6));
        let types: Vec<String> = self.tensor_types.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        line("tensors", format!("{} ({})", self.n_tensors, types.join(", ")));
        line("n_layer", hp.n_layer.to_string());
        line("n_embd", hp.n_embd.to_string());
        line("n_head / n_head_kv", format!("{} / {}", hp.n_head, hp.n_head_kv));
        line("head size (k, v)", format!("{}, {}", hp.n_embd_head_k, hp.n_embd_head_v));
        line("n_ff", hp.n_ff.to_string());
        line("n_vocab", hp.n_vocab.to_string());
        line("n_ctx_train", hp.n_ctx_train.to_string());
        line("rope", format!("{:?}, n_rot {}, base {}, scale {}", hp.rope_type, hp.n_rot, hp.rope_freq_base, hp.rope_freq_scale));
        line("rms_norm_eps", format!("{:e}", hp.f_norm_rms_eps));
        for (k, v) in &self.extras {
            line(k, v.clone());
        }
        let tok =
            format!("{} (pre: {})", self.tokenizer_model.as_deref().unwrap_or("none"), self.tokenizer_pre.as_deref().unwrap_or("default"));
        line("tokenizer", tok);
        let sp: Vec<String> = self.special.iter().map(|(k, v)| format!("{k} {v}")).collect();
        line("special tokens", sp.join(", "));
        let template = match (&self.template_check, self.chat_template) {
            (Some(Ok(n)), _) => format!("present, renders a sample conversation ({n} bytes)"),
            (Some(Err(e)), _) => format!("present, FAILS on a sample conversation: {e}"),
            (None, true) => "present".into(),
            (None, false) => "none (base model)".into(),
        };
        line("chat template", template);
        for (path, alpha, n, bytes) in &self.adapters {
            line("LoRA adapter", format!("{path}: {n} weights, alpha {alpha}, {}", gib(*bytes)));
        }
        line("memory at n_ctx", self.n_ctx.to_string());
        line("  weights", gib(self.weights_bytes));
        if !self.adapters.is_empty() {
            line("  LoRA adapters", gib(self.adapter_bytes()));
        }
        line("  KV cache (f16)", gib(self.kv_bytes));
        line("  compute (estimate)", gib(self.compute_bytes));
        let verdict = match (self.available_bytes, self.fits()) {
            (Some(a), Some(true)) => format!("{} — fits (available {})", gib(self.total_bytes()), gib(a)),
            (Some(a), _) => format!("{} — needs {}, has {}", gib(self.total_bytes()), gib(self.total_bytes()), gib(a)),
            (None, _) => format!("{} (available memory unknown)", gib(self.total_bytes())),
        };
        line("  total", verdict);
        if !self.devices.is_empty() {
            line("per device", "(compute buffers not included)".into());
            for d in &self.devices {
                let name = if d.description.is_empty() { d.name.clone() } else { format!("{} ({})", d.name, d.description) };
                let out = if d.output { " + output" } else { "" };
                let free = d.free.map(|f| format!(", free {}", gib(f))).unwrap_or_default();
                line(&format!("  {name}"), format!("{} blocks{out}: weights {}, KV cache {}{free}", d.blocks, gib(d.weights), gib(d.kv)));
            }
        }
        let b = crate::build_info::GIT_COMMIT;
        line("ferrite build", format!("{} (commit {b}), ggml {}", env!("CARGO_PKG_VERSION"), ggml::version()));
        line("  built for", crate::build_info::required_features().join(" "));
        s
    }
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// KV cache bytes at `n_ctx` with an f16 cache; sliding-window layers keep only their window
/// plus a micro-batch (as `KvCache::new` sizes them).
pub fn kv_bytes(hp: &HParams, n_ctx: u32) -> u64 {
    (0..hp.n_layer as usize).map(|il| kv_layer_bytes(hp, n_ctx, il)).sum()
}

/// Block `il`'s part of [`kv_bytes`].
fn kv_layer_bytes(hp: &HParams, n_ctx: u32, il: usize) -> u64 {
    let swa = (n_ctx.min(hp.n_swa + N_UBATCH as u32)).div_ceil(256) * 256;
    let cells = if hp.is_swa(il) { swa } else { n_ctx } as u64;
    cells * 2 * (hp.n_embd_k_gqa() + hp.n_embd_v_gqa()) as u64
}

/// Compute buffer estimate for a 512-token micro-batch: activations of the widest layer, the
/// attention scores of one layer, and the logits of one output row.
pub fn compute_estimate(hp: &HParams, n_ctx: u32) -> u64 {
    let t = N_UBATCH.min(n_ctx as u64);
    let widest = (hp.n_embd as u64 * 4).max(hp.n_ff as u64 * 3).max((hp.n_head * hp.n_embd_head_k) as u64 * 3);
    let scores = hp.n_head as u64 * n_ctx as u64 * t;
    4 * (widest * t + scores + hp.n_vocab as u64)
}

/// MemAvailable from /proc/meminfo (None where unknown).
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Renders the model's own chat template once on a sample conversation (system, user, assistant,
/// user, generation prompt), as `run` and `chat` would: Ok(bytes rendered) or the one-line error.
/// None when the model has no template.
pub fn check_chat_template(file: &GgufFile, tok: &crate::tokenizer::Tokenizer) -> Result<Option<std::result::Result<usize, String>>> {
    use crate::chat::{ChatTemplate, Message};
    let Some(src) = file.get_str("tokenizer.chat_template")? else { return Ok(None) };
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let sample = [
        Message::system("You are a helpful assistant."),
        Message::user("Hello! What can you do?"),
        Message::assistant("I can answer questions."),
        Message::user("What is the capital of France?"),
    ];
    let rendered = ChatTemplate::from_gguf_str(src).and_then(|t| t.render(&sample, true, &text(tok.bos()), &text(tok.eos())));
    Ok(Some(rendered.map(|s| s.len()).map_err(|e| crate::error::one_line(&e))))
}
