//! Command-line front end: clap definitions, dispatch, and the exit-code/stderr discipline.
//! Exit codes: 0 ok, 1 runtime failure, 2 bad input or usage, 130 interrupted.

mod info;
pub mod output;
mod tokenize;

use clap::{Parser, Subcommand};
use ferrite::error::{exit_code, one_line};

#[derive(Parser, Debug)]
#[command(name = "ferrite", version, about = "A local, single-binary LLM runner on ggml", max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show a model's architecture, hyper-parameters, tokenizer and memory plan (validates the file)
    Info(info::Args),
    /// Print a text's token ids (reads only the model's vocabulary)
    Tokenize(tokenize::Args),
}

/// Options shared by the subcommands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF path or a known name (smollm2, gemma3); default smollm2
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: Option<String>,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let result = match cli.cmd {
        Some(Cmd::Info(a)) => info::main(a),
        Some(Cmd::Tokenize(a)) => tokenize::main(a),
        None => Err(ferrite::bad_input!("no subcommand given; try `ferrite --help`")),
    };
    match result {
        Ok(()) => 0,
        Err(e) if output::is_stdout_closed(&e) => 0,
        Err(e) => {
            eprintln!("ferrite: {}", one_line(&e));
            exit_code(&e)
        }
    }
}
