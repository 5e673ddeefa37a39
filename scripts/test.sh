#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs build dependencies, fetches the models, makes
# the tiny random-weight models, builds llama.cpp's reference tools on this machine (the peer
# ferrite's parity tests compare against, on this machine's CPU), then runs every test.
# Needs nothing beside the clone: the reference data, the tiny-model maker and the llama.cpp build
# script are in the repository.
#
# usage: scripts/test.sh [CARGO_TEST_ARGS...]   (e.g. `--test tiny` to run one test file)
# env:   FERRITE_CPU_CLASS=avx2  rehearse an AVX2-only machine on an AVX-512 one: ferrite is built
#                                with -C target-cpu=x86-64-v3 into target/avx2, llama.cpp for
#                                AVX2/FMA/F16C only (scripts/build-llamacpp.sh), and the tests
#                                fall back on the avx2 goldens
#        FERRITE_LLAMACPP_BIN    llama.cpp's binaries to compare with (default: built here)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# elapsed time of each phase on stderr, so a slow CI run shows where its time went
phase() { echo "test.sh: [$((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }
case "${FERRITE_CPU_CLASS:-}" in
  "") ;;
  avx2)
    # RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; llama-cpp-sys-2 then builds ggml
    # for the same features (GGML_NATIVE=OFF, -march=x86-64-v3), in a target folder of its own
    export RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR="$root/target/avx2"
    ;;
  avx512) ;; # this machine's own class: nothing to change
  *) echo "test.sh: FERRITE_CPU_CLASS must be avx2 or avx512, not $FERRITE_CPU_CLASS" >&2; exit 2 ;;
esac
phase "dependencies"
bash scripts/deps.sh
phase "models"
models/fetch.sh

# tiny random-weight models of every architecture, seeds 1234, 7 and 99 (deterministic bytes;
# ~30 s a seed). The avx512 goldens hold their SHA-256 (the bytes are the same on every CPU).
python3 -c 'import gguf, numpy, openai, jsonschema' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check gguf numpy openai jsonschema
phase "tiny models"
for seed in 1234 7 99; do
  if [ "$seed" = 1234 ]; then d="$root/target/tiny-models"; else d="$root/target/tiny-models-seed$seed"; fi
  golden="$root/tests/golden/tiny/avx512/seed-$seed.json"
  if ! (cd "$d" 2>/dev/null && python3 "$root/scripts/check-tiny.py" "$golden" >/dev/null 2>&1); then
    mkdir -p "$d"
    python3 scripts/tiny-models.py "$d" --seed "$seed" --tokenizer-from models/SmolLM2-135M-Instruct.Q4_1.gguf >&2
    # live llama.cpp does not need the recorded bytes, but the goldens (the fallback) do
    (cd "$d" && python3 "$root/scripts/check-tiny.py" "$golden") ||
      echo "test.sh: warning: the tiny models of seed $seed differ from those of $golden" >&2
  fi
done
export FERRITE_TINY_MODELS="$root/target/tiny-models"

phase "llama.cpp reference build"
# llama.cpp built on this machine: the reference for exact parity (its results depend on the CPU)
if [ -z "${FERRITE_LLAMACPP_BIN:-}" ]; then
  FERRITE_LLAMACPP_BIN=$(bash scripts/build-llamacpp.sh | tail -n 1)
fi
export FERRITE_LLAMACPP_BIN
phase "cargo test (llama.cpp: $FERRITE_LLAMACPP_BIN)"
# stdin closed: a test child that reads stdin must not wait on the CI's terminal or pipe.
# One test at a time: most tests run ggml processes with 2 threads, and two tests at once on a
# 2-core machine spin 4 threads on 2 cores (parity took 595 s that way, 217 s in turn).
RUST_TEST_THREADS=${RUST_TEST_THREADS:-1} cargo test --release --workspace "$@" </dev/null
phase "done"
