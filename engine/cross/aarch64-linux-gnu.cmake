# Cross-compiling for 64-bit ARM Linux (phones' CPUs, Raspberry Pi 4/5, Graviton) with Debian's
# gcc-aarch64-linux-gnu and g++-aarch64-linux-gnu:
#   cmake -S engine -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=engine/cross/aarch64-linux-gnu.cmake \
#         -DCMAKE_PREFIX_PATH=/path/to/llama.cpp-arm64-install -DCOGENESIS_ARCH=armv8.2-a+dotprod
# The programs built run on an ARM64 machine, or here under qemu-aarch64 -L /usr/aarch64-linux-gnu.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Libraries and headers of the target only; programs (cmake itself, Python) of the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# The llama.cpp install given on CMAKE_PREFIX_PATH lies outside the root path: search it as given.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
