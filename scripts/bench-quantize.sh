#!/usr/bin/env bash
# `ferrite quantize` against `llama-quantize` (same input, type and threads), interleaved rounds:
# smollm2 requantized to Q8_0, Q4_K_M and Q6_K, 2 threads. Prints the median seconds of each and
# the ratio (llama / ferrite: above 1 means ferrite is faster), and checks the files are equal.
#
# usage: scripts/bench-quantize.sh [ROUNDS]   (default 5; needs FERRITE_LLAMACPP_BIN or
#        scripts/build-llamacpp.sh's folder)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
bin=target/release/ferrite
[ -x "$bin" ] || cargo build --release >&2
ref="${FERRITE_LLAMACPP_BIN:-$(bash scripts/build-llamacpp.sh | tail -n 1)}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
now() { date +%s.%N; }
for ty in Q8_0 Q4_K_M Q6_K; do
  : >"$tmp/$ty.times"
  for r in $(seq "$rounds"); do
    t0=$(now); "$bin" quantize -q --allow-requantize "$model" "$tmp/f.gguf" "$ty" 2; t1=$(now)
    LD_LIBRARY_PATH="$ref" "$ref/llama-quantize" --allow-requantize "$model" "$tmp/l.gguf" "$ty" 2 >/dev/null 2>&1; t2=$(now)
    echo "$t0 $t1 $t2" >>"$tmp/$ty.times"
    cmp -s "$tmp/f.gguf" "$tmp/l.gguf" || { echo "$ty: the files differ" >&2; exit 1; }
  done
  python3 - "$tmp/$ty.times" "$ty" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
f = statistics.median(r[1] - r[0] for r in rows)
l = statistics.median(r[2] - r[1] for r in rows)
print(f"{sys.argv[2]:<7} ferrite {f:6.3f} s  llama-quantize {l:6.3f} s  x{l / f:4.2f}  (files equal, {len(rows)} rounds)")
PY
done
