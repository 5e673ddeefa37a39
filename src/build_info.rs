//! What this binary was built for (recorded by `build.rs`): the git commit, the ggml package,
//! and the CPU features the compiler was allowed to use — with the start-up check that refuses,
//! by name, a CPU lacking one of them instead of letting the first such instruction kill the
//! process with SIGILL.

/// The git commit the binary was built from ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("FERRITE_GIT_COMMIT");

/// The version of `llama-cpp-sys-2`, whose ggml sources ferrite links.
pub const LLAMA_CPP_SYS: &str = env!("FERRITE_LLAMA_CPP_SYS");

/// Every target feature rustc enabled, comma-separated (`CARGO_CFG_TARGET_FEATURE`).
const TARGET_FEATURES: &str = env!("FERRITE_TARGET_FEATURES");

/// The vector features that matter for the kernels and that can be checked at run time, by
/// rustc's names, each with its run-time test. ggml is compiled for the same machine
/// (GGML_NATIVE through `target-cpu=native`), so this list covers its instructions too.
#[cfg(target_arch = "x86_64")]
fn checks() -> Vec<(&'static str, bool)> {
    macro_rules! detect {
        ($($f:tt),* $(,)?) => { vec![$(($f, std::arch::is_x86_feature_detected!($f))),*] };
    }
    detect!(
        "sse3",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi1",
        "bmi2",
        "lzcnt",
        "movbe",
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avx512vbmi",
        "avx512vbmi2",
        "avx512bitalg",
        "avx512vpopcntdq",
        "avx512ifma",
        "avxvnni",
        "gfni",
        "vaes",
        "vpclmulqdq",
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn checks() -> Vec<(&'static str, bool)> {
    Vec::new()
}

/// The checkable vector features this binary was compiled to use, in a fixed order.
pub fn required_features() -> Vec<&'static str> {
    let enabled: Vec<&str> = TARGET_FEATURES.split(',').collect();
    checks()
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| enabled.contains(f))
        .collect()
}

/// The required features this CPU lacks (empty: it can run the binary). The environment variable
/// `FERRITE_CPU_HIDE` (comma-separated rustc names) makes the check treat features as absent,
/// so that the refusal can be tested on a machine that has them all.
pub fn missing_features() -> Vec<&'static str> {
    let enabled: Vec<&str> = TARGET_FEATURES.split(',').collect();
    let hidden = std::env::var("FERRITE_CPU_HIDE").unwrap_or_default();
    let hidden: Vec<&str> = hidden.split(',').map(str::trim).collect();
    checks()
        .into_iter()
        .filter(|(f, have)| enabled.contains(f) && (!have || hidden.contains(f)))
        .map(|(f, _)| f)
        .collect()
}

/// One-line refusal for a CPU that lacks features the binary needs, or None.
pub fn cpu_mismatch() -> Option<String> {
    let missing = missing_features();
    (!missing.is_empty()).then(|| {
        format!(
            "this binary was built for a CPU with {} ({}), which this CPU lacks; rebuild ferrite on this machine \
             (`cargo build --release`: the build targets the CPU it runs on)",
            missing.join(", "),
            if missing.len() == 1 { "an instruction set extension" } else { "instruction set extensions" }
        )
    })
}

/// The multi-line `--version` text: version, commit, ggml, and the CPU features required.
pub fn long_version() -> String {
    format!(
        "{} (commit {GIT_COMMIT})\nggml {} (llama-cpp-sys-2 {LLAMA_CPP_SYS})\nbuilt for: {} with {}",
        env!("CARGO_PKG_VERSION"),
        ggml::version(),
        std::env::consts::ARCH,
        required_features().join(" ")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_runs_what_it_built() {
        assert!(
            super::missing_features().is_empty(),
            "{:?}",
            super::missing_features()
        );
        #[cfg(target_arch = "x86_64")]
        assert!(
            super::required_features().contains(&"sse3"),
            "{:?}",
            super::required_features()
        );
    }
}
