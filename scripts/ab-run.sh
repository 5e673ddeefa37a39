#!/usr/bin/env bash
# Paired A/B of two ferrite binaries on `run` and `chat` (one sequence): per round, A and B in
# alternating order on the same inputs; reports median generation and prompt t/s of each and B/A.
#   gen:    run --raw, a short prompt, 128 greedy tokens (generation t/s)
#   prompt: run, a ~1,500-token document piped on stdin, 8 tokens (prompt t/s)
#   chat:   chat, two turns piped on stdin (wall time)
#
# usage: scripts/ab-run.sh A_BINARY B_BINARY [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1" b="$2" rounds="${3:-5}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a document of ~1,500 tokens: the README's first lines
head -c 6000 README.md >"$tmp/doc"
printf 'What is the capital of France?\nAnd of Italy?\n' >"$tmp/chat"
now() { date +%s.%N; }
for m in smollm2 gemma3; do
  : >"$tmp/rows"
  for r in $(seq "$rounds"); do
    order="a b"; [ $((r % 2)) = 0 ] && order="b a"
    for who in $order; do
      bin=$([ "$who" = a ] && echo "$a" || echo "$b")
      g=$("$bin" run --raw --temp 0 -n 128 -t 2 -q --json -m $m "Once upon a time, in a small village," </dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["timings"]["gen_tps"])')
      p=$("$bin" run --temp 0 -n 8 -t 2 -q --json -m $m "Summarize this document:" <"$tmp/doc" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["timings"]["prompt_tps"])')
      t0=$(now)
      "$bin" chat --temp 0 -n 32 -t 2 -q -m $m <"$tmp/chat" >/dev/null
      c=$(echo "$(now) - $t0" | bc)
      echo "$who $g $p $c" >>"$tmp/rows"
    done
  done
  python3 - "$m" "$tmp/rows" <<'EOF'
import statistics, sys
v = {}
for line in open(sys.argv[2]):
    who, g, p, c = line.split()
    v.setdefault(who, []).append((float(g), float(p), float(c)))
med = {w: [statistics.median(x[i] for x in r) for i in range(3)] for w, r in v.items()}
a, b = med["a"], med["b"]
print(f"{sys.argv[1]}: gen t/s A {a[0]:.1f} B {b[0]:.1f} (B/A {b[0]/a[0]:.3f}) · prompt t/s A {a[1]:.1f} B {b[1]:.1f} "
      f"(B/A {b[1]/a[1]:.3f}) · chat s A {a[2]:.2f} B {b[2]:.2f} (A/B {a[2]/b[2]:.3f}) · {len(v['a'])} rounds")
EOF
done
