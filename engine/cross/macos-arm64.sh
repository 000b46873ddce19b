#!/usr/bin/env bash
# Cross-builds llama.cpp (static) and the engine with its C programs for macOS on Apple silicon
# (aarch64-macos), with the `ziglang` package's clang and Apple SDK stubs. It links; nothing here can
# run a Mach-O program, so it checks that the engine compiles with -Werror and links, not that it runs.
#
#   engine/cross/macos-arm64.sh [WORK_DIR]        (default: build/macos-arm64)
#
# Needs cmake, ninja and pip (ziglang==0.17.1 goes into WORK_DIR/zig, a venv). llama.cpp comes from
# the llama-cpp-python 0.3.36 sdist, built without Metal, Accelerate and BLAS (frameworks zig lacks).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mkdir -p "${1:-$ROOT/build/macos-arm64}" && cd "${1:-$ROOT/build/macos-arm64}" && pwd)"
JOBS="${JOBS:-$(nproc)}"

if [ ! -x "$WORK/zig/bin/python" ]; then
  python3 -m venv "$WORK/zig" && "$WORK/zig/bin/pip" install -q ziglang==0.17.1
fi
mkdir -p "$WORK/bin"
for tool in cc c++ ar ranlib; do
  extra=""; case "$tool" in cc|c++) extra="-target aarch64-macos";; esac
  printf '#!/bin/sh\nexec "%s" -m ziglang %s %s "$@"\n' "$WORK/zig/bin/python" "$tool" "$extra" > "$WORK/bin/zig-$tool"
  chmod +x "$WORK/bin/zig-$tool"
done
DARWIN=(-G Ninja -DCMAKE_SYSTEM_NAME=Darwin -DCMAKE_SYSTEM_PROCESSOR=arm64 -DCMAKE_BUILD_TYPE=Release
        -DCMAKE_C_COMPILER="$WORK/bin/zig-cc" -DCMAKE_CXX_COMPILER="$WORK/bin/zig-c++"
        -DCMAKE_AR="$WORK/bin/zig-ar" -DCMAKE_RANLIB="$WORK/bin/zig-ranlib" -DCMAKE_INSTALL_NAME_TOOL=/bin/true)

SRC="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$WORK"
  tar xzf "$WORK/llama_cpp_python-0.3.36.tar.gz" -C "$WORK"
fi

echo "== llama.cpp for aarch64-macos (static, CPU only)" >&2
cmake -S "$SRC" -B "$WORK/llama-build" "${DARWIN[@]}" -DCMAKE_INSTALL_PREFIX="$WORK/llama-install" \
  -DBUILD_SHARED_LIBS=OFF -DGGML_METAL=OFF -DGGML_ACCELERATE=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF >"$WORK/llama-configure.log"
cmake --build "$WORK/llama-build" -j "$JOBS" >"$WORK/llama-build.log"
cmake --install "$WORK/llama-build" >"$WORK/llama-install.log"

echo "== the engine for aarch64-macos (-Werror)" >&2
cmake -S "$ROOT/engine" -B "$WORK/engine-build" "${DARWIN[@]}" -DCMAKE_PREFIX_PATH="$WORK/llama-install" \
  -DCMAKE_C_FLAGS="-Werror" -DCMAKE_CXX_FLAGS="-Werror" >"$WORK/engine-configure.log"
cmake --build "$WORK/engine-build" -j "$JOBS" >"$WORK/engine-build.log"

for program in cogenesis_example cogenesis_collaborate cogenesis_fusion_fuzz cogenesis_provider_fuzz; do
  head -c 4 "$WORK/engine-build/$program" | od -An -tx1 | grep -q "cf fa ed fe" \
    || { echo "macos-arm64.sh: $program is not a 64-bit Mach-O file" >&2; exit 1; }
done
echo "macos-arm64.sh: the engine and its 4 C programs link for aarch64-macos (not run: no Apple machine here)"
