#!/usr/bin/env python3
"""`ferrite serve` against llama-server on the same requests, in interleaved rounds.

usage: scripts/bench-serve.py [--rounds 3] [--model models/...gguf] [--np 8] [--tokens 128]
env:   LLAMA_SERVER  llama-server's binary (default: /tmp/llamacpp-ref-shared/server/bin/llama-server,
                     which ../shared/tools/build-llamacpp-ref.sh builds with EXTRA=1)

Each round starts each server in turn (-np N, 2 threads, a context of 1024 tokens a slot,
flash attention as each tool's default) and measures, with greedy chat requests of max_tokens
each: one stream (N prompts one after the other: their tokens over their time) and N streams
(the same N prompts at once: all their tokens over the wall time). Both servers answer the same
prompts greedily, so they generate the same tokens. Prints medians and ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Write a long story about a robot that wants to paint.",
    "Write a long story about two friends crossing a desert.",
    "Write a long story about a city under the sea.",
    "Write a long story about a lost cat finding its way home.",
    "Write a long story about a wizard who forgot his spells.",
    "Write a long story about the first day at a new school.",
]


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def wait_ready(port, proc):
    t = time.time()
    while time.time() - t < 120:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit("server did not become ready")


def measure(cmd, port, n, tokens):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        body = lambda p: {"model": "m", "messages": [{"role": "user", "content": p}], "max_tokens": tokens, "temperature": 0}
        post(port, body("Hello"))  # warm-up
        prompts = PROMPTS[:n]
        # one stream: the prompts one after the other
        t_one, n_one, texts = 0.0, 0, []
        for p in prompts:
            t = time.perf_counter()
            r = post(port, body(p))
            t_one += time.perf_counter() - t
            n_one += r["usage"]["completion_tokens"]
            texts.append(r["choices"][0]["message"]["content"])
        # n streams at once
        out = [None] * n

        def worker(i):
            out[i] = post(port, body(prompts[i]))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        n_par = sum(r["usage"]["completion_tokens"] for r in out)
        same = all(out[i]["choices"][0]["message"]["content"] == texts[i] for i in range(n))
        return n_one / t_one, n_par / wall, n_par, same, texts
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--np", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    llama = os.environ.get("LLAMA_SERVER", "/tmp/llamacpp-ref-shared/server/bin/llama-server")
    n = a.np
    tools = {
        "ferrite": ["target/release/ferrite", "serve", "-m", a.model, "-np", str(n), "-c", "1024", "-t", "2", "--port", "18181"],
        # llama-server divides -c among its slots: 1024 each
        "llama-server": [llama, "-m", a.model, "-np", str(n), "-c", str(1024 * n), "-t", "2", "--port", "18182", "--no-webui"],
    }
    ports = {"ferrite": 18181, "llama-server": 18182}
    res = {k: {"one": [], "par": []} for k in tools}
    answers = {}
    for r in range(a.rounds):
        for name, cmd in tools.items():
            one, par, ntok, same, texts = measure(cmd, ports[name], n, a.tokens)
            res[name]["one"].append(one)
            res[name]["par"].append(par)
            answers[name] = texts
            print(f"round {r + 1} {name}: one stream {one:.1f} t/s, {n} streams {par:.1f} t/s ({ntok} tokens; answers as alone: {same})", file=sys.stderr)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}
    f, l = med["ferrite"], med["llama-server"]
    same = answers["ferrite"] == answers["llama-server"]
    print(
        f"{os.path.basename(a.model)} -np {n}, {a.tokens} tokens: one stream ferrite {f['one']:.1f} llama-server {l['one']:.1f} t/s · "
        f"{n} streams ferrite {f['par']:.1f} (x{f['par'] / f['one']:.2f} its one stream) llama-server {l['par']:.1f} (x{l['par'] / l['one']:.2f}) · "
        f"ferrite/llama-server x{f['par'] / l['par']:.2f} · same greedy answers: {same} · {a.rounds} rounds"
    )


if __name__ == "__main__":
    main()
