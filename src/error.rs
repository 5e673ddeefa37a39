//! Error kinds that decide ferrite's exit code: bad input (2), a failed check (3), interruption
//! (130), else runtime (1).

use std::fmt;

/// The input (a file, a flag, a prompt) is wrong: exit code 2. The message names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The user interrupted the operation (Ctrl-C): exit code 130.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A check the user asked for did not pass (`eval --min-accuracy`): exit code 3. The work itself
/// ran and its report was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailed(pub String);

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

/// Builds an `anyhow::Error` of kind [`BadInput`].
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => { ::anyhow::Error::new($crate::error::BadInput(format!($($arg)*))) };
}

/// Returns early with an error of kind [`BadInput`].
#[macro_export]
macro_rules! bail_input {
    ($($arg:tt)*) => { return Err($crate::bad_input!($($arg)*)) };
}

/// The process exit code for an error: 2 for bad input, 3 for a failed check, 130 for
/// interruption, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.downcast_ref::<BadInput>().is_some() {
            return 2;
        }
        if cause.downcast_ref::<Interrupted>().is_some() {
            return 130;
        }
        if cause.downcast_ref::<CheckFailed>().is_some() {
            return 3;
        }
    }
    1
}

/// The whole error chain on one line ("outer: inner: innermost"), for stderr.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// The KV cache has no free cells for a sequence's next tokens (its context is used up). The
/// caller decides: end that sequence (`stop_reason: length`), free room, or refuse the request;
/// the cache itself is left as it was before the failing micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCacheFull {
    /// The sequence that found no room.
    pub seq: u32,
    /// Cells its stream holds.
    pub cells: u32,
}

impl fmt::Display for KvCacheFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the KV cache is full ({} cells for sequence {})", self.cells, self.seq)
    }
}

impl std::error::Error for KvCacheFull {}
