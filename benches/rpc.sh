#!/usr/bin/env bash
# Generation over ggml RPC on loopback against the local run, for ferrite and llama.cpp, in one
# interleaved run. Per model and round, in turn: ferrite alone; ferrite with every layer on a
# `ferrite rpc-server`; ferrite alone with ggml's matrix products (FERRITE_GGML_MATMUL=1, what
# the server computes with); llama-bench alone; llama-bench with every layer on llama.cpp's
# `ggml-rpc-server`. tg128, one thread on each side (the client and the server each get one of
# this machine's two cores), medians over the rounds. Then the bytes that cross loopback per
# generated token (all of lo's traffic, both directions, headers included) for a ferrite run of
# 129 tokens minus one of 1 token, divided by 128.
#
# usage: benches/rpc.sh [ROUNDS (default 3)] [MODEL...]   (models: smollm2 gemma3)
# env:   FERRITE_LLAMACPP_BIN (default: built by scripts/build-llamacpp.sh), REPS (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2 gemma3)
reps=${REPS:-3}
bin=${FERRITE_LLAMACPP_BIN:-$(bash scripts/build-llamacpp.sh | tail -n 1)}
ferrite=target/release/ferrite
cargo build --release -q
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$out"' EXIT

path_of() { case $1 in smollm2) echo models/SmolLM2-135M-Instruct.Q4_1.gguf ;; gemma3) echo models/gemma-3-270m-q4_k_m.gguf ;; *) echo "$1" ;; esac; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "no server on $1" >&2; exit 1; }

fport=$(free_port)
"$ferrite" rpc-server -p "$fport" -t 1 >/dev/null 2>&1 &
pids+=($!)
lport=$(free_port)
"$bin/ggml-rpc-server" -p "$lport" -t 1 >/dev/null 2>&1 &
pids+=($!)
wait_port "$fport"
wait_port "$lport"

tg() { # tg NAME CMD...: tg128 t/s of a bench call into $out/NAME
  "$@" -p 0 -n 128 -t 1 -r "$reps" 2>/dev/null | python3 -c 'import json,sys; print([r["avg_ts"] for r in json.load(sys.stdin) if r["n_gen"]][0])' >>"$out/$name"
}
lo_bytes() { awk '/lo:/{print $2}' /proc/net/dev; }

for m in "${models[@]}"; do
  p=$(path_of "$m")
  [ -f "$p" ] || models/fetch.sh "$m"
  for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds: $m" >&2
    name=ferrite-$m tg "$ferrite" bench -m "$p" --json
    name=ferrite-rpc-$m tg "$ferrite" bench -m "$p" --json --rpc "127.0.0.1:$fport"
    name=ferrite-ggml-$m FERRITE_GGML_MATMUL=1 tg "$ferrite" bench -m "$p" --json
    name=llama-$m tg "$bin/llama-bench" -m "$p" -o json
    name=llama-rpc-$m tg "$bin/llama-bench" -m "$p" -o json --rpc "127.0.0.1:$lport" -ngl 99
  done
  for n in 1 129; do
    a=$(lo_bytes)
    "$ferrite" run -m "$p" --raw -n "$n" -t 1 --temp 0 -q --rpc "127.0.0.1:$fport" "Once upon a time" >"$out/text-$n" 2>/dev/null
    b=$(lo_bytes)
    echo $((b - a)) >"$out/bytes-$m-$n"
  done
  words=$(wc -w <"$out/text-129")
  [ "$words" -gt 60 ] || echo "warning: the 129-token run may have stopped early ($words words)" >&2
done

python3 - "$out" "${models[@]}" <<'PY'
import statistics, sys
out, models = sys.argv[1], sys.argv[2:]
med = statistics.median
def vals(name):
    return [float(x) for x in open(f"{out}/{name}").read().split()]
print("| model | ferrite local | ferrite over RPC | ratio | ferrite local, ggml's products | ratio to that | llama.cpp local | llama.cpp over RPC | ratio | bytes/token |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for m in models:
    f, fr, fg = vals(f"ferrite-{m}"), vals(f"ferrite-rpc-{m}"), vals(f"ferrite-ggml-{m}")
    l, lr = vals(f"llama-{m}"), vals(f"llama-rpc-{m}")
    per_token = (int(open(f"{out}/bytes-{m}-129").read()) - int(open(f"{out}/bytes-{m}-1").read())) / 128
    print(f"| {m} | {med(f):.1f} | {med(fr):.1f} | **{med(fr)/med(f):.2f}** | {med(fg):.1f} | {med(fr)/med(fg):.2f} "
          f"| {med(l):.1f} | {med(lr):.1f} | {med(lr)/med(l):.2f} | {per_token:,.0f} |")
PY
