"""Every CPU kernel set this machine supports (TIKMIX_CPU_ISA=avx512bf16|avx512|avx2|generic, forced in a fresh
process because the choice is made once) gives sketches within the stated error bound of the float64 reference, and
the fp32 kernel sets give the same bits as each other.

Stated bound (csrc/README.md, "Precision"): every output is s_k times a sum of the d exact terms ±x_j·scale_j, formed
by a summation tree whose depth is at most h(d) = min(d, 1024) + ceil(d / 256) + 64 (block sums, block-to-block and
chunk-to-chunk sums of the work plan, table levels). Hence, with u = 2^-24,

    |y − y_ref| ≤ γ(h(d) + 3) · s_k · Σ_j |x_j · scale_j|,    γ(m) = m·u / (1 − m·u)

(+3: the rounding of x_j·scale_j, of the final s_k multiplication and of s_k itself). bf16/fp16 inputs are converted
to fp32 exactly, so the same bound holds against the float64 product of the bf16/fp16 values. The bf16 kernel
(vdpbf16ps) flushes subnormals; the cases here have none.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import tikmix_ext
from test_ops_common import assert_bits_equal

LEVELS = ["avx512bf16", "avx512", "avx2", "generic"]
REPORTED = {"avx512bf16": "avx512-bf16", "avx512": "avx512", "avx2": "avx2", "generic": "generic"}

# (n, d, k, dtype, with scale, offset): one or more cases for every kernel of every path.
CASES = [
    (1, 3001, 100, "float32", False, 0),  # fused N=1, k not a multiple of 64
    (2, 5000, 130, "float32", True, 2**40),  # fused N=2, scale
    (3, 999, 64, "float16", False, 7),  # fused N=3, fp16, d not a multiple of 8
    (4, 2000, 65, "bfloat16", True, 0),  # fused N=4, bf16 with scale
    (5, 3000, 700, "float32", False, 2**43),  # table, 16 lanes, several k-tiles
    (17, 4100, 257, "float16", True, 1),  # table, 32 lanes with padding
    (40, 3000, 1100, "bfloat16", False, 0),  # table, 32 + 16 lanes
    (10, 2999, 130, "bfloat16", False, 3),  # vdpbf16ps kernel on avx512bf16, table elsewhere
    (8, 40000, 64, "float32", False, 0),  # d-chunked plan
]

SCRIPT = r"""
import sys, torch, tikmix_ext
cases = eval(sys.argv[2])
outs = []
for n, d, k, dt, with_scale, offset in cases:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64).to(getattr(torch, dt))
    scale = torch.rand(d, generator=torch.Generator().manual_seed(n), dtype=torch.float64).float() + 0.5 if with_scale else None
    outs.append(tikmix_ext.sketch(x, k, 11, offset, scale))
acc = torch.randn(6, 96, generator=torch.Generator().manual_seed(1))
tikmix_ext.sketch_accumulate_(acc, torch.randn(6, 7000, generator=torch.Generator().manual_seed(2)), 3, 123)
a = torch.randn(3, 20, 300, generator=torch.Generator().manual_seed(3))
g = torch.randn(3, 20, 90, generator=torch.Generator().manual_seed(4))
torch.save({"isa": tikmix_ext.build_info()["cpu_isa"], "sketch": outs, "accumulate": acc,
            "projection": tikmix_ext.projection(300, 200, 5, 2**42), "kron": tikmix_ext.sketch_kron(a, g, 48, 20, 3, 2)},
           sys.argv[1])
"""


def run_forced(isa: str, path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIKMIX_CPU_ISA=isa)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), repr(CASES)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def forced_results(tmp_path_factory) -> Dict[str, dict]:
    """Results of every kernel set, keyed by the requested level; levels this CPU lacks are absent (the request is a
    cap, so they report a lower level)."""
    out: Dict[str, dict] = {}
    for isa in LEVELS:
        path = tmp_path_factory.mktemp("isa") / f"{isa}.pt"
        proc = run_forced(isa, path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = torch.load(path)
        if res["isa"] == REPORTED[isa]:
            out[isa] = res
    assert "generic" in out, "the portable kernels must run everywhere"
    return out


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_every_supported_path_runs(forced_results):
    """The levels found match the CPU's flags (so no path is skipped by a detection bug on this machine)."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    avx2 = {"avx2", "fma", "bmi2", "f16c"} <= flags
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags and avx2
    expected = {"generic"} | ({"avx2"} if avx2 else set()) | ({"avx512"} if avx512 else set())
    if avx512 and "avx512_bf16" in flags:
        expected.add("avx512bf16")
    assert set(forced_results) == expected
    best = next(level for level in LEVELS if level in expected)
    assert tikmix_ext.build_info()["cpu_isa"] == REPORTED[best] or os.environ.get("TIKMIX_CPU_ISA")


def depth_bound(d: int) -> int:
    """h(d): the deepest summation tree of any plan (see the module docstring)."""
    return min(d, 1024) + math.ceil(d / 256) + 64


@pytest.mark.parametrize("isa", LEVELS)
def test_within_stated_bound_of_float64_reference(forced_results, isa):
    if isa not in forced_results:
        pytest.skip(f"this CPU has no {isa}")
    u = 2.0**-24
    for (n, d, k, dt, with_scale, offset), y in zip(CASES, forced_results[isa]["sketch"]):
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64).to(getattr(torch, dt))
        x64 = x.double()
        if with_scale:
            scale = torch.rand(d, generator=torch.Generator().manual_seed(n), dtype=torch.float64).float() + 0.5
            x64 = x64 * scale.double()
        R = tikmix_ext.projection(d, k, 11, offset).double()  # ±s_k exactly (bit-equal to the Python reference)
        ref = x64 @ R
        s_k = float(R[0, 0].abs())
        m = depth_bound(d) + 3
        bound = m * u / (1 - m * u) * s_k * x64.abs().sum(1, keepdim=True)
        err = (y.double() - ref).abs()
        worst = float((err / bound).max())
        assert worst <= 1.0, f"{isa} {(n, d, k, dt, with_scale)}: error {worst:.3g}× the stated bound"
        # And in practice far inside it: within 2× torch's own float32 matmul error plus 4 ulps.
        torch_err = float(((x64.float() @ R.float()).double() - ref).abs().max())
        assert float(err.max()) <= 2 * torch_err + 2.0**-22 * float(ref.abs().max()), (isa, n, d, k, dt)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_fp32_paths_give_the_same_bits_as_generic(forced_results, isa):
    """The vector kernels sum in the portable kernels' order and ±1 products are exact: identical bits."""
    if isa not in forced_results:
        pytest.skip(f"this CPU has no {isa}")
    gen, got = forced_results["generic"], forced_results[isa]
    for case, a, b in zip(CASES, got["sketch"], gen["sketch"]):
        assert_bits_equal(a, b, name=f"sketch {case} {isa} vs generic")
    for key in ("accumulate", "projection", "kron"):
        assert_bits_equal(got[key], gen[key], name=f"{key} {isa} vs generic")


def test_bf16_path_differs_only_in_the_vdpbf16ps_kernel(forced_results):
    if "avx512bf16" not in forced_results:
        pytest.skip("this CPU has no AVX512-BF16")
    got, gen = forced_results["avx512bf16"], forced_results["generic"]
    for case, a, b in zip(CASES, got["sketch"], gen["sketch"]):
        n, _, _, dt, with_scale, _ = case
        if dt == "bfloat16" and not with_scale and n == 10:
            continue  # the vdpbf16ps shape: checked against the bound above
        assert_bits_equal(a, b, name=f"sketch {case} avx512bf16 vs generic")


def test_unknown_isa_is_a_clear_error(tmp_path):
    proc = run_forced("sse9", tmp_path / "x.pt")
    assert proc.returncode != 0
    assert "TIKMIX_CPU_ISA=sse9 is not a CPU kernel set" in proc.stderr
    assert "avx2" in proc.stderr


def test_info_reports_the_forced_path(forced_results):
    isa = "avx2" if "avx2" in forced_results else "generic"
    env = dict(os.environ, TIKMIX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-m", "tikmix_ext.info"], env=env, capture_output=True, text=True, check=True)
    assert f"CPU sketch kernels: {REPORTED[isa]} " in out.stdout
    assert '"cpu_isa": "' + REPORTED[isa] + '"' in out.stdout
