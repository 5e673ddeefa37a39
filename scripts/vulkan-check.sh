#!/usr/bin/env bash
# Builds ferrite with ggml's Vulkan backend and checks it on Mesa's lavapipe (a Vulkan device
# that computes on the CPU), so the GPU code path is exercised on machines without a GPU:
#   1. the Vulkan device is listed (`info --devices`);
#   2. `run -ngl 99 -v` puts the graph's nodes on it;
#   3. perplexity with every layer on it is within 0.5 % of the CPU's.
# Exits non-zero when a check fails.
#
# Debian 12 has the packages (glslc, libvulkan-dev, spirv-headers, mesa-vulkan-drivers) but its
# Vulkan headers (1.3.239) predate VK_EXT_layer_settings, which ggml-vulkan uses; the headers of
# Debian 13's libvulkan-dev are fetched into target/vulkan-headers (nothing is installed from it:
# the .deb is only unpacked, and apt's own lists are left alone) and put first on the compiler's
# include path. The build goes to target/vulkan (about 8 minutes on 2 cores).
#
# usage: scripts/vulkan-check.sh [MODEL (default gemma3)] [TEXT FILE (default: the GPL-3 text in
# tests/golden/reference)]; perplexity over its first 4 chunks of 512: one batch, where the CPU figure equals llama-perplexity's
# (SmolLM2's Q4_1 is 0.87 % off on that text, llama.cpp's own Vulkan build 0.90 %: see README)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-gemma3}
text=${2:-}

need=()
command -v glslc >/dev/null || need+=(glslc)
[ -f /usr/include/vulkan/vulkan.h ] || need+=(libvulkan-dev)
[ -d /usr/include/spirv ] || need+=(spirv-headers)
ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

headers=target/vulkan-headers
if ! grep -q LayerSettingEXT /usr/include/vulkan/vulkan.hpp 2>/dev/null && [ ! -f "$headers/usr/include/vulkan/vulkan.hpp" ]; then
  echo "fetching newer Vulkan headers (Debian 13's libvulkan-dev) into $headers" >&2
  apt_dir=$(mktemp -d)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache" -o "APT::Get::List-Cleanup=0")
  apt-get "${opts[@]}" update >&2
  (cd "$apt_dir" && apt-get "${opts[@]}" download libvulkan-dev >&2)
  mkdir -p "$headers"
  dpkg -x "$apt_dir"/libvulkan-dev_*.deb "$headers"
fi
inc=""
[ -f "$headers/usr/include/vulkan/vulkan.hpp" ] && inc=$PWD/$headers/usr/include

echo "building with --features vulkan into target/vulkan" >&2
start=$(date +%s)
CPLUS_INCLUDE_PATH=$inc C_INCLUDE_PATH=$inc CARGO_TARGET_DIR=target/vulkan cargo build --release --features vulkan >&2
echo "build: $(($(date +%s) - start)) s" >&2
vk=target/vulkan/release/ferrite
cpu=target/release/ferrite
cargo build --release -q

# ggml-vulkan leaves CPU-type devices (lavapipe) out unless they are named
export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
fail=0
devices=$("$vk" info --devices)
echo "$devices"
grep -q '^Vulkan0 ' <<<"$devices" || { echo "FAIL: no Vulkan device listed" >&2; exit 1; }

nodes=$("$vk" run -m "$model" --temp 0 -n 8 -ngl 99 -v "The capital of France is" 2>&1 >/dev/null | grep 'nodes by device')
echo "$nodes"
vk_nodes=$(grep -o 'Vulkan0 [0-9]*' <<<"$nodes" | cut -d' ' -f2)
[ "${vk_nodes:-0}" -gt 100 ] || { echo "FAIL: the graph did not run on the Vulkan device" >&2; fail=1; }

[ -n "$text" ] || text=tests/golden/reference/GPL-3.txt
ppl() { local b=$1; shift; "$b" perplexity -m "$model" -f "$text" -c 512 --chunks 4 --json "$@" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
p_cpu=$(ppl "$cpu")
start=$(date +%s)
p_vk=$(ppl "$vk" -ngl 99)
echo "perplexity: CPU $p_cpu, Vulkan (lavapipe, -ngl 99) $p_vk ($(($(date +%s) - start)) s)"
python3 - "$p_cpu" "$p_vk" <<'PY' || fail=1
import sys
cpu, vk = map(float, sys.argv[1:])
d = abs(vk - cpu) / cpu * 100
print(f"difference {d:.3f} %")
sys.exit(0 if d <= 0.5 else 1)
PY
[ $fail = 0 ] && echo "vulkan-check: OK" || { echo "vulkan-check: FAILED" >&2; exit 1; }
