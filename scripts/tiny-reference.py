#!/usr/bin/env python3
"""Records llama.cpp's greedy output for the tiny random-weight models (scripts/tiny-models.py):
the goldens tests/tiny.rs falls back on when llama.cpp is not built on the machine.

usage: scripts/tiny-reference.py MODELS_DIR OUT_JSON
       e.g. scripts/tiny-reference.py target/tiny-models-seed7 tests/golden/tiny/avx2/seed-7.json
       (llama.cpp's answers depend on the CPU's vector units: record a class's golden on a
       machine of that class, with llama.cpp built there by scripts/build-llamacpp.sh)
env:   FERRITE_LLAMACPP_BIN (llama.cpp's binaries; default /tmp/llamacpp-ref/bin),
       GREEDY_REF (default $FERRITE_LLAMACPP_BIN/greedy_ref),
       TINY_PROMPTS (a JSON list of prompts replacing the default four)

For every MODELS_DIR/tiny-*.gguf (made by tiny-models.py) and each prompt, runs
`greedy_ref MODEL PROMPT 32` twice (the two runs must agree), plus once with
REF_FLASH_ATTN=off.  Output:
  {"generated_by": ..., "prompts": [...], "n_predict": 32,
   "models": {"llama": {"file", "sha256", "architecture", "hparams",
                         "greedy": [{prompt, n_predict, prompt_ids, generated_ids, first_top5}, ...],
                         "greedy_flash_attn_off": [...]}, ...}}
Model keys are the file names minus "tiny-" and ".gguf" (llama, llama-q8-0, llama-moe, qwen2, ...).
Carried into the repository from the project's shared kit (tools/tiny_reference.py), unchanged
but for these paths, so that a clone needs nothing beside it.
"""
import hashlib
import json
import os
import subprocess
import sys

import gguf

PROMPTS = json.loads(os.environ["TINY_PROMPTS"]) if os.environ.get("TINY_PROMPTS") else \
    ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]
N_PREDICT = 32
BIN = os.environ.get("FERRITE_LLAMACPP_BIN") or os.environ.get("LLAMA_BIN", "/tmp/llamacpp-ref/bin")
GREEDY_REF = os.environ.get("GREEDY_REF", os.path.join(BIN, "greedy_ref"))
ENV = dict(os.environ, LD_LIBRARY_PATH=BIN)


def greedy(model, prompt, n, **settings):
    r = subprocess.run([GREEDY_REF, model, prompt, str(n)], capture_output=True,
                       env=dict(ENV, **settings), timeout=300)
    lines = r.stdout.decode().strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"greedy_ref failed on {model} ({prompt!r}), rc={r.returncode}:\n"
                           + r.stderr.decode()[-2000:])
    return json.loads(lines[-1])


def hparams(path):
    rd = gguf.GGUFReader(path)
    arch = rd.fields["general.architecture"].contents()
    out = {}
    for k, f in rd.fields.items():
        if k.startswith(arch + ".") and f.types[0] != gguf.GGUFValueType.ARRAY:
            out[k[len(arch) + 1:]] = f.contents()
    out["tensor_types"] = sorted({t.tensor_type.name for t in rd.tensors})
    return arch, out


def main():
    models_dir, out_json = sys.argv[1], sys.argv[2]
    files = sorted(f for f in os.listdir(models_dir) if f.startswith("tiny-") and f.endswith(".gguf"))
    if not files:
        sys.exit(f"no tiny-*.gguf in {models_dir}")
    models = {}
    for f in files:
        path = os.path.join(models_dir, f)
        key = f[len("tiny-"):-len(".gguf")]
        arch, hp = hparams(path)
        with open(path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
        entry = dict(file=f, sha256=sha, architecture=arch, hparams=hp, greedy=[], greedy_flash_attn_off=[])
        for p in PROMPTS:
            a = greedy(path, p, N_PREDICT)
            b = greedy(path, p, N_PREDICT)
            if a != b:
                raise RuntimeError(f"{f}: two runs differ for {p!r}:\n{a}\n{b}")
            entry["greedy"].append(dict(prompt=p, n_predict=N_PREDICT, **a))
            c = greedy(path, p, N_PREDICT, REF_FLASH_ATTN="off")
            entry["greedy_flash_attn_off"].append(dict(prompt=p, n_predict=N_PREDICT, **c))
        same_fa = sum(x["generated_ids"] == y["generated_ids"]
                      for x, y in zip(entry["greedy"], entry["greedy_flash_attn_off"]))
        print(f"{key:10s} {arch:9s} ok; flash-attn off gives the same ids on {same_fa}/{len(PROMPTS)} prompts",
              flush=True)
        models[key] = entry
    data = {
        "generated_by": "tiny_reference.py: llama.cpp greedy_ref (scripts/greedy_ref.c) on tiny random-weight "
                        "models from tiny_models.py; CPU, 2 threads, n_ctx 1024, flash attention auto (on) "
                        "and f16 KV cache unless the key says otherwise",
        "prompts": PROMPTS,
        "n_predict": N_PREDICT,
        "models": models,
    }
    with open(out_json, "w") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
    print("written", out_json)


if __name__ == "__main__":
    main()
