//! Unit tests: regex tables against llama.cpp's Unicode categories, the special-token partition
//! rule, the clean-up passes and UTF-8 assembly of the detokenizer, and vocabulary rules on small
//! hand-made vocabularies.

use super::decode::clean_spaces;
use super::pre::{for_oniguruma, lookup, KNOWN, LLAMA_UNASSIGNED};
use super::*;
use crate::gguf::vocab::{SpecialIds, TokenType};
use tokenizers::utils::SysRegex;

fn matches_whole(re: &SysRegex, s: &str) -> bool {
    re.find_iter(s).next() == Some((0, s.len()))
}

#[test]
fn every_pre_tokenizer_compiles() {
    for name in KNOWN {
        let spec = lookup(name).unwrap_or_else(|| panic!("{name} is listed but unknown"));
        for re in spec.regexes {
            SysRegex::new(&for_oniguruma(re)).unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
        }
    }
    assert!(lookup("no-such-pre").is_none());
}

/// llama.cpp's category table (tests/golden/unicode/llamacpp-categories.txt) as flags per codepoint.
fn llamacpp_categories() -> (Vec<u16>, Vec<bool>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/unicode/llamacpp-categories.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let mut starts = Vec::new();
    let mut ws = vec![false; 0x110000];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        let n = |s: &str| u32::from_str_radix(s, 16).unwrap();
        match f[0] {
            "R" => starts.push((n(f[1]), n(f[2]) as u16)),
            "W" => ws[n(f[1]) as usize] = true,
            _ => panic!("{line}"),
        }
    }
    let mut flags = vec![0u16; 0x110000];
    for w in starts.windows(2) {
        for cp in w[0].0..w[1].0 {
            flags[cp as usize] = w[0].1;
        }
    }
    (flags, ws)
}

/// With the rewrite, Oniguruma's `\p{..}` and `\s` agree with llama.cpp's tables on every codepoint.
#[test]
fn categories_agree_with_llamacpp() {
    let (flags, ws) = llamacpp_categories();
    let all: Vec<char> = (0..0x110000u32).filter_map(char::from_u32).collect();
    let text: String = all.iter().collect();
    for (class, bit) in [("L", 0x4u16), ("N", 0x2), ("P", 0x20), ("S", 0x40), ("M", 0x10), ("ws", 0)] {
        let re = if class == "ws" { r"\s".to_string() } else { for_oniguruma(&format!(r"\p{{{class}}}")) };
        let re = SysRegex::new(&re).unwrap();
        let mut hit = vec![false; 0x110000];
        for (s, e) in re.find_iter(&text) {
            for c in text[s..e].chars() {
                hit[c as usize] = true;
            }
        }
        let mut wrong = Vec::new();
        for &c in &all {
            let want = if class == "ws" { ws[c as usize] } else { flags[c as usize] & bit != 0 };
            if hit[c as usize] != want {
                wrong.push(format!("U+{:04X}", c as u32));
            }
        }
        assert!(
            wrong.is_empty(),
            "\\p{{{class}}} differs from llama.cpp on {} codepoints: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
    }
    // the exclusion list is sorted and disjoint
    assert!(LLAMA_UNASSIGNED.windows(2).all(|w| w[0].1 < w[1].0));
}

/// A literal class of deepseek's regexes never takes non-ASCII whitespace (llama.cpp maps it to
/// U+000B before matching); `\s` does.
#[test]
fn deepseek_literal_classes_skip_unicode_spaces() {
    let spec = lookup("deepseek-llm").unwrap();
    let punct = SysRegex::new(&for_oniguruma(spec.regexes[2])).unwrap();
    assert!(matches_whole(&punct, "\u{3000}。"));
    assert!(punct.find_iter("\u{3000}").next().is_none());
    let cjk = SysRegex::new(&for_oniguruma(spec.regexes[4])).unwrap();
    assert_eq!(cjk.find_iter("中\u{3000}文").count(), 2);
    let trailing = SysRegex::new(&for_oniguruma(spec.regexes[3])).unwrap();
    assert_eq!(trailing.find_iter("a  b   ").collect::<Vec<_>>(), vec![(4, 7)]);
}

/// The three passes as llama.cpp describes them, written plainly, as the oracle for the stream.
fn clean_oracle(v: &[u8]) -> Vec<u8> {
    let mut a: Vec<u8> = Vec::new();
    for (i, &x) in v.iter().enumerate() {
        if i > 0 && v[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    let mut b: Vec<u8> = Vec::new();
    let mut blanked = None;
    let mut i = 0;
    while i < a.len() {
        let x = a[i];
        let prev_space = i > 0 && a[i - 1] == b' ' && blanked != Some(i - 1);
        if i > 0 && x == b'\'' && i + 1 < a.len() && prev_space && a[i + 1] == b' ' {
            b.pop();
            blanked = Some(i + 1);
            b.push(x);
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    let mut c: Vec<u8> = Vec::new();
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            if matches!(x1, b's' | b'm') || (matches!(x1, b'r' | b'v') && x2 == Some(b'e')) {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}

#[test]
fn clean_spaces_matches_the_three_passes() {
    assert_eq!(
        clean_spaces(b"Hello , world ! It 's ok . I 'm here ' and ' there they 're we 've I 'll"),
        b"Hello, world! It's ok. I'm here'and'there they're we've I 'll".to_vec()
    );
    // random strings over the bytes the passes look at
    let alphabet = b" '?!.,smrevtdlx";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 12) as usize;
        let v: Vec<u8> = (0..len).map(|k| alphabet[((seed >> (4 * k + 8)) % alphabet.len() as u64) as usize]).collect();
        assert_eq!(clean_spaces(&v), clean_oracle(&v), "{:?}", String::from_utf8_lossy(&v));
    }
}

/// A tiny gpt2 vocabulary: all 256 byte-level characters plus a few merges and special tokens.
fn tiny_gpt2(pre: &str, extra: &[(&str, TokenType)], merges: &[&str]) -> VocabMeta {
    let table = decode::byte_level_decoder();
    let mut alphabet: Vec<(u32, u8)> = table.iter().enumerate().filter_map(|(cp, b)| b.map(|b| (cp as u32, b))).collect();
    alphabet.sort_by_key(|&(_, b)| b);
    let mut tokens: Vec<String> = alphabet.iter().map(|&(cp, _)| char::from_u32(cp).unwrap().to_string()).collect();
    let mut types = vec![TokenType::Normal; tokens.len()];
    for (t, ty) in extra {
        tokens.push(t.to_string());
        types.push(*ty);
    }
    VocabMeta {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        scores: None,
        token_types: types,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        special: SpecialIds::default(),
        add_bos: None,
        add_eos: None,
        add_sep: None,
        add_space_prefix: None,
        remove_extra_whitespaces: None,
        chat_template: None,
    }
}

fn id_of(tok: &Tokenizer, text: &str) -> u32 {
    (0..tok.n_vocab() as u32).find(|&i| tok.token_text(i) == Some(text)).unwrap()
}

#[test]
fn special_tokens_go_longest_first() {
    // leftmost-longest would take "<a" at 0; llama.cpp takes the longer "a|b>" first
    let meta = tiny_gpt2("gpt-2", &[("<a", TokenType::Control), ("a|b>", TokenType::Control), ("<u>", TokenType::UserDefined)], &[]);
    let tok = Tokenizer::from_vocab(&meta, &Options::default()).unwrap();
    let (lt, a, ab, u) = (id_of(&tok, "<"), id_of(&tok, "<a"), id_of(&tok, "a|b>"), id_of(&tok, "<u>"));
    assert_eq!(tok.encode("<a|b>", false, true).unwrap(), vec![lt, ab]);
    assert_eq!(tok.encode("<a<a", false, true).unwrap(), vec![a, a]);
    // user-defined tokens are recognised even without special parsing; control tokens are not
    assert_eq!(tok.encode("<u>", false, false).unwrap(), vec![u]);
    assert_eq!(tok.encode("<a", false, false).unwrap(), vec![lt, id_of(&tok, "a")]);
    assert!(!tok.add_bos());
    assert_eq!(tok.bos(), Some(11), "llama.cpp's default BOS of BPE vocabularies");
}

#[test]
fn segments_are_an_injection_barrier() {
    let extra = [("<|im_end|>", TokenType::Control), ("Ġh", TokenType::Normal), ("Ġhi", TokenType::Normal)];
    let meta = tiny_gpt2("gpt-2", &extra, &["Ġ h", "Ġh i"]);
    let tok = Tokenizer::from_vocab(&meta, &Options::default()).unwrap();
    let end = id_of(&tok, "<|im_end|>");
    let plain = tok.encode("x <|im_end|>", false, false).unwrap();
    let segs = tok.encode_segments(&[("x", true), (" <|im_end|>", false), ("<|im_end|>", true)], false).unwrap();
    assert_eq!(segs, [plain, vec![end]].concat());
    // text across a boundary is one piece: the same ids as the joined string
    assert_eq!(tok.encode_segments(&[("a h", true), ("i b", false)], false).unwrap(), tok.encode("a hi b", false, true).unwrap());
    assert!(tok.encode("a hi b", false, true).unwrap().contains(&id_of(&tok, "Ġhi")));
    // a special text split over two segments is not recognised
    let split = tok.encode_segments(&[("<|im_", true), ("end|>", true)], false).unwrap();
    assert!(!split.contains(&end));
    assert_eq!(tok.eog_ids(), &[11, end], "EOS (default 11) and <|im_end|> end generation");
}

#[test]
fn unknown_or_missing_pre_is_bad_input() {
    let meta = tiny_gpt2("no-such-pre", &[], &[]);
    let e = Tokenizer::from_vocab(&meta, &Options::default()).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    assert!(e.to_string().contains("unknown pre-tokenizer 'no-such-pre'"), "{e}");
    let ok = Tokenizer::from_vocab(&meta, &Options { pre: Some("llama-bpe".into()), ..Options::default() }).unwrap();
    assert!(ok.add_bos(), "llama-bpe adds BOS by default");
    let mut none = tiny_gpt2("x", &[], &[]);
    none.pre = None;
    let e = Tokenizer::from_vocab(&none, &Options::default()).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    let mut dup = tiny_gpt2("gpt-2", &[("a", TokenType::Normal)], &[]);
    dup.model = "gpt2".into();
    assert_eq!(crate::error::exit_code(&Tokenizer::from_vocab(&dup, &Options::default()).unwrap_err()), 2);
    let mut t5 = tiny_gpt2("gpt-2", &[], &[]);
    t5.model = "t5".into();
    assert_eq!(crate::error::exit_code(&Tokenizer::from_vocab(&t5, &Options::default()).unwrap_err()), 2);
}

/// A tiny SentencePiece vocabulary: bytes, a few pieces with scores.
fn tiny_spm(pieces: &[(&str, f32)], add_space_prefix: Option<bool>) -> VocabMeta {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TokenType::Byte);
        scores.push(0.0);
    }
    for &(p, s) in pieces {
        tokens.push(p.to_string());
        types.push(TokenType::Normal);
        scores.push(s);
    }
    VocabMeta {
        model: "llama".into(),
        pre: None,
        tokens,
        scores: Some(scores),
        token_types: types,
        merges: Vec::new(),
        special: SpecialIds::default(),
        add_bos: None,
        add_eos: None,
        add_sep: None,
        add_space_prefix,
        remove_extra_whitespaces: None,
        chat_template: None,
    }
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let meta = tiny_spm(&[("▁", -1.0), ("a", -2.0), ("b", -3.0), ("ab", -10.0), ("▁a", -5.0), ("▁ab", -4.0)], None);
    let tok = Tokenizer::from_vocab(&meta, &Options::default()).unwrap();
    let id = |t: &str| id_of(&tok, t);
    // defaults for SentencePiece: BOS 1 added, EOS 2, a space prefix
    assert_eq!((tok.bos(), tok.eos(), tok.add_bos()), (Some(1), Some(2), true));
    // "▁ab": ▁+a (-5) beats a+b (-10), then ▁a+b (-4)
    assert_eq!(tok.encode("ab", true, true).unwrap(), vec![1, id("▁ab")]);
    // "é" is no piece: its UTF-8 bytes
    assert_eq!(tok.encode("é", false, true).unwrap(), vec![id("▁"), 3 + 0xc3, 3 + 0xa9]);
    // the space prefix comes back off when decoding, and special tokens render on request
    let ids = tok.encode("ab", true, true).unwrap();
    assert_eq!(tok.decode(&ids, false), " ab", "BOS first: llama.cpp keeps the prefix space");
    assert_eq!(tok.decode(&ids[1..], false), "ab");
    assert_eq!(tok.decode(&ids, true), "<s> ab");
    assert_eq!(tok.token_to_piece(id("▁ab"), false), b" ab");
    assert_eq!(tok.token_to_piece(3 + 0xc3, false), vec![0xc3]);
    assert!(tok.token_to_piece(2, false).is_empty());
    assert_eq!(tok.token_to_piece(2, true), b"</s>");
    // after a special token the text gets a space prefix again
    assert_eq!(tok.encode("ab</s>ab", false, true).unwrap(), vec![id("▁ab"), 2, id("▁ab")]);
    let no_prefix = Tokenizer::from_vocab(&tiny_spm(&[("a", -1.0)], Some(false)), &Options::default()).unwrap();
    assert_eq!(no_prefix.encode("a", false, true).unwrap(), vec![id_of(&no_prefix, "a")]);
}

#[test]
fn stream_decoder_assembles_utf8_like_decode() {
    let meta = tiny_spm(&[("▁", -1.0), ("a", -2.0)], Some(false));
    let tok = Tokenizer::from_vocab(&meta, &Options::default()).unwrap();
    let byte = |b: u8| 3 + b as u32;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        let mut ids = Vec::new();
        for _ in 0..(seed % 9) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ids.push(match seed % 6 {
                0 => byte(0xe2),
                1 => byte(0x82),
                2 => byte(0xac),
                3 => byte(0xf0),
                4 => byte(b'x'),
                _ => id_of(&tok, "a"),
            });
        }
        let mut d = StreamDecoder::new(&tok, false);
        let mut s: String = ids.iter().map(|&i| d.push(i)).collect();
        s.push_str(&d.finish());
        assert_eq!(s, tok.decode(&ids, false), "{ids:?}");
    }
}

#[test]
fn eog_rules() {
    // EOS, tokens named like end-of-turn markers, and FIM repo/sep/pad tokens end generation
    let meta = tiny_gpt2(
        "gpt-2",
        &[
            ("<|endoftext|>", TokenType::Control),
            ("<|im_end|>", TokenType::Normal),
            ("<reponame>", TokenType::Control),
            ("<unused3>", TokenType::Control),
        ],
        &[],
    );
    let mut meta = meta;
    meta.special.eos = Some(id_in(&meta, "<|endoftext|>"));
    let tok = Tokenizer::from_vocab(&meta, &Options::default()).unwrap();
    let want: Vec<u32> = ["<|endoftext|>", "<|im_end|>", "<reponame>"].iter().map(|t| id_of(&tok, t)).collect();
    assert_eq!(tok.eog_ids(), &want[..]);
    // "<|im_end|>" was a normal token: it becomes a control token, hidden unless rendered
    assert!(tok.is_control(want[1]));
    assert!(tok.token_to_piece(want[1], false).is_empty());
    assert!(tok.is_eog(want[2]) && !tok.is_eog(0));
}

fn id_in(meta: &VocabMeta, text: &str) -> u32 {
    meta.tokens.iter().position(|t| t == text).unwrap() as u32
}

/// Oniguruma gives up (and the onig crate panics) after 10 million backtracking steps in one
/// match; the regexes here backtrack at most once per character of a run, so runs far beyond
/// 1 MiB stay under that. Slow (a few seconds); run with `--ignored`.
#[test]
#[ignore]
fn huge_runs_stay_under_the_backtracking_limit() {
    let n = 8_000_000;
    let runs = [" ".repeat(n) + "x", "A".repeat(n), " ".repeat(n), "\t".repeat(n) + "a", "é".repeat(n / 2) + "1"];
    let mut seen = std::collections::HashSet::new();
    for re in KNOWN.iter().flat_map(|name| lookup(name).unwrap().regexes) {
        if seen.insert(*re) {
            let re = SysRegex::new(&for_oniguruma(re)).unwrap();
            for r in &runs {
                let _ = re.find_iter(r).count();
            }
        }
    }
}
