"""CPU checks of the CUDA sketch kernel (no GPU needed).

1. tests/cpp/mma_layout_harness.cpp includes the kernel's own headers (tikmix/mma_layout.h, tikmix/cuda_plan.h,
   tikmix/rng.h), runs the per-lane functions for all 32 lanes of a warp with emulated shuffles, ldmatrix and
   mma.m16n8k16 (from their PTX-documented layouts), and compares with the reference R.
2. tests/cpp/sketch_emu_harness.cpp compiles csrc/cuda/sketch.cu itself with -DTIKMIX_CPU_EMULATION: the real
   launcher and kernel (staging, fp32 split, pipeline, generator, MMAs, epilogue, split-K reduction) run on the
   CPU through tests/cpp/cuda_emu.h (threads as fibers, warp collectives by their PTX semantics) and are compared
   with a float64 reference, bit for bit where the sums are exact.
3. tests/cpp/reduce_emu_harness.cpp does the same for csrc/cuda/segment.cu and mixture.cu and compares them bit for
   bit with the CPU kernels of csrc/cpu (the shared contract order of reduce_kernels.h).
This file compiles both with g++ (cached by source hash), runs them and checks every line they print; sign rows are
re-derived with the pure-Python hash of tikmix_ext.reference.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tikmix_ext.reference import sign_word_ref

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "cpp" / "mma_layout_harness.cpp"
HEADERS = [ROOT / "csrc" / "include" / "tikmix" / h for h in ("mma_layout.h", "cuda_plan.h", "rng.h")]
EMU_HARNESS = ROOT / "tests" / "cpp" / "sketch_emu_harness.cpp"
EMU_SOURCES = [EMU_HARNESS, ROOT / "tests" / "cpp" / "cuda_emu.h", ROOT / "csrc" / "cuda" / "sketch.cu",
               ROOT / "csrc" / "cuda" / "launch.cuh",
               ROOT / "csrc" / "include" / "tikmix" / "cuda_kernels.h", *HEADERS]
REDUCE_HARNESS = ROOT / "tests" / "cpp" / "reduce_emu_harness.cpp"
CPU_REDUCE = [ROOT / "csrc" / "cpu" / "segment.cpp", ROOT / "csrc" / "cpu" / "mixture.cpp"]
REDUCE_SOURCES = [REDUCE_HARNESS, ROOT / "tests" / "cpp" / "cuda_emu.h", ROOT / "csrc" / "cuda" / "launch.cuh",
                  ROOT / "csrc" / "cuda" / "segment.cu", ROOT / "csrc" / "cuda" / "mixture.cu",
                  ROOT / "csrc" / "include" / "tikmix" / "reduce_kernels.h", *CPU_REDUCE,
                  ROOT / "csrc" / "include" / "tikmix" / "cuda_kernels.h", *HEADERS]
REDUCE_CASES = (
    "segment_f32_small",
    "segment_f32_chunks",
    "segment_f64_chunks",
    "segment_f32_one_row",
    "mixture_f32",
    "mixture_f64",
    "mixture_one_draw",
)
EMU_CASES = (
    "bf16_n9_k256",
    "bf16_n64_general",
    "f16_n1",
    "f16_11bit",
    "f32_split_n70_two_groups",
    "f32_24bit",
    "bf16_scale_splitk",
    "f32_unaligned_rows",
    "bf16_unaligned_base",
    "f16_accumulate",
    "f32_accumulate_splitk",
    "bf16_n20_k1",
    "bf16_d1_k65",
    "f32_general_k129",
    "bf16_k1024_eight_warps_two_ctas",
    "bf16_two_groups_splitk",
)
CHECKS = (
    "byte_transpose",
    "fragments_vs_rng",
    "warp_mma_small_int",
    "epilogue_packing",
    "ldmatrix_banks",
    "split3_exact",
    "chunk_bytes",
    "plan_invariants",
)


def _build_and_run(name: str, main: Path, sources: list, extra_flags: list, extra_units: tuple = ()) -> str:
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot build the CPU harness of the CUDA kernel")
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    digest.update(" ".join([cxx, *extra_flags]).encode())
    cache = Path(tempfile.gettempdir()) / "tikmix_mma_harness"
    cache.mkdir(parents=True, exist_ok=True)
    exe = cache / f"{name}_{digest.hexdigest()[:16]}"
    if not exe.exists():
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", *extra_flags, f"-I{ROOT / 'csrc' / 'include'}",
               f"-I{ROOT / 'tests' / 'cpp'}", str(main), *map(str, extra_units), "-o", str(tmp)]
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, f"{name} failed to compile:\n{build.stderr}"
        assert "warning" not in build.stderr, f"{name} compiled with warnings:\n{build.stderr}"
        os.replace(tmp, exe)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{name} exited with {run.returncode}:\n{run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def harness_output() -> str:
    return _build_and_run("layout", HARNESS, [HARNESS, *HEADERS], [])


@pytest.fixture(scope="module")
def emulated_kernel_output() -> str:
    # The kernel's `#pragma unroll` and its unused stream argument mean nothing to g++.
    flags = ["-DTIKMIX_CPU_EMULATION", "-Wno-unknown-pragmas", "-Wno-unused-parameter"]
    return _build_and_run("sketch_emu", EMU_HARNESS, EMU_SOURCES, flags)


@pytest.fixture(scope="module")
def emulated_reduce_output() -> str:
    flags = ["-DTIKMIX_CPU_EMULATION", "-Wno-unknown-pragmas", "-Wno-unused-parameter"]
    return _build_and_run("reduce_emu", REDUCE_HARNESS, REDUCE_SOURCES, flags, tuple(CPU_REDUCE))


def _check_line(output: str, name: str) -> None:
    match = re.search(rf"^CHECK {name} (\d+) (\d+)$", output, re.M)
    assert match is not None, f"check {name} missing from the harness output"
    failures, cases = int(match.group(1)), int(match.group(2))
    assert cases > 0
    assert failures == 0, f"{name}: {failures} of {cases} cases failed"


@pytest.mark.parametrize("name", CHECKS)
def test_harness_check(harness_output: str, name: str) -> None:
    _check_line(harness_output, name)


@pytest.mark.parametrize("name", EMU_CASES)
def test_emulated_kernel(emulated_kernel_output: str, name: str) -> None:
    """The real sketch launcher + kernel, run on the CPU, equals the float64 reference (bitwise where exact)."""
    _check_line(emulated_kernel_output, f"emu_{name}")


def test_fragment_signs_match_python_hash(harness_output: str) -> None:
    """The 32×64 sign tile decoded from the emulated A fragments equals R from an independent Python hash."""
    line = next(l for l in harness_output.splitlines() if l.startswith("SIGNS "))
    seed, row0, block, *rows = line.split()[1:]
    seed, row0, block = int(seed), int(row0), int(block)
    assert len(rows) == 32
    for r, hexbits in enumerate(rows):
        assert int(hexbits, 16) == sign_word_ref(seed, row0 + r, block), f"row {r}"


def test_plan_of_benchmark_shapes(harness_output: str) -> None:
    """Launch plans of the benchmark shapes (KERNEL_NOTES §3): ≤64 samples per CTA, split-K only over d."""
    plans = {}
    for line in harness_output.splitlines():
        if line.startswith("PLAN "):
            parts = line.split()
            key = tuple(int(v) for v in parts[1:4])
            plans[key] = {kv.split("=")[0]: int(kv.split("=")[1]) for kv in parts[4:]}
    a = plans[(64, 100_000_000, 8192)]
    assert a["nt"] == 8 and a["groups"] == 1 and a["warps"] == 8 and a["col_ctas"] == 16 and a["splits"] > 1
    assert plans[(16, 100_000_000, 8192)]["nt"] == 2
    assert plans[(256, 100_000_000, 8192)]["groups"] == 4  # 4 sample groups regenerate R
    small = plans[(3, 1000, 10)]
    assert small == {"nt": 1, "groups": 1, "warps": 1, "col_ctas": 1, "splits": 1, "chunk_tiles": 16}


@pytest.mark.parametrize("name", REDUCE_CASES)
def test_emulated_reduce_kernels_bit_identical_to_cpu(emulated_reduce_output: str, name: str) -> None:
    """CUDA segment-sum and mixture_scores kernels, run on the CPU, equal the CPU kernels bit for bit."""
    _check_line(emulated_reduce_output, f"emu_{name}")
