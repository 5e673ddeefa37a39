//! The KV cache: per-layer K and V tensors in a backend buffer, the cells' positions, slot
//! search, masks and per-layer views, for one or more sequences. Each sequence has its own
//! stream (llama.cpp's non-unified cache, `kv_unified = false`): its own cells and its own K/V
//! tensors, so a sequence's cells sit exactly where they would if it ran alone and attention
//! visits them in the same order — the ground of batch invariance. Layers attending through a
//! sliding window get a smaller cache per stream whose cells are reused once they fall out of the
//! window. Cell placement, n_kv padding and masks follow llama.cpp's `llama_kv_cache` so that
//! attention visits the same entries in the same order.

use crate::model::HParams;
use anyhow::{bail, Result};
use ggml::{BufferType, Context, Tensor, Type};

/// Cell bookkeeping of one cache (the full-attention one or the sliding-window one).
#[derive(Clone, Debug)]
pub struct Cells {
    /// Position held by each cell (-1: empty).
    pos: Vec<i32>,
    head: u32,
    used: u32,
    /// Sliding window (0: none).
    n_swa: u32,
}

impl Cells {
    fn new(size: u32, n_swa: u32) -> Cells {
        Cells { pos: vec![-1; size as usize], head: 0, used: 0, n_swa }
    }

    pub fn size(&self) -> u32 {
        self.pos.len() as u32
    }

    fn is_empty(&self, i: usize) -> bool {
        self.pos[i] < 0
    }

    /// llama.cpp's `is_masked_swa` (standard window): p1 does not see p0.
    fn masked_swa(&self, p0: i32, p1: i32) -> bool {
        self.n_swa > 0 && p1 - p0 >= self.n_swa as i32
    }

    fn pos_max(&self) -> i32 {
        self.pos.iter().copied().max().unwrap_or(-1)
    }

    fn pos_min(&self) -> i32 {
        self.pos.iter().copied().filter(|&p| p >= 0).min().unwrap_or(-1)
    }

    /// Index of the last used cell + 1.
    fn used_max_p1(&self) -> u32 {
        self.pos.iter().rposition(|&p| p >= 0).map_or(0, |i| i as u32 + 1)
    }

    /// Cells for `n_tokens` new tokens: empty ones, or ones whose position has left the window
    /// of every later token (llama.cpp's `find_slot`, non-contiguous search from the head).
    fn find_slot(&self, n_tokens: u32) -> Option<Vec<u32>> {
        let size = self.size();
        if n_tokens > size {
            return None;
        }
        let mut head = self.head;
        if head > self.used + 2 * n_tokens {
            head = 0;
        }
        let seq_pos_max = self.pos_max();
        let mut idxs = Vec::with_capacity(n_tokens as usize);
        let mut tested = 0u32;
        while idxs.len() < n_tokens as usize {
            if head >= size {
                head = 0;
            }
            let i = head as usize;
            head += 1;
            tested += 1;
            let usable = self.is_empty(i) || self.masked_swa(self.pos[i], seq_pos_max + 1);
            if usable {
                idxs.push(i as u32);
            }
            if tested >= size && idxs.len() < n_tokens as usize {
                return None;
            }
        }
        Some(idxs)
    }

    /// Stores positions into the chosen cells (llama.cpp's `apply_ubatch`): overwritten cells
    /// purge every older position so the cache always holds a contiguous range.
    fn apply(&mut self, idxs: &[u32], positions: &[i32]) {
        let mut max_rm = -1;
        for (&i, &p) in idxs.iter().zip(positions) {
            let i = i as usize;
            if !self.is_empty(i) {
                max_rm = max_rm.max(self.pos[i]);
                self.pos[i] = -1;
                self.used -= 1;
            }
            self.pos[i] = p;
            self.used += 1;
        }
        if max_rm >= 0 && self.pos_min() <= max_rm {
            self.remove_range(self.pos_min(), max_rm + 1);
        }
        self.head = idxs.last().map_or(self.head, |&i| i + 1);
    }

    /// Empties cells with positions in [p0, p1).
    fn remove_range(&mut self, p0: i32, p1: i32) {
        let mut new_head = None;
        for (i, p) in self.pos.iter_mut().enumerate() {
            if *p >= p0 && *p < p1 {
                *p = -1;
                self.used -= 1;
                if new_head.is_none() {
                    new_head = Some(i as u32);
                }
            }
        }
        // llama.cpp's seq_rm: restart the search from the first freed cell if it is before the head
        if let Some(h) = new_head {
            if h < self.head {
                self.head = h;
            }
        }
    }

    /// Number of cells the attention must visit: used extent padded to 256, capped by the size.
    fn n_kv(&self) -> u32 {
        let pad = 256u32;
        let padded = self.used_max_p1().div_ceil(pad) * pad;
        self.size().min(pad.max(padded))
    }

    /// Fills a [n_kv, n_tokens] mask: 0 where token i may attend to cell j, -inf elsewhere.
    fn fill_mask(&self, n_kv: usize, positions: &[i32], out: &mut [f32]) {
        for (i, &p1) in positions.iter().enumerate() {
            let row = &mut out[i * n_kv..(i + 1) * n_kv];
            for (j, m) in row.iter_mut().enumerate() {
                let p0 = self.pos[j];
                let visible = p0 >= 0 && p0 <= p1 && !self.masked_swa(p0, p1);
                *m = if visible { 0.0 } else { f32::NEG_INFINITY };
            }
        }
    }
}

/// Which of the two caches a layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    Full,
    Swa,
}

/// Where the current micro-batch goes in one cache, and how much of it attention visits.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    pub idxs: Vec<u32>,
    pub n_kv: u32,
}

/// One layer of one stream. The K and V tensors hold every stream of the layer, one after the
/// other (so one store writes a micro-batch of several sequences); this stream's cells start at
/// cell `base` (its index times its cache's size).
#[derive(Clone)]
struct Layer {
    k: Tensor, // [n_embd_k_gqa, kv_size * n_seq]: cell i of the stream is row base + i
    v: Tensor, // [n_embd_v_gqa, kv_size * n_seq]; transposed: element (j, i) at base*gqa + j*kv_size + i
    kind: CacheKind,
    base: usize,
}

/// One sequence's part of the cache: its cells and its K/V tensors (what a one-sequence cache
/// holds; llama.cpp's stream).
pub struct Stream {
    layers: Vec<Layer>,
    full: Cells,
    swa: Option<Cells>,
    type_k: Type,
    type_v: Type,
    v_trans: bool,
    /// Slots of the micro-batch being processed.
    pub slot_full: Slot,
    pub slot_swa: Slot,
    /// Cells below these (full, sliding-window) hold data or zeros; the rest of the buffer is
    /// zeroed only when attention first reaches it (see `zero_to_n_kv`).
    zeroed: [u32; 2],
}

/// The KV cache of one model context: one stream per sequence.
pub struct KvCache {
    /// One context per buffer type the layers' caches live in (the CPU's, offload devices').
    _ctxs: Vec<Context>,
    buffer_bytes: usize,
    streams: Vec<Stream>,
    pub type_k: Type,
    pub type_v: Type,
    /// V stored transposed (when flash attention is off), as llama.cpp does.
    pub v_trans: bool,
    /// Sizes of the Walsh-Hadamard rotations applied to K and V (0: none); llama.cpp rotates
    /// heads before storing them in a quantized cache.
    pub n_rot_k: u32,
    pub n_rot_v: u32,
}

impl KvCache {
    /// A cache of `n_seq` streams of `kv_size` cells for the full-attention layers and, for
    /// sliding-window layers, llama.cpp's size: the window plus a micro-batch, padded to 256 (at
    /// most kv_size). Memory is reserved, not touched: cells are zeroed when attention first
    /// reaches them, so unused streams cost address space only. Layer `il`'s cache lives in a
    /// buffer of `bufts[il]` (its layer's device, as llama.cpp's offloaded K/V), the CPU's where
    /// `bufts` ends.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hp: &HParams,
        kv_size: u32,
        n_ubatch: u32,
        swa_full: bool,
        type_k: Type,
        type_v: Type,
        v_trans: bool,
        n_seq: u32,
        bufts: &[BufferType],
    ) -> Result<KvCache> {
        if kv_size == 0 || n_seq == 0 {
            bail!("KV cache of size 0");
        }
        // llama_kv_cache_iswa: the window plus a micro-batch, padded to 256 (cells are reused
        // once every later token's window has passed them), or the whole context with swa_full
        let swa_size = match (hp.has_swa(), swa_full) {
            (false, _) => 0,
            (true, true) => kv_size,
            (true, false) => (kv_size.min(hp.n_swa + n_ubatch)).div_ceil(256) * 256,
        };
        let buft_of = |il: usize| bufts.get(il).copied().unwrap_or_else(BufferType::cpu);
        let mut kinds: Vec<BufferType> = Vec::new();
        for il in 0..hp.n_layer as usize {
            if !kinds.contains(&buft_of(il)) {
                kinds.push(buft_of(il));
            }
        }
        let ctxs = kinds.iter().map(|_| Context::new(2 * hp.n_layer as usize, 0)).collect::<ggml::Result<Vec<_>>>()?;
        let mut shared = Vec::new();
        for il in 0..hp.n_layer as usize {
            let ctx = &ctxs[kinds.iter().position(|&b| b == buft_of(il)).expect("listed above")];
            let kind = if hp.is_swa(il) { CacheKind::Swa } else { CacheKind::Full };
            let size = if kind == CacheKind::Swa { swa_size } else { kv_size } as i64;
            let k = ctx.new_tensor(type_k, &[hp.n_embd_k_gqa() as i64, size * n_seq as i64]);
            k.set_name(&format!("cache_k_l{il}"));
            let v = ctx.new_tensor(type_v, &[hp.n_embd_v_gqa() as i64, size * n_seq as i64]);
            v.set_name(&format!("cache_v_l{il}"));
            shared.push((k, v, kind, size as usize));
        }
        let mut streams = Vec::new();
        for s in 0..n_seq as usize {
            let layers =
                shared.iter().map(|(k, v, kind, size)| Layer { k: k.clone(), v: v.clone(), kind: *kind, base: s * size }).collect();
            streams.push(Stream {
                layers,
                full: Cells::new(kv_size, 0),
                swa: (swa_size > 0).then(|| Cells::new(swa_size, hp.n_swa)),
                type_k,
                type_v,
                v_trans,
                slot_full: Slot::default(),
                slot_swa: Slot::default(),
                zeroed: [0, 0],
            });
        }
        let mut buffer_bytes = 0;
        for (ctx, buft) in ctxs.iter().zip(&kinds) {
            let buf = buft.alloc_ctx_tensors(ctx)?.expect("each context has cache tensors");
            buffer_bytes += buf.size();
        }
        let rot = |head: u32, ty: Type, grow: bool| -> u32 {
            if !ty.is_quantized() || !head.is_multiple_of(64) {
                return 0;
            }
            let mut n = 64;
            while grow && head.is_multiple_of(2 * n) {
                n *= 2;
            }
            n
        };
        Ok(KvCache {
            buffer_bytes,
            _ctxs: ctxs,
            streams,
            type_k,
            type_v,
            v_trans,
            n_rot_k: rot(hp.n_embd_head_k, type_k, true),
            n_rot_v: rot(hp.n_embd_head_v, type_v, false),
        })
    }

    pub fn size_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Sequences (streams) the cache holds.
    pub fn n_seq(&self) -> u32 {
        self.streams.len() as u32
    }

    /// Cells of one sequence's full-attention cache (its context size).
    pub fn n_ctx(&self) -> u32 {
        self.streams[0].full.size()
    }

    pub fn has_swa(&self) -> bool {
        self.streams[0].swa.is_some()
    }

    pub fn has_full(&self) -> bool {
        self.streams[0].layers.iter().any(|l| l.kind == CacheKind::Full)
    }

    pub fn layer_kind(&self, il: usize) -> CacheKind {
        self.streams[0].layers[il].kind
    }

    /// Sequence `seq`'s stream. Panics on a sequence the cache does not hold (callers check
    /// ids against `n_seq` where they enter).
    pub fn stream(&self, seq: u32) -> &Stream {
        &self.streams[seq as usize]
    }

    pub fn stream_mut(&mut self, seq: u32) -> &mut Stream {
        &mut self.streams[seq as usize]
    }

    /// Empties every sequence (data stays; masks hide it).
    pub fn clear(&mut self) {
        for s in &mut self.streams {
            s.clear();
        }
    }

    /// Forgets sequence 0's positions >= `p0` (to rewind a conversation).
    pub fn truncate(&mut self, p0: i32) {
        self.streams[0].remove_range(p0, i32::MAX);
    }

    /// Highest position sequence 0 stores (-1: empty).
    pub fn pos_max(&self) -> i32 {
        self.streams[0].pos_max()
    }

    /// Places a micro-batch of sequence 0 at `positions`; fails when there is no room.
    pub fn prepare(&mut self, positions: &[i32]) -> Result<()> {
        self.prepare_seq(0, positions)
    }

    /// Places `positions` of sequence `seq` in its stream; a [`crate::error::KvCacheFull`] error
    /// (the cache unchanged) when there is no room.
    pub fn prepare_seq(&mut self, seq: u32, positions: &[i32]) -> Result<()> {
        self.streams[seq as usize].prepare(seq, positions)
    }

    /// llama.cpp's `seq_rm`: empties sequence `seq`'s cells with positions in [p0, p1)
    /// (p1 < 0: to the end).
    pub fn seq_rm(&mut self, seq: u32, p0: i32, p1: i32) {
        let p1 = if p1 < 0 { i32::MAX } else { p1 };
        self.streams[seq as usize].remove_range(p0.max(0), p1);
    }

    /// llama.cpp's `seq_keep`: empties every sequence but `seq`.
    pub fn seq_keep(&mut self, seq: u32) {
        for (i, s) in self.streams.iter_mut().enumerate() {
            if i != seq as usize {
                s.clear();
            }
        }
    }

    /// llama.cpp's `seq_cp` between streams: `dst` becomes a copy of `src` (cells and their K/V
    /// rows, at the same places, so `dst` then continues exactly as `src` would).
    pub fn seq_cp(&mut self, src: u32, dst: u32) -> Result<()> {
        if src == dst {
            return Ok(());
        }
        let state = self.streams[src as usize].write_state()?;
        self.streams[dst as usize].read_state(&state)
    }

    /// Whether sequence `seq` holds exactly positions 0..n, position i in cell i, in each of its
    /// caches, its next cell search starting at n: the state a new sequence is in after its
    /// first n tokens, so that what comes next is placed and visited as it would be there.
    pub fn seq_is_fresh_prefix(&self, seq: u32, n: i32) -> bool {
        let s = &self.streams[seq as usize];
        let fresh = |c: &Cells| {
            c.head as i64 == (n as i64).min(c.size() as i64)
                && c.pos.iter().enumerate().all(|(i, &p)| if (i as i64) < n as i64 { p == i as i32 } else { p < 0 })
        };
        fresh(&s.full) && s.swa.as_ref().is_none_or(fresh)
    }

    /// Whether sequence `seq`, cut back to its first `n` positions, can go on from there: a
    /// sliding-window cache must still hold the window before `n` (it drops the positions that
    /// leave it); a full cache holds them all.
    pub fn seq_holds_window(&self, seq: u32, n: i32) -> bool {
        let s = &self.streams[seq as usize];
        s.swa.as_ref().is_none_or(|c| s.holds_range((n - c.n_swa as i32).max(0), n))
    }

    /// Lowest and highest position of sequence `seq` (-1, -1: empty).
    pub fn seq_pos_range(&self, seq: u32) -> (i32, i32) {
        let s = &self.streams[seq as usize];
        (s.full.pos_min(), s.pos_max())
    }

    /// Serialises sequence 0 (session files).
    pub fn write_state(&self) -> Result<Vec<u8>> {
        self.streams[0].write_state()
    }

    /// Restores sequence 0 from `write_state`'s bytes.
    pub fn read_state(&mut self, data: &[u8]) -> Result<()> {
        self.streams[0].read_state(data)
    }

    /// Sequence 0's cell bookkeeping (for session files and tests).
    pub fn cells_state(&self) -> (Vec<i32>, u32, Option<CellsState>) {
        self.streams[0].cells_state()
    }
}

impl Stream {
    fn cells(&self, kind: CacheKind) -> &Cells {
        match kind {
            CacheKind::Full => &self.full,
            CacheKind::Swa => self.swa.as_ref().expect("swa cache exists for swa layers"),
        }
    }

    pub fn slot(&self, kind: CacheKind) -> &Slot {
        match kind {
            CacheKind::Full => &self.slot_full,
            CacheKind::Swa => &self.slot_swa,
        }
    }

    /// Empties the stream (data stays; masks hide it).
    pub fn clear(&mut self) {
        self.full = Cells::new(self.full.size(), 0);
        if let Some(s) = &self.swa {
            self.swa = Some(Cells::new(s.size(), s.n_swa));
        }
    }

    fn remove_range(&mut self, p0: i32, p1: i32) {
        self.full.remove_range(p0, p1);
        if let Some(s) = &mut self.swa {
            s.remove_range(p0, p1);
        }
    }

    /// Whether every position in [p0, p1) is held by every cache (a sliding-window cache loses
    /// positions that left its window).
    pub fn holds_range(&self, p0: i32, p1: i32) -> bool {
        let holds = |c: &Cells| (p0..p1).all(|p| c.pos.contains(&p));
        holds(&self.full) && self.swa.as_ref().is_none_or(holds)
    }

    /// Highest position stored (-1: empty).
    pub fn pos_max(&self) -> i32 {
        self.full.pos_max().max(self.swa.as_ref().map_or(-1, |s| s.pos_max()))
    }

    /// Cells a micro-batch's attention visits in cache `kind` (after `prepare`).
    pub fn n_kv(&self, kind: CacheKind) -> u32 {
        self.slot(kind).n_kv
    }

    fn prepare(&mut self, seq: u32, positions: &[i32]) -> Result<()> {
        let n = positions.len() as u32;
        let full_err = || anyhow::Error::new(crate::error::KvCacheFull { seq, cells: self.full.size() });
        let full = self.full.find_slot(n).ok_or_else(full_err)?;
        let swa = match &self.swa {
            Some(s) => Some(s.find_slot(n).ok_or_else(|| anyhow::Error::new(crate::error::KvCacheFull { seq, cells: s.size() }))?),
            None => None,
        };
        self.full.apply(&full, positions);
        self.slot_full = Slot { n_kv: self.full.n_kv(), idxs: full };
        if let (Some(s), Some(idxs)) = (&mut self.swa, swa) {
            s.apply(&idxs, positions);
            self.slot_swa = Slot { n_kv: s.n_kv(), idxs };
        }
        self.zero_to_n_kv()
    }

    /// Zeroes the cells attention is about to visit for the first time. Masked cells still enter
    /// the kernels (a masked weight times a NaN left in memory is NaN), so every visited cell must
    /// hold data or zeros; llama.cpp clears the whole buffer up front, which makes all of it
    /// resident, while most runs visit a fraction of the context.
    fn zero_to_n_kv(&mut self) -> Result<()> {
        for (ci, kind) in [CacheKind::Full, CacheKind::Swa].into_iter().enumerate() {
            let Some(cells) = (if ci == 0 { Some(&self.full) } else { self.swa.as_ref() }) else { continue };
            let (from, to, size) = (self.zeroed[ci] as usize, cells.n_kv() as usize, cells.size() as usize);
            if to <= from {
                continue;
            }
            for il in 0..self.layers.len() {
                if self.layers[il].kind != kind {
                    continue;
                }
                let (kb, vb) = self.row_bytes(il);
                let l = &self.layers[il];
                l.k.zero_range((l.base + from) * kb, (to - from) * kb)?;
                if self.v_trans {
                    let es = l.v.ty().type_size();
                    for j in 0..l.v.ne()[0] as usize {
                        l.v.zero_range(self.v_elem(il, size, j, from) * es, (to - from) * es)?;
                    }
                } else {
                    l.v.zero_range((l.base + from) * vb, (to - from) * vb)?;
                }
            }
            self.zeroed[ci] = to as u32;
        }
        Ok(())
    }

    /// Layer `il`'s K tensor (every stream's) and the first cell of this stream in it.
    pub fn k(&self, il: usize) -> (&Tensor, usize) {
        (&self.layers[il].k, self.layers[il].base)
    }

    /// Layer `il`'s V tensor (every stream's) and the first cell of this stream in it.
    pub fn v(&self, il: usize) -> (&Tensor, usize) {
        (&self.layers[il].v, self.layers[il].base)
    }

    /// Cells of this stream's cache of `kind`.
    pub fn size(&self, kind: CacheKind) -> u32 {
        self.cells(kind).size()
    }

    /// Index of element (j, cell i) of layer `il`'s transposed V (`size`: the stream's cells).
    fn v_elem(&self, il: usize, size: usize, j: usize, i: usize) -> usize {
        let l = &self.layers[il];
        l.base * l.v.ne()[0] as usize + j * size + i
    }

    /// The mask for the current micro-batch in cache `kind`: [n_kv, n_tokens] values.
    pub fn mask(&self, kind: CacheKind, positions: &[i32]) -> Vec<f32> {
        let n_kv = self.slot(kind).n_kv as usize;
        let mut out = vec![0f32; n_kv * positions.len()];
        self.cells(kind).fill_mask(n_kv, positions, &mut out);
        out
    }

    /// Row indices (in the layer's tensor of every stream) for storing K of the current
    /// micro-batch.
    pub fn k_idxs(&self, kind: CacheKind) -> Vec<i64> {
        let base = (self.base_of(kind)) as i64;
        self.slot(kind).idxs.iter().map(|&i| base + i as i64).collect()
    }

    /// This stream's first cell in the tensors of cache `kind`.
    fn base_of(&self, kind: CacheKind) -> usize {
        self.layers.iter().find(|l| l.kind == kind).map_or(0, |l| l.base)
    }

    /// Element indices for storing V: per token its row index, or with a transposed V one index
    /// per element (j * kv_size + cell), as llama.cpp's `set_input_v_idxs`.
    pub fn v_idxs(&self, kind: CacheKind, n_embd_v_gqa: u32) -> Vec<i64> {
        let idxs = &self.slot(kind).idxs;
        let base = self.base_of(kind) as i64;
        if !self.v_trans {
            return idxs.iter().map(|&i| base + i as i64).collect();
        }
        let kv_size = self.cells(kind).size() as i64;
        let gqa = n_embd_v_gqa as i64;
        let mut out = Vec::with_capacity(idxs.len() * n_embd_v_gqa as usize);
        for &i in idxs {
            for j in 0..gqa {
                out.push(base * gqa + j * kv_size + i as i64);
            }
        }
        out
    }

    /// Snapshot of the cell bookkeeping (for session files): the full cache's cell positions and
    /// head, and the sliding-window cache's.
    pub fn cells_state(&self) -> (Vec<i32>, u32, Option<CellsState>) {
        (self.full.pos.clone(), self.full.head, self.swa.as_ref().map(|s| (s.pos.clone(), s.head)))
    }
}

/// One cache's cell positions and search head.
pub type CellsState = (Vec<i32>, u32);

/// A little-endian reader over a saved state that turns every shortfall into a BadInput error.
struct StateReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> StateReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            crate::bail_input!("session KV state is truncated");
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

impl Stream {
    /// Row bytes of one cell in layer `il`: (K bytes, V bytes).
    fn row_bytes(&self, il: usize) -> (usize, usize) {
        let (k, v) = (&self.layers[il].k, &self.layers[il].v);
        (k.ty().row_size(k.ne()[0]), v.ty().row_size(v.ne()[0]))
    }

    /// Serialises the cache: layout parameters, used cells and their K/V rows.
    pub fn write_state(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, x: u32| out.extend_from_slice(&x.to_le_bytes());
        put(&mut out, self.layers.len() as u32);
        put(&mut out, self.type_k.id());
        put(&mut out, self.type_v.id());
        put(&mut out, self.v_trans as u32);
        let caches: Vec<&Cells> = std::iter::once(&self.full).chain(self.swa.as_ref()).collect();
        put(&mut out, caches.len() as u32);
        for c in &caches {
            put(&mut out, c.size());
            put(&mut out, c.head);
            let used: Vec<(usize, i32)> = c.pos.iter().copied().enumerate().filter(|&(_, p)| p >= 0).collect();
            put(&mut out, used.len() as u32);
            for (i, p) in used {
                put(&mut out, i as u32);
                put(&mut out, p as u32);
            }
        }
        for il in 0..self.layers.len() {
            let cells = self.cells(self.layers[il].kind);
            let (kb, vb) = self.row_bytes(il);
            let (k, v, base) = (&self.layers[il].k, &self.layers[il].v, self.layers[il].base);
            let mut buf = vec![0u8; kb.max(vb)];
            let (size, es, gqa) = (cells.size() as usize, v.ty().type_size(), v.ne()[0] as usize);
            // a transposed V is gathered from a copy of this stream's block
            let v_all = if self.v_trans {
                let mut b = vec![0u8; gqa * size * es];
                v.read_range(self.v_elem(il, size, 0, 0) * es, &mut b)?;
                b
            } else {
                Vec::new()
            };
            for (i, _) in cells.pos.iter().enumerate().filter(|&(_, &p)| p >= 0) {
                k.read_range((base + i) * kb, &mut buf[..kb])?;
                out.extend_from_slice(&buf[..kb]);
                if self.v_trans {
                    // element j of cell i lives at j * size + i of the block
                    for j in 0..gqa {
                        let at = (j * size + i) * es;
                        out.extend_from_slice(&v_all[at..at + es]);
                    }
                } else {
                    v.read_range((base + i) * vb, &mut buf[..vb])?;
                    out.extend_from_slice(&buf[..vb]);
                }
            }
        }
        Ok(out)
    }

    /// Restores a state written by `write_state` for a cache of the same layout; anything else
    /// (another model, other cache types or sizes, a damaged state) is a BadInput error and
    /// leaves the cache empty.
    pub fn read_state(&mut self, data: &[u8]) -> Result<()> {
        self.clear();
        let r = self.read_state_inner(data);
        if r.is_err() {
            self.clear();
        }
        r
    }

    fn read_state_inner(&mut self, data: &[u8]) -> Result<()> {
        let mut r = StateReader { data, pos: 0 };
        let mismatch = |what: &str| crate::bad_input!("session KV state was saved with a different {what}");
        if r.u32()? as usize != self.layers.len() {
            return Err(mismatch("layer count"));
        }
        if r.u32()? != self.type_k.id() || r.u32()? != self.type_v.id() {
            return Err(mismatch("KV cache type (--cache-type-k/-v)"));
        }
        if (r.u32()? != 0) != self.v_trans {
            return Err(mismatch("flash-attention setting"));
        }
        let n_caches = r.u32()? as usize;
        if n_caches != 1 + self.swa.is_some() as usize {
            return Err(mismatch("cache layout"));
        }
        for ci in 0..n_caches {
            let size = r.u32()?;
            let head = r.u32()?;
            let n_used = r.u32()?;
            let cells = if ci == 0 { &mut self.full } else { self.swa.as_mut().expect("checked") };
            if size != cells.size() {
                return Err(mismatch("context size (-c)"));
            }
            if head > size || n_used > size {
                crate::bail_input!("session KV state is damaged (cell counts)");
            }
            for _ in 0..n_used {
                let i = r.u32()?;
                let p = r.u32()? as i32;
                if i >= size || p < 0 || cells.pos[i as usize] >= 0 {
                    crate::bail_input!("session KV state is damaged (cell {i})");
                }
                cells.pos[i as usize] = p;
                cells.used += 1;
            }
            cells.head = head;
        }
        self.zero_to_n_kv()?;
        for il in 0..self.layers.len() {
            let kind = self.layers[il].kind;
            let used: Vec<usize> = self.cells(kind).pos.iter().enumerate().filter(|&(_, &p)| p >= 0).map(|(i, _)| i).collect();
            let size = self.cells(kind).size() as usize;
            let (kb, vb) = self.row_bytes(il);
            let (v, base) = (self.layers[il].v.clone(), self.layers[il].base);
            let (es, gqa) = (v.ty().type_size(), v.ne()[0] as usize);
            let block = self.v_elem(il, size, 0, 0) * es;
            let mut v_all = if self.v_trans {
                let mut b = vec![0u8; gqa * size * es];
                v.read_range(block, &mut b)?;
                b
            } else {
                Vec::new()
            };
            for i in used {
                self.layers[il].k.write_range((base + i) * kb, r.take(kb)?)?;
                if self.v_trans {
                    for j in 0..gqa {
                        let at = (j * size + i) * es;
                        v_all[at..at + es].copy_from_slice(r.take(es)?);
                    }
                } else {
                    v.write_range((base + i) * vb, r.take(vb)?)?;
                }
            }
            if self.v_trans {
                v.write_range(block, &v_all)?;
            }
        }
        if r.pos != data.len() {
            crate::bail_input!("session KV state has {} trailing bytes", data.len() - r.pos);
        }
        Ok(())
    }
}

/// The orthonormal Walsh–Hadamard matrix of size n (a power of two), row-major; H·H = I.
/// Same construction as llama.cpp's `ggml_gen_hadamard` (Sylvester doubling from 1/sqrt(n)).
pub fn hadamard(n: usize) -> Vec<f32> {
    let mut d = vec![0f32; n * n];
    d[0] = 1.0 / (n as f32).sqrt();
    let mut s = 1;
    while s < n {
        for i in 0..s {
            for j in 0..s {
                let v = d[i * n + j];
                d[(i + s) * n + j] = v;
                d[i * n + j + s] = v;
                d[(i + s) * n + j + s] = -v;
            }
        }
        s *= 2;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_in_order_and_pad_n_kv() {
        let mut c = Cells::new(1024, 0);
        let idx = c.find_slot(5).unwrap();
        assert_eq!(idx, vec![0, 1, 2, 3, 4]);
        c.apply(&idx, &[0, 1, 2, 3, 4]);
        assert_eq!(c.n_kv(), 256);
        let idx = c.find_slot(1).unwrap();
        assert_eq!(idx, vec![5]);
    }

    #[test]
    fn sliding_window_reuses_cells_out_of_the_window() {
        let mut c = Cells::new(8, 4);
        let pos: Vec<i32> = (0..8).collect();
        let idx = c.find_slot(8).unwrap();
        c.apply(&idx, &pos);
        // position 8 sees 5..=8; cells holding 0..=4 are reusable.
        let idx = c.find_slot(1).unwrap();
        assert_eq!(idx, vec![0]);
        c.apply(&idx, &[8]);
        assert_eq!(c.pos[0], 8);
        let mut m = vec![0f32; 8];
        c.fill_mask(8, &[8], &mut m);
        let visible: Vec<i32> = (0..8).filter(|&j| m[j] == 0.0).map(|j| c.pos[j]).collect();
        assert_eq!(visible, vec![8, 5, 6, 7]);
    }

    #[test]
    fn hadamard_is_orthonormal() {
        let n = 64;
        let h = hadamard(n);
        for i in 0..n {
            for j in 0..n {
                let dot: f32 = (0..n).map(|k| h[i * n + k] * h[j * n + k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }
}
