#!/usr/bin/env bash
# CI compile check of the CUDA kernels (no GPU needed): nvcc -arch=sm_90 -Xptxas -v on every csrc/cuda/*.cu.
# Fails if a file does not compile, if any kernel spills registers, or if a sketch kernel has a non-zero stack
# frame. Prints one line per kernel (registers, spills, stack). If a cuobjdump is available (on PATH or
# $CUOBJDUMP, e.g. the one in Triton's wheel), also checks the sketch kernels' SASS: HMMA present, no LDL/STL.
#   bash scripts/check_cuda_compile.sh            (about 30-60 s on 2 cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
nvcc=${NVCC:-}
if [[ -z "$nvcc" ]]; then
  for c in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
    if [[ -n "$c" && -x "$c" ]]; then nvcc=$c; break; fi
  done
fi
if [[ -z "$nvcc" ]]; then
  echo "check_cuda_compile: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 2
fi
arch=${TIKMIX_CHECK_ARCH:-sm_90}
out=$(mktemp -d "${TMPDIR:-/tmp}/tikmix_cuda_check.XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "check_cuda_compile: $("$nvcc" --version | tail -1), -arch=$arch"

status=0
shopt -s nullglob
sources=("$root"/csrc/cuda/*.cu)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "check_cuda_compile: no csrc/cuda/*.cu files" >&2
  exit 1
fi
for src in "${sources[@]}"; do
  name=$(basename "$src" .cu)
  log="$out/$name.log"
  if ! "$nvcc" -arch="$arch" -std=c++17 -O3 --expt-relaxed-constexpr -lineinfo -Xptxas -v \
        -I"$root/csrc/include" -c "$src" -o "$out/$name.o" >"$log" 2>&1; then
    echo "FAIL $name.cu does not compile:"
    cat "$log"
    status=1
    continue
  fi
  if grep -q "warning" "$log"; then
    echo "FAIL $name.cu compiles with warnings:"
    grep "warning" "$log"
    status=1
  fi
  # ptxas prints, per kernel: "Compiling entry function 'X'", "Function properties for X",
  # "N bytes stack frame, S bytes spill stores, L bytes spill loads", "Used R registers, ...".
  if ! python3 - "$log" "$name" <<'PY'
import re, sys
log, name = sys.argv[1], sys.argv[2]
text = open(log).read()
ok = True
for block in re.split(r"ptxas info\s*: Compiling entry function ", text)[1:]:
    fn = block.split("'")[1]
    props = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
    regs = re.search(r"Used (\d+) registers", block)
    if not props or not regs:
        print(f"FAIL {name}.cu: no resource report for {fn}")
        ok = False
        continue
    stack, st, ld = map(int, props.groups())
    m = re.search(r"(sketch_mma_kernel)ILi(\d+)ELi(\d)E", fn)
    if m:
        short = f"{m.group(1)}<NT={m.group(2)}, mode={m.group(3)}>"
    else:
        m = re.search(r"\d+((?:sketch|segment|mixture)_\w+?_kernel)(?:I([fd])E)?", fn)
        short = (m.group(1) + (f"<{'float' if m.group(2) == 'f' else 'double'}>" if m.group(2) else "")) if m else fn
    sketch = "sketch_mma_kernel" in fn
    bad = st or ld or (sketch and stack)
    print(f"{'FAIL' if bad else 'ok  '} {name}.cu {short[:40]:<40} regs={regs.group(1):>3} stack={stack} "
          f"spill_st={st} spill_ld={ld}")
    ok = ok and not bad
sys.exit(0 if ok else 1)
PY
  then
    status=1
  fi
done

cuobjdump=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [[ -n "$cuobjdump" && -f "$out/sketch.o" ]]; then
  sass="$out/sketch.sass"
  "$cuobjdump" -sass "$out/sketch.o" >"$sass"
  if ! python3 - "$sass" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
ok = True
for f in re.split(r"\n\s*Function : ", text)[1:]:
    name = f.split("\n", 1)[0].strip()
    if "sketch_mma_kernel" not in name:
        continue
    m = re.search(r"sketch_mma_kernelILi(\d+)ELi(\d)E", name)
    nt, mode = (int(m.group(1)), int(m.group(2))) if m else (1, 0)
    want = 2 * 2 * 4 * nt * (3 if mode == 2 else 1)  # 2 warp steps per tile × 2 k16 × 4 m-tiles × NT × parts
    hmma = len(re.findall(r"\bHMMA\.16816\.F32\b", f))
    local = len(re.findall(r"\b(LDL|STL)\b", f))
    lop3 = len(re.findall(r"LOP3\.LUT [^;]*0x6a,", f))  # (v & mask) ^ one as one LOP3
    if hmma < want or local or lop3 < 32:
        print(f"FAIL SASS sketch_mma_kernel<NT={nt}, mode={mode}>: HMMA={hmma} (want >= {want}) "
              f"LDL/STL={local} LOP3(0x6a)={lop3} (want >= 32)")
        ok = False
print("ok   SASS of sketch kernels: all HMMAs present, sign LOP3s fused, no local memory" if ok else "FAIL SASS check")
sys.exit(0 if ok else 1)
PY
  then
    status=1
  fi
else
  echo "note: no cuobjdump found; SASS checks skipped (set CUOBJDUMP to enable)"
fi

if [[ $status -ne 0 ]]; then
  echo "check_cuda_compile: FAILED"
else
  echo "check_cuda_compile: all CUDA sources compile for $arch without spills"
fi
exit $status
