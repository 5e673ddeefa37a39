#!/usr/bin/env bash
# The main job on a fresh machine: installs build dependencies, fetches the default model, builds
# ferrite in release mode and answers a prompt.  usage: scripts/run.sh ["PROMPT"]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
models/fetch.sh smollm2
cargo build --release --quiet
exec target/release/ferrite run "${1:-What is the capital of France? Answer in one sentence.}"
