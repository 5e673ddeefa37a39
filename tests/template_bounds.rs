//! Chat templates cannot take the process down, through the real binary: values a template builds
//! (strings, lists, `namespace` attributes doubled in a loop) are bounded as they grow, so such a
//! template is exit 2 with one line — never a multi-gigabyte allocation, an abort or a hang — and
//! `ferrite info` renders the model's template on a sample conversation and fails on one that does not render.
//! (The memory bound lives in the binary's global allocator, `ggml::budget`, so only the binary can
//! show it; `tests/chat_templates.rs` covers the engine's fuel, recursion and output limits.)

mod support;

use std::time::Duration;
use support::{ferrite, scratch, Gguf, Outcome};

/// The memory bound stops a doubling loop within a few hundred MB: a second or two here.
const LIMIT: Duration = Duration::from_secs(20);

fn assert_refused(o: &Outcome, needle: &str) {
    assert_eq!(o.signal, None, "{:?}: killed by signal {:?}; stderr: {}", o.args, o.signal, o.stderr);
    assert_eq!(o.code, Some(2), "{:?}: exit {:?}; stderr: {}", o.args, o.code, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{:?}: want one stderr line, got: {}", o.args, o.stderr);
    assert!(lines[0].starts_with("ferrite: ") && lines[0].contains(needle), "{:?}: {}", o.args, lines[0]);
    assert!(o.wall < LIMIT, "{:?}: took {:?}", o.args, o.wall);
}

/// Templates whose values double 60 times (2^60 elements or bytes if nothing stopped them).
const GROWING: [(&str, &str); 5] = [
    ("string-tilde", "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"),
    ("string-plus", "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"),
    ("list-join", "{% set ns = namespace(l=[1, 2]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|join(',') }}"),
    (
        "list-string",
        "{% set ns = namespace(l=['x']) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|string|length }}",
    ),
    (
        "repeat-format",
        "{% set ns = namespace(s='abcd') %}{% for i in range(60) %}{% set ns.s = '%s%s'|format(ns.s, ns.s) %}{% endfor %}{{ ns.s|length }}",
    ),
];

#[test]
fn growing_template_values_are_exit_2() {
    let dir = scratch("template-bounds");
    for (name, src) in GROWING {
        let f = dir.join(format!("{name}.jinja"));
        std::fs::write(&f, src).unwrap();
        let fs = f.to_str().unwrap();
        let o = ferrite(&["run", "--chat-template", fs, "-n", "1", "-q", "hello"], LIMIT * 2);
        assert_refused(&o, "memory limit");
        assert!(o.stdout.is_empty(), "{name}: stdout {:?}", o.stdout);
    }
}

/// A model file whose own template fails: `info` prints the whole report, says so in it, and
/// exits 2 naming the failure; a template that renders is reported as such.
#[test]
fn info_renders_the_models_template() {
    let dir = scratch("template-info");
    let o = ferrite(&["info"], LIMIT);
    assert_eq!(o.code, Some(0), "info on smollm2: {}", o.stderr);
    assert!(o.stdout.lines().any(|l| l.starts_with("chat template") && l.contains("renders a sample conversation")), "{}", o.stdout);

    let cases = [
        ("raises", "{{ raise_exception('roles must alternate') }}", "roles must alternate"),
        ("undefined-call", "{% for m in messages %}{{ m.content|no_such_filter }}{% endfor %}", "no_such_filter"),
        ("grows", GROWING[0].1, "memory limit"),
    ];
    for (name, src, needle) in cases {
        let mut g = Gguf::smollm2();
        g.set_str("tokenizer.chat_template", src);
        let p = dir.join(format!("{name}.gguf"));
        g.write(&p);
        let o = ferrite(&["info", "-m", p.to_str().unwrap()], LIMIT);
        assert_refused(&o, needle);
        if needle != "memory limit" {
            // the report came first, with the verdict in it
            assert!(o.stdout.lines().any(|l| l.starts_with("chat template") && l.contains("FAILS")), "{name}: {}", o.stdout);
            let j = ferrite(&["info", "--json", "-m", p.to_str().unwrap()], LIMIT);
            assert_eq!(j.code, Some(2), "{name} --json: {}", j.stderr);
            let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
            assert_eq!(v["tokenizer"]["chat_template_check"]["ok"], false, "{name}: {}", j.stdout);
        }
    }
}
