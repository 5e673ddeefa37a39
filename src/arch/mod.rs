//! One file per architecture: hyper-parameters, tensors, graph. Shared pieces live in
//! `crate::graph`; dispatch is `crate::model::Arch`.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
