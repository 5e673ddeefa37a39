#!/usr/bin/env python3
"""Records llama.cpp's greedy generations (greedy_ref, built by scripts/build-llamacpp.sh)
for the two test models, in the format of tests/golden/reference/llamacpp-reference.json, for the
reference prompts plus ferrite's own, in three settings (default; flash attention off; q8_0 cache).
llama.cpp's results depend on the CPU's vector units, so the output is keyed by a CPU class.

usage: scripts/make-greedy-golden.py [OUT_JSON]   (default tests/golden/greedy/<class>.json)
env:   FERRITE_LLAMACPP_BIN (default /tmp/llamacpp-ref/bin)
"""
import json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FERRITE_LLAMACPP_BIN", "/tmp/llamacpp-ref/bin")
MODELS = {
    "smollm2-135m-instruct-q4_1": os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m-q4_k_m": os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf"),
}
OWN_PROMPTS = [
    "The quick brown fox",
    "In 1492, Columbus",
    "import numpy as np\n",
    "Q: What is 2+2?\nA:",
    "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n",
    "Les fleurs du jardin",
    "日本の首都は",
    "for i in range(10):",
    "The meaning of life is",
    "Translate to French: cheese =>",
    "def add(a, b):\n    return",
    "  Leading spaces and\ttabs",
]
SETTINGS = {"greedy": {}, "greedy_flash_attn_off": {"REF_FLASH_ATTN": "off"}, "greedy_cache_q8_0": {"REF_CACHE_TYPE": "q8_0"}}


def cpu_class():
    # as tests/paths/mod.rs: FERRITE_CPU_CLASS (a rehearsal of another class) wins
    if os.environ.get("FERRITE_CPU_CLASS") in ("avx2", "avx512"):
        return os.environ["FERRITE_CPU_CLASS"]
    flags = open("/proc/cpuinfo").read()
    return "avx512" if " avx512f" in flags else "avx2"


def main():
    ref = json.load(open(os.path.join(ROOT, "tests/golden/reference/llamacpp-reference.json")))
    out = {"generated_by": "scripts/make-greedy-golden.py with llama.cpp greedy_ref (ggml 0.26.0), 2 threads, n_ctx 1024",
           "cpu_class": cpu_class()}
    for key, env in SETTINGS.items():
        out[key] = {}
        for m, path in MODELS.items():
            prompts = [c["prompt"] for c in ref["greedy"][m]] + OWN_PROMPTS
            cases = []
            for p in prompts:
                r = subprocess.run([os.path.join(BIN, "greedy_ref"), path, p, "48"], capture_output=True, text=True,
                                   env=dict(os.environ, **env), timeout=600)
                if r.returncode != 0:
                    sys.exit(f"greedy_ref failed on {m} {p!r}: {r.stderr[-500:]}")
                cases.append(dict(prompt=p, n_predict=48, **json.loads(r.stdout.strip().splitlines()[-1])))
            out[key][m] = cases
            print(key, m, len(cases), file=sys.stderr)
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, f"tests/golden/greedy/{out['cpu_class']}.json")
    with open(dest, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(dest)


main()
