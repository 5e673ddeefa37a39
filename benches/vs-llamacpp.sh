#!/usr/bin/env bash
# ferrite side by side with llama.cpp on this machine, in one interleaved run: for each model and
# each round, llama-bench and `ferrite bench` in alternating order (pp512, tg128, same threads and
# settings), then
# time to first token (cold: page cache of the model dropped; warm: second run) and peak RSS of a
# one-token answer (`llama-completion -n 1` vs `ferrite run -n 1`), each tool in turn.
# Prints a Markdown table of medians over the rounds, with two ratios ferrite/llama.cpp: of the
# medians, and the median of the per-round ratios (>1 = ferrite faster for t/s; <1 = ferrite lower
# for times and memory).
#
# usage: benches/vs-llamacpp.sh [ROUNDS (default 3)] [MODEL...]   (models: smollm2 gemma3)
# env:   FERRITE_LLAMACPP_BIN (default: built by scripts/build-llamacpp.sh),
#        THREADS (default 2), REPS (repetitions per llama-bench/ferrite bench call, default 3)
# Needs GNU time (/usr/bin/time, Debian package `time`). Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2 gemma3)
threads=${THREADS:-2}
reps=${REPS:-3}
bin=${FERRITE_LLAMACPP_BIN:-$(bash scripts/build-llamacpp.sh | tail -n 1)}
ferrite=target/release/ferrite
[ -x /usr/bin/time ] || { echo "GNU time is missing: apt-get install -y time" >&2; exit 1; }
cargo build --release -q
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
prompt="The capital of France is"  # 5 tokens (smollm2; gemma3 adds BOS)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

path_of() { case $1 in smollm2) echo models/SmolLM2-135M-Instruct.Q4_1.gguf ;; gemma3) echo models/gemma-3-270m-q4_k_m.gguf ;; *) echo "$1" ;; esac; }

drop_cache() { # cold start: evict the model's pages (needs root; otherwise the "cold" column is warm)
  sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || python3 - "$1" <<'PY' || true
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
PY
}

# time_run FILE CMD...: wall seconds and peak RSS (KiB) of CMD into FILE as "secs kib"
time_run() {
  local f=$1; shift
  /usr/bin/time -f "%e %M" -o "$f" "$@" >/dev/null 2>&1 </dev/null || { echo "failed: $*" >&2; exit 1; }
}

for m in "${models[@]}"; do
  p=$(path_of "$m")
  [ -f "$p" ] || models/fetch.sh "$m"
  for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds: $m" >&2
    # A B in odd rounds, B A in even ones, so that a drift of the machine's speed favours neither
    lb() { "$bin/llama-bench" -m "$p" -p 512 -n 128 -t "$threads" -r "$reps" -o json 2>/dev/null >"$out/llama-bench-$m-$r.json"; }
    fb() { "$ferrite" bench -m "$p" -p 512 -n 128 -t "$threads" -r "$reps" --json 2>/dev/null >"$out/ferrite-bench-$m-$r.json"; }
    if [ $((r % 2)) = 1 ]; then lb; fb; else fb; lb; fi
    drop_cache "$p"
    time_run "$out/llama-cold-$m-$r" "$bin/llama-completion" -m "$p" -p "$prompt" -n 1 -t "$threads" -c 4096 -no-cnv --temp 0
    time_run "$out/llama-warm-$m-$r" "$bin/llama-completion" -m "$p" -p "$prompt" -n 1 -t "$threads" -c 4096 -no-cnv --temp 0
    drop_cache "$p"
    time_run "$out/ferrite-cold-$m-$r" "$ferrite" run -m "$p" --raw -n 1 -t "$threads" -c 4096 --temp 0 -q "$prompt"
    time_run "$out/ferrite-warm-$m-$r" "$ferrite" run -m "$p" --raw -n 1 -t "$threads" -c 4096 --temp 0 -q "$prompt"
  done
done

python3 - "$out" "$rounds" "${models[@]}" <<'PY'
import json, statistics, sys
out, rounds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = statistics.median
def ts(tool, m, test):
    vals = []
    for r in range(1, rounds + 1):
        rows = json.load(open(f"{out}/{tool}-bench-{m}-{r}.json"))
        for row in rows:
            name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
            if name == test:
                vals.append(row["avg_ts"])
    return vals
def timed(tool, kind, m, i):
    return [float(open(f"{out}/{tool}-{kind}-{m}-{r}").read().split()[i]) for r in range(1, rounds + 1)]
# two ratios: of the two medians, and the median of each round's own ratio (the paired one, which
# a drift of the machine's speed between rounds moves less)
def paired(a, b):
    return med([y / x for x, y in zip(a, b)])
print(f"| model | test | llama.cpp | ferrite | ferrite/llama.cpp | per-round ratio, median | rounds |")
print(f"|---|---|---:|---:|---:|---:|---|")
for m in models:
    for test in ("pp512", "tg128"):
        a, b = ts("llama", m, test), ts("ferrite", m, test)
        print(f"| {m} | {test} t/s | {med(a):.2f} | {med(b):.2f} | **{med(b)/med(a):.4f}** | **{paired(a, b):.4f}** | {' '.join(f'{x:.1f}/{y:.1f}' for x, y in zip(a, b))} |")
    for kind in ("cold", "warm"):
        a, b = timed("llama", kind, m, 0), timed("ferrite", kind, m, 0)
        print(f"| {m} | first token, {kind} (s) | {med(a):.3f} | {med(b):.3f} | {med(b)/med(a):.3f} | {paired(a, b):.3f} | {' '.join(f'{x:.2f}/{y:.2f}' for x, y in zip(a, b))} |")
    a, b = timed("llama", "warm", m, 1), timed("ferrite", "warm", m, 1)
    print(f"| {m} | peak RSS (MiB) | {med(a)/1024:.1f} | {med(b)/1024:.1f} | {med(b)/med(a):.3f} | {paired(a, b):.3f} | |")
PY
