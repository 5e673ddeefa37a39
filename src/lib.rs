//! ferrite's core library: GGUF loading, tokenizer, models, sampling and sessions.
