#!/usr/bin/env python3
"""Exit 0 if the current folder holds the tiny models of a tiny-reference JSON with their sha256."""
import hashlib, json, sys
ref = json.load(open(sys.argv[1]))
for m in ref["models"].values():
    try:
        h = hashlib.sha256(open(m["file"], "rb").read()).hexdigest()
    except OSError:
        sys.exit(1)
    if h != m["sha256"]:
        sys.exit(1)
