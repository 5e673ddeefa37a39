//! The `ferrite` command line: parses flags (clap), runs a subcommand, maps errors to exit codes.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
