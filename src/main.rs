//! The `ferrite` command line: parses flags (clap), runs a subcommand, maps errors to exit codes.

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
