#!/usr/bin/env bash
# Throughput of `ferrite batch` against the same prompts computed one at a time, in interleaved
# rounds: 16 prompts (the parity golden's), 48 greedy tokens each, --raw, 2 threads.
#   np8:  ferrite batch -np 8 (two waves, continuous batching)
#   np1:  ferrite batch -np 1 (the same engine, one sequence at a time)
#   runs: 16 separate `ferrite run` processes (each loads the model)
# Prints the median wall time of each per model and the ratios. Times include the model load
# (~0.1-0.3 s) once per process.
#
# usage: scripts/bench-batch.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
bin=target/release/ferrite
[ -x "$bin" ] || cargo build --release >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
now() { date +%s.%N; }
for m in smollm2 gemma3; do
  key=$([ $m = smollm2 ] && echo smollm2-135m-instruct-q4_1 || echo gemma3-270m-q4_k_m)
  python3 - "$key" >"$tmp/$m.jsonl" <<'EOF'
import json, sys
g = json.load(open("tests/golden/greedy/avx512.json"))["greedy"][sys.argv[1]][:16]
for i, c in enumerate(g):
    print(json.dumps({"id": i, "prompt": c["prompt"]}))
EOF
  : >"$tmp/$m.times"
  for r in $(seq "$rounds"); do
    for mode in np8 np1 runs; do
      t0=$(now)
      case $mode in
        np8) "$bin" batch --raw --temp 0 -n 48 -np 8 -c 1024 -t 2 -q -m $m -f "$tmp/$m.jsonl" >/dev/null ;;
        np1) "$bin" batch --raw --temp 0 -n 48 -np 1 -c 1024 -t 2 -q -m $m -f "$tmp/$m.jsonl" >/dev/null ;;
        runs) python3 -c 'import json,sys; [print(json.loads(l)["prompt"]) for l in open(sys.argv[1])]' "$tmp/$m.jsonl" |
          while IFS= read -r p; do "$bin" run --raw --temp 0 -n 48 -c 1024 -t 2 -q -m $m "$p" </dev/null >/dev/null; done ;;
      esac
      echo "$mode $(echo "$(now) - $t0" | bc)" >>"$tmp/$m.times"
    done
  done
  python3 - "$m" "$tmp/$m.times" <<'EOF'
import statistics, sys
t = {}
for line in open(sys.argv[2]):
    k, v = line.split()
    t.setdefault(k, []).append(float(v))
med = {k: statistics.median(v) for k, v in t.items()}
print(f"{sys.argv[1]}: batch -np 8 {med['np8']:.2f} s · batch -np 1 {med['np1']:.2f} s · 16 runs {med['runs']:.2f} s"
      f" · speed-up ×{med['np1'] / med['np8']:.2f} over -np 1, ×{med['runs'] / med['np8']:.2f} over separate runs")
EOF
done
