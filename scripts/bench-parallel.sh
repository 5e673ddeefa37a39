#!/usr/bin/env bash
# `ferrite bench --parallel` against llama.cpp's llama-batched-bench, interleaved rounds on the
# same machine: N sequences, each a prompt of PP random tokens then TG generated tokens, 2 threads.
# Prints per model the median aggregate generation t/s (S_TG) and prompt t/s (S_PP) of both and the
# ratios. llama-batched-bench comes from FERRITE_LLAMACPP_BIN (scripts/build-llamacpp.sh builds it
# with EXTRA=1), else from ../shared's reference build.
#
# usage: scripts/bench-parallel.sh [ROUNDS] [NPL] [PP] [TG]   (default 3 8 128 128)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}" npl="${2:-8}" pp="${3:-128}" tg="${4:-128}"
bin=target/release/ferrite
[ -x "$bin" ] || cargo build --release >&2
ref="${FERRITE_LLAMACPP_BIN:-/tmp/llamacpp-ref/bin}/llama-batched-bench"
[ -x "$ref" ] || { echo "bench-parallel.sh: $ref is missing (EXTRA=1 scripts/build-llamacpp.sh builds it)" >&2; exit 1; }
ctx=$((npl * (pp + tg)))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do
  : >"$tmp/rows"
  for r in $(seq "$rounds"); do
    "$bin" bench -m "$m" --parallel "$npl" -p "$pp" -n "$tg" -r 1 -t 2 --json |
      python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print("ferrite", r["speed_pp"], r["speed_tg"])' >>"$tmp/rows"
    "$ref" -m "$m" -c "$ctx" -npp "$pp" -ntg "$tg" -npl "$npl" -t 2 --output-format jsonl 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"): r=json.loads(l); print("llama.cpp", r["speed_pp"], r["speed_tg"])' >>"$tmp/rows"
  done
  python3 - "$(basename "$m")" "$tmp/rows" "$npl" "$pp" "$tg" <<'EOF'
import statistics, sys
name, rows, npl, pp, tg = sys.argv[1:]
v = {}
for line in open(rows):
    who, spp, stg = line.split()
    v.setdefault(who, []).append((float(spp), float(stg)))
med = {w: (statistics.median(x[0] for x in r), statistics.median(x[1] for x in r)) for w, r in v.items()}
f, l = med["ferrite"], med["llama.cpp"]
print(f"{name} npl {npl} pp {pp} tg {tg}: S_TG ferrite {f[1]:.1f} llama.cpp {l[1]:.1f} (x{f[1]/l[1]:.2f}) · "
      f"S_PP ferrite {f[0]:.1f} llama.cpp {l[0]:.1f} (x{f[0]/l[0]:.2f}) · {len(v['ferrite'])} rounds")
EOF
done
