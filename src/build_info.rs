//! What this binary was built for (recorded by `build.rs`): the git commit, the ggml package,
//! and the CPU features the compiler was allowed to use — with the start-up check that refuses,
//! by name, a CPU lacking one of them instead of letting the first such instruction kill the
//! process with SIGILL.
//!
//! The check reads CPUID itself: `is_x86_feature_detected!` answers `true` without asking the CPU
//! for every feature the build enables (it is `cfg!(target_feature) || runtime`), which is exactly
//! the case to catch. It runs first in `main`, is plain scalar code, and on a refusal writes only
//! static text through std's precompiled writer, so that it cannot itself use an instruction the
//! CPU lacks (code of this crate may be auto-vectorised with them: clap's parser was, seen under
//! `qemu-x86_64 -cpu Haswell`).

use std::io::Write;

/// The git commit the binary was built from ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("FERRITE_GIT_COMMIT");

/// The version of `llama-cpp-sys-2`, whose ggml sources ferrite links.
pub const LLAMA_CPP_SYS: &str = env!("FERRITE_LLAMA_CPP_SYS");

// REQUIRED: (rustc's feature name, CPUID leaf, subleaf, register 0..3 = eax..edx, bit) of every
// feature the build enables that CPUID reports (ggml is compiled for the same machine, through
// GGML_NATIVE, so this covers its instructions too).
include!(concat!(env!("OUT_DIR"), "/required_cpu.rs"));

/// Whether this CPU reports the CPUID bit.
#[cfg(target_arch = "x86_64")]
fn cpu_has(leaf: u32, subleaf: u32, reg: u8, bit: u8) -> bool {
    // leaves above the CPU's maximum return garbage: ask for the range's maximum first
    if ggml::cpuid(leaf & 0x8000_0000, 0)[0] < leaf {
        return false;
    }
    (ggml::cpuid(leaf, subleaf)[reg.min(3) as usize] >> bit) & 1 == 1
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_: u32, _: u32, _: u8, _: u8) -> bool {
    true
}

/// Whether `FERRITE_CPU_HIDE` (comma-separated rustc names, for tests) hides `name`.
fn hidden(name: &str) -> bool {
    std::env::var("FERRITE_CPU_HIDE").is_ok_and(|v| v.split(',').any(|h| h.trim() == name))
}

/// The vector features this binary was compiled to use, in a fixed order.
pub fn required_features() -> Vec<&'static str> {
    REQUIRED.iter().map(|r| r.0).collect()
}

/// The required features this CPU lacks (empty: it can run the binary). `FERRITE_CPU_HIDE`
/// makes the check treat features as absent, so the refusal can be tested on a machine that has
/// them all.
pub fn missing_features() -> Vec<&'static str> {
    REQUIRED.iter().filter(|&&(name, leaf, sub, reg, bit)| !cpu_has(leaf, sub, reg, bit) || hidden(name)).map(|r| r.0).collect()
}

/// Exits with status 1 and one line naming the missing features when this CPU lacks one the
/// build needs. Call it first in `main`.
pub fn refuse_unsupported_cpu() {
    let mut missing = false;
    for &(name, leaf, sub, reg, bit) in REQUIRED {
        if !cpu_has(leaf, sub, reg, bit) || hidden(name) {
            missing = true;
        }
    }
    if !missing {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"ferrite: this binary was built for CPU features this CPU lacks:");
    for &(name, leaf, sub, reg, bit) in REQUIRED {
        if !cpu_has(leaf, sub, reg, bit) || hidden(name) {
            let _ = err.write_all(b" ");
            let _ = err.write_all(name.as_bytes());
        }
    }
    let _ = err.write_all(b"; rebuild ferrite on this machine (`cargo build --release` targets the CPU it runs on)\n");
    std::process::exit(1);
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
        assert!(super::missing_features().is_empty(), "{:?}", super::missing_features());
        #[cfg(target_arch = "x86_64")]
        assert!(super::required_features().contains(&"sse3"), "{:?}", super::required_features());
    }

    /// CPUID agrees with std's detection for features the build does not assume (where std
    /// really asks the CPU).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cpuid_bits_agree_with_std() {
        assert_eq!(super::cpu_has(1, 0, 2, 0), std::arch::is_x86_feature_detected!("sse3"));
        assert_eq!(super::cpu_has(7, 0, 1, 5), std::arch::is_x86_feature_detected!("avx2"));
        assert_eq!(super::cpu_has(7, 0, 1, 16), std::arch::is_x86_feature_detected!("avx512f"));
    }
}
