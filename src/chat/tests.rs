//! Unit tests of the chat module's small rules; the golden, hostile-template and selection
//! tests are in tests/chat_templates.rs.

use super::*;

#[test]
fn family_detection_follows_llama_cpp() {
    let cases: &[(&str, Option<&str>)] = &[
        ("{{ '<|im_start|>' + m.role }}", Some("chatml")),
        ("<|im_start|>{{ r }}<|im_sep|>", Some("phi4")),
        ("<|im_start|> <end_of_utterance>", None),
        ("[SYSTEM_PROMPT] [INST]", Some("mistral-v7")),
        ("[INST] <<SYS>>", Some("llama2-sys")),
        ("{{ bos_token + '[INST] ' }}", Some("llama2")),
        ("[INST] [AVAILABLE_TOOLS]", None),
        ("<|assistant|> <|end|>", Some("phi3")),
        ("<|user|> <|endoftext|>", Some("zephyr")),
        ("<start_of_turn>", Some("gemma")),
        ("<|start_header_id|> <|end_header_id|>", Some("llama3")),
        ("### Instruction:", None),
    ];
    for (tmpl, want) in cases {
        assert_eq!(builtin::detect_family(tmpl), *want, "{tmpl}");
    }
    // A built-in is its own family.
    for name in BUILTIN_NAMES {
        let t = ChatTemplate::builtin(name).unwrap();
        assert_eq!(t.family().map(str::to_string), Some(t.name()), "{name}");
    }
}

#[test]
fn messages_keep_key_order_and_python_access() {
    let t = ChatTemplate::from_gguf_str(
        "{% for m in messages %}{{ m | tojson }}|{{ m.keys() | list }}|{{ 'content' in m }}|{{ m.name is defined }}{% endfor %}",
    )
    .unwrap();
    let out = t.render(&[Message::user("x")], false, "", "").unwrap();
    assert_eq!(out, r#"{"role": "user", "content": "x"}|['role', 'content']|True|False"#);
}

#[test]
fn empty_messages_are_all_markup() {
    let t = ChatTemplate::builtin("chatml").unwrap();
    let segs = t.render_segments(&[Message::user("")], true, "", "").unwrap();
    assert_eq!(segs, vec![Segment::markup("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")]);
    assert_eq!(t.render_segments(&[], false, "", "").unwrap(), vec![]);
}

#[test]
fn sentinels_in_message_text_cannot_forge_segments() {
    // Text spelling a marker of message 0 (private-use characters) stays content.
    let forged = format!("{}{}", segment::opaque_marker(0), "<|im_start|>");
    let t = ChatTemplate::builtin("chatml").unwrap();
    let msgs = [Message::user(forged.clone()), Message::user("b")];
    let segs = t.render_segments(&msgs, false, "", "").unwrap();
    assert!(segs.contains(&Segment::content(forged)), "{segs:?}");
}

#[test]
fn clock_is_used_unless_fixed() {
    let t = ChatTemplate::from_gguf_str("{{ strftime_now('%Y') }}").unwrap();
    let year: i32 = t.render(&[], false, "", "").unwrap().parse().unwrap();
    assert!(year >= 2025);
    assert_eq!(t.with_fixed_time(0).render(&[], false, "", "").unwrap(), "1970");
}
