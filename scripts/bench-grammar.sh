#!/usr/bin/env bash
# What a grammar costs during generation: `ferrite run` on smollm2 with and without a constraint,
# in interleaved rounds, same prompts, greedy and at temperature 1 (seeds 1..ROUNDS), 2 threads.
#   free:   no constraint
#   schema: -jf tests/schemas/person.json
#   gbnf:   --grammar-file tests/grammars/json.gbnf
# Prints per mode the median generation t/s, its ratio to `free`, and the grammar's own cost per
# token (mean and p99 over every token of every run, from --json timings) with the share of
# tokens that needed the whole-vocabulary mask.
#
# usage: scripts/bench-grammar.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
bin=target/release/ferrite
[ -x "$bin" ] || cargo build --release >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prompts=("Describe a person named Ada Lovelace in detail, as JSON." "Give me a JSON record of a new employee." "A JSON profile of a famous scientist, please.")
for r in $(seq "$rounds"); do
  for temp in 0 1; do
    for p in "${prompts[@]}"; do
      for mode in free schema gbnf; do
        case $mode in
          free) extra=() ;;
          schema) extra=(-jf tests/schemas/person.json) ;;
          gbnf) extra=(--grammar-file tests/grammars/json.gbnf) ;;
        esac
        "$bin" run -m smollm2 -t 2 --json --temp "$temp" -s "$r" -n 200 "${extra[@]}" "$p" >>"$tmp/$mode.jsonl" 2>/dev/null
      done
    done
  done
done
python3 - "$tmp" <<'EOF'
import json, statistics, sys
d = sys.argv[1]
rows = {m: [json.loads(l) for l in open(f"{d}/{m}.jsonl")] for m in ("free", "schema", "gbnf")}
base = statistics.median(r["timings"]["gen_tps"] for r in rows["free"])
print(f"{'mode':<8} {'gen t/s':>8} {'x free':>7} {'grammar ms/tok mean':>20} {'p99':>7} {'masked':>7}")
for m, rs in rows.items():
    tps = statistics.median(r["timings"]["gen_tps"] for r in rs)
    line = f"{m:<8} {tps:8.1f} {tps / base:7.2f}"
    if m != "free":
        toks = sum(r["completion_tokens"] for r in rs)
        masks = sum(r["timings"]["grammar_masks"] for r in rs)
        mean = sum(r["timings"]["grammar_ms_mean"] * r["completion_tokens"] for r in rs) / max(toks, 1)
        p99 = max(r["timings"]["grammar_ms_p99"] for r in rs)
        line += f" {mean:20.3f} {p99:7.3f} {masks / max(toks, 1):7.1%}"
    print(line)
print(f"({len(rows['free'])} runs per mode; p99 is the largest per-run p99)")
EOF
