//! Batch invariance at the decoder: sequences decoded together in one batch get, bit for bit, the
//! logits they get alone — prompts of different lengths prefilled together, then greedy steps of
//! every sequence at once — on both models, with flash attention on and off and a quantized cache.
//! (`tests/batch.rs` checks the same through `ferrite batch` against `run` and llama.cpp.)

use ferrite::decoder::{Batch, ContextOptions, Decoder, FlashAttn};
use ferrite::model::{LoadOptions, Model};
use std::rc::Rc;

const MODELS: [&str; 2] = ["models/SmolLM2-135M-Instruct.Q4_1.gguf", "models/gemma-3-270m-q4_k_m.gguf"];

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Prompts of assorted lengths (token ids drawn from the vocabulary), one crossing a micro-batch,
/// and with `long`, one of that length.
fn prompts(n_vocab: u32, n_ubatch: usize, long: Option<usize>) -> Vec<Vec<u32>> {
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut lens = vec![1, 5, 17, 4, n_ubatch + 9, 33];
    lens.extend(long);
    lens.iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % n_vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// Greedy tokens and every step's logits bits, for each prompt alone in a one-sequence context.
fn alone(model: &Rc<Model>, opts: &ContextOptions, prompt: &[u32], n_gen: usize) -> Vec<Vec<u32>> {
    let mut dec = Decoder::new(model.clone(), opts).unwrap();
    let mut logits = Vec::new();
    dec.decode(prompt, 0, &[prompt.len() as u32 - 1], &mut logits).unwrap();
    let mut steps = vec![logits.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()];
    for pos in prompt.len()..prompt.len() + n_gen {
        let t = argmax(&logits);
        logits.clear();
        dec.decode(&[t], pos as i32, &[0], &mut logits).unwrap();
        steps.push(logits.iter().map(|x| x.to_bits()).collect());
    }
    steps
}

fn check(model_path: &str, flash: FlashAttn, cache: ggml::Type, repack: bool) {
    check_ctx(model_path, flash, cache, repack, 1024, None);
}

/// As `check` with a context of `n_ctx` cells a sequence and, with `long`, a prompt of that length.
fn check_ctx(model_path: &str, flash: FlashAttn, cache: ggml::Type, repack: bool, n_ctx: u32, long: Option<usize>) {
    let lo = LoadOptions { use_extra_bufts: repack, ..LoadOptions::default() };
    let model = Rc::new(Model::load(std::path::Path::new(model_path), lo, &mut |_, _| {}).unwrap());
    let n_vocab = model.hparams.n_vocab;
    let one = ContextOptions { n_ctx, n_ubatch: 64, n_batch: 256, flash_attn: flash, type_k: cache, type_v: cache, ..Default::default() };
    let ps = prompts(n_vocab, one.n_ubatch as usize, long);
    let n_gen = 6;
    let want: Vec<_> = ps.iter().map(|p| alone(&model, &one, p, n_gen)).collect();

    let many = ContextOptions { n_seq: ps.len() as u32, ..one.clone() };
    let mut dec = Decoder::new(model.clone(), &many).unwrap();
    // every prompt in one batch, then one token per sequence per step
    let mut batch = Batch::default();
    for (s, p) in ps.iter().enumerate() {
        for (i, &t) in p.iter().enumerate() {
            batch.add(t, i as i32, s as u32, i + 1 == p.len());
        }
    }
    let mut logits = Vec::new();
    dec.decode_batch(&batch, &mut logits).unwrap();
    let nv = n_vocab as usize;
    let mut pos: Vec<i32> = ps.iter().map(|p| p.len() as i32).collect();
    for step in 0..=n_gen {
        for (s, w) in want.iter().enumerate() {
            let got: Vec<u32> = logits[s * nv..(s + 1) * nv].iter().map(|x| x.to_bits()).collect();
            let diff = got.iter().zip(&w[step]).filter(|(a, b)| a != b).count();
            assert_eq!(
                diff,
                0,
                "{model_path} {flash:?} {cache}: sequence {s} (prompt of {}) step {step}: {diff} logits differ",
                ps[s].len()
            );
        }
        if step == n_gen {
            break;
        }
        batch.clear();
        for s in 0..ps.len() {
            batch.add(argmax(&logits[s * nv..(s + 1) * nv]), pos[s], s as u32, true);
            pos[s] += 1;
        }
        logits.clear();
        dec.decode_batch(&batch, &mut logits).unwrap();
    }
}

#[test]
fn sequences_in_a_batch_get_their_logits_alone() {
    for m in MODELS {
        check(m, FlashAttn::Auto, ggml::Type::F16, true);
        check(m, FlashAttn::Off, ggml::Type::F16, true);
        check(m, FlashAttn::Auto, ggml::Type::Q8_0, true);
    }
    // without ggml's repacked layouts, gemma3's K-quant weights meet ggml's tiled kernel instead
    check(MODELS[1], FlashAttn::Auto, ggml::Type::F16, false);
    // a prompt of 280 among short ones: its attention visits 512 cells (a generated token's is
    // then ggml's split-cells path, one chunk a thread), the others' 256
    for m in MODELS {
        check_ctx(m, FlashAttn::Auto, ggml::Type::F16, true, 320, Some(280));
    }
}

/// A sequence whose stream is full gets a typed error the caller can act on; the other
/// sequences and the cache stay usable.
#[test]
fn a_full_cache_is_a_typed_error() {
    let model = Rc::new(Model::load(std::path::Path::new(MODELS[0]), LoadOptions::default(), &mut |_, _| {}).unwrap());
    let opts = ContextOptions { n_ctx: 256, n_seq: 2, ..Default::default() };
    let mut dec = Decoder::new(model, &opts).unwrap();
    let mut logits = Vec::new();
    let mut batch = Batch::default();
    for i in 0..256 {
        batch.add(1, i, 0, false);
    }
    batch.add(2, 0, 1, true);
    dec.decode_batch(&batch, &mut logits).unwrap();
    let is_full = |e: anyhow::Error| e.downcast_ref::<ferrite::error::KvCacheFull>().map(|f| f.seq);
    // past the end of the context
    let mut b2 = Batch::default();
    b2.add(3, 256, 0, true);
    assert_eq!(dec.decode_batch(&b2, &mut logits).map_err(is_full).unwrap_err(), Some(0));
    // no free cell (a position already held, added again without removing it first); the
    // failed micro-batch leaves nothing behind
    let mut b2 = Batch::default();
    b2.add(3, 10, 0, true);
    assert_eq!(dec.decode_batch(&b2, &mut logits).map_err(is_full).unwrap_err(), Some(0));
    assert_eq!(dec.kv.seq_pos_range(0), (0, 255));
    // the other sequence goes on
    let mut b3 = Batch::default();
    b3.add(4, 1, 1, true);
    logits.clear();
    dec.decode_batch(&b3, &mut logits).unwrap();
    assert_eq!(logits.len(), dec.n_vocab());
}
