#!/usr/bin/env bash
# One-shot set-up of a development checkout: torch (CPU wheel unless one is already installed), the build
# tools, then tikmix itself built against that torch (editable, --no-build-isolation).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[tikmix] installing torch ${TIKMIX_TORCH_VERSION:-2.13.0} (CPU wheel)" >&2
  pip_install "torch==${TIKMIX_TORCH_VERSION:-2.13.0}"
fi
if ! "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  pip_install "scikit-build-core>=0.10" pybind11
fi
command -v cmake >/dev/null || pip_install "cmake>=3.25"
command -v ninja >/dev/null || pip_install ninja
echo "[tikmix] building tikmix against torch $("$PY" -c 'import torch; print(torch.__version__)')" >&2
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  pip_install --no-build-isolation -e ".[all,test]"
"$PY" -m tikmix_ext.info >&2
