//! Where the integration tests find the project's shared folder (references, tools).

use std::path::{Path, PathBuf};

/// `$FERRITE_SHARED` (set by scripts/test.sh), else `../shared` beside the checkout, else
/// `/work/shared` (a checkout elsewhere, e.g. a worktree or a fresh clone in /tmp).
pub fn shared() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRITE_SHARED") {
        return PathBuf::from(d);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if beside.join("reference").is_dir() {
        beside
    } else {
        PathBuf::from("/work/shared")
    }
}
