//! `ferrite info`: what a model file is and whether it fits, after every load-time validation.

use super::ModelArgs;
use anyhow::Result;
use ferrite::gguf::GgufFile;
use ferrite::model::Model;
use ferrite::tokenizer::Tokenizer;
use ferrite::{catalogue, info};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context size for the memory plan (default: the model's, capped at 4096)
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx: Option<u32>,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: Args) -> Result<()> {
    ferrite::decoder::check_ctx_size(a.ctx.unwrap_or(0))?;
    let path = catalogue::resolve(a.model.model.as_deref())?;
    let file = GgufFile::open(&path)?;
    let (arch, hp) = Model::check(&file)?;
    // the vocabulary must make a working tokenizer, as `run` and `tokenize` need
    let tok = Tokenizer::from_gguf(&file)?;
    let mut report = info::Report::new(&file, arch, &hp, a.ctx)?;
    report.template_check = info::check_chat_template(&file, &tok)?;
    if a.json {
        let v = report.to_json();
        super::output::println(&serde_json::to_string_pretty(&v)?)?;
    } else {
        super::output::print(&report.to_text())?;
    }
    // the whole report first, then the verdict: a template that fails makes the file unusable
    // for `run` and `chat` (they would fail on the first prompt), so `info` fails too
    if let Some(Err(e)) = &report.template_check {
        ferrite::bail_input!("the model's chat template fails on a sample conversation: {e}");
    }
    Ok(())
}
