# Cross-compiles hvagent for arm64 (aarch64) with Debian's crossbuild-essential-arm64, against a
# sysroot of Debian arm64 packages made by deploy/cross/make-arm64-sysroot.sh.
#   cmake -S . -B build-arm64 -G Ninja \
#     -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#     [-DHVAGENT_ARM64_SYSROOT=/var/cache/hvagent-arm64/sysroot]
# Build tools (protoc, grpc_cpp_plugin, pkg-config) come from the host; the test binaries run
# through qemu-aarch64 (Debian's qemu-user) as CMAKE_CROSSCOMPILING_EMULATOR, so
# gtest_discover_tests and ctest work unchanged.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# The toolchain file is read again for every try_compile: pass the sysroot choice along.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES HVAGENT_ARM64_SYSROOT)
if(NOT HVAGENT_ARM64_SYSROOT)
  if(DEFINED ENV{HVAGENT_ARM64_SYSROOT})
    set(HVAGENT_ARM64_SYSROOT "$ENV{HVAGENT_ARM64_SYSROOT}")
  else()
    set(HVAGENT_ARM64_SYSROOT /var/cache/hvagent-arm64/sysroot)
  endif()
endif()
set(HVAGENT_ARM64_SYSROOT "${HVAGENT_ARM64_SYSROOT}" CACHE PATH "arm64 sysroot (deploy/cross/make-arm64-sysroot.sh)")
if(NOT EXISTS "${HVAGENT_ARM64_SYSROOT}/usr/include")
  message(FATAL_ERROR "no arm64 sysroot at ${HVAGENT_ARM64_SYSROOT}: run deploy/cross/make-arm64-sysroot.sh")
endif()

set(CMAKE_SYSROOT "${HVAGENT_ARM64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${HVAGENT_ARM64_SYSROOT}")
# Libraries, headers and CMake packages from the sysroot; programs from the host.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Code generators run on the build machine. (gRPC's CMake config still imports the sysroot's
# arm64 grpc_cpp_plugin; proto/CMakeLists.txt uses the host one when cross-compiling.)
set(Protobuf_PROTOC_EXECUTABLE /usr/bin/protoc CACHE FILEPATH "host protoc")

# pkg-config (libvirt, libxml2, xencontrol): host binary, arm64 .pc files, sysroot-prefixed paths.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${HVAGENT_ARM64_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${HVAGENT_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${HVAGENT_ARM64_SYSROOT}/usr/lib/pkgconfig:${HVAGENT_ARM64_SYSROOT}/usr/share/pkgconfig")
unset(ENV{PKG_CONFIG_PATH})

# qemu-user with the sysroot as its prefix: the arm64 loader and libraries are found there.
set(CMAKE_CROSSCOMPILING_EMULATOR /usr/bin/qemu-aarch64 -L "${HVAGENT_ARM64_SYSROOT}")
