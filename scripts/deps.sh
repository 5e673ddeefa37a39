#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test ferrite (cmake, libclang-dev for
# bindgen, a C++ compiler, tmux for the REPL tests) — or, without root, prints the exact command
# to run. Sourced by run.sh/test.sh.
set -euo pipefail
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v tmux >/dev/null || missing+=(tmux)
command -v qemu-x86_64 >/dev/null || missing+=(qemu-user)  # a test runs the binary on an emulated older CPU (Haswell)  # the REPL tests drive `ferrite chat` in a tmux pseudo-terminal
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
  else
    echo "missing: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || { echo "cargo is missing; install Rust: https://rustup.rs (curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh)" >&2; exit 1; }
