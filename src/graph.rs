//! The shared graph builder: inputs (tokens, positions, masks, cache indices), norms, Q/K/V
//! projections, RoPE, attention over the KV cache (flash or not), FFN variants and mixture of
//! experts. Architecture files compose these; each mirrors llama.cpp's `llm_graph_context`
//! (src/llama-graph.cpp) op for op, so that ggml computes the same values in the same order.

use crate::kv_cache::{CacheKind, KvCache};
use crate::model::weights::w;
use crate::model::{HParams, LayerWeights, RopeScaling, Weights};
use anyhow::Result;
use ggml::{Context, Graph, Prec, Tensor, Type};

/// Context-level settings a graph depends on (llama.cpp's `llama_cparams`).
#[derive(Clone, Debug)]
pub struct CParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub flash_attn: bool,
    pub rope_freq_base: f32,
    pub rope_freq_scale: f32,
    pub n_ctx_orig: u32,
    pub yarn_ext_factor: f32,
    pub yarn_attn_factor: f32,
    pub yarn_beta_fast: f32,
    pub yarn_beta_slow: f32,
    /// Matrix products with weights through `ggml::Context::mul_mat_w` and flash attention
    /// through `ggml::Context::flash_attn_w` (ferrite's kernels where they apply) rather than
    /// ggml's mul_mat and flash_attn_ext.
    pub own_kernels: bool,
    /// Threads the graphs are computed with: ggml's flash attention of one token over 512 cells
    /// or more cuts the cells into one chunk a thread, which ferrite's kernel reproduces.
    pub n_threads: usize,
    /// LoRA adapters added to the products of the weights they adapt.
    pub loras: crate::model::lora::Loras,
}

impl CParams {
    /// llama.cpp's defaults for a model: RoPE from its metadata, YaRN factors derived as in
    /// `llama_context`'s constructor.
    pub fn new(hp: &HParams, n_ctx: u32, n_batch: u32, n_ubatch: u32, flash_attn: bool) -> CParams {
        let rope_freq_scale = if hp.rope_scaling == RopeScaling::None { 1.0 } else { hp.rope_freq_scale };
        let yarn_ext_factor = if hp.rope_scaling == RopeScaling::Yarn { 1.0 } else { 0.0 };
        let mut yarn_attn_factor = 1.0f32;
        if yarn_ext_factor != 0.0 {
            // ref: llama-context.cpp — mscale(factor) then cancel ggml's built-in 1 + 0.1 ln(factor)
            let factor = 1.0 / rope_freq_scale;
            yarn_attn_factor = if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 };
            yarn_attn_factor *= 1.0 / (1.0 + 0.1 * factor.ln());
        }
        CParams {
            n_ctx,
            n_batch,
            n_ubatch,
            flash_attn,
            rope_freq_base: hp.rope_freq_base,
            rope_freq_scale,
            n_ctx_orig: hp.n_ctx_orig_yarn,
            yarn_ext_factor,
            yarn_attn_factor,
            yarn_beta_fast: 32.0,
            yarn_beta_slow: 1.0,
            own_kernels: true,
            n_threads: 1,
            loras: Vec::new(),
        }
    }
}

/// FFN activation (llama.cpp's `llm_ffn_op_type`, the ones ferrite's architectures use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnOp {
    Silu,
    Gelu,
}

/// Whether the gate runs in parallel with the up projection or after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnGate {
    Par,
    Seq,
}

/// Expert routing of a mixture-of-experts FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeGating {
    /// Softmax over all experts, keep the top k; `norm_w` renormalises the kept weights.
    Softmax { norm_w: bool },
}

/// The per-architecture choices of a self-attention block.
#[derive(Clone, Copy)]
pub struct AttnSpec<'t> {
    /// RMS-normalise each head of Q and K before RoPE (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// RoPE frequency factors (Llama 3 `rope_freqs`, Phi-3 long/short factors).
    pub rope_factors: Option<&'t Tensor>,
    /// Scale Q after RoPE (Gemma, Phi-3); the softmax scale is then `kq_scale`.
    pub q_scale: Option<f32>,
    pub kq_scale: f32,
}

/// What an input tensor holds; its values are computed for each micro-batch (so a graph can be
/// reused for the next micro-batch of the same shape with new inputs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Input {
    /// I32 token ids.
    Tokens,
    /// F32 per-row embedding scale.
    ScaleRows(f32),
    /// I32 positions.
    Pos,
    /// I32 rows of the last layer that produce logits.
    OutIds,
    /// I64 rows of the cache (every stream's tensor) where K of the micro-batch is stored.
    KIdxs(CacheKind),
    /// I64 rows (or elements, when V is transposed) of the cache where V is stored.
    VIdxs(CacheKind),
    /// KQ mask (F16 with flash attention, else F32) of groups `.1 .. .1 + .2`, one after the
    /// other.
    Mask(CacheKind, usize, usize),
    /// F32 Walsh–Hadamard matrix of this size.
    Rotation(u32),
}

/// Attention inputs of one cache (llama.cpp's `self_k_idxs`, `self_v_idxs`, `self_kq_mask`):
/// where the micro-batch's K and V go, and per attention unit (see `attention_units`) its first
/// group, its number of groups and its mask.
struct CacheInputs {
    k_idxs: Tensor,
    v_idxs: Tensor,
    units: Vec<(usize, usize, Tensor)>,
    k_rot: Option<Tensor>,
    v_rot: Option<Tensor>,
}

/// One sequence's consecutive rows in a micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    /// The sequence (its stream in the KV cache).
    pub seq: u32,
    /// First row and number of rows.
    pub start: u32,
    pub len: u32,
    /// Rows of this group among the micro-batch's outputs.
    pub n_outputs: u32,
}

/// A micro-batch to run: tokens at positions, and which of them produce logits, in groups of
/// consecutive rows per sequence.
pub struct UBatch<'a> {
    pub tokens: &'a [u32],
    pub positions: &'a [i32],
    /// Indices (into the micro-batch) of tokens whose logits are wanted.
    pub outputs: &'a [u32],
    pub groups: &'a [Group],
}

/// Builds one forward graph for one micro-batch.
pub struct GraphBuilder<'a> {
    pub ctx: Context,
    pub gf: Graph,
    pub hp: &'a HParams,
    pub w: &'a Weights,
    pub cparams: &'a CParams,
    kv: &'a KvCache,
    pub n_tokens: i64,
    pub n_outputs: i64,
    inputs: Vec<(Tensor, Input)>,
    /// The attention inputs of each cache.
    attn_full: Option<CacheInputs>,
    attn_swa: Option<CacheInputs>,
    groups: Vec<Group>,
    /// Name nodes as llama.cpp does ("attn_norm-3") so runs can be diffed node by node.
    pub name_nodes: bool,
}

/// A built graph: the graph, its input tensors, and the logits node.
pub struct BuiltGraph {
    pub graph: Graph,
    pub inputs: Vec<(Tensor, Input)>,
    pub logits: Tensor,
}

/// Whether ggml's product with weight `w` may give a column other bits depending on how many
/// columns are computed together. On x86, ggml's repacked layouts take columns four at a time
/// through a routine other than the one-column one; K-quant and i-quant weights switch to a
/// tiled kernel from eight columns (`ggml-cpu/tiled`); F16/F32/BF16 go through llamafile's
/// tinyBLAS from two columns and ggml's vector dot below. Q8_0 and Q5_0 (tinyBLAS, whose
/// per-output arithmetic is ggml's vector dot's) and Q4_1/Q5_1 (ferrite's kernel, or ggml's
/// vector dot at any width) give the same bits at any width — checked on both test models by
/// `tests/batch_invariance.rs`.
pub fn width_dependent(w: &Tensor) -> bool {
    w.is_repacked() || !matches!(w.ty(), Type::Q8_0 | Type::Q5_0 | Type::Q4_1 | Type::Q5_1)
}

/// Graph node budget: generous for every architecture ferrite runs (llama.cpp uses
/// max(1024, 8 × tensors)), plus the per-sequence attention and products of a micro-batch of
/// up to `n_seq` sequences (about 40 nodes per sequence and layer).
pub fn graph_size(n_tensors: usize, n_seq: usize, n_layer: usize) -> usize {
    (8 * n_tensors).max(1024) + if n_seq > 1 { 48 * n_seq * n_layer } else { 0 }
}

impl<'a> GraphBuilder<'a> {
    pub fn new(hp: &'a HParams, w: &'a Weights, cparams: &'a CParams, kv: &'a KvCache, ub: &UBatch, n_tensors: usize) -> Result<Self> {
        let size = graph_size(n_tensors, ub.groups.len(), hp.n_layer as usize);
        let ctx = Context::new(size, size)?;
        let gf = Graph::new(&ctx, size)?;
        Ok(GraphBuilder {
            ctx,
            gf,
            hp,
            w,
            cparams,
            kv,
            n_tokens: ub.tokens.len() as i64,
            n_outputs: ub.outputs.len() as i64,
            inputs: Vec::new(),
            attn_full: None,
            attn_swa: None,
            groups: ub.groups.to_vec(),
            name_nodes: true,
        })
    }

    pub fn finish(self, logits: Tensor) -> BuiltGraph {
        logits.set_output();
        self.gf.expand(&logits);
        BuiltGraph { graph: self.gf, inputs: self.inputs, logits }
    }

    /// Names a node "name-il" (or "name" for il == usize::MAX), like llama.cpp's callback.
    pub fn cb(&self, t: &Tensor, name: &str, il: usize) {
        if self.name_nodes {
            if il == usize::MAX {
                t.set_name(name);
            } else {
                t.set_name(&format!("{name}-{il}"));
            }
        }
    }

    fn input(&mut self, ty: Type, ne: &[i64], name: &str, what: Input) -> Tensor {
        let t = self.ctx.new_tensor(ty, ne);
        t.set_input();
        t.set_name(name);
        self.inputs.push((t.clone(), what));
        t
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// Token embeddings, scaled by `scale` when it is not 1 (Gemma). F32 [n_embd, n_tokens]
    pub fn inp_embd(&mut self, tok_embd: &Tensor, scale: f32) -> Tensor {
        let tokens = self.input(Type::I32, &[self.n_tokens], "inp_tokens", Input::Tokens);
        let mut cur = self.ctx.get_rows(tok_embd, &tokens);
        // an embedding adapter adds s · B·A[token] (llama.cpp's build_inp_embd: its pair is
        // transposed, A [r, n_vocab] looked up by token, B [r, n_embd])
        for (adapter, s) in self.cparams.loras.iter().rev() {
            if let Some((a, b, rank)) = adapter.pair(&tok_embd.name()) {
                let delta = self.mm_weight(b, &self.ctx.get_rows(a, &tokens));
                let delta = self.ctx.scale(&delta, adapter.scale(*s, rank));
                cur = self.ctx.add(&cur, &delta);
            }
        }
        if scale != 1.0 {
            // llama.cpp multiplies by a per-row input so that the graph is the same for token and
            // embedding batches; the product is the same as a scale.
            let rows = self.input(Type::F32, &[1, self.n_tokens], "inp_scale_rows", Input::ScaleRows(scale));
            cur = self.ctx.mul(&cur, &rows);
        }
        self.cb(&cur, "embd", usize::MAX);
        self.gf.expand(&cur);
        cur
    }

    /// Positions. I32 [n_tokens]
    pub fn inp_pos(&mut self) -> Tensor {
        self.input(Type::I32, &[self.n_tokens], "inp_pos", Input::Pos)
    }

    /// Rows of the last layer that produce logits. I32 [n_outputs]
    pub fn inp_out_ids(&mut self) -> Tensor {
        self.input(Type::I32, &[self.n_outputs], "out_ids", Input::OutIds)
    }

    fn cache_inputs(&mut self, kind: CacheKind) -> CacheInputs {
        let kv = self.kv;
        let k_idxs = self.input(Type::I64, &[self.n_tokens], "attn_inp_k_idxs", Input::KIdxs(kind));
        let v_len = if kv.v_trans { self.n_tokens * self.hp.n_embd_v_gqa() as i64 } else { self.n_tokens };
        let v_idxs = self.input(Type::I64, &[v_len], "attn_inp_v_idxs", Input::VIdxs(kind));
        let mask_ty = if self.cparams.flash_attn { Type::F16 } else { Type::F32 };
        let mut units = Vec::new();
        for (g0, m) in self.attention_units(kind) {
            let g = self.groups[g0];
            let n_kv = kv.stream(g.seq).slot(kind).n_kv as i64;
            let mask = self.input(mask_ty, &[n_kv, g.len as i64, 1, m as i64], "attn_inp_kq_mask", Input::Mask(kind, g0, m));
            units.push((g0, m, mask));
        }
        let rot =
            |this: &mut Self, n: u32, name: &str| (n > 0).then(|| this.input(Type::F32, &[n as i64, n as i64], name, Input::Rotation(n)));
        let k_rot = rot(self, kv.n_rot_k, "attn_inp_k_rot");
        let v_rot = rot(self, kv.n_rot_v, "attn_inp_v_rot");
        CacheInputs { k_idxs, v_idxs, units, k_rot, v_rot }
    }

    /// The micro-batch's groups as attention ops: (first group, number of groups). Runs of
    /// single-token groups of consecutive sequences whose attention visits the same number of
    /// cells, fewer than 512, share one flash-attention op over their streams (a 4-D view, one
    /// stream per plane): ggml computes each query row alone there, with the routine a single
    /// sequence gets (it splits the cells among threads only from 512 cells and for one plane,
    /// and tiles queries only from 64 rows), so the bits are the same and the per-op cost is
    /// paid once. Every other group is an op of its own.
    fn attention_units(&self, kind: CacheKind) -> Vec<(usize, usize)> {
        let n_kv = |g: &Group| self.kv.stream(g.seq).slot(kind).n_kv;
        let joinable = |a: &Group, b: &Group| {
            self.cparams.flash_attn
                && a.len == 1
                && b.len == 1
                && b.seq == a.seq + 1
                && b.start == a.start + 1
                && n_kv(a) == n_kv(b)
                && n_kv(a) < 512
        };
        let mut units = Vec::new();
        let mut g0 = 0;
        while g0 < self.groups.len() {
            let mut m = 1;
            while g0 + m < self.groups.len() && joinable(&self.groups[g0 + m - 1], &self.groups[g0 + m]) {
                m += 1;
            }
            units.push((g0, m));
            g0 += m;
        }
        units
    }

    /// The attention inputs of every cache the model uses.
    pub fn inp_attn(&mut self) {
        if self.kv.has_full() {
            self.attn_full = Some(self.cache_inputs(CacheKind::Full));
        }
        if self.kv.has_swa() {
            self.attn_swa = Some(self.cache_inputs(CacheKind::Swa));
        }
    }

    // ---- building blocks -------------------------------------------------------------------

    /// Matrix product with a weight (llama.cpp's `build_lora_mm`, without adapters): ggml's
    /// mul_mat, or ferrite's tiled kernel with the same bits where `mul_mat_w` finds it applies.
    ///
    /// With several sequences in the micro-batch, a weight whose product routine depends on the
    /// number of columns (see [`width_dependent`]) is multiplied group by group, so that every
    /// row goes through the routine it would meet if its sequence ran alone (batch invariance).
    /// Single-row groups (generating sequences) go together as planes of one column each: ggml
    /// picks its routine by the columns of a plane, so they get the one-column routine, in a
    /// single op that still reads each weight row once for all of them.
    ///
    /// Each LoRA adapter of `w` adds `s · B(A·x)` after the product, as llama.cpp's
    /// `build_lora_mm` does (mul_mat by A, by B, scale, add), the A and B products by the same
    /// rules. Adapters are added last given first: llama.cpp walks its `unordered_map` of
    /// adapters, which with libstdc++ yields the last inserted first, and float additions in
    /// another order would change the bits (checked against llama.cpp with two adapters).
    pub fn mm(&self, w: &Tensor, cur: &Tensor) -> Tensor {
        let mut res = self.mm_weight(w, cur);
        if !self.cparams.loras.is_empty() {
            let name = w.name();
            for (adapter, scale) in self.cparams.loras.iter().rev() {
                if let Some((a, b, rank)) = adapter.pair(&name) {
                    let ab = self.mm_weight(b, &self.mm_weight(a, cur));
                    let ab = self.ctx.scale(&ab, adapter.scale(*scale, rank));
                    res = self.ctx.add(&res, &ab);
                }
            }
        }
        res
    }

    /// `mul_mat_id` with a mixture's expert weights (llama.cpp's `build_lora_mm_id`): each
    /// adapter of `w` adds `s · B(A·x)` with its per-expert pairs, routed by the same `ids`.
    pub fn mm_id(&self, w: &Tensor, cur: &Tensor, ids: &Tensor) -> Tensor {
        let mut res = self.ctx.mul_mat_id(w, cur, ids);
        for (adapter, scale) in self.cparams.loras.iter().rev() {
            if let Some((a, b, rank)) = adapter.pair(&w.name()) {
                let ab = self.ctx.mul_mat_id(b, &self.ctx.mul_mat_id(a, cur, ids), ids);
                let ab = self.ctx.scale(&ab, adapter.scale(*scale, rank));
                res = self.ctx.add(&res, &ab);
            }
        }
        res
    }

    /// `mm` without adapters.
    fn mm_weight(&self, w: &Tensor, cur: &Tensor) -> Tensor {
        if self.groups.len() > 1 && width_dependent(w) {
            if let Some(lens) = self.row_groups(cur.ne()[1]) {
                return self.mm_grouped(w, cur, &lens);
            }
        }
        self.mm_plain(w, cur)
    }

    /// Flash attention through ferrite's kernel where it applies (`own_kernels`), else ggml's.
    fn flash_attn(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32, softcap: f32) -> Tensor {
        if self.cparams.own_kernels {
            self.ctx.flash_attn_w(q, k, v, mask, scale, softcap, self.cparams.n_threads)
        } else {
            self.ctx.flash_attn_f32(q, k, v, mask, scale, softcap)
        }
    }

    fn mm_plain(&self, w: &Tensor, cur: &Tensor) -> Tensor {
        if self.cparams.own_kernels {
            self.ctx.mul_mat_w(w, cur)
        } else {
            self.ctx.mul_mat(w, cur)
        }
    }

    /// Rows per group of a tensor with `n_rows` rows: the micro-batch's tokens, or its outputs
    /// (after the last layer keeps only the rows that produce logits).
    fn row_groups(&self, n_rows: i64) -> Option<Vec<i64>> {
        if n_rows == self.n_tokens {
            Some(self.groups.iter().map(|g| g.len as i64).collect())
        } else if n_rows == self.n_outputs {
            Some(self.groups.iter().map(|g| g.n_outputs as i64).collect())
        } else {
            None
        }
    }

    fn mm_grouped(&self, w: &Tensor, cur: &Tensor, lens: &[i64]) -> Tensor {
        let ctx = &self.ctx;
        let cur = if cur.is_contiguous() { cur.clone() } else { ctx.cont(cur) };
        let (k, nb1) = (cur.ne()[0], cur.nb()[1]);
        let mut parts: Vec<Tensor> = Vec::new();
        let (mut row, mut i) = (0i64, 0usize);
        while i < lens.len() {
            if lens[i] == 0 {
                i += 1;
                continue;
            }
            if lens[i] == 1 {
                let j = (i..lens.len()).find(|&j| lens[j] != 1).unwrap_or(lens.len());
                let n = (j - i) as i64;
                let x = ctx.view(&cur, &[k, 1, n], &[nb1, nb1], row as usize * nb1);
                let y = ctx.mul_mat(w, &x); // [m, 1, n]
                parts.push(ctx.reshape(&y, &[y.ne()[0], n]));
                row += n;
                i = j;
            } else {
                let x = ctx.view(&cur, &[k, lens[i]], &[nb1], row as usize * nb1);
                parts.push(self.mm_plain(w, &x));
                row += lens[i];
                i += 1;
            }
        }
        self.concat_rows(parts)
    }

    /// Concatenates [n, r_i] tensors along rows.
    fn concat_rows(&self, parts: Vec<Tensor>) -> Tensor {
        let mut it = parts.into_iter();
        let first = it.next().expect("at least one part");
        it.fold(first, |acc, t| self.ctx.concat(&acc, &t, 1))
    }

    /// Rows `start..start + len` (the last dimension) of a [a, b, n] tensor, as a view.
    fn rows3(&self, t: &Tensor, start: u32, len: u32) -> Tensor {
        let (ne, nb) = (t.ne(), t.nb());
        self.ctx.view(t, &[ne[0], ne[1], len as i64], &[nb[1], nb[2]], start as usize * nb[2])
    }

    /// RMSNorm, then the elementwise weight when given (llama.cpp's `build_norm`, LLM_NORM_RMS).
    pub fn rms_norm(&self, cur: &Tensor, weight: Option<&Tensor>, il: usize) -> Tensor {
        let mut cur = self.ctx.rms_norm(cur, self.hp.f_norm_rms_eps);
        if let Some(wt) = weight {
            self.cb(&cur, "norm", il);
            cur = self.ctx.mul(&cur, wt);
        }
        cur
    }

    /// LayerNorm with optional weight and bias (llama.cpp's `build_norm`, LLM_NORM).
    pub fn layer_norm(&self, cur: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, il: usize) -> Tensor {
        let mut cur = self.ctx.norm(cur, self.hp.f_norm_eps);
        if weight.is_some() || bias.is_some() {
            self.cb(&cur, "norm", il);
        }
        if let Some(wt) = weight {
            cur = self.ctx.mul(&cur, wt);
            if bias.is_some() {
                self.cb(&cur, "norm_w", il);
            }
        }
        if let Some(b) = bias {
            cur = self.ctx.add(&cur, b);
        }
        cur
    }

    /// Q, K, V as [head, n_head, n_tokens], from separate or fused projections (with biases).
    pub fn qkv(
        &self,
        l: &LayerWeights,
        cur: &Tensor,
        n_embd_head: i64,
        n_head: i64,
        n_head_kv: i64,
        il: usize,
    ) -> (Tensor, Tensor, Tensor) {
        let n_tokens = self.n_tokens;
        let (n_embd_q, n_embd_k) = (n_embd_head * n_head, n_embd_head * n_head_kv);
        if let Some(wqkv) = &l.wqkv {
            let mut qkv = self.mm(wqkv, cur);
            self.cb(&qkv, "wqkv", il);
            if let Some(b) = &l.wqkv_b {
                qkv = self.ctx.add(&qkv, b);
                self.cb(&qkv, "wqkv_b", il);
            } else if let (Some(qb), Some(kb), Some(vb)) = (&l.wq_b, &l.wk_b, &l.wv_b) {
                let b = self.ctx.concat(&self.ctx.concat(qb, kb, 0), vb, 0);
                qkv = self.ctx.add(&qkv, &b);
                self.cb(&qkv, "wqkv_b", il);
            }
            let es = qkv.ty().row_size(1);
            let nb1 = qkv.nb()[1];
            let q = self.ctx.view(&qkv, &[n_embd_head, n_head, n_tokens], &[es * n_embd_head as usize, nb1], 0);
            let k = self.ctx.view(&qkv, &[n_embd_head, n_head_kv, n_tokens], &[es * n_embd_head as usize, nb1], es * n_embd_q as usize);
            let v = self.ctx.view(
                &qkv,
                &[n_embd_head, n_head_kv, n_tokens],
                &[es * n_embd_head as usize, nb1],
                es * (n_embd_q + n_embd_k) as usize,
            );
            self.cb(&q, "Qcur", il);
            self.cb(&k, "Kcur", il);
            self.cb(&v, "Vcur", il);
            return (q, k, v);
        }
        let proj = |wt: &Option<Tensor>, b: &Option<Tensor>, name: &str| {
            let mut t = self.mm(w(wt), cur);
            self.cb(&t, name, il);
            if let Some(b) = b {
                t = self.ctx.add(&t, b);
                self.cb(&t, name, il);
            }
            t
        };
        let q = proj(&l.wq, &l.wq_b, "Qcur");
        let k = proj(&l.wk, &l.wk_b, "Kcur");
        let v = proj(&l.wv, &l.wv_b, "Vcur");
        let q = self.ctx.reshape(&q, &[n_embd_head, n_head, n_tokens]);
        let k = self.ctx.reshape(&k, &[n_embd_head, n_head_kv, n_tokens]);
        let v = self.ctx.reshape(&v, &[n_embd_head, n_head_kv, n_tokens]);
        self.cb(&q, "Qcur", il);
        self.cb(&k, "Kcur", il);
        self.cb(&v, "Vcur", il);
        (q, k, v)
    }

    /// RoPE with the layer's base and scale (sliding-window layers have their own).
    pub fn rope(&self, x: &Tensor, pos: &Tensor, freq_factors: Option<&Tensor>, il: usize) -> Tensor {
        let (hp, cp) = (self.hp, self.cparams);
        let (base, scale) =
            if hp.is_swa(il) { (hp.rope_freq_base_swa, hp.rope_freq_scale_swa) } else { (cp.rope_freq_base, cp.rope_freq_scale) };
        self.ctx.rope_ext(
            x,
            pos,
            freq_factors,
            hp.n_rot as i32,
            hp.rope_type,
            cp.n_ctx_orig as i32,
            base,
            scale,
            cp.yarn_ext_factor,
            cp.yarn_attn_factor,
            cp.yarn_beta_fast,
            cp.yarn_beta_slow,
        )
    }

    /// Feed-forward block (llama.cpp's `build_ffn`).
    #[allow(clippy::too_many_arguments)]
    pub fn ffn(
        &self,
        cur: &Tensor,
        up: Option<&Tensor>,
        up_b: Option<&Tensor>,
        gate: Option<&Tensor>,
        gate_b: Option<&Tensor>,
        down: Option<&Tensor>,
        down_b: Option<&Tensor>,
        op: FfnOp,
        mut gate_type: FfnGate,
        il: usize,
    ) -> Tensor {
        let ctx = &self.ctx;
        let mut tmp = match up {
            Some(u) => self.mm(u, cur),
            None => cur.clone(),
        };
        self.cb(&tmp, "ffn_up", il);
        if let Some(b) = up_b {
            tmp = ctx.add(&tmp, b);
            self.cb(&tmp, "ffn_up_b", il);
        }
        let mut cur = if let Some(g) = gate {
            let mut c = match gate_type {
                FfnGate::Seq => self.mm(g, &tmp),
                FfnGate::Par => self.mm(g, cur),
            };
            self.cb(&c, "ffn_gate", il);
            if let Some(b) = gate_b {
                c = ctx.add(&c, b);
                self.cb(&c, "ffn_gate_b", il);
            }
            c
        } else {
            tmp.clone()
        };
        let par = gate.is_some() && gate_type == FfnGate::Par;
        cur = match (op, par) {
            (FfnOp::Silu, true) => {
                let c = ctx.swiglu_split(&cur, &tmp);
                self.cb(&c, "ffn_swiglu", il);
                gate_type = FfnGate::Seq;
                c
            }
            (FfnOp::Silu, false) => {
                let c = ctx.silu(&cur);
                self.cb(&c, "ffn_silu", il);
                c
            }
            (FfnOp::Gelu, true) => {
                let c = ctx.geglu_split(&cur, &tmp);
                self.cb(&c, "ffn_geglu", il);
                gate_type = FfnGate::Seq;
                c
            }
            (FfnOp::Gelu, false) => {
                let c = ctx.gelu(&cur);
                self.cb(&c, "ffn_gelu", il);
                c
            }
        };
        if gate.is_some() && gate_type == FfnGate::Par {
            cur = ctx.mul(&cur, &tmp);
            self.cb(&cur, "ffn_gate_par", il);
        }
        if let Some(d) = down {
            cur = self.mm(d, &cur);
        }
        if let Some(b) = down_b {
            self.cb(&cur, "ffn_down", il);
            cur = ctx.add(&cur, b);
        }
        cur
    }

    /// Mixture-of-experts FFN (llama.cpp's `build_moe_ffn`): route, run the chosen experts with
    /// `mul_mat_id`, weight and sum their outputs.
    pub fn moe_ffn(&self, cur: &Tensor, l: &LayerWeights, gating: MoeGating, il: usize) -> Tensor {
        let ctx = &self.ctx;
        let hp = self.hp;
        let n_embd = cur.ne()[0];
        let n_tokens = cur.ne()[1];
        let n_expert = hp.n_expert as i64;
        let n_used = hp.n_expert_used as i64;

        let logits = self.mm(w(&l.ffn_gate_inp), cur); // [n_expert, n_tokens]
        self.cb(&logits, "ffn_moe_logits", il);
        let MoeGating::Softmax { norm_w } = gating;
        let probs = ctx.soft_max(&logits); // [n_expert, n_tokens]
        self.cb(&probs, "ffn_moe_probs", il);

        let selected = ctx.argsort_top_k(&probs, n_used as i32); // I32 [n_used, n_tokens]
        self.cb(&selected, "ffn_moe_topk", il);
        let probs3 = ctx.reshape(&probs, &[1, n_expert, n_tokens]);
        let mut weights = ctx.get_rows(&probs3, &selected); // [1, n_used, n_tokens]
        self.cb(&weights, "ffn_moe_weights", il);
        if norm_w {
            let w2 = ctx.reshape(&weights, &[n_used, n_tokens]);
            let sum = ctx.sum_rows(&w2); // [1, n_tokens]
            self.cb(&sum, "ffn_moe_weights_sum", il);
            // avoid dividing by zero: clamp to the smallest normal f16
            let sum = ctx.clamp(&sum, 1.0 / 16384.0, f32::INFINITY);
            self.cb(&sum, "ffn_moe_weights_sum_clamped", il);
            let w2 = ctx.div(&w2, &sum);
            self.cb(&w2, "ffn_moe_weights_norm", il);
            weights = ctx.reshape(&w2, &[1, n_used, n_tokens]);
        }
        // llama.cpp expands the weights early (lets backends fuse the routing)
        self.gf.expand(&weights);

        let x = ctx.reshape(cur, &[n_embd, 1, n_tokens]);
        let up = self.mm_id(w(&l.ffn_up_exps), &x, &selected); // [n_ff, n_used, n_tokens]
        self.cb(&up, "ffn_moe_up", il);
        let gate = self.mm_id(w(&l.ffn_gate_exps), &x, &selected);
        self.cb(&gate, "ffn_moe_gate", il);
        let act = ctx.swiglu_split(&gate, &up);
        self.cb(&act, "ffn_moe_swiglu", il);
        let experts = self.mm_id(w(&l.ffn_down_exps), &act, &selected); // [n_embd, n_used, n_tokens]
        self.cb(&experts, "ffn_moe_down", il);
        let experts = ctx.mul(&experts, &weights);
        self.cb(&experts, "ffn_moe_weighted", il);
        self.gf.expand(&experts);

        // sum the experts' outputs, as llama.cpp does: views first, then a chain of adds
        let nb = experts.nb();
        let views: Vec<Tensor> = (0..n_used)
            .map(|i| {
                let v = ctx.view(&experts, &[n_embd, n_tokens], &[nb[2]], i as usize * nb[1]);
                self.gf.expand(&v);
                v
            })
            .collect();
        let mut moe_out = views[0].clone();
        for v in &views[1..] {
            moe_out = ctx.add(&moe_out, v);
            self.gf.expand(&moe_out);
        }
        if n_used == 1 {
            moe_out = ctx.cont(&moe_out);
        }
        self.cb(&moe_out, "ffn_moe_out", il);
        moe_out
    }

    /// Self-attention of block `il` on the normalised input `cur`: Q/K/V projections, optional
    /// per-head Q/K norms, RoPE, attention over the cache, output projection.
    pub fn self_attention(&mut self, l: &LayerWeights, cur: &Tensor, pos: &Tensor, spec: AttnSpec, il: usize) -> Tensor {
        let hp = self.hp;
        let (q, k, v) = self.qkv(l, cur, hp.n_embd_head_k as i64, hp.n_head as i64, hp.n_head_kv as i64, il);
        let (q, k) = if spec.qk_norm {
            let q = self.rms_norm(&q, l.attn_q_norm.as_ref(), il);
            self.cb(&q, "Qcur_normed", il);
            let q = self.rope(&q, pos, spec.rope_factors, il);
            let k = self.rms_norm(&k, l.attn_k_norm.as_ref(), il);
            self.cb(&k, "Kcur_normed", il);
            (q, self.rope(&k, pos, spec.rope_factors, il))
        } else {
            (self.rope(&q, pos, spec.rope_factors, il), self.rope(&k, pos, spec.rope_factors, il))
        };
        self.cb(&q, "Qcur", il);
        self.cb(&k, "Kcur", il);
        self.cb(&v, "Vcur", il);
        let q = match spec.q_scale {
            Some(s) => self.ctx.scale(&q, s),
            None => q,
        };
        let cur = self.attn(il, w(&l.wo), l.wo_b.as_ref(), &q, &k, &v, spec.kq_scale);
        self.cb(&cur, "attn_out", il);
        cur
    }

    /// The feed-forward block of layer `il` as its weights say: a mixture of experts, a fused
    /// [gate|up] SwiGLU (Phi-3), or a gated FFN with activation `op`.
    pub fn feed_forward(&self, l: &LayerWeights, cur: &Tensor, op: FfnOp, il: usize) -> Tensor {
        let cur = if l.ffn_gate_inp.is_some() {
            self.moe_ffn(cur, l, MoeGating::Softmax { norm_w: true }, il)
        } else if l.ffn_gate.is_none() {
            // [gate|up] in one matrix (Phi-3's file, or stacked by the loader)
            let up = self.mm(w(&l.ffn_up), cur);
            self.cb(&up, "ffn_up", il);
            let act = match op {
                FfnOp::Silu => self.ctx.swiglu(&up),
                FfnOp::Gelu => self.ctx.geglu(&up),
            };
            self.cb(&act, if op == FfnOp::Silu { "ffn_swiglu" } else { "ffn_geglu" }, il);
            self.mm(w(&l.ffn_down), &act)
        } else {
            self.ffn(
                cur,
                l.ffn_up.as_ref(),
                l.ffn_up_b.as_ref(),
                l.ffn_gate.as_ref(),
                l.ffn_gate_b.as_ref(),
                l.ffn_down.as_ref(),
                l.ffn_down_b.as_ref(),
                op,
                FfnGate::Par,
                il,
            )
        };
        self.cb(&cur, "ffn_out", il);
        cur
    }

    /// Final norm, LM head, output bias and final logit soft-capping (when the model has them).
    pub fn lm_head(&self, cur: &Tensor) -> Tensor {
        let (hp, wt) = (self.hp, self.w);
        let cur = self.rms_norm(cur, Some(&wt.output_norm), usize::MAX);
        self.cb(&cur, "result_norm", usize::MAX);
        let mut cur = self.mm(&wt.output, &cur);
        if let Some(b) = &wt.output_b {
            cur = self.ctx.add(&cur, b);
        }
        if hp.f_final_logit_softcapping > 0.0 {
            let cap = hp.f_final_logit_softcapping;
            cur = self.ctx.scale(&cur, 1.0 / cap);
            cur = self.ctx.tanh(&cur);
            cur = self.ctx.scale(&cur, cap);
        }
        self.cb(&cur, "result_output", usize::MAX);
        cur
    }

    /// Multiplies rows of `cur` by a Walsh–Hadamard matrix (llama.cpp's `llama_mul_mat_hadamard`).
    fn hadamard(&self, cur: &Tensor, rot: &Tensor) -> Tensor {
        let n = rot.ne()[0];
        let ne = cur.ne();
        let flat = if cur.is_contiguous() {
            self.ctx.reshape(cur, &[n, cur.nelements() / n])
        } else {
            self.ctx.cont_shape(cur, &[n, cur.nelements() / n])
        };
        let res = self.ctx.mul_mat(rot, &flat);
        res.set_hadamard_hint();
        self.ctx.reshape(&res, &ne)
    }

    /// Stores K and V of the micro-batch in layer `il`'s cache and attends over the cache; then
    /// the output projection. q, k, v: [head, n_head(_kv), n_tokens].
    #[allow(clippy::too_many_arguments)]
    pub fn attn(&mut self, il: usize, wo: &Tensor, wo_b: Option<&Tensor>, q: &Tensor, k: &Tensor, v: &Tensor, kq_scale: f32) -> Tensor {
        let kind = self.kv.layer_kind(il);
        let inp = match kind {
            CacheKind::Full => self.attn_full.as_ref(),
            CacheKind::Swa => self.attn_swa.as_ref(),
        }
        .expect("attention inputs are built before the layers");
        let (k_idxs, v_idxs, units) = (inp.k_idxs.clone(), inp.v_idxs.clone(), inp.units.clone());
        let (k_rot, v_rot) = (inp.k_rot.clone(), inp.v_rot.clone());
        let (mut q, mut k, mut v) = (q.clone(), k.clone(), v.clone());
        if let Some(r) = &k_rot {
            q = self.hadamard(&q, r);
            k = self.hadamard(&k, r);
        }
        if let Some(r) = &v_rot {
            v = self.hadamard(&v, r);
        }
        // llama.cpp expands these together (so they are not reordered); the order differs
        // between its sliding-window and plain caches.
        self.gf.expand(&q);
        if self.kv.has_swa() {
            self.gf.expand(&k);
            self.gf.expand(&v);
        } else {
            self.gf.expand(&v);
            self.gf.expand(&k);
        }
        // the micro-batch's K and V, every sequence's, into its streams in one store each
        let store_k = self.cpy_k(il, &k, &k_idxs);
        self.gf.expand(&store_k);
        let store_v = self.cpy_v(il, &v, &v_idxs);
        self.gf.expand(&store_v);
        // one sequence: the micro-batch as a whole; several: each group attends over its own
        // stream with exactly the shapes it would have alone (ggml's attention picks its
        // routine by the number of queries and cells, so a shared op would change the bits)
        let single = self.groups.len() == 1;
        let mut outs = Vec::with_capacity(units.len());
        for (g0, m, mask) in &units {
            let g = self.groups[*g0];
            let qg = if single { q.clone() } else { self.rows3(&q, g.start, g.len) };
            if *m == 1 {
                let kc = self.get_k(il, g.seq, 1);
                let vc = self.get_v(il, g.seq, 1);
                outs.push(self.attn_mha(&qg, &kc, &vc, mask, kq_scale, il));
            } else {
                outs.push(self.attn_streams(il, &q, g.start, g.seq, *m, mask, kq_scale));
            }
        }
        let mut cur = self.concat_rows(outs);
        self.cb(&cur, "kqv_out", il);
        if let Some(r) = &v_rot {
            cur = self.hadamard(&cur, r);
        }
        cur = self.mm(wo, &cur);
        if let Some(b) = wo_b {
            cur = self.ctx.add(&cur, b);
        }
        cur
    }

    fn cpy_k(&self, il: usize, k_cur: &Tensor, k_idxs: &Tensor) -> Tensor {
        let ne = k_cur.ne();
        let n_embd_gqa = ne[0] * ne[1];
        let k_cur = self.ctx.view(k_cur, &[n_embd_gqa, ne[2]], &[k_cur.nb()[2]], 0);
        self.ctx.set_rows(self.kv.stream(0).k(il).0, &k_cur, k_idxs)
    }

    fn cpy_v(&self, il: usize, v_cur: &Tensor, v_idxs: &Tensor) -> Tensor {
        let ne = v_cur.ne();
        let n_embd_gqa = ne[0] * ne[1];
        let v = self.kv.stream(0).v(il).0;
        if !self.kv.v_trans {
            let v_cur = self.ctx.view(v_cur, &[n_embd_gqa, ne[2]], &[v_cur.nb()[2]], 0);
            return self.ctx.set_rows(v, &v_cur, v_idxs);
        }
        let v_cur = if v_cur.ty().row_size(n_embd_gqa) == v_cur.nb()[2] {
            self.ctx.reshape(v_cur, &[n_embd_gqa, ne[2]])
        } else {
            self.ctx.cont_shape(v_cur, &[n_embd_gqa, ne[2]])
        };
        // each row of the transposed store is a single element
        let v_view = self.ctx.reshape(v, &[1, v.nelements()]);
        let v_cur = self.ctx.reshape(&v_cur, &[1, v_cur.nelements()]);
        self.ctx.set_rows(&v_view, &v_cur, v_idxs)
    }

    /// K of layer `il` over the cells attention visits: [head_k, n_head_kv, n_kv].
    fn get_k(&self, il: usize, seq: u32, m: usize) -> Tensor {
        let (hp, st) = (self.hp, self.kv.stream(seq));
        let (k, base) = st.k(il);
        let kind = self.kv.layer_kind(il);
        let (n_kv, kv_size) = (st.n_kv(kind) as i64, st.size(kind) as i64);
        let ty = k.ty();
        let (head, n_head_kv, gqa) = (hp.n_embd_head_k as i64, hp.n_head_kv as i64, hp.n_embd_k_gqa() as i64);
        let nb = [ty.row_size(head), ty.row_size(gqa), ty.row_size(gqa * kv_size)];
        self.ctx.view(k, &[head, n_head_kv, n_kv, m as i64], &nb, base * ty.row_size(gqa))
    }

    /// V of layer `il`: [head_v, n_head_kv, n_kv], or transposed [n_kv, n_head_kv, head_v].
    fn get_v(&self, il: usize, seq: u32, m: usize) -> Tensor {
        let (hp, st) = (self.hp, self.kv.stream(seq));
        let (v, base) = st.v(il);
        let kind = self.kv.layer_kind(il);
        let (n_kv, kv_size) = (st.n_kv(kind) as i64, st.size(kind) as i64);
        let ty = v.ty();
        let (head, n_head_kv, gqa) = (hp.n_embd_head_v as i64, hp.n_head_kv as i64, hp.n_embd_v_gqa() as i64);
        // this stream's rows (or, transposed, its block of gqa × kv_size elements)
        let offset = base * ty.row_size(gqa);
        if !self.kv.v_trans {
            let nb = [ty.row_size(head), ty.row_size(gqa), ty.row_size(gqa * kv_size)];
            return self.ctx.view(v, &[head, n_head_kv, n_kv, m as i64], &nb, offset);
        }
        assert_eq!(m, 1, "transposed V (no flash attention) is viewed one stream at a time");
        self.ctx.view(
            v,
            &[n_kv, n_head_kv, head, 1],
            &[ty.row_size(kv_size * head), ty.row_size(kv_size), ty.row_size(kv_size * gqa)],
            offset,
        )
    }

    /// Flash attention of `m` single-token groups of consecutive sequences `seq0..` (rows
    /// `row0..row0 + m` of q) over their streams, one per plane. Result F32 [head_v * n_head, m].
    #[allow(clippy::too_many_arguments)]
    fn attn_streams(&self, il: usize, q: &Tensor, row0: u32, seq0: u32, m: usize, mask: &Tensor, kq_scale: f32) -> Tensor {
        let ctx = &self.ctx;
        let (qn, qb) = (q.ne(), q.nb());
        // [head, n_head, 1, m]: each plane one token
        let q4 = ctx.view(q, &[qn[0], qn[1], 1, m as i64], &[qb[1], qb[2], qb[2]], row0 as usize * qb[2]);
        let q4 = ctx.permute(&q4, [0, 2, 1, 3]);
        let k = ctx.permute(&self.get_k(il, seq0, m), [0, 2, 1, 3]);
        let v = ctx.permute(&self.get_v(il, seq0, m), [0, 2, 1, 3]);
        let k = if k.ty() == Type::F32 { ctx.cast(&k, Type::F16) } else { k };
        let v = if v.ty() == Type::F32 { ctx.cast(&v, Type::F16) } else { v };
        let cur = self.flash_attn(&q4, &k, &v, mask, kq_scale, self.hp.f_attn_logit_softcapping);
        let ne = cur.ne();
        ctx.reshape(&cur, &[ne[0] * ne[1], ne[2] * ne[3]])
    }

    /// Multi-head attention (llama.cpp's `build_attn_mha`) with flash attention or
    /// softmax(KQ)·V. Result F32 [head_v * n_head, n_tokens].
    fn attn_mha(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, kq_scale: f32, il: usize) -> Tensor {
        let ctx = &self.ctx;
        let hp = self.hp;
        let v_trans = v.nb()[1] > v.nb()[2];
        let qn = q.ne();
        let q = ctx.view(q, &[qn[0], qn[1], qn[2], 1], &[q.nb()[1], q.nb()[2], q.nb()[2] * qn[2] as usize], 0);
        let q = ctx.permute(&q, [0, 2, 1, 3]);
        let k = ctx.permute(k, [0, 2, 1, 3]);
        let mut v = ctx.permute(v, [0, 2, 1, 3]);
        let softcap = hp.f_attn_logit_softcapping;

        if self.cparams.flash_attn {
            if v_trans {
                v = ctx.transpose(&v);
            }
            let k = if k.ty() == Type::F32 { ctx.cast(&k, Type::F16) } else { k };
            let v = if v.ty() == Type::F32 { ctx.cast(&v, Type::F16) } else { v };
            let cur = self.flash_attn(&q, &k, &v, mask, kq_scale, softcap);
            let ne = cur.ne();
            return ctx.reshape(&cur, &[ne[0] * ne[1], ne[2] * ne[3]]);
        }

        let mut kq = ctx.mul_mat(&k, &q);
        self.cb(&kq, "kq", il);
        kq.set_prec(Prec::F32);
        if softcap > 0.0 {
            kq = ctx.scale(&kq, 1.0 / softcap);
            self.cb(&kq, "kq_scaled_1", il);
            kq = ctx.tanh(&kq);
            self.cb(&kq, "kq_tanh", il);
            kq = ctx.scale(&kq, softcap);
            self.cb(&kq, "kq_scaled_2", il);
        }
        let kq = ctx.soft_max_ext(&kq, Some(mask), kq_scale, 0.0);
        self.cb(&kq, "kq_soft_max", il);
        if !v_trans {
            v = ctx.cont(&ctx.transpose(&v));
            self.cb(&v, "v_cont", il);
        }
        let kqv = ctx.mul_mat(&v, &kq);
        self.cb(&kqv, "kqv", il);
        let cur = ctx.permute(&kqv, [0, 2, 1, 3]);
        let ne = cur.ne();
        ctx.cont_shape(&cur, &[ne[0] * ne[1], ne[2] * ne[3]])
    }
}
