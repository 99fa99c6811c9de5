#!/usr/bin/env bash
# One-shot GPU check of tikmix on a (possibly offline) GPU machine, from the repository root:
#   bash benchmarks/gpu_check.sh            # logs under $OUT (default ./gpu_check_out)
# Stages, each with its own time limit; a failing stage does not stop the next ones, the summary names it:
#   env      GPU, driver, torch, nvcc
#   build    TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation --no-deps --no-index .  (TIKMIX_CUDA=ON)
#   info     tikmix_ext.build_info(): with_cuda and a CUDA kernel for every op
#   tests    TIKMIX_REQUIRE_CUDA=1 pytest tests/test_cuda_ops.py tests/test_mma_layout.py (CUDA vs CPU)
#   bench    benchmarks/bench_sketch_gpu.py: the sketch table (shapes A-E, dense matmul, TRAK) + per-op times
#   pybench  pytest benchmarks/ --benchmark-only -m cuda: JSON in $OUT/benchmarks.json, tables.py's Markdown beside it
#   influence benchmarks/bench_influence.py --device cuda, if that file exists
#   compile  scripts/check_cuda_compile.sh: registers/spills per kernel, SASS checks with the machine's cuobjdump
# Budget: under 8 minutes on an H200 expected; all stages together are cut at GPU_CHECK_BUDGET (default 570 s),
# so the whole check fits in a 10-minute job.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
declare -a SUMMARY=()
FAILED=0
T_START=$(date +%s)

BUDGET=${GPU_CHECK_BUDGET:-570}  # seconds for all stages together

run_stage() {  # run_stage NAME LIMIT_SECONDS COMMAND...   (the limit shrinks to what is left of BUDGET)
  local name=$1 limit=$2
  shift 2
  local t0 rc left
  left=$(( BUDGET - ($(date +%s) - T_START) ))
  if (( left < 20 )); then
    SUMMARY+=("SKIPPED $name: out of time (budget ${BUDGET}s)")
    FAILED=1
    return
  fi
  (( limit > left )) && limit=$left
  t0=$(date +%s)
  echo "== [$name] $* (limit ${limit}s)"
  # bash -c runs exported functions and plain commands alike under timeout
  timeout --kill-after=10 "$limit" bash -c '"$@"' bash "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("ok      $name (${dt}s)")
  else
    [[ $rc -eq 124 || $rc -eq 137 ]] && rc="$rc (timed out)"
    SUMMARY+=("FAILED  $name (${dt}s, rc=$rc): see $OUT/$name.log")
    FAILED=1
  fi
  tail -n "${TAIL_LINES:-15}" "$OUT/$name.log"
}

env_info() {
  nvidia-smi || true
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  command -v nvcc && nvcc --version | tail -2
  command -v cuobjdump || true
  nproc
}

build() {
  TIKMIX_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16} \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v .
}

info() {
  cd /tmp && "$PY" - <<'PY'
import json, sys
import tikmix_ext
info = tikmix_ext.build_info()
print(json.dumps({k: v for k, v in info.items() if k != "kernels"}, indent=1))
missing = [op for op in tikmix_ext.OPS if op != "projection" and not tikmix_ext.has_kernel(op, "cuda")]
for op, keys in info["kernels"].items():
    print(f"{op:<22} {', '.join(keys)}")
if not info["with_cuda"] or missing:
    sys.exit(f"with_cuda={info['with_cuda']}, ops without a CUDA kernel: {missing}")
PY
}

sass_dump() {
  # SASS of the sketch kernels for later reading (cuobjdump is on this machine, not on the build machine).
  command -v cuobjdump >/dev/null || { echo "no cuobjdump"; return 0; }
  local lib
  lib=$("$PY" -c "import tikmix_ext._C as c; print(c.__file__)" 2>/dev/null) || return 0
  cuobjdump -sass "$lib" >"$OUT/sketch_sass.txt" 2>&1 || true
  grep -c "HMMA" "$OUT/sketch_sass.txt" || true
}

export PY OUT
export -f env_info build info
run_stage env 30 env_info
run_stage build 210 build
run_stage info 30 info
# -P: keep the repository root off sys.path, so `import tikmix_ext` is the installed build, not ./tikmix_ext
run_stage tests 150 env TIKMIX_REQUIRE_CUDA=1 "$PY" -P -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_cuda_ops.py tests/test_mma_layout.py tests/test_influence_sketch.py --junitxml="$OUT/junit_cuda.xml" -rfE
# influence on FSDP2-sharded models with nccl: world sizes up to the GPU count (the others skip)
run_stage fsdp 240 env TIKMIX_TEST_BACKEND=nccl "$PY" -P -m pytest -q -p no:cacheprovider -o addopts="" \
  tests/test_influence_fsdp.py --junitxml="$OUT/junit_fsdp.xml" -rfE
TAIL_LINES=40 run_stage bench 150 "$PY" benchmarks/bench_sketch_gpu.py --out "$OUT"
# the pytest-benchmark suite: GPU sketch vs a dense bf16 matmul with a stored R (cuda-marked), JSON + tables
TAIL_LINES=40 run_stage pybench 120 bash -c '"$0" -P -m pytest benchmarks/ -q -p no:cacheprovider -o addopts="" --benchmark-only -m cuda --benchmark-json="$1/benchmarks.json" && "$0" benchmarks/tables.py "$1/benchmarks.json" --out "$1/benchmark_tables.md" && cat "$1/benchmark_tables.md"' "$PY" "$OUT"
if [[ -f benchmarks/bench_influence.py ]]; then
  run_stage influence 90 "$PY" benchmarks/bench_influence.py --device cuda --d-model 768 --layers 12 --seq 1024 --k 8192
else
  SUMMARY+=("skipped influence (benchmarks/bench_influence.py does not exist)")
fi
# last, as it only re-reads what the build machine already checks: registers, spills, SASS with this cuobjdump
CUOBJDUMP=$(command -v cuobjdump || true) run_stage compile 45 bash scripts/check_cuda_compile.sh
sass_dump >"$OUT/sass_dump.log" 2>&1 || true

echo
echo "== gpu_check summary ($(( $(date +%s) - T_START ))s in all; logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
if [[ -f "$OUT/bench_table.txt" ]]; then
  echo
  cat "$OUT/bench_table.txt"
fi
exit $FAILED
