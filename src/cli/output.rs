//! stdout discipline: only answers go to stdout; a closed stdout (`| head`) ends the program
//! quietly with exit code 0; any other failed write (a full disk: `> /dev/full`) is a runtime
//! failure, exit 1 with one line.

use std::io::Write;

/// The reader closed stdout; the command stops and exits 0.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writing to stdout failed for another reason than a closed reader: the answer was lost.
#[derive(Debug)]
pub struct StdoutFailed(pub std::io::Error);

impl std::fmt::Display for StdoutFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the answer to stdout failed: {}", super::files::io_message(&self.0))
    }
}

impl std::error::Error for StdoutFailed {}

fn map(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(StdoutFailed(e))
    }
}

/// Writes `s` to stdout and flushes.
pub fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).map_err(map)?;
    out.flush().map_err(map)
}

pub fn println(s: &str) -> anyhow::Result<()> {
    print(&format!("{s}\n"))
}

/// Whether an error means stdout was closed (a normal way to end).
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<StdoutClosed>().is_some())
}

/// Whether an error is a failed write to stdout (closed or not): the REPL cannot go on.
pub fn is_stdout_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<StdoutClosed>().is_some() || c.downcast_ref::<StdoutFailed>().is_some())
}
