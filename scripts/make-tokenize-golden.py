#!/usr/bin/env python3
"""Makes ferrite's tokenizer golden files with llama.cpp's own llama-tokenize (the measuring stick).

  scripts/make-tokenize-golden.py models      # tests/golden/tokenize/{smollm2,gemma3}.json
  scripts/make-tokenize-golden.py vocab       # tests/golden/vocab/*.inp/.out/.vocab.json

`models`: every case of CASES and the 1 MiB runs of BIG, tokenized by llama-tokenize with the
model's default BOS, with and without special-token parsing (the 1 MiB runs are kept as a count
and an FNV-1a hash of the ids).

`vocab`: llama.cpp's vocabulary-only test files (models/ggml-vocab-*.gguf with .inp/.out, from the
llama.cpp sources in the llama-cpp-python sdist that tools/build-llamacpp-ref.sh unpacks). The
.out files are re-made with llama-tokenize (no BOS, no special parsing: test-tokenizer-0's
settings) and must equal the shipped ones. Instead of the multi-MB vocabularies, an extract is
kept: the tokens that occur as substrings of the (byte-level encoded / ▁-escaped) inputs, all
non-normal tokens, and the merges among kept tokens. Symbols during BPE are always substrings of
the input, so the extract tokenizes the inputs exactly as the whole vocabulary does.

Needs: /tmp/llamacpp-ref/bin (scripts/build-llamacpp.sh), pip package gguf.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("LLAMACPP_BIN", "/tmp/llamacpp-ref/bin")
SDIST_MODELS = os.environ.get("LLAMACPP_VOCABS", "/tmp/llamacpp-ref/sdist/vendor/llama.cpp/models")

MODELS = {
    "smollm2": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "models/gemma-3-270m-q4_k_m.gguf",
}

CASES = [
    "", " ", "  ", "\t", "\n", "\r\n", "\r\n\r\n", " \n \n", "\t\t\tindented", "    four spaces", "trailing   ",
    "a\u00a0b", "x\u3000y", "line1\nline2\r\nline3\rline4", "Hello", " Hello", "  Hello", "HELLO WORLD",
    "hElLo WoRlD", "don't won't shouldn't I'd I'll you're we've it's", "DON'T I'M YOU'RE WE'VE", "'s 're 've 'll",
    "0", "12", "123", "1234", "3.14159265358979", "1,000,000", "-42 +17 1e10 0x1F 0b1010", "٣٤٥ ١٢٣", "Ⅻ ½ ²",
    "café naïve résumé", "cafe\u0301 nai\u0308ve", "Ελληνικά κείμενα", "עברית", "हिन्दी पाठ", "ไทย",
    "中文测试，标点符号。", "日本語のテキスト", "한국어 텍스트", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "👍🏽👍🏿",
    "🇫🇷🇯🇵", "emoji😀inside😀words", "\u200b\u200c\u200d", "\ufeffBOM", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    'fn main() {\n    println!("Hello, world!");\n}\n', 'def foo(bar: int) -> str:\n\treturn f"{bar}"\n',
    '<html><body><p class="x">Hi</p></body></html>', "SELECT * FROM users WHERE id = 1;", "x+=1;y-=2;z*=3",
    "a->b=>c<=d>=e!=f==g", "path/to/file.txt C:\\Windows\\System32", "#include <stdio.h>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>", "<|im_start", "<|IM_START|>", "< |im_start| >",
    "<start_of_turn>model\nHi<end_of_turn>\n", "<start_of_turn> user <end_of_turn> ", "<bos><eos><pad><unk><mask>",
    "<unused0><unused99>", "<start_of_image>", "<table><tr><td>1</td></tr></table>", "<s>hi</s>", " </s> ",
    "[multimodal]", "<0x41><0xE4>", "<repo_name>ferrite<file_sep>main.rs<reponame>", "a" * 62,
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious" * 5, "!" * 20, "." * 12,
    "-" * 10, "=" * 10, " " * 10, "\n" * 10, "\n" * 40, " " * 40, "\t" * 40, " \t \t mixed", "word\n\n\n\nword",
    "The quick brown fox jumps over the lazy dog.", "Mr. Smith's dog isn't here; it's at O'Brien's.",
    "“smart quotes” ‘single’ — em dash – en dash …", "¿Qué tal? ¡Muy bien!", "Straße Œuvre Æsir ǅ", "ΣΊΣΥΦΟΣ ς σ",
    "a\u0000b", "\x01\x02\x1b[31mred\x1b[0m", "\u00ad soft hyphen", "U+FFFD: \ufffd", "private use \ue000",
    "unassigned in Unicode 15: \u0897 \U0001FA89 \U00011380", "ℌ𝔢𝔩𝔩𝔬 ＦＵＬＬＷＩＤＴＨ １２３", "a'b\"c`d",
    "1 2  3   4    5", "ab" * 150, "https://example.com/a/very/long/path/with-many-segments?and=query&params=here#frag",
    "tab\there\tand\tthere", "  \n  \n  ", "end with newline\n", "\n\nstart with newlines",
]

# 1 MiB runs of one character class: (name, unit); the text is the unit repeated to 1 MiB.
BIG = [
    ("spaces", " "), ("digits", "7"), ("letter", "a"), ("emoji", "😀"), ("newlines", "\n"), ("tabs", "\t"),
    ("accented", "é"), ("prose", "Hello, world! It's 2024; the café's open. "),
]
MIB = 1 << 20


def big_text(unit):
    n = len(unit.encode())
    return unit * (MIB // n)


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def llama_tokenize(model, text, parse_special=True, bos=True):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode())
        path = f.name
    try:
        cmd = [os.path.join(BIN, "llama-tokenize"), "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"]
        if not parse_special:
            cmd.append("--no-parse-special")
        if not bos:
            cmd.append("--no-bos")
        out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
        return json.loads(out.strip().splitlines()[-1])
    finally:
        os.unlink(path)


def make_models():
    out_dir = os.path.join(ROOT, "tests/golden/tokenize")
    os.makedirs(out_dir, exist_ok=True)
    for name, rel in MODELS.items():
        model = os.path.join(ROOT, rel)
        cases = []
        for text in CASES:
            cases.append({
                "text": text,
                "ids": llama_tokenize(model, text, True),
                "ids_no_special": llama_tokenize(model, text, False),
            })
        big = []
        for bname, unit in BIG:
            ids = llama_tokenize(model, big_text(unit), True)
            big.append({"name": bname, "unit": unit, "bytes": MIB, "n_ids": len(ids), "fnv1a64": f"{fnv1a64(ids):016x}",
                        "head": ids[:8], "tail": ids[-8:]})
        doc = {
            "model": os.path.basename(rel),
            "generated_by": "scripts/make-tokenize-golden.py models: llama-tokenize -f FILE --no-escape --ids "
                            "[--no-parse-special] from scripts/build-llamacpp.sh",
            "cases": cases,
            "big": big,
        }
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"{name}: {len(cases)} cases, {len(big)} big runs")


# --- vocabulary-only test files ---------------------------------------------------------------

VOCABS = ["llama-bpe", "qwen2", "qwen35", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "refact", "starcoder",
          "mpt", "command-r", "phi-3", "llama-spm"]
SEP = "\n__ggml_vocab_test__\n"


def byte_level_alphabet():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def read_field(r, key):
    import gguf
    f = r.fields.get(key)
    if f is None:
        return None
    t = f.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def substrings(s, max_len):
    out = set()
    for i in range(len(s)):
        for j in range(i + 1, min(len(s), i + max_len) + 1):
            out.add(s[i:j])
    return out


def make_vocab():
    import gguf
    out_dir = os.path.join(ROOT, "tests/golden/vocab")
    os.makedirs(out_dir, exist_ok=True)
    alphabet = byte_level_alphabet()
    for name in VOCABS:
        base = os.path.join(SDIST_MODELS, f"ggml-vocab-{name}.gguf")
        raw = open(base + ".inp", encoding="utf-8").read()
        inputs = raw.split(SEP)
        if inputs[-1] == "":  # test-tokenizer-0 reads no case after a final separator
            inputs.pop()
        shipped = open(base + ".out", encoding="utf-8").read().split("\n")[: len(inputs)]
        for text, want in zip(inputs, shipped):
            got = llama_tokenize(base, text, parse_special=False, bos=False)
            if got != [int(x) for x in want.split()]:
                raise SystemExit(f"{name}: llama-tokenize disagrees with the shipped .out on {text!r}")
        r = gguf.GGUFReader(base)
        tokens = read_field(r, "tokenizer.ggml.tokens")
        types = read_field(r, "tokenizer.ggml.token_type") or [1] * len(tokens)
        scores = read_field(r, "tokenizer.ggml.scores")
        merges = read_field(r, "tokenizer.ggml.merges") or []
        model = read_field(r, "tokenizer.ggml.model")
        max_len = max(len(t) for t in tokens)
        if model == "gpt2":
            encoded = ["".join(alphabet[b] for b in t.encode()) for t in inputs]
        else:
            encoded = [" " + t.replace(" ", "\u2581") for t in inputs] + [t.replace(" ", "\u2581") for t in inputs]
            encoded = [e.replace(" ", "\u2581") for e in encoded]
        subs = set()
        for e in encoded:
            subs |= substrings(e, max_len)
        keep = {i for i, t in enumerate(tokens) if t in subs or types[i] != 1}
        kept_text = {tokens[i] for i in keep}
        kept_merges = []
        for rank, m in enumerate(merges):
            sp = m.encode().find(b" ", 1)
            a, b = m.encode()[:sp].decode(), m.encode()[sp + 1:].decode()
            if a in kept_text and b in kept_text and a + b in kept_text:
                kept_merges.append(m)
        meta = {}
        for key in r.fields:
            if key.startswith("tokenizer.ggml.") and key not in (
                    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.merges"):
                meta[key] = read_field(r, key)
        for key in ("general.name", "general.architecture"):
            meta[key] = read_field(r, key)
        doc = {
            "source": f"llama.cpp models/ggml-vocab-{name}.gguf (llama-cpp-python sdist), extract made by "
                      "scripts/make-tokenize-golden.py vocab",
            "n_vocab": len(tokens),
            "meta": meta,
            "tokens": {str(i): tokens[i] for i in sorted(keep)},
            "types": {str(i): types[i] for i in sorted(keep) if types[i] != 1},
            "scores": {str(i): scores[i] for i in sorted(keep)} if scores is not None else None,
            "merges": kept_merges,
        }
        with open(os.path.join(out_dir, f"{name}.vocab.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False)
        for ext in (".inp", ".out"):
            with open(base + ext, "rb") as src, open(os.path.join(out_dir, f"{name}{ext}"), "wb") as dst:
                dst.write(src.read())
        print(f"{name}: {len(inputs)} cases, kept {len(keep)}/{len(tokens)} tokens, {len(kept_merges)}/{len(merges)} merges")


if __name__ == "__main__":
    what = sys.argv[1:] or ["models", "vocab"]
    if "models" in what:
        make_models()
    if "vocab" in what:
        make_vocab()
