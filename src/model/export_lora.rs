//! Merging LoRA adapters into a model file (`ferrite export-lora`), by llama.cpp's
//! `llama-export-lora` method: every adapted weight `W` becomes `W + Σ s·(B·A)` computed in f32
//! with ggml's own operations (dequantize `W`, `mul_mat(cont(transpose(A)), B)`, `scale`, `add`,
//! adapters in the order given), then stored as F16 (F32 if `W` was F32); other tensors are
//! copied as they are. The metadata is the base's with `general.file_type` set to F16 (moved
//! last, as ggml's `gguf_set_val_u32` does) and the tensors are written in name order (the
//! `std::map` llama-export-lora walks), so the output has the same bytes as llama.cpp's for the
//! same inputs. The file is written under a temporary name and renamed into place.

use super::lora::LoraAdapter;
use crate::gguf::writer::{TensorEntry, Writer};
use crate::gguf::{GgufFile, Value};
use anyhow::{Context as _, Result};
use ggml::{BufferType, Context, Device, Graph, Sched, Type};
use std::path::{Path, PathBuf};

/// `general.file_type` of the output: llama.cpp's `LLAMA_FTYPE_MOSTLY_F16`.
const FTYPE_MOSTLY_F16: u32 = 1;

/// What a merge wrote.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub merged: usize,
    pub copied: usize,
    pub bytes: u64,
}

/// Merges the adapters `loras` (path, user scale) into the model at `base_path` and writes
/// the result to `out`. `progress` hears (tensors done, total, name) as it goes.
pub fn export(
    base_path: &Path,
    loras: &[(PathBuf, f32)],
    out: &Path,
    n_threads: usize,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Summary> {
    if loras.is_empty() {
        crate::bail_input!("give at least one adapter (--lora FILE or --lora-scaled FILE:SCALE)");
    }
    let base = GgufFile::open(base_path)?;
    let mut adapters = Vec::new();
    for (p, scale) in loras {
        if !scale.is_finite() {
            crate::bail_input!("{}: the scale {scale} is not a finite number", p.display());
        }
        adapters.push((LoraAdapter::load(p, &base)?, *scale));
    }
    crate::gguf::writer::check_target(out, base_path, "merged model", "base model")?;

    let mut kv: Vec<(String, Value)> = base.metadata().iter().filter(|(k, _)| k != "general.file_type").cloned().collect();
    kv.push(("general.file_type".into(), Value::U32(FTYPE_MOSTLY_F16)));
    let mut infos: Vec<&crate::gguf::TensorInfo> = base.tensors().iter().collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let adapted = |name: &str| adapters.iter().any(|(a, _)| a.pair(name).is_some());
    let entries: Vec<TensorEntry> = infos
        .iter()
        .map(|t| {
            let ty = match (adapted(&t.name), t.ty) {
                (false, ty) => ty,
                (true, Type::F32) => Type::F32,
                (true, _) => Type::F16,
            };
            TensorEntry { name: t.name.clone(), ty, ne: t.ne, n_dims: t.n_dims }
        })
        .collect();

    let backend = Device::cpu()?.init_backend()?;
    backend.set_n_threads(n_threads.max(1));
    let mut w = Writer::create(out, &kv, entries, base.alignment as usize)?;
    let mut summary = Summary::default();
    let total = infos.len();
    for (i, t) in infos.iter().enumerate() {
        progress(i, total, &t.name);
        let data = base.tensor_data(t);
        if adapted(&t.name) {
            let merged = merge(t, data, &adapters, &backend).with_context(|| format!("merging {}", t.name))?;
            w.write_tensor(&merged)?;
            summary.merged += 1;
            summary.bytes += merged.len() as u64;
        } else {
            w.write_tensor(data)?;
            summary.copied += 1;
            summary.bytes += data.len() as u64;
        }
    }
    progress(total, total, "");
    w.finish()?;
    Ok(summary)
}

/// `W + Σ s·(B·A)` for one weight, as F16 bytes (F32 when `W` is F32).
fn merge(t: &crate::gguf::TensorInfo, data: &[u8], adapters: &[(LoraAdapter, f32)], backend: &ggml::Backend) -> Result<Vec<u8>> {
    // the base in f32 (llama-export-lora dequantizes it on the host with the type's to_float)
    let w32: Vec<f32> = if t.ty == Type::F32 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        ggml::dequantize(t.ty, data, t.ne[0] as usize)?
    };
    let wctx = Context::new(1, 0)?;
    let inp = wctx.new_tensor(Type::F32, &t.ne[..t.n_dims]);
    let _buf = BufferType::cpu().alloc_ctx_tensors(&wctx)?;
    let bytes: Vec<u8> = w32.iter().flat_map(|x| x.to_le_bytes()).collect();
    inp.write_bytes(&bytes)?;

    let gctx = Context::new(16 * adapters.len() + 8, 16 * adapters.len() + 8)?;
    let f32_of = |x: &ggml::Tensor| if x.ty() == Type::F32 { x.clone() } else { gctx.cast(x, Type::F32) };
    let mut cur = inp.clone();
    for (a, scale) in adapters {
        let Some((ta, tb, rank)) = a.pair(&t.name) else { continue };
        // the embedding's pair is transposed (A [r, n_vocab], B [r, n_embd]), as llama-export-lora
        // treats it; experts' 3-D pairs multiply expert by expert
        let delta = if t.name.starts_with("token_embd") {
            gctx.mul_mat(&f32_of(tb), &f32_of(ta))
        } else {
            gctx.mul_mat(&gctx.cont(&gctx.transpose(&f32_of(ta))), &f32_of(tb))
        };
        let delta = gctx.scale(&delta, a.scale(*scale, rank));
        cur = gctx.add(&delta, &cur);
    }
    let out_ty = if t.ty == Type::F32 { Type::F32 } else { Type::F16 };
    let out = if out_ty == Type::F32 { cur } else { gctx.cast(&cur, Type::F16) };
    let g = Graph::new(&gctx, 16 * adapters.len() + 8)?;
    g.expand(&out);
    let mut sched = Sched::new(std::slice::from_ref(backend), 16 * adapters.len() + 8, false)?;
    sched.alloc(&g)?;
    sched.compute(&g)?;
    let n = out.nelements() as usize;
    Ok(if out_ty == Type::F32 {
        let mut v = vec![0f32; n];
        sched.read(&g, &out, 0, &mut v)?;
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        let mut v = vec![0u16; n];
        sched.read(&g, &out, 0, &mut v)?;
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    })
}
