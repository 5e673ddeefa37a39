//! Binds a model's weights to ggml tensors: checks every declared tensor's type and shape
//! against the file, picks each one's buffer type the way llama.cpp does (ggml's repacked
//! "extra" CPU layouts where the device says they serve the tensor's operation, else the plain
//! CPU buffer; an offloaded layer's tensors in its device's buffer), then places plain tensors
//! (in huge-page memory or in place over the file map) and copies the others.

use super::HParams;
use crate::gguf::GgufFile;
use crate::placement::{Place, Placement};
use anyhow::{Context as _, Result};
use ggml::{Buffer, BufferType, Context, Device, Tensor, Type};
use std::sync::Arc;

/// How a weight is used by the graph; decides which buffer types can hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    GetRows,
    MatMul,
    MatMulId,
    Mul,
    Add,
    Rope,
}

/// Where the plain (not repacked) weights live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMemory {
    /// Read in place from the file map (llama.cpp's default): no copy, pages shared with the page
    /// cache and other processes, a model larger than memory still runs. The map is advised for
    /// huge pages, which the kernel honours for pages it reads from disk for it.
    Mapped,
    /// Copied into anonymous memory advised for transparent huge pages (`--no-mmap`): 2 MiB pages
    /// whatever the page cache holds, at the cost of the copy and of private memory.
    Copied,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub weights: WeightMemory,
    /// Use ggml's repacked CPU layouts where they apply (llama.cpp's default).
    pub use_extra_bufts: bool,
    /// Stack projections that read the same input into one matrix ([q|k|v], [gate|up]; see
    /// `TensorLoader::fused`).
    pub fuse: bool,
    /// Layers on other devices (`--rpc`, `--device`, `-ngl`, `--tensor-split`).
    pub offload: Offload,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { weights: WeightMemory::Mapped, use_extra_bufts: true, fuse: true, offload: Offload::default() }
    }
}

/// Which devices take layers, and how many layers (llama.cpp's model parameters `devices`,
/// `n_gpu_layers`, `tensor_split`). No devices: everything on the CPU.
#[derive(Clone, Debug, Default)]
pub struct Offload {
    /// Offload devices in order: the first takes the lowest offloaded layers.
    pub devices: Vec<Device>,
    /// Layers to offload, counted from the output down (n_layer + 1 of them); negative: all.
    pub n_gpu_layers: i32,
    /// Each device's share of the offloaded layers; empty or all zero: by free memory.
    pub tensor_split: Vec<f32>,
}

impl Offload {
    /// Where each layer of a model of `n_layer` blocks goes.
    pub fn placement(&self, n_layer: usize) -> Placement {
        let mut shares = self.tensor_split.clone();
        if shares.iter().all(|&s| s <= 0.0) {
            // llama.cpp's default split: by the devices' free memory
            shares = self.devices.iter().map(|d| d.memory().0 as f32).collect();
        }
        shares.resize(self.devices.len(), 0.0);
        crate::placement::place(n_layer, self.n_gpu_layers, &shares)
    }
}

/// At most this many bytes of mapped weights are copied to make stacks (see `TensorLoader::fused`):
/// enough for every stack of a small model (Gemma 3 270M: 38.5 MB, SmolLM2 135M: 10.4 MB), whose
/// many short matrix products gain most from one pass instead of several; in a large model the
/// products are long enough that the gain is small, while copies would turn memory that the
/// page cache shares, and can drop under pressure, into private memory. Copies do not add to
/// the resident memory: the copied tensors' pages of the map are left unread (`set_apart`).
const STACK_COPY_BUDGET: u64 = 64 << 20;

struct Entry {
    tensor: Tensor,
    buft: usize,
    /// Directory indices of the file tensors it holds: one, or several stacked along ne1.
    srcs: Vec<usize>,
    /// A plain tensor in memory of its own, filled by copying (a stack of tensors that are not
    /// adjacent in the file, or any stack when weights are copied).
    owned: bool,
}

/// Collects the tensors an architecture declares, then loads them (`finish`).
pub struct TensorLoader<'f> {
    file: &'f GgufFile,
    hp: HParams,
    opts: LoadOptions,
    plan_only: bool,
    device: Option<Device>,
    /// Candidate CPU buffer types in order of preference up to `plain`, the plain CPU buffer;
    /// then each offload device's buffer type.
    bufts: Vec<BufferType>,
    plain: usize,
    placement: Placement,
    ctxs: Vec<Option<Context>>,
    /// Context of the `owned` plain tensors.
    owned_ctx: Option<Context>,
    /// Bytes of the stacks copied out of mapped weights so far (see `STACK_COPY_BUDGET`).
    stack_copies: u64,
    entries: Vec<Entry>,
    used: Vec<bool>,
}

/// The loaded weights' memory: contexts and buffers (kept alive by the tensors themselves too).
#[derive(Clone)]
pub struct LoadedWeights {
    /// (buffer type name, bytes, tensors) per buffer.
    pub buffers: Vec<(String, usize, usize)>,
    _buffers: Vec<Buffer>,
}

impl<'f> TensorLoader<'f> {
    /// A loader for `file`. With `plan_only`, tensors are checked but nothing is allocated
    /// (`ferrite info`).
    pub fn new(file: &'f GgufFile, hp: &HParams, opts: LoadOptions, plan_only: bool) -> Result<Self> {
        let mut bufts = Vec::new();
        let mut device = None;
        if !plan_only {
            let cpu = Device::cpu()?;
            if opts.use_extra_bufts {
                bufts.extend(cpu.extra_buffer_types());
            }
            device = Some(cpu);
        }
        bufts.push(BufferType::cpu());
        let plain = bufts.len() - 1;
        let placement = if plan_only { Placement::cpu(hp.n_layer as usize) } else { opts.offload.placement(hp.n_layer as usize) };
        if !plan_only {
            bufts.extend(opts.offload.devices.iter().map(|d| d.buffer_type()));
        }
        let n = bufts.len();
        Ok(TensorLoader {
            file,
            hp: hp.clone(),
            opts,
            plan_only,
            device,
            bufts,
            plain,
            placement,
            ctxs: (0..n).map(|_| None).collect(),
            owned_ctx: None,
            stack_copies: 0,
            entries: Vec::new(),
            used: vec![false; file.tensors().len()],
        })
    }

    /// Where the layers go (computed once, from the devices' free memory at the start).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    fn ctx_for(&mut self, buft: usize) -> Result<Context> {
        if self.ctxs[buft].is_none() {
            // Room for every tensor of the file, plus duplicates (tied output, per-layer rope_freqs).
            let n = self.file.tensors().len() + 2 * self.hp.n_layer as usize + 8;
            self.ctxs[buft] = Some(Context::new(n, 0)?);
        }
        Ok(self.ctxs[buft].clone().expect("created above"))
    }

    /// A required tensor of exactly `shape` (ggml order).
    pub fn tensor(&mut self, name: &str, shape: &[i64], usage: Usage) -> Result<Tensor> {
        self.create(name, shape, usage, false)?.ok_or_else(|| self.file.error(name, "missing required tensor"))
    }

    /// An optional tensor: None when the file does not have it.
    pub fn optional(&mut self, name: &str, shape: &[i64], usage: Usage) -> Result<Option<Tensor>> {
        self.create(name, shape, usage, false)
    }

    /// A second handle to a tensor already declared under another use (e.g. the token embedding
    /// as the output projection); it gets its own buffer type and, if repacked, its own copy.
    pub fn duplicate(&mut self, name: &str, shape: &[i64], usage: Usage) -> Result<Tensor> {
        self.create(name, shape, usage, true)?.ok_or_else(|| self.file.error(name, "missing required tensor"))
    }

    /// `duplicate` for optional tensors.
    pub fn optional_duplicate(&mut self, name: &str, shape: &[i64], usage: Usage) -> Result<Option<Tensor>> {
        self.create(name, shape, usage, true)
    }

    fn create(&mut self, name: &str, shape: &[i64], usage: Usage, dup: bool) -> Result<Option<Tensor>> {
        let Some(idx) = self.file.tensor_index(name) else {
            return Ok(None);
        };
        let info = &self.file.tensors()[idx];
        let mut want = [1i64; 4];
        want[..shape.len()].copy_from_slice(shape);
        if info.ne != want {
            return Err(self.file.error(&format!("tensor '{name}'"), format!("has shape {:?}, expected {:?}", info.shape(), shape)));
        }
        if self.used[idx] && !dup {
            return Err(self.file.error(&format!("tensor '{name}'"), "declared twice"));
        }
        self.used[idx] = true;
        if matches!(usage, Usage::Mul | Usage::Add | Usage::Rope) && info.ty != Type::F32 {
            return Err(self.file.error(&format!("tensor '{name}'"), format!("must be f32, is {}", info.ty)));
        }
        if matches!(usage, Usage::GetRows | Usage::MatMul | Usage::MatMulId) && !info.ty.cpu_weight_capable() {
            return Err(self
                .file
                .error(&format!("tensor '{name}'"), format!("type {} cannot hold weights (ggml has no matrix kernels for it)", info.ty)));
        }
        let buft = match self.place_of(name, usage) {
            Place::Device(d) => self.device_buft(d, info.ty, &info.ne, usage)?,
            Place::Cpu => self.select_buft(info.ty, &info.ne, usage)?,
        };
        let ctx = self.ctx_for(buft)?;
        let t = ctx.new_tensor(info.ty, &info.ne[..info.n_dims]);
        t.set_name(name);
        self.entries.push(Entry { tensor: t.clone(), buft, srcs: vec![idx], owned: false });
        Ok(Some(t))
    }

    /// One matrix `name` holding the file's 2-D tensors `parts` stacked along ne1, in that
    /// order, when all exist with one type and the given shapes (else None, and nothing is
    /// declared: the caller declares them one by one). Projections of the same input then take
    /// one matrix product instead of several (one quantization of the input, one pass of the
    /// thread pool; prompt processing +3 % on SmolLM2) with the same values: each output row is
    /// still its weight row's dot product, by the same kernel — which is why every part must get
    /// the stack's buffer type and have a row count that is a multiple of 16 (ggml picks
    /// repacked and llamafile kernels by row count). In place over the file map when the parts
    /// lie back to back in the file; otherwise a copy — free when the weights are copied
    /// (repacked, or `--no-mmap`) anyway, and from mapped weights within `STACK_COPY_BUDGET`.
    pub fn fused(&mut self, name: &str, parts: &[String], shapes: &[[i64; 2]]) -> Result<Option<Tensor>> {
        // an offloaded layer computes with its device's kernels: nothing to gain there
        if !self.opts.fuse || self.plan_only || parts.len() < 2 || self.place_of(name, Usage::MatMul) != Place::Cpu {
            return Ok(None);
        }
        let mut idxs = Vec::with_capacity(parts.len());
        for (part, shape) in parts.iter().zip(shapes) {
            let Some(idx) = self.file.tensor_index(part) else { return Ok(None) };
            let info = &self.file.tensors()[idx];
            if self.used[idx] || info.ne != [shape[0], shape[1], 1, 1] || shape[1] % 16 != 0 {
                return Ok(None);
            }
            idxs.push(idx);
        }
        let infos: Vec<_> = idxs.iter().map(|&i| &self.file.tensors()[i]).collect();
        let ty = infos[0].ty;
        if !ty.cpu_weight_capable() || infos.iter().any(|t| t.ty != ty) {
            return Ok(None);
        }
        let ne = [shapes[0][0], shapes.iter().map(|s| s[1]).sum(), 1, 1];
        let buft = self.select_buft(ty, &ne, Usage::MatMul)?;
        for info in &infos {
            if self.select_buft(ty, &info.ne, Usage::MatMul)? != buft {
                return Ok(None);
            }
        }
        let last = self.plain;
        let mapped = self.opts.weights == WeightMemory::Mapped;
        let adjacent = infos.windows(2).all(|w| w[0].offset + w[0].nbytes == w[1].offset);
        let owned = buft == last && !(adjacent && mapped);
        if owned && mapped {
            let bytes: u64 = infos.iter().map(|t| t.nbytes).sum();
            if self.stack_copies + bytes > STACK_COPY_BUDGET {
                return Ok(None);
            }
            self.stack_copies += bytes;
        }
        let ctx = if owned {
            if self.owned_ctx.is_none() {
                self.owned_ctx = Some(Context::new(2 * self.hp.n_layer as usize + 8, 0)?);
            }
            self.owned_ctx.clone().expect("created above")
        } else {
            self.ctx_for(buft)?
        };
        let t = ctx.new_tensor(ty, &ne[..2]);
        t.set_name(name);
        for &i in &idxs {
            self.used[i] = true;
        }
        self.entries.push(Entry { tensor: t.clone(), buft, srcs: idxs, owned });
        Ok(Some(t))
    }

    /// Where the tensor `name` goes: a block's tensors with their block, the output norm and
    /// projection (a tied one too: the embedding declared for `MatMul`) with the output layer,
    /// the rest (the input embedding) on the CPU, as llama.cpp places them.
    fn place_of(&self, name: &str, usage: Usage) -> Place {
        self.placement.of_tensor(name, name == "token_embd.weight" && usage == Usage::MatMul)
    }

    /// Offload device `d`'s buffer type when the device runs the tensor's operation there, else
    /// the CPU's choice (llama.cpp's buffer type list of a device ends with the CPU's).
    fn device_buft(&self, d: usize, ty: Type, ne: &[i64; 4], usage: Usage) -> Result<usize> {
        let i = self.plain + 1 + d;
        let scratch = Context::new(8, 0)?;
        let w = scratch.new_tensor(ty, ne);
        let op = self.probe(&scratch, &w, usage);
        if self.opts.offload.devices[d].supports_op_with(&op, &w, self.bufts[i])? {
            return Ok(i);
        }
        self.select_buft(ty, ne, usage)
    }

    /// The first buffer type whose device can run the tensor's operation with the tensor in it
    /// (llama.cpp's `select_weight_buft`, with the same probe operations).
    fn select_buft(&self, ty: Type, ne: &[i64; 4], usage: Usage) -> Result<usize> {
        let last = self.plain;
        let Some(device) = self.device else { return Ok(last) };
        for (i, &buft) in self.bufts.iter().enumerate().take(last) {
            let scratch = Context::new(8, 0)?;
            let w = scratch.new_tensor(ty, ne);
            let op = self.probe(&scratch, &w, usage);
            if device.supports_op_with(&op, &w, buft)? {
                return Ok(i);
            }
        }
        Ok(last)
    }

    /// The operation llama.cpp probes a weight's buffer type with: the weight `w` used as `usage`
    /// over a batch of 512.
    fn probe(&self, scratch: &Context, w: &Tensor, usage: Usage) -> Tensor {
        let ne = w.ne();
        let w = w.clone();
        match usage {
            Usage::GetRows => scratch.get_rows(&w, &scratch.new_tensor(Type::I32, &[512])),
            Usage::MatMul => scratch.mul_mat(&w, &scratch.new_tensor(Type::F32, &[ne[0], 512, ne[2], ne[3]])),
            Usage::MatMulId => {
                let n_used = self.hp.n_expert_used.max(1) as i64;
                let b = scratch.new_tensor(Type::F32, &[ne[0], n_used, 512]);
                let ids = scratch.new_tensor(Type::I32, &[n_used, 512]);
                scratch.mul_mat_id(&w, &b, &ids)
            }
            Usage::Mul => scratch.mul(&scratch.new_tensor(Type::F32, &ne), &w),
            Usage::Add => scratch.add(&scratch.new_tensor(Type::F32, &ne), &w),
            Usage::Rope => {
                let a = scratch.new_tensor(Type::F32, &[self.hp.n_embd_head_v as i64, self.hp.n_head as i64, 512]);
                let pos = scratch.new_tensor(Type::I32, &[512]);
                scratch.rope_ext(
                    &a,
                    &pos,
                    Some(&w),
                    (2 * ne[0]).min(a.ne()[0]) as i32,
                    ggml::RopeMode::Normal,
                    0,
                    10000.0,
                    1.0,
                    0.0,
                    1.0,
                    0.0,
                    0.0,
                )
            }
        }
    }

    /// Allocates and fills every declared tensor. `progress(done, total)` reports bytes copied.
    pub fn finish(self, progress: &mut dyn FnMut(u64, u64)) -> Result<LoadedWeights> {
        let file = self.file;
        if let Some(i) = self.used.iter().position(|&u| !u) {
            let n = self.used.iter().filter(|&&u| !u).count();
            return Err(file.error(
                &format!("tensor '{}'", file.tensors()[i].name),
                format!("not used by the {} architecture ({n} unused tensor(s); wrong architecture or corrupt file?)", self.hp.arch.name()),
            ));
        }
        if self.plan_only {
            return Ok(LoadedWeights { buffers: Vec::new(), _buffers: Vec::new() });
        }
        let device = self.device.expect("set when not plan_only");
        let last = self.plain;
        let mut buffers = Vec::new();
        let mut summary = Vec::new();

        // Plain tensors: one buffer over an image of the file (the map itself, or a copy of the
        // plain tensors' bytes at their file offsets), each tensor placed at its offset.
        let plain: Vec<&Entry> = self.entries.iter().filter(|e| e.buft == last && !e.owned).collect();
        // a tied output duplicates the embedding: its bytes are read once
        let mut plain_srcs: Vec<usize> = plain.iter().flat_map(|e| e.srcs.iter().copied()).collect();
        plain_srcs.sort_unstable();
        plain_srcs.dedup();
        let plain_bytes: u64 = plain_srcs.iter().map(|&i| file.tensors()[i].nbytes).sum();
        let copy = self.opts.weights == WeightMemory::Copied;
        let entry_bytes = |e: &Entry| e.srcs.iter().map(|&i| file.tensors()[i].nbytes).sum::<u64>();
        // copied in every mode: repacked tensors and stacks of their own
        let copies: Vec<&Entry> = self.entries.iter().filter(|e| e.buft != last || e.owned).collect();
        let copy_total = copies.iter().map(|e| entry_bytes(e)).sum::<u64>() + if copy { plain_bytes } else { 0 };
        let mut done = 0u64;
        progress(0, copy_total);
        // copies read the file with pread, not through the map (see `copy_into_memory`): the
        // pages of a copied tensor are then resident once, in the copy, not also in the map
        let reader = if copy || !copies.is_empty() { Some(open_again(file)?) } else { None };
        if !copy {
            for &i in copies.iter().flat_map(|e| &e.srcs) {
                file.set_apart(&file.tensors()[i]);
            }
        }

        if !plain.is_empty() {
            // (image, offset of each tensor in it, by directory index)
            let (bytes, offsets): (Arc<dyn AsRef<[u8]> + Send + Sync>, Vec<u64>) = if let Some(f) = reader.as_ref().filter(|_| copy) {
                copy_into_memory(file, f, &plain_srcs, &mut |n| {
                    done += n;
                    progress(done, copy_total);
                })?
            } else {
                (file.bytes(), file.tensors().iter().map(|t| t.offset).collect())
            };
            let max = plain.iter().map(|e| entry_bytes(e) as usize).max().unwrap_or(0);
            let buf = device.buffer_from_host(bytes, max).context("mapping the weights")?;
            buf.set_usage_weights();
            for e in &plain {
                // a stack placed in place starts at its first part (mapped weights only)
                buf.place(&e.tensor, offsets[e.srcs[0]] as usize)?;
            }
            let how = if copy { "copied" } else { "mapped" };
            summary.push((format!("{} ({how})", self.bufts[last].name()), buf.size(), plain.len()));
            buffers.push(buf);
        }

        // Repacked tensors: a buffer per extra type, filled through ggml (which converts layouts);
        // then the owned plain ones (stacks that need a copy) in a plain CPU buffer.
        let repacked = self.ctxs.iter().enumerate().filter(|(i, _)| *i != last).filter_map(|(i, c)| Some((c.as_ref()?, i, false)));
        let owned = self.owned_ctx.as_ref().map(|c| (c, last, true));
        let mut scratch = Vec::new();
        for (ctx, i, is_owned) in repacked.chain(owned) {
            let Some(buf) = self.bufts[i].alloc_ctx_tensors(ctx)? else { continue };
            buf.set_usage_weights();
            // like the plain weights' copy (`WeightMemory::Copied`): these are copies in any mode
            buf.advise_huge_pages();
            let f = reader.as_ref().expect("opened: this buffer holds copied tensors");
            let mut n = 0;
            for e in copies.iter().filter(|e| e.buft == i && e.owned == is_owned) {
                // the parts one after the other, read with pread like the plain tensors' copy
                // (touching the map would make its pages, whole 2 MiB folios of the page cache
                // with plain neighbours included, resident too)
                scratch.clear();
                for &s in &e.srcs {
                    let info = &file.tensors()[s];
                    let at = scratch.len();
                    scratch.resize(at + info.nbytes as usize, 0);
                    read_tensor(f, info, &mut scratch[at..])?;
                }
                e.tensor.write_bytes(&scratch)?;
                done += scratch.len() as u64;
                n += 1;
                progress(done, copy_total);
            }
            let name = if is_owned { format!("{} (stacked copies)", self.bufts[i].name()) } else { self.bufts[i].name() };
            summary.push((name, buf.size(), n));
            buffers.push(buf);
        }
        Ok(LoadedWeights { buffers: summary, _buffers: buffers })
    }
}

/// Bytes shared between the weights that point into them.
type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Copies the tensors `srcs` (directory indices) one after the other into anonymous memory, and
/// returns it with each tensor's offset in it (by directory index; unused entries 0). Packed, not
/// at file offsets: with 2 MiB pages, the gaps left by repacked tensors would be resident too.
/// Read from `f` (the model file) with `pread`, not through the map, so the file's pages are not
/// resident twice.
/// `copied(bytes)` after each tensor.
fn copy_into_memory(file: &GgufFile, f: &std::fs::File, srcs: &[usize], copied: &mut dyn FnMut(u64)) -> Result<(SharedBytes, Vec<u64>)> {
    // 64: a cache line, and more than any ggml CPU type needs
    const ALIGN: u64 = 64;
    let mut offsets = vec![0u64; file.tensors().len()];
    let mut len = 0u64;
    for &i in srcs {
        offsets[i] = len;
        len = (len + file.tensors()[i].nbytes).next_multiple_of(ALIGN);
    }
    let mut m = memmap2::MmapMut::map_anon(len.max(1) as usize).context("allocating memory for the model")?;
    // Best effort: without transparent huge pages the copy still works, on 4 KiB pages.
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    for &i in srcs {
        let t = &file.tensors()[i];
        let at = offsets[i] as usize;
        read_tensor(f, t, &mut m[at..at + t.nbytes as usize])?;
        copied(t.nbytes);
    }
    Ok((Arc::new(ReadOnly(m.make_read_only().context("sealing the model memory")?)), offsets))
}

fn open_again(file: &GgufFile) -> Result<std::fs::File> {
    std::fs::File::open(file.path()).with_context(|| format!("{}: reopening", file.path().display()))
}

/// Reads tensor `t`'s bytes from the file (not the map) into `out` (its size).
fn read_tensor(f: &std::fs::File, t: &crate::gguf::TensorInfo, out: &mut [u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(out, t.offset).map_err(|e| anyhow::anyhow!("reading tensor '{}': {e} (was the file changed?)", t.name))
}

struct ReadOnly(memmap2::Mmap);

impl AsRef<[u8]> for ReadOnly {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The tensor declarations many architectures share (names as in llama.cpp's llm_tensor names).
impl TensorLoader<'_> {
    /// Embedding, final norm and LM head — tied to the embedding when `output.weight` is absent
    /// (or always, with `always_tied`, as Gemma 2 does) — and an optional output bias.
    pub fn io(&mut self, hp: &HParams, always_tied: bool) -> Result<super::Weights> {
        let (n_embd, n_vocab) = (hp.n_embd as i64, hp.n_vocab as i64);
        let tok_embd = self.tensor("token_embd.weight", &[n_embd, n_vocab], Usage::GetRows)?;
        let output_norm = self.tensor("output_norm.weight", &[n_embd], Usage::Mul)?;
        let output = match always_tied {
            true => None,
            false => self.optional("output.weight", &[n_embd, n_vocab], Usage::MatMul)?,
        };
        let output = match output {
            Some(t) => t,
            None => self.duplicate("token_embd.weight", &[n_embd, n_vocab], Usage::MatMul)?,
        };
        let output_b = self.optional("output.bias", &[n_vocab], Usage::Add)?;
        Ok(super::Weights { tok_embd, output_norm, output, output_b, layers: Vec::new() })
    }

    /// Attention norm, Q/K/V (separate or fused [q|k|v], with optional biases) and the output
    /// projection of block `il`; Q/K norms of one head each when `qk_norm`.
    pub fn attention(&mut self, hp: &HParams, il: usize, l: &mut super::LayerWeights, qk_norm: bool) -> Result<()> {
        let b = |s: &str| format!("blk.{il}.{s}");
        let n_embd = hp.n_embd as i64;
        let n_q = (hp.n_embd_head_k * hp.n_head) as i64;
        let (n_k, n_v) = (hp.n_embd_k_gqa() as i64, hp.n_embd_v_gqa() as i64);
        l.attn_norm = Some(self.tensor(&b("attn_norm.weight"), &[n_embd], Usage::Mul)?);
        l.wqkv = self.optional(&b("attn_qkv.weight"), &[n_embd, n_q + n_k + n_v], Usage::MatMul)?;
        if l.wqkv.is_some() {
            l.wqkv_b = self.optional(&b("attn_qkv.bias"), &[n_q + n_k + n_v], Usage::Add)?;
            if l.wqkv_b.is_none() {
                l.wq_b = self.optional(&b("attn_q.bias"), &[n_q], Usage::Add)?;
                l.wk_b = self.optional(&b("attn_k.bias"), &[n_k], Usage::Add)?;
                l.wv_b = self.optional(&b("attn_v.bias"), &[n_v], Usage::Add)?;
            }
        } else if let Some(t) = self.fused_qkv(il, [n_embd, n_q, n_k, n_v])? {
            l.wqkv = Some(t);
            l.wq_b = self.optional(&b("attn_q.bias"), &[n_q], Usage::Add)?;
            l.wk_b = self.optional(&b("attn_k.bias"), &[n_k], Usage::Add)?;
            l.wv_b = self.optional(&b("attn_v.bias"), &[n_v], Usage::Add)?;
        } else {
            l.wq = Some(self.tensor(&b("attn_q.weight"), &[n_embd, n_q], Usage::MatMul)?);
            l.wk = Some(self.tensor(&b("attn_k.weight"), &[n_embd, n_k], Usage::MatMul)?);
            l.wv = Some(self.tensor(&b("attn_v.weight"), &[n_embd, n_v], Usage::MatMul)?);
            l.wq_b = self.optional(&b("attn_q.bias"), &[n_q], Usage::Add)?;
            l.wk_b = self.optional(&b("attn_k.bias"), &[n_k], Usage::Add)?;
            l.wv_b = self.optional(&b("attn_v.bias"), &[n_v], Usage::Add)?;
        }
        l.wo = Some(self.tensor(&b("attn_output.weight"), &[n_q, n_embd], Usage::MatMul)?);
        l.wo_b = self.optional(&b("attn_output.bias"), &[n_embd], Usage::Add)?;
        if qk_norm {
            let head = hp.n_embd_head_k as i64;
            l.attn_k_norm = Some(self.tensor(&b("attn_k_norm.weight"), &[head], Usage::Mul)?);
            l.attn_q_norm = Some(self.tensor(&b("attn_q_norm.weight"), &[head], Usage::Mul)?);
        }
        Ok(())
    }

    /// Q, K and V of block `il` as one [q|k|v] matrix (see `fused`), when they share a type and
    /// have all three biases or none (the graph adds them as one vector). Copied when the file
    /// does not store them back to back: a sixth of a layer's weights or less with grouped KV
    /// heads, for the largest gain of stacking (three products in one).
    fn fused_qkv(&mut self, il: usize, [n_embd, n_q, n_k, n_v]: [i64; 4]) -> Result<Option<Tensor>> {
        let b = |s: &str| format!("blk.{il}.{s}");
        let biases = ["attn_q.bias", "attn_k.bias", "attn_v.bias"].iter().filter(|s| self.file.tensor_index(&b(s)).is_some()).count();
        // the graph cuts V out with K's head size
        if (biases != 0 && biases != 3) || self.hp.n_embd_head_k != self.hp.n_embd_head_v {
            return Ok(None);
        }
        self.fused(
            &b("attn_qkv.weight"),
            &[b("attn_q.weight"), b("attn_k.weight"), b("attn_v.weight")],
            &[[n_embd, n_q], [n_embd, n_k], [n_embd, n_v]],
        )
    }

    /// FFN norm and a gated FFN of width `n_ff` (with optional biases), or, in a model with
    /// experts, the router and stacked experts of width `n_ff_exp`.
    pub fn feed_forward(&mut self, hp: &HParams, il: usize, l: &mut super::LayerWeights) -> Result<()> {
        let b = |s: &str| format!("blk.{il}.{s}");
        let (n_embd, n_ff) = (hp.n_embd as i64, hp.n_ff as i64);
        l.ffn_norm = Some(self.tensor(&b("ffn_norm.weight"), &[n_embd], Usage::Mul)?);
        if hp.n_expert == 0 {
            let has = |s: &str| self.file.tensor_index(&b(s)).is_some();
            let no_bias = !has("ffn_gate.bias") && !has("ffn_up.bias");
            let stacked = if no_bias {
                self.fused(&b("ffn_gate_up.weight"), &[b("ffn_gate.weight"), b("ffn_up.weight")], &[[n_embd, n_ff], [n_embd, n_ff]])?
            } else {
                None
            };
            if let Some(t) = stacked {
                // [gate|up]: the graph's fused-FFN path (as Phi-3's file stores it)
                l.ffn_up = Some(t);
                l.ffn_down = Some(self.tensor(&b("ffn_down.weight"), &[n_ff, n_embd], Usage::MatMul)?);
                return Ok(());
            }
            l.ffn_gate = Some(self.tensor(&b("ffn_gate.weight"), &[n_embd, n_ff], Usage::MatMul)?);
            l.ffn_down = Some(self.tensor(&b("ffn_down.weight"), &[n_ff, n_embd], Usage::MatMul)?);
            l.ffn_up = Some(self.tensor(&b("ffn_up.weight"), &[n_embd, n_ff], Usage::MatMul)?);
            l.ffn_gate_b = self.optional(&b("ffn_gate.bias"), &[n_ff], Usage::Add)?;
            l.ffn_down_b = self.optional(&b("ffn_down.bias"), &[n_embd], Usage::Add)?;
            l.ffn_up_b = self.optional(&b("ffn_up.bias"), &[n_ff], Usage::Add)?;
            return Ok(());
        }
        let n_expert = hp.n_expert as i64;
        let n_ff_exp = hp.n_ff_exp as i64;
        l.ffn_gate_inp = Some(self.tensor(&b("ffn_gate_inp.weight"), &[n_embd, n_expert], Usage::MatMul)?);
        l.ffn_gate_exps = Some(self.tensor(&b("ffn_gate_exps.weight"), &[n_embd, n_ff_exp, n_expert], Usage::MatMulId)?);
        l.ffn_down_exps = Some(self.tensor(&b("ffn_down_exps.weight"), &[n_ff_exp, n_embd, n_expert], Usage::MatMulId)?);
        l.ffn_up_exps = Some(self.tensor(&b("ffn_up_exps.weight"), &[n_embd, n_ff_exp, n_expert], Usage::MatMulId)?);
        Ok(())
    }

    /// A tensor shared by every layer (e.g. `rope_freqs.weight`): declared once, duplicated after.
    pub fn shared(&mut self, il: usize, name: &str, shape: &[i64], usage: Usage) -> Result<Option<Tensor>> {
        if il == 0 {
            self.optional(name, shape, usage)
        } else {
            self.optional_duplicate(name, shape, usage)
        }
    }
}
