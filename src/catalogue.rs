//! Known models by name (models/catalogue.tsv) and resolution of a model argument to a file.

use crate::bail_input;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The model used when no `-m` is given.
pub const DEFAULT_MODEL: &str = "smollm2";

const CATALOGUE: &str = include_str!("../models/catalogue.tsv");

/// A known model: its short name, file name and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownModel {
    pub name: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
}

pub fn known_models() -> Vec<KnownModel> {
    CATALOGUE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(KnownModel { name: f.next()?, file: f.next()?, sha256: f.next()? })
        })
        .collect()
}

/// Folders searched for known models, in order.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("FERRITE_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    let cache = std::env::var_os("FERRITE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ferrite")));
    if let Some(c) = cache {
        dirs.push(c.join("models"));
    }
    dirs
}

/// Resolves a model argument: an existing path, or a known name (None: the default model).
pub fn resolve(arg: Option<&str>) -> Result<PathBuf> {
    let arg = arg.unwrap_or(DEFAULT_MODEL);
    let as_path = Path::new(arg);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let known = known_models();
    if let Some(m) = known.iter().find(|m| m.name == arg) {
        for d in search_dirs() {
            let p = d.join(m.file);
            if p.is_file() {
                return Ok(p);
            }
        }
        bail_input!("model '{}' is not downloaded; run: models/fetch.sh {}", m.name, m.name);
    }
    let names: Vec<&str> = known.iter().map(|m| m.name).collect();
    bail_input!("{arg}: no such file, and not a known model name (known: {})", names.join(", "))
}
