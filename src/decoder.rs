//! Runs a model over token batches: splits them into micro-batches, places them in the KV cache,
//! builds and computes each graph on the backend scheduler, and returns the requested logits.
//! (llama.cpp's `llama_context::decode`.)

use crate::graph::{BuiltGraph, CParams, GraphBuilder, Group, Input, UBatch};
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
    /// ferrite's tiled matrix kernel and flash attention where they apply
    /// (`ggml::Context::mul_mat_w`, `flash_attn_w`: same values, faster); false: ggml's mul_mat
    /// and flash_attn_ext everywhere.
    pub own_kernels: bool,
    /// A sliding-window cache as large as the context (llama.cpp's `--swa-full`): sliding-window
    /// layers then never reuse cells. Off by default, as in llama.cpp's tools (`common_params`);
    /// llama.cpp's library default (`llama_context_default_params`) is on.
    pub swa_full: bool,
    /// Sequences decoded together (`-np`); each has its own stream of `n_ctx` cells.
    pub n_seq: u32,
    /// LoRA adapters (files) and their scales (see `model::lora`), loaded with the context.
    pub loras: Vec<(std::path::PathBuf, f32)>,
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
            n_seq: 1,
            loras: Vec::new(),
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

/// The most sequences one context decodes together.
pub const MAX_SEQ: u32 = 256;

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
#[derive(Clone, Debug, PartialEq, Eq)]
struct GraphKey {
    n_tokens: u32,
    n_outputs: u32,
    /// Per group: the group and the cells its attention visits (full, sliding-window).
    groups: Vec<(Group, u32, u32)>,
}

/// Tokens to decode, each with its position, sequence and whether its logits are wanted
/// (llama.cpp's `llama_batch`).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub pos: Vec<i32>,
    pub seq: Vec<u32>,
    pub output: Vec<bool>,
}

impl Batch {
    pub fn add(&mut self, token: u32, pos: i32, seq: u32, output: bool) {
        self.tokens.push(token);
        self.pos.push(pos);
        self.seq.push(seq);
        self.output.push(output);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn clear(&mut self) {
        *self = Batch::default();
    }

    /// Number of tokens whose logits are wanted.
    pub fn n_outputs(&self) -> usize {
        self.output.iter().filter(|&&o| o).count()
    }
}

/// A run of one sequence's consecutive tokens in a batch: batch indices `start..end`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    seq: u32,
    start: usize,
    end: usize,
}

/// A model plus its KV cache and compute state.
pub struct Decoder {
    pub model: Rc<Model>,
    pub cparams: CParams,
    pub kv: KvCache,
    backend: Backend,
    /// Every backend of the scheduler: the offload devices', then `backend`.
    backends: Vec<Backend>,
    sched: Sched,
    /// The last graph, kept for reuse.
    last: Option<(GraphKey, BuiltGraph)>,
    /// Graph builds and reuses so far (for tests and `--verbose`).
    pub n_graph_builds: u64,
    pub n_graph_reuses: u64,
    /// Stops a running computation when set (Ctrl-C).
    pub interrupt: Option<&'static AtomicBool>,
    /// Every LoRA adapter loaded and its scale now (those of scale 0 are left out of
    /// `cparams.loras`, which the graphs use).
    adapters: crate::model::lora::Loras,
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
        let adapters = load_loras(&model, &opts.loras)?;
        let cparams = CParams {
            own_kernels: opts.own_kernels,
            n_threads: opts.n_threads,
            loras: active(&adapters),
            ..CParams::new(hp, n_ctx, n_batch, n_ubatch, flash)
        };
        if opts.n_seq == 0 || opts.n_seq > MAX_SEQ {
            crate::bail_input!("--parallel: {} is out of range 1..={MAX_SEQ}", opts.n_seq);
        }
        let bufts: Vec<_> = (0..hp.n_layer as usize).map(|il| model.layer_buffer_type(il)).collect();
        let kv = KvCache::new(hp, n_ctx, n_ubatch, opts.swa_full, opts.type_k, opts.type_v, !flash, opts.n_seq, &bufts)
            .context("allocating the KV cache")?;
        let backend = Device::cpu()?.init_backend()?;
        backend.set_n_threads(opts.n_threads);
        // the offload devices first, in order, then the CPU: the scheduler runs each node where
        // its weights (or the cache it writes) are, and copies activations between them
        let mut backends = model.used_devices().iter().map(|d| d.init_backend()).collect::<ggml::Result<Vec<_>>>()?;
        backends.push(backend.clone());
        let sched = Sched::new(
            &backends,
            crate::graph::graph_size(model.n_tensors() + lora_tensors(&adapters), opts.n_seq as usize, hp.n_layer as usize),
            false,
        )?;
        Ok(Decoder {
            model,
            cparams,
            kv,
            backend,
            backends,
            sched,
            last: None,
            n_graph_builds: 0,
            n_graph_reuses: 0,
            interrupt: None,
            adapters,
        })
    }

    /// The LoRA adapters loaded, with their scales now.
    pub fn adapters(&self) -> &crate::model::lora::Loras {
        &self.adapters
    }

    /// The adapters' scales now, one per adapter loaded.
    pub fn lora_scales(&self) -> Vec<f32> {
        self.adapters.iter().map(|(_, s)| *s).collect()
    }

    /// Sets the adapters' scales (one per adapter loaded; 0 leaves one out) from the next
    /// micro-batch; graphs are rebuilt when they change.
    pub fn set_lora_scales(&mut self, scales: &[f32]) {
        assert_eq!(scales.len(), self.adapters.len(), "one scale per adapter");
        if scales.iter().zip(&self.adapters).any(|(s, (_, now))| s.to_bits() != now.to_bits()) {
            for ((_, now), s) in self.adapters.iter_mut().zip(scales) {
                *now = *s;
            }
            self.cparams.loras = active(&self.adapters);
            self.last = None;
        }
    }

    pub fn n_ctx(&self) -> u32 {
        self.cparams.n_ctx
    }

    pub fn n_vocab(&self) -> usize {
        self.model.hparams.n_vocab as usize
    }

    /// Computes with `n` threads from the next micro-batch (graphs are rebuilt: attention's
    /// chunks follow the thread count).
    pub fn set_threads(&mut self, n: usize) {
        self.backend.set_n_threads(n);
        if self.cparams.n_threads != n {
            self.cparams.n_threads = n;
            self.last = None;
        }
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

    /// Calls `f` with every node as it is computed (None: stop); for debugging and node-by-node
    /// comparisons.
    pub fn set_eval_callback(&mut self, f: Option<ggml::EvalFn>) {
        self.sched.set_eval_callback(f);
    }

    /// Hands the products of weights to `m` as they are computed (None: stop); `imatrix` reads
    /// their activations through it. ferrite's own matrix kernel is a custom node the observer
    /// does not see: a context that observes is made with `own_kernels` off.
    pub fn set_matmul_observer(&mut self, m: Option<ggml::MatMulObserver>) {
        self.sched.set_matmul_observer(m);
    }

    /// Compute buffer bytes held by the scheduler, on every device.
    pub fn compute_bytes(&self) -> usize {
        self.backends.iter().map(|b| self.sched.buffer_size(b)).sum()
    }

    /// How the last graph's nodes are spread over the devices: (backend, nodes) — for `-v`.
    pub fn node_placement(&self) -> Vec<(String, usize)> {
        self.last.as_ref().map(|(_, b)| self.sched.node_placement(&b.graph)).unwrap_or_default()
    }

    /// Runs `tokens` of sequence 0 at positions `pos0..`; appends the logits of the tokens whose
    /// indices are in `outputs` (ascending) to `logits`, n_vocab values each.
    pub fn decode(&mut self, tokens: &[u32], pos0: i32, outputs: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut outs = outputs.iter().peekable();
        for (i, &t) in tokens.iter().enumerate() {
            let out = outs.next_if(|&&o| o as usize == i).is_some();
            batch.add(t, pos0 + i as i32, 0, out);
        }
        self.decode_batch(&batch, logits)
    }

    /// Runs a batch of tokens of one or more sequences; appends the logits of the tokens marked
    /// as outputs to `logits` in batch order, n_vocab values each.
    ///
    /// Each sequence's run of consecutive tokens is cut into micro-batches of `n_ubatch` exactly
    /// as if it ran alone, and a micro-batch holds at most one piece per sequence (pieces of
    /// several sequences share a micro-batch up to `n_ubatch` tokens): with the per-sequence
    /// streams and the per-group routines of the graph, every sequence's values are then those it
    /// gets alone. On an error the failing micro-batch's positions are forgotten (llama.cpp does
    /// the same); earlier micro-batches stay in the cache. A sequence without room is a
    /// [`crate::error::KvCacheFull`] error.
    pub fn decode_batch(&mut self, batch: &Batch, logits: &mut Vec<f32>) -> Result<()> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        if batch.pos.len() != n || batch.seq.len() != n || batch.output.len() != n {
            bail!("batch fields have different lengths");
        }
        let n_vocab = self.model.hparams.n_vocab;
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t >= n_vocab) {
            crate::bail_input!("token id {bad} is outside the vocabulary ({n_vocab} tokens)");
        }
        let n_seq = self.kv.n_seq();
        if let Some(&bad) = batch.seq.iter().find(|&&s| s >= n_seq) {
            bail!("sequence id {bad} is out of range (the context holds {n_seq})");
        }
        if let Some(&p) = batch.pos.iter().find(|&&p| p < 0) {
            bail!("negative position {p}");
        }
        // a sequence past its context has no room: the typed error its caller acts on
        if let Some(i) = batch.pos.iter().position(|&p| p >= self.cparams.n_ctx as i32) {
            return Err(anyhow::Error::new(crate::error::KvCacheFull { seq: batch.seq[i], cells: self.cparams.n_ctx }));
        }
        // runs of one sequence with consecutive positions, cut into micro-batch pieces
        let n_ubatch = self.cparams.n_ubatch as usize;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut i = 0;
        while i < n {
            let seq = batch.seq[i];
            let mut j = i + 1;
            while j < n && batch.seq[j] == seq && batch.pos[j] == batch.pos[j - 1] + 1 {
                j += 1;
            }
            let mut a = i;
            while a < j {
                let b = (a + n_ubatch).min(j);
                chunks.push(Chunk { seq, start: a, end: b });
                a = b;
            }
            i = j;
        }
        // pack pieces in order: at most one per sequence, up to n_ubatch tokens
        let mut k = 0;
        while k < chunks.len() {
            let mut take = vec![chunks[k]];
            let mut total = chunks[k].end - chunks[k].start;
            k += 1;
            while k < chunks.len() {
                let c = chunks[k];
                let len = c.end - c.start;
                if total + len > n_ubatch || take.iter().any(|t| t.seq == c.seq) {
                    break;
                }
                take.push(c);
                total += len;
                k += 1;
            }
            self.decode_pieces(batch, &take, logits)?;
        }
        Ok(())
    }

    /// One micro-batch made of `pieces` of `batch`.
    fn decode_pieces(&mut self, batch: &Batch, pieces: &[Chunk], logits: &mut Vec<f32>) -> Result<()> {
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut outputs = Vec::new();
        let mut groups = Vec::new();
        for c in pieces {
            let start = tokens.len() as u32;
            let mut n_out = 0;
            for i in c.start..c.end {
                if batch.output[i] {
                    outputs.push(tokens.len() as u32);
                    n_out += 1;
                }
                tokens.push(batch.tokens[i]);
                positions.push(batch.pos[i]);
            }
            groups.push(Group { seq: c.seq, start, len: (c.end - c.start) as u32, n_outputs: n_out });
        }
        let r = self.decode_ubatch(&tokens, &positions, &outputs, &groups, logits);
        if r.is_err() {
            // forget this micro-batch's positions, as llama.cpp does on failure
            for g in &groups {
                let p0 = positions[g.start as usize];
                self.kv.seq_rm(g.seq, p0, p0 + g.len as i32);
            }
        }
        r
    }

    fn decode_ubatch(&mut self, tokens: &[u32], positions: &[i32], outputs: &[u32], groups: &[Group], logits: &mut Vec<f32>) -> Result<()> {
        for (gi, g) in groups.iter().enumerate() {
            let range = g.start as usize..(g.start + g.len) as usize;
            if let Err(e) = self.kv.prepare_seq(g.seq, &positions[range]) {
                for h in &groups[..gi] {
                    let p0 = positions[h.start as usize];
                    self.kv.seq_rm(h.seq, p0, p0 + h.len as i32);
                }
                return Err(e);
            }
        }
        let key = GraphKey {
            n_tokens: tokens.len() as u32,
            n_outputs: outputs.len() as u32,
            groups: groups
                .iter()
                .map(|g| {
                    let st = self.kv.stream(g.seq);
                    (*g, st.slot_full.n_kv, st.slot_swa.n_kv)
                })
                .collect(),
        };
        let reuse = matches!(&self.last, Some((k, g)) if *k == key && self.sched.holds(&g.graph));
        if reuse {
            self.n_graph_reuses += 1;
        } else {
            self.last = None;
            let model = self.model.clone();
            let ub = UBatch { tokens, positions, outputs, groups };
            let built = {
                let n_tensors = model.n_tensors() + lora_tensors(&self.adapters);
                let mut g = GraphBuilder::new(&model.hparams, &model.weights, &self.cparams, &self.kv, &ub, n_tensors)?;
                let logits = model.arch.build_graph(&mut g);
                g.finish(logits)
            };
            self.sched.alloc(&built.graph)?;
            self.n_graph_builds += 1;
            self.last = Some((key, built));
        }
        let (_, built) = self.last.as_ref().expect("set above");
        let ub = UBatch { tokens, positions, outputs, groups };
        for (t, what) in &built.inputs {
            set_input(&self.sched, built, t, *what, &self.kv, &ub, self.model.hparams.n_embd_v_gqa(), self.cparams.flash_attn)?;
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
    ub: &UBatch,
    n_embd_v_gqa: u32,
    flash_attn: bool,
) -> Result<()> {
    let g = &built.graph;
    let (tokens, positions, outputs) = (ub.tokens, ub.positions, ub.outputs);
    let group = |gi: usize| ub.groups[gi];
    match what {
        Input::Tokens => sched.set_input(g, t, &tokens.iter().map(|&x| x as i32).collect::<Vec<_>>())?,
        Input::ScaleRows(s) => sched.set_input(g, t, &vec![s; tokens.len()])?,
        Input::Pos => sched.set_input(g, t, positions)?,
        Input::OutIds => sched.set_input(g, t, &outputs.iter().map(|&x| x as i32).collect::<Vec<_>>())?,
        Input::KIdxs(kind) => sched.set_input(g, t, &ub.groups.iter().flat_map(|gr| kv.stream(gr.seq).k_idxs(kind)).collect::<Vec<_>>())?,
        Input::VIdxs(kind) => {
            sched.set_input(g, t, &ub.groups.iter().flat_map(|gr| kv.stream(gr.seq).v_idxs(kind, n_embd_v_gqa)).collect::<Vec<_>>())?
        }
        Input::Mask(kind, g0, m) => {
            let mut mask = Vec::new();
            for gi in g0..g0 + m {
                let gr = group(gi);
                let pos = &positions[gr.start as usize..(gr.start + gr.len) as usize];
                mask.extend(kv.stream(gr.seq).mask(kind, pos));
            }
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

/// Tensors the adapters add to a graph's budget (its products: A·x, B·(A·x), scale, add — within
/// the eight nodes a tensor `graph::graph_size` allows, counting each pair twice).
fn lora_tensors(loras: &crate::model::lora::Loras) -> usize {
    loras.iter().map(|(a, _)| 2 * a.n_targets()).sum()
}

/// Loads and checks every adapter against `model`.
fn load_loras(model: &Model, specs: &[(std::path::PathBuf, f32)]) -> Result<crate::model::lora::Loras> {
    let mut out = Vec::new();
    for (path, scale) in specs {
        if !scale.is_finite() {
            crate::bail_input!("{}: the adapter's scale {scale} is not a finite number", path.display());
        }
        out.push((Rc::new(crate::model::lora::LoraAdapter::load_with(path, &model.file, &|w| model.weight_buffer_type(w))?), *scale));
    }
    Ok(out)
}

/// The adapters a graph adds: those of a scale other than 0 (a zero scale is exactly no adapter;
/// llama.cpp drops them too).
fn active(adapters: &crate::model::lora::Loras) -> crate::model::lora::Loras {
    adapters.iter().filter(|(_, s)| *s != 0.0).cloned().collect()
}
