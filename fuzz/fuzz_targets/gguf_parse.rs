//! Fuzz target: arbitrary bytes through the GGUF parser and everything `ferrite info` validates
//! after it (architecture, hyper-parameters, tensor plan, vocabulary, tokenizer). Any panic or
//! abort is a bug; errors are the expected outcome.
#![no_main]

use ferrite::gguf::GgufFile;
use ferrite::model::Model;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return };
    for (k, _) in file.metadata() {
        let _ = file.get_str(k);
        let _ = file.get_u32(k);
        let _ = file.get_array(k);
    }
    for t in file.tensors() {
        let _ = file.tensor_data(t).len();
    }
    let _ = Model::check(&file);
    if let Ok(v) = ferrite::gguf::vocab::VocabMeta::from_gguf(&file) {
        let _ = ferrite::tokenizer::Tokenizer::from_vocab(&v, &Default::default()).map(|t| t.encode("hello <s> world", true, true));
    }
});
