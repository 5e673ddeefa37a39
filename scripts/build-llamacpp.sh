#!/usr/bin/env bash
# Builds llama.cpp on this machine as the peer the parity tests compare ferrite against:
# `greedy_ref` (scripts/greedy_ref.c: prompt ids, greedy ids and first-step top-5 logits as JSON)
# and llama.cpp's own llama-tokenize, llama-perplexity, llama-completion, llama-bench,
# llama-quantize, llama-export-lora, llama-imatrix, llama-eval-callback and ggml-rpc-server, with
# ggml's RPC backend. Prints the folder of the binaries as its last line;
# the tests find it through FERRITE_LLAMACPP_BIN.
#
# Why build it here rather than store its answers: llama.cpp's logits depend on the vector units
# its ggml was compiled for (AVX2 and AVX-512 machines give different greedy continuations), so
# the answer ferrite must reproduce is the one of llama.cpp built for the same CPU.
#
# Sources, all from package registries, so that a fresh clone needs nothing beside it:
#   - llama.cpp and ggml as shipped inside the crate llama-cpp-sys-2, the very version ferrite's
#     ggml comes from (the version Cargo.lock pins, from cargo's registry cache);
#   - the tools/ and examples/ folders, which that crate leaves out, from the llama-cpp-python
#     source distribution of the same llama.cpp generation (pip download).
#
# usage: scripts/build-llamacpp.sh
# env:   FERRITE_CPU_CLASS=avx2  build for AVX2/FMA/F16C only (GGML_NATIVE=OFF, -march=x86-64-v3),
#                                to rehearse an AVX2-only machine on an AVX-512 one; the default
#                                builds for this machine (GGML_NATIVE=ON), as ferrite's own build does
#        FERRITE_LLAMACPP_DIR    where to build (default /tmp/llamacpp-ref, or /tmp/llamacpp-ref-avx2)
#        LLAMACPP_PYTHON_SDIST   llama-cpp-python version for tools/ (default 0.3.36)
#        EXTRA=1                 also build llama-batched-bench (for scripts/bench-parallel.sh)
# Idempotent: a folder that already holds the tools of the same configuration is reused, and
# greedy_ref is recompiled only when scripts/greedy_ref.c changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
class=${FERRITE_CPU_CLASS:-native}
case "$class" in
  native | avx512) class=native; default_dir=/tmp/llamacpp-ref ;;
  avx2) default_dir=/tmp/llamacpp-ref-avx2 ;;
  *) echo "build-llamacpp.sh: FERRITE_CPU_CLASS must be avx2 or avx512 (= this machine), not $class" >&2; exit 2 ;;
esac
dir=${FERRITE_LLAMACPP_DIR:-$default_dir}
bin="$dir/bin"
sdist_version=${LLAMACPP_PYTHON_SDIST:-0.3.36}
say() { echo "build-llamacpp.sh: $*" >&2; }

# The configuration: what the C and C++ compilers are told. AMX tile instructions are listed by
# cpuid on some of the project's machines but fault there (SIGSEGV at ldtilecfg in ggml's AMX
# matmul), so a native build leaves them out, exactly as ferrite's .cargo/config.toml does for
# its own ggml. The AVX2 build mirrors what llama-cpp-sys-2 configures for
# `-C target-cpu=x86-64-v3` (the flags of each target feature, and -march for the rest) — for
# ggml only: llama.cpp's library and tools stay at the compiler's default, as in a native build
# on an AVX2-only machine (GGML_NATIVE gives -march=native to ggml-cpu alone). With -march on
# everything, g++ fused llama-imatrix's `sum += x*x` into FMAs, which no real machine's build
# does, and its matrices differed from ferrite's in the last bits.
mkdir -p "$dir"
if [ "$class" = native ]; then
  cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cpu_defs=(-DGGML_NATIVE=ON)
else
  cflags=""
  echo 'add_compile_options(-march=x86-64-v3)' >"$dir/ggml-x86-64-v3.cmake"
  cpu_defs=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_SSE42=ON
    "-DCMAKE_PROJECT_ggml_INCLUDE=$dir/ggml-x86-64-v3.cmake")
fi
# the RPC backend: llama.cpp's tools as clients of `ferrite rpc-server`, and its server for ferrite
cpu_defs+=(-DGGML_RPC=ON)
config="class=$class cflags=$cflags defs=${cpu_defs[*]} sdist=$sdist_version"
tools=(llama-tokenize llama-perplexity llama-completion llama-bench llama-quantize llama-eval-callback llama-export-lora llama-imatrix ggml-rpc-server)
extra_subdirs=()
if [ "${EXTRA:-0}" = 1 ]; then
  tools+=(llama-batched-bench)
  extra_subdirs=(batched-bench)
fi

have_tools() {
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ -e "$bin/libllama.so" ] || return 1
  # A folder without our stamp was built by the project's earlier shared script, with the same
  # recipe as the native build here; it is reused for the native class only.
  if [ -f "$dir/ferrite-config" ]; then
    [ "$(cat "$dir/ferrite-config")" = "$config" ]
  else
    [ "$class" = native ]
  fi
}

# greedy_ref is small: rebuilt whenever its source differs from what the folder's copy came from.
build_greedy_ref() {
  local sum
  sum=$(sha256sum "$here/greedy_ref.c" | cut -d' ' -f1)
  if [ -x "$bin/greedy_ref" ] && [ "$(cat "$bin/greedy_ref.sha256" 2>/dev/null)" = "$sum" ]; then return; fi
  # the headers of the same tree: ours ($dir/src), or those of a folder the shared script built
  local inc="$dir/src"
  [ -f "$inc/include/llama.h" ] || [ ! -f "$dir/src-crate/include/llama.h" ] || inc="$dir/src-crate"
  [ -f "$inc/include/llama.h" ] || fetch_crate_sources
  say "compiling greedy_ref"
  # into a temporary name, then renamed: other processes may be running the old binary
  gcc -O2 -o "$bin/greedy_ref.tmp.$$" "$here/greedy_ref.c" -I "$inc/include" -I "$inc/ggml/include" \
    -L "$bin" -lllama -lggml -lggml-base -Wl,-rpath,"$bin"
  mv -f "$bin/greedy_ref.tmp.$$" "$bin/greedy_ref"
  echo "$sum" >"$bin/greedy_ref.sha256"
}

# llama.cpp's tree from the crate ferrite builds against, copied to $dir/src (the copy is then
# completed with tools/ from the sdist, so the registry's cache stays untouched).
fetch_crate_sources() {
  [ -f "$dir/src/include/llama.h" ] && return 0
  # the version Cargo.lock pins, in cargo's registry cache (filled by `cargo fetch` when absent)
  local version crate
  version=$(awk '/^name = "llama-cpp-sys-2"$/ { getline; gsub(/"/, "", $3); print $3 }' "$root/Cargo.lock")
  [ -n "$version" ] || { echo "build-llamacpp.sh: llama-cpp-sys-2 is not in Cargo.lock" >&2; exit 1; }
  find_crate() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"llama-cpp-sys-2-$version" 2>/dev/null | head -n 1; }
  crate=$(find_crate)
  [ -n "$crate" ] || { cargo fetch -q --manifest-path "$root/Cargo.toml" >&2 && crate=$(find_crate); }
  [ -f "$crate/llama.cpp/include/llama.h" ] || { echo "build-llamacpp.sh: llama-cpp-sys-2 $version's sources not found" >&2; exit 1; }
  say "llama.cpp sources from $crate"
  rm -rf "$dir/src.tmp" && cp -r "$crate/llama.cpp" "$dir/src.tmp" && mv "$dir/src.tmp" "$dir/src"
}

mkdir -p "$dir"
if have_tools; then
  build_greedy_ref
  echo "$bin"
  exit 0
fi
command -v cmake >/dev/null || { echo "build-llamacpp.sh: cmake is missing (scripts/deps.sh installs it)" >&2; exit 1; }
say "building llama.cpp ($class) in $dir; a few minutes"
fetch_crate_sources

# tools/ and examples/eval-callback from the llama-cpp-python sdist
if [ ! -d "$dir/sdist" ]; then
  rm -rf "$dir/dl" && mkdir -p "$dir/dl"
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$dir/dl" "llama-cpp-python==$sdist_version" >&2
  rm -rf "$dir/sdist.tmp" && mkdir "$dir/sdist.tmp"
  tar xzf "$dir"/dl/llama_cpp_python-*.tar.gz -C "$dir/sdist.tmp" --strip-components=1
  mv "$dir/sdist.tmp" "$dir/sdist"
fi
vendored="$dir/sdist/vendor/llama.cpp"
subdirs=(llama-bench perplexity tokenize completion quantize export-lora imatrix rpc "${extra_subdirs[@]}")
for t in "${subdirs[@]}"; do
  rm -rf "$dir/src/tools/$t" && cp -r "$vendored/tools/$t" "$dir/src/tools/$t"
done
printf 'add_subdirectory(%s)\n' "${subdirs[@]}" >"$dir/src/tools/CMakeLists.txt"
rm -rf "$dir/src/examples" && mkdir -p "$dir/src/examples"
cp -r "$vendored/examples/eval-callback" "$dir/src/examples/"
echo 'add_subdirectory(eval-callback)' >"$dir/src/examples/CMakeLists.txt"

# a changed configuration must not reuse the old cache's flags
[ "$(cat "$dir/ferrite-config" 2>/dev/null)" = "$config" ] || rm -rf "$dir/build"
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release "${cpu_defs[@]}" \
  -DCMAKE_C_FLAGS="$cflags" -DCMAKE_CXX_FLAGS="$cflags" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DCMAKE_BUILD_RPATH="$bin" >"$dir/build.log" 2>&1 ||
  { tail -40 "$dir/build.log" >&2; exit 1; }
cmake --build "$dir/build" -j"$(nproc)" --target "${tools[@]}" >>"$dir/build.log" 2>&1 ||
  { tail -40 "$dir/build.log" >&2; exit 1; }
mkdir -p "$bin" && cp -a "$dir"/build/bin/* "$bin/"
echo "$config" >"$dir/ferrite-config"
rm -f "$bin/greedy_ref.sha256"
build_greedy_ref
echo "$bin"
