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
    println!("cargo:rustc-env=FERRITE_GIT_COMMIT={}", git_commit().unwrap_or_else(|| "unknown".into()));
    println!("cargo:rustc-env=FERRITE_LLAMA_CPP_SYS={}", locked_version("llama-cpp-sys-2").unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-changed=Cargo.lock");
    required_cpu(&features);
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
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// A package's version as Cargo.lock pins it.
fn locked_version(name: &str) -> Option<String> {
    let lock = std::fs::read_to_string("Cargo.lock").ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}

/// Where each checkable x86 feature is reported: (rustc's name, CPUID leaf, subleaf, register
/// 0 eax / 1 ebx / 2 ecx / 3 edx, bit) — Intel SDM vol. 2A, CPUID.
const CPUID_BITS: &[(&str, u32, u32, u8, u8)] = &[
    ("sse3", 1, 0, 2, 0),
    ("ssse3", 1, 0, 2, 9),
    ("fma", 1, 0, 2, 12),
    ("sse4.1", 1, 0, 2, 19),
    ("sse4.2", 1, 0, 2, 20),
    ("movbe", 1, 0, 2, 22),
    ("popcnt", 1, 0, 2, 23),
    ("avx", 1, 0, 2, 28),
    ("f16c", 1, 0, 2, 29),
    ("bmi1", 7, 0, 1, 3),
    ("avx2", 7, 0, 1, 5),
    ("bmi2", 7, 0, 1, 8),
    ("avx512f", 7, 0, 1, 16),
    ("avx512dq", 7, 0, 1, 17),
    ("avx512ifma", 7, 0, 1, 21),
    ("avx512cd", 7, 0, 1, 28),
    ("avx512bw", 7, 0, 1, 30),
    ("avx512vl", 7, 0, 1, 31),
    ("avx512vbmi", 7, 0, 2, 1),
    ("avx512vbmi2", 7, 0, 2, 6),
    ("gfni", 7, 0, 2, 8),
    ("vaes", 7, 0, 2, 9),
    ("vpclmulqdq", 7, 0, 2, 10),
    ("avx512vnni", 7, 0, 2, 11),
    ("avx512bitalg", 7, 0, 2, 12),
    ("avx512vpopcntdq", 7, 0, 2, 14),
    ("avxvnni", 7, 1, 0, 4),
    ("avx512bf16", 7, 1, 0, 5),
    ("lzcnt", 0x8000_0001, 0, 2, 5),
];

/// Writes `$OUT_DIR/required_cpu.rs`: the CPUID bits of every enabled feature that CPUID reports.
fn required_cpu(features: &str) {
    let enabled: Vec<&str> = features.split(',').collect();
    let mut src = String::from("/// The CPUID bits of the features this build was compiled to use (written by build.rs).\n");
    src.push_str("pub const REQUIRED: &[(&str, u32, u32, u8, u8)] = &[\n");
    for (name, leaf, sub, reg, bit) in CPUID_BITS {
        if enabled.contains(name) {
            src.push_str(&format!("    ({name:?}, {leaf:#x}, {sub}, {reg}, {bit}),\n"));
        }
    }
    src.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("required_cpu.rs"), src).expect("writing required_cpu.rs");
}
