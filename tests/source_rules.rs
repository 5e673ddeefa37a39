//! Rules of the code base checked on its Rust sources: ferrite never references a `llama_*`
//! function of llama.cpp (only ggml's `ggml_*`/`gguf_*` items of llama-cpp-sys-2), all `unsafe`
//! lives in `ggml/` with a `// SAFETY:` line, and every file opens with a `//!` line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target" && n != "golden") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["src", "ggml/src", "tests", "examples", "fuzz/fuzz_targets"] {
        if root.join(d).is_dir() {
            rust_files(&root.join(d), &mut files);
        }
    }
    files.push(root.join("build.rs"));
    files.retain(|p| p.is_file());
    assert!(files.len() > 40, "found only {} source files", files.len());
    files
}

/// The code of a line: string literals blanked, `//` comments dropped (good enough for this
/// code base's style, where no string holds `//` followed by an identifier we look for).
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
            continue;
        }
        if c == '"' {
            in_str = true;
            out.push_str("\"\"");
        } else if c == '/' && chars.peek() == Some(&'/') {
            break;
        } else {
            out.push(c);
        }
        prev = c;
    }
    out
}

fn identifiers(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|s| !s.is_empty())
}

#[test]
fn no_llama_function_is_referenced() {
    let mut hits = Vec::new();
    for f in sources() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = code_of(line);
            for id in identifiers(&code) {
                if id.starts_with("llama_") && id != "llama_cpp_sys_2" {
                    hits.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "llama.cpp's llama_* API is off limits (ggml_*/gguf_* only):\n{}", hits.join("\n"));
}

#[test]
fn rule_checker_sees_a_llama_call() {
    let call = format!("    let ctx = unsafe {{ sys::{}_init_from_model(m, p) }}; // {}_x in a comment", "llama", "llama");
    let code = code_of(&call);
    assert_eq!(identifiers(&code).filter(|id| id.starts_with("llama_")).count(), 1);
    assert_eq!(identifiers(&code_of(&format!("let s = \"{}_decode\";", "llama"))).filter(|id| id.starts_with("llama_")).count(), 0);
}

#[test]
fn unsafe_lives_in_ggml_with_a_safety_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut outside = Vec::new();
    let mut unexplained = Vec::new();
    let mut count = 0;
    for f in sources() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let in_ggml = f.starts_with(root.join("ggml"));
        for (i, line) in lines.iter().enumerate() {
            let code = code_of(line);
            if !identifiers(&code).any(|id| id == "unsafe") {
                continue;
            }
            if !in_ggml {
                outside.push(format!("{}:{}", f.display(), i + 1));
                continue;
            }
            count += 1;
            // `unsafe fn`/`unsafe impl` declare a contract (documented with `# Safety`); blocks
            // need a `// SAFETY:` comment on one of the few lines above or on the line itself.
            if code.contains("unsafe fn") || code.contains("unsafe impl") || code.contains("unsafe extern") {
                let documented = lines[i.saturating_sub(12)..=i].iter().any(|l| l.contains("SAFETY") || l.contains("# Safety"));
                if !documented {
                    unexplained.push(format!("{}:{}", f.display(), i + 1));
                }
                continue;
            }
            let explained = lines[i.saturating_sub(6)..=i].iter().any(|l| l.contains("// SAFETY:"));
            if !explained {
                unexplained.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(outside.is_empty(), "unsafe outside ggml/:\n{}", outside.join("\n"));
    assert!(unexplained.is_empty(), "unsafe without a // SAFETY: line:\n{}", unexplained.join("\n"));
    assert!(count > 10, "the ggml layer has only {count} unsafe sites?");
}

#[test]
fn every_file_says_what_it_owns() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading //! line:\n{}", missing.join("\n"));
}
