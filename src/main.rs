//! The `ferrite` command line.
fn main() {}
