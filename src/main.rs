//! The `ferrite` command line: parses flags (clap), runs a subcommand, maps errors to exit codes.

/// `eprintln!` that cannot panic. std's panics when the write to stderr fails (`2>>log` on a full
/// disk), which would turn a finished answer into exit 101 and lose the run's real exit code; a
/// lost log line is the lesser harm. Every stderr line of the binary goes through these two.
macro_rules! stderrln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that cannot panic (see [`stderrln!`]).
macro_rules! stderr {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod server;

/// The system allocator with per-thread budgets: chat-template rendering is bounded by one.
#[global_allocator]
static ALLOC: ggml::budget::BudgetAlloc = ggml::budget::BudgetAlloc;

fn main() {
    // first of all: on a CPU without a feature this build uses, one line instead of SIGILL
    ferrite::build_info::refuse_unsupported_cpu();
    std::process::exit(cli::main());
}
