//! Build script: records what this binary is built for — the git commit, the llama-cpp-sys-2
//! (ggml) package, and the x86 vector features the compiler may use (`-C target-cpu=native` in
//! `.cargo/config.toml` turns on every feature of the building machine, for ferrite's kernel and,
//! through GGML_NATIVE, for ggml) — so that `ferrite --version` and `info` show them and the binary
//! can refuse to start, naming the feature, on a CPU that lacks one (instead of dying of SIGILL).

use std::process::Command;

fn main() {
    // The features rustc enables for this target, e.g. "avx,avx2,fma,...,sse4.2".
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    println!("cargo:rustc-env=FERRITE_TARGET_FEATURES={features}");
    println!(
        "cargo:rustc-env=FERRITE_GIT_COMMIT={}",
        git_commit().unwrap_or_else(|| "unknown".into())
    );
    println!(
        "cargo:rustc-env=FERRITE_LLAMA_CPP_SYS={}",
        locked_version("llama-cpp-sys-2").unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The commit changes with HEAD or with the branch it names; nothing else is watched, so that
    // staging files does not rebuild the crate.
    // Only paths that exist (cargo reruns a script on every build for a missing one; in a git
    // worktree `.git` is a file).
    let mut watch = vec![".git/HEAD".to_string(), ".git/packed-refs".to_string()];
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            watch.push(format!(".git/{r}"));
        }
    }
    for p in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// A package's version as Cargo.lock pins it.
fn locked_version(name: &str) -> Option<String> {
    let lock = std::fs::read_to_string("Cargo.lock").ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}
