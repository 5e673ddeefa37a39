//! Greedy decoding from token ids, printing the same JSON as llama.cpp's `greedy_ref`
//! (prompt ids, generated ids, first-step top-5 logits): a tool for parity debugging.
//! usage: greedy_ids MODEL N_PREDICT ID... (env FA=off, CACHE=q8_0, THREADS=n, UB=n)

use ferrite::decoder::{ContextOptions, Decoder, FlashAttn};
use ferrite::model::{LoadOptions, Model};
use std::rc::Rc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = Rc::new(Model::load(std::path::Path::new(&args[1]), LoadOptions::default(), &mut |_, _| {})?);
    let n_predict: usize = args[2].parse()?;
    let prompt: Vec<u32> = args[3..].iter().map(|s| s.parse().unwrap()).collect();
    let mut opts = ContextOptions { n_ctx: 1024, n_batch: 1024, n_threads: 2, ..Default::default() };
    if std::env::var("FA").as_deref() == Ok("off") {
        opts.flash_attn = FlashAttn::Off;
    }
    if let Ok(c) = std::env::var("CACHE") {
        opts.type_k = ggml::Type::from_name(&c).unwrap();
        opts.type_v = opts.type_k;
    }
    if let Ok(t) = std::env::var("THREADS") {
        opts.n_threads = t.parse()?;
    }
    if let Ok(u) = std::env::var("UB") {
        opts.n_ubatch = u.parse()?;
    }
    let mut dec = Decoder::new(model, &opts)?;
    let n_vocab = dec.n_vocab();
    let mut logits = Vec::new();
    dec.decode(&prompt, 0, &[prompt.len() as u32 - 1], &mut logits)?;
    let mut top5: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    top5.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    top5.truncate(5);
    let mut out = Vec::new();
    for pos in prompt.len()..prompt.len() + n_predict {
        let best = (0..n_vocab).fold(0, |b, v| if logits[v] > logits[b] { v } else { b }) as u32;
        out.push(best);
        if std::env::var("EOG").map(|e| e.split(',').any(|x| x == best.to_string())).unwrap_or(false) {
            break;
        }
        logits.clear();
        dec.decode(&[best], pos as i32, &[0], &mut logits)?;
    }
    let ids = |v: &[u32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let t5: Vec<String> = top5.iter().map(|(i, l)| format!("[{i},{l:.5}]")).collect();
    println!("{{\"prompt_ids\":[{}],\"generated_ids\":[{}],\"first_top5\":[{}]}}", ids(&prompt), ids(&out), t5.join(","));
    Ok(())
}
