//! ferrite's core library: GGUF loading, tokenizer, models, sampling and sessions.
//! Front ends (the `ferrite` binary) own all terminal I/O; nothing here imports clap,
//! rustyline or indicatif.

pub mod arch;
pub mod atomic_file;
pub mod bench;
pub mod build_info;
pub mod catalogue;
pub mod chat;
pub mod decoder;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod grammar;
pub mod graph;
pub mod imatrix;
pub mod info;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod placement;
pub mod quantize;
pub mod sampling;
pub mod session;
pub mod session_file;
pub mod tokenizer;
