#!/usr/bin/env bash
# Developer build of tikmix_ext._C into a private folder (no install), for parallel work:
#   bash scripts/dev_build.sh /tmp/build_me && TIKMIX_EXT_LIB=$(ls /tmp/build_me/_C*.so) pytest tests/...
set -euo pipefail
build=${1:?usage: dev_build.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTIKMIX_CUDA="${TIKMIX_CUDA:-AUTO}" \
      -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$build" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
ls "$build"/_C*.so
