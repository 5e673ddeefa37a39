#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs build dependencies, fetches the models, makes
# the tiny random-weight models, builds llama.cpp's reference tools (the peer ferrite's parity
# tests compare against on this machine's CPU), then runs every test.  usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# elapsed time of each phase on stderr, so a slow CI run shows where its time went
phase() { echo "test.sh: [$((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }
phase "dependencies"
bash scripts/deps.sh
phase "models"
models/fetch.sh

# tiny random-weight models of every architecture (deterministic bytes; ~30 s)
python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check gguf numpy
# the project's shared folder (references, llama.cpp build script, tiny-model kit)
shared=${FERRITE_SHARED:-}
if [ -z "$shared" ]; then
  for d in "$root/../shared" /work/shared; do
    if [ -d "$d/reference" ]; then shared=$(cd "$d" && pwd); break; fi
  done
fi
[ -n "$shared" ] && [ -d "$shared/reference" ] || { echo "test.sh: the shared folder (../shared) is missing; set FERRITE_SHARED" >&2; exit 1; }
export FERRITE_SHARED="$shared"
tiny="$root/target/tiny-models"
phase "tiny models"
if ! (cd "$tiny" 2>/dev/null && python3 "$root/scripts/check-tiny.py" "$shared/reference/tiny-reference.json" >/dev/null 2>&1); then
  mkdir -p "$tiny"
  python3 "$shared/tools/tiny_models.py" "$tiny" --tokenizer-from models/SmolLM2-135M-Instruct.Q4_1.gguf >&2
fi
export FERRITE_TINY_MODELS="$tiny"
# other seeds of the kit, against goldens recorded with llama.cpp (tests/golden/tiny/seed-N.json)
for seed in 7 99; do
  d="$root/target/tiny-models-seed$seed"
  if ! (cd "$d" 2>/dev/null && python3 "$root/scripts/check-tiny.py" "$root/tests/golden/tiny/seed-$seed.json" >/dev/null 2>&1); then
    mkdir -p "$d"
    python3 "$shared/tools/tiny_models.py" "$d" --seed "$seed" --tokenizer-from models/SmolLM2-135M-Instruct.Q4_1.gguf >&2
  fi
done

phase "llama.cpp reference build"
# llama.cpp built on this machine: the reference for exact parity (results depend on the CPU)
llamacpp_bin=$(bash "$shared/tools/build-llamacpp-ref.sh" | tail -n 1)
export FERRITE_LLAMACPP_BIN="$llamacpp_bin"

phase "cargo test"
# stdin closed: a test child that reads stdin must not wait on the CI's terminal or pipe.
# One test at a time: most tests run ggml processes with 2 threads, and two tests at once on a
# 2-core machine spin 4 threads on 2 cores (parity took 595 s that way, 217 s in turn).
RUST_TEST_THREADS=${RUST_TEST_THREADS:-1} cargo test --release --workspace </dev/null
phase "done"
