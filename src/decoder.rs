//! Runs a model over token batches: splits them into micro-batches, places them in the KV cache,
//! builds and computes each graph on the backend scheduler, and returns the requested logits.
//! (llama.cpp's `llama_context::decode`.)

use crate::graph::{BuiltGraph, CParams, GraphBuilder, Input, UBatch};
use crate::kv_cache::{hadamard, KvCache};
use crate::model::Model;
use anyhow::{bail, Context as _, Result};
use ggml::{Backend, Device, Sched, Type};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

/// Flash attention setting (`--flash-attn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttn {
    On,
    Off,
    /// llama.cpp's default: on where the backend supports it (always on the CPU).
    Auto,
}

/// Settings of a decoding context.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Context size in tokens (0: the model's training context, capped at 4096).
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_threads: usize,
    pub flash_attn: FlashAttn,
    pub type_k: Type,
    pub type_v: Type,
    /// ferrite's tiled matrix kernel where it applies (`ggml::Context::mul_mat_w`: same values,
    /// faster); false: ggml's mul_mat for every product.
    pub own_kernels: bool,
    /// A sliding-window cache as large as the context (llama.cpp's `--swa-full`): sliding-window
    /// layers then never reuse cells. Off by default, as in llama.cpp's tools (`common_params`);
    /// llama.cpp's library default (`llama_context_default_params`) is on.
    pub swa_full: bool,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            n_ctx: 0,
            n_batch: 2048,
            n_ubatch: 512,
            n_threads: default_threads(),
            flash_attn: FlashAttn::Auto,
            type_k: Type::F16,
            type_v: Type::F16,
            own_kernels: true,
            swa_full: false,
        }
    }
}

/// llama.cpp's default thread count (`cpu_get_num_math` → `cpu_get_num_physical_cores`): one
/// thread per physical core, since two threads on the siblings of one core share its vector
/// units and slow each other down; never more than the CPUs this process may use, at most 32.
pub fn default_threads() -> usize {
    let avail = available_cpus();
    physical_cores().unwrap_or(if avail > 4 { avail / 2 } else { avail }).clamp(1, avail).min(32)
}

/// The logical CPUs this process may run on (its affinity mask and cgroup quota included).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4)
}

/// Physical cores on Linux: the distinct sets of hyper-thread siblings in sysfs (as llama.cpp's
/// `cpu_get_num_physical_cores` counts them); None where sysfs does not say.
fn physical_cores() -> Option<usize> {
    let mut sets = std::collections::HashSet::new();
    for cpu in 0.. {
        let p = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings");
        match std::fs::read_to_string(p) {
            Ok(s) => sets.insert(s.trim().to_string()),
            Err(_) => break,
        };
    }
    (!sets.is_empty()).then_some(sets.len())
}

/// Resolves `-t N`: the default when absent; a request above the CPUs this process may use is
/// capped to them, with the warning to print (more threads than CPUs only time-slice, and
/// ggml's threads spin-wait on each other, so the run gets much slower, not faster).
pub fn resolve_threads(requested: Option<usize>) -> (usize, Option<String>) {
    let avail = available_cpus();
    match requested {
        None => (default_threads(), None),
        Some(n) if n > avail => (avail, Some(format!("--threads {n} is more than the {avail} CPUs available; using {avail}"))),
        Some(n) => (n, None),
    }
}

/// The default context: the model's training context, capped at 4096 tokens.
pub const DEFAULT_CTX_CAP: u32 = 4096;

/// The largest context ferrite accepts (16 Mi tokens; beyond any model's training context). It
/// keeps the padded size and the KV cache arithmetic far from overflow.
pub const MAX_CTX: u32 = 1 << 24;

/// Checks a requested context size (`--ctx-size`; 0 means the model's default).
pub fn check_ctx_size(n_ctx: u32) -> Result<()> {
    if n_ctx > MAX_CTX {
        crate::bail_input!("--ctx-size: {n_ctx} is out of range 0..={MAX_CTX} (0: the model's default)");
    }
    Ok(())
}

/// What determines a graph's topology: a graph built for one micro-batch is reused for the
/// next one with the same key (only the inputs change), as llama.cpp does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    n_tokens: u32,
    n_outputs: u32,
    n_kv_full: u32,
    n_kv_swa: u32,
}

/// A model plus its KV cache and compute state.
pub struct Decoder {
    pub model: Rc<Model>,
    pub cparams: CParams,
    pub kv: KvCache,
    backend: Backend,
    sched: Sched,
    /// The last graph, kept for reuse.
    last: Option<(GraphKey, BuiltGraph)>,
    /// Graph builds and reuses so far (for tests and `--verbose`).
    pub n_graph_builds: u64,
    pub n_graph_reuses: u64,
    /// Stops a running computation when set (Ctrl-C).
    pub interrupt: Option<&'static AtomicBool>,
}

impl Decoder {
    pub fn new(model: Rc<Model>, opts: &ContextOptions) -> Result<Decoder> {
        let hp = &model.hparams;
        check_ctx_size(opts.n_ctx)?;
        let want = if opts.n_ctx == 0 { hp.n_ctx_train.min(DEFAULT_CTX_CAP) } else { opts.n_ctx };
        // llama.cpp pads the context to a multiple of 256 cells.
        let n_ctx = want.div_ceil(256) * 256;
        let n_batch = opts.n_batch.clamp(1, n_ctx);
        let n_ubatch = opts.n_ubatch.clamp(1, n_batch);
        let quantized_v = opts.type_v.is_quantized();
        let flash = match opts.flash_attn {
            FlashAttn::On => true,
            FlashAttn::Auto => true,
            FlashAttn::Off if quantized_v => {
                crate::bail_input!("a quantized V cache ({}) needs flash attention; drop --flash-attn off", opts.type_v)
            }
            FlashAttn::Off => false,
        };
        for t in [opts.type_k, opts.type_v] {
            if !matches!(t, Type::F16 | Type::F32 | Type::BF16 | Type::Q8_0 | Type::Q4_0 | Type::Q4_1 | Type::Q5_0 | Type::Q5_1) {
                crate::bail_input!("cache type {t} is not supported (use f16, q8_0 or q4_0)");
            }
            if t.is_quantized() && (hp.n_embd_head_k as i64 % t.block_size() != 0 || hp.n_embd_head_v as i64 % t.block_size() != 0) {
                crate::bail_input!("cache type {t} needs head sizes that are multiples of {}", t.block_size());
            }
        }
        let cparams = CParams { own_kernels: opts.own_kernels, ..CParams::new(hp, n_ctx, n_batch, n_ubatch, flash) };
        let kv = KvCache::new(hp, n_ctx, n_ubatch, opts.swa_full, opts.type_k, opts.type_v, !flash).context("allocating the KV cache")?;
        let backend = Device::cpu()?.init_backend()?;
        backend.set_n_threads(opts.n_threads);
        let sched = Sched::new(std::slice::from_ref(&backend), crate::graph::graph_size(model.n_tensors()), false)?;
        Ok(Decoder { model, cparams, kv, backend, sched, last: None, n_graph_builds: 0, n_graph_reuses: 0, interrupt: None })
    }

    pub fn n_ctx(&self) -> u32 {
        self.cparams.n_ctx
    }

    pub fn n_vocab(&self) -> usize {
        self.model.hparams.n_vocab as usize
    }

    pub fn set_threads(&self, n: usize) {
        self.backend.set_n_threads(n);
    }

    /// Makes computations stop early when `flag` is set.
    pub fn set_interrupt(&mut self, flag: &'static AtomicBool) {
        self.backend.set_abort_flag(flag);
        self.interrupt = Some(flag);
    }

    /// Names and ops of the last graph's nodes (for tests and debugging).
    pub fn last_graph_nodes(&self) -> Vec<(String, String)> {
        self.last.as_ref().map(|(_, b)| b.graph.node_names()).unwrap_or_default()
    }

    /// Compute buffer bytes held by the scheduler.
    pub fn compute_bytes(&self) -> usize {
        self.sched.buffer_size(&self.backend)
    }

    /// Runs `tokens` at positions `pos0..`; appends the logits of the tokens whose indices are in
    /// `outputs` (ascending) to `logits`, n_vocab values each.
    pub fn decode(&mut self, tokens: &[u32], pos0: i32, outputs: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let n_vocab = self.model.hparams.n_vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= n_vocab) {
            crate::bail_input!("token id {bad} is outside the vocabulary ({n_vocab} tokens)");
        }
        let end = pos0 as i64 + tokens.len() as i64;
        if pos0 < 0 || end > self.cparams.n_ctx as i64 {
            bail!("positions {pos0}..{end} exceed the context of {} tokens", self.cparams.n_ctx);
        }
        let n_ubatch = self.cparams.n_ubatch as usize;
        for (c, chunk) in tokens.chunks(n_ubatch).enumerate() {
            let start = c * n_ubatch;
            let positions: Vec<i32> = (0..chunk.len()).map(|i| pos0 + (start + i) as i32).collect();
            let outs: Vec<u32> = outputs
                .iter()
                .filter(|&&o| (o as usize) >= start && (o as usize) < start + chunk.len())
                .map(|&o| o - start as u32)
                .collect();
            if let Err(e) = self.decode_ubatch(chunk, &positions, &outs, logits) {
                // forget this micro-batch's positions, as llama.cpp does on failure
                self.kv.truncate(positions[0]);
                return Err(e);
            }
        }
        Ok(())
    }

    fn decode_ubatch(&mut self, tokens: &[u32], positions: &[i32], outputs: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        self.kv.prepare(positions)?;
        let key = GraphKey {
            n_tokens: tokens.len() as u32,
            n_outputs: outputs.len() as u32,
            n_kv_full: self.kv.slot_full.n_kv,
            n_kv_swa: self.kv.slot_swa.n_kv,
        };
        let reuse = matches!(&self.last, Some((k, g)) if *k == key && self.sched.holds(&g.graph));
        if reuse {
            self.n_graph_reuses += 1;
        } else {
            self.last = None;
            let model = self.model.clone();
            let ub = UBatch { tokens, positions, outputs };
            let built = {
                let mut g = GraphBuilder::new(&model.hparams, &model.weights, &self.cparams, &self.kv, &ub, model.n_tensors())?;
                let logits = model.arch.build_graph(&mut g);
                g.finish(logits)
            };
            self.sched.alloc(&built.graph)?;
            self.n_graph_builds += 1;
            self.last = Some((key, built));
        }
        let (_, built) = self.last.as_ref().expect("set above");
        for (t, what) in &built.inputs {
            set_input(
                &self.sched,
                built,
                t,
                *what,
                &self.kv,
                tokens,
                positions,
                outputs,
                self.model.hparams.n_embd_v_gqa(),
                self.cparams.flash_attn,
            )?;
        }
        if let Err(e) = self.sched.compute(&built.graph) {
            if self.interrupt.is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed)) {
                return Err(anyhow::Error::new(crate::error::Interrupted));
            }
            return Err(e.into());
        }
        if !outputs.is_empty() {
            let n = outputs.len() * self.n_vocab();
            self.sched.read_append(&built.graph, &built.logits, n, logits)?;
        }
        Ok(())
    }
}

/// Computes and copies the values of one graph input for the current micro-batch.
#[allow(clippy::too_many_arguments)]
fn set_input(
    sched: &Sched,
    built: &BuiltGraph,
    t: &ggml::Tensor,
    what: Input,
    kv: &KvCache,
    tokens: &[u32],
    positions: &[i32],
    outputs: &[u32],
    n_embd_v_gqa: u32,
    flash_attn: bool,
) -> Result<()> {
    let g = &built.graph;
    match what {
        Input::Tokens => sched.set_input(g, t, &tokens.iter().map(|&x| x as i32).collect::<Vec<_>>())?,
        Input::ScaleRows(s) => sched.set_input(g, t, &vec![s; tokens.len()])?,
        Input::Pos => sched.set_input(g, t, positions)?,
        Input::OutIds => sched.set_input(g, t, &outputs.iter().map(|&x| x as i32).collect::<Vec<_>>())?,
        Input::KIdxs(kind) => sched.set_input(g, t, &kv.k_idxs(kind))?,
        Input::VIdxs(kind) => sched.set_input(g, t, &kv.v_idxs(kind, n_embd_v_gqa))?,
        Input::Mask(kind) => {
            let mask = kv.mask(kind, positions);
            if flash_attn {
                let mut h = vec![0u16; mask.len()];
                ggml::fp32_to_fp16_row(&mask, &mut h);
                sched.set_input(g, t, &h)?
            } else {
                sched.set_input(g, t, &mask)?
            }
        }
        Input::Rotation(n) => sched.set_input(g, t, &hadamard(n as usize))?,
    }
    Ok(())
}
