"""tikmix.sketch / sketch_accumulate_ / projection: correctness against the float64 reference, exactness,
determinism (threads, chunking, paths), registration (opcheck, torch.compile), interop and input errors.

References: ``sketch_ref`` (pure Python RNG, tikmix_ext.reference) on small shapes; on larger ones
``x.double() @ projection(...).double()``, where ``projection`` itself equals ``projection_ref`` bit for bit
(tests/test_rng_contract.py). Paths exercised: fused sign-apply (N ≤ 4), fp32 tile + micro-kernel (N ≥ 5), the
bf16 kernel (bf16 input without scale, N ≥ 5), d-chunked plans (few k-tiles, d ≥ 8192) and the portable kernels
(TIKMIX_CPU_ISA=generic, in a subprocess).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tikmix_ext
from test_ops_common import DEVICES, assert_bits_equal, assert_close, compiled, require_kernel, run_opcheck, with_threads
from tikmix_ext.reference import sketch_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference(x: torch.Tensor, k: int, seed: int, offset: int = 0, scale=None) -> torch.Tensor:
    """float64 reference via the native projection (bit-identical to projection_ref; fast for larger shapes)."""
    x64 = x.detach().cpu().to(torch.float64)
    if scale is not None:
        x64 = x64 * scale.detach().cpu().to(torch.float64)
    return x64 @ tikmix_ext.projection(x.shape[1], k, seed, offset).to(torch.float64)


def fp32_tolerance(x: torch.Tensor, k: int, seed: int, offset: int, expected: torch.Tensor, scale=None) -> float:
    """Allowed max error: twice that of torch's own float32 matmul with the materialised R on the same (float32
    representable) input, plus four float32 ulps of the largest |expected| (a floor for cases torch gets exact)."""
    xf = x.detach().cpu().to(torch.float32)
    if scale is not None:
        xf = xf * scale.detach().cpu()
    R = tikmix_ext.projection(x.shape[1], k, seed, offset)
    torch_err = ((xf @ R).double() - expected).abs().max().item() if expected.numel() else 0.0
    floor = 2.0**-22 * (expected.abs().max().item() if expected.numel() else 0.0)
    return 2 * torch_err + floor


def random_x(n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


class TestSketch:
    @pytest.mark.parametrize(
        "n,d,k,offset",
        [
            (1, 1, 1, 0),
            (1, 100, 65, 0),  # N=1: fused path, k not a multiple of 64
            (3, 97, 63, 5),
            (4, 129, 130, 2**32 + 7),  # offsets above 2^32
            (5, 257, 1, 0),  # k=1 on the tile path
            (7, 300, 67, 2**44 - 300),  # the last rows of the contract
            (13, 1025, 17, 3),  # d not a multiple of any tile
        ],
    )
    def test_matches_python_reference(self, n, d, k, offset):
        x = random_x(n, d, seed=n + d)
        y = tikmix_ext.sketch(x, k, seed=11, offset=offset)
        assert y.dtype == torch.float32 and y.shape == (n, k)
        expected = sketch_ref(x, k, 11, offset)
        assert_close(y, expected, atol=fp32_tolerance(x, k, 11, offset, expected), rtol=0)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize(
        "n,d,k",
        [(1, 5125, 257), (2, 769, 64), (4, 3000, 129), (6, 1025, 300), (64, 2049, 130), (197, 769, 65), (8, 20000, 100)],
    )
    def test_matches_reference(self, device, dtype, n, d, k):
        require_kernel("sketch", device)
        x = random_x(n, d, dtype, seed=d)
        offset = 2**33 + d
        y = tikmix_ext.sketch(x.to(device), k, 3, offset)
        assert y.device.type == device and y.dtype == torch.float32
        expected = reference(x, k, 3, offset)
        assert_close(y.cpu(), expected, atol=fp32_tolerance(x, k, 3, offset, expected), rtol=0)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_scale(self, dtype):
        n, d, k = 9, 1500, 70
        x = random_x(n, d, dtype, seed=1)
        scale = torch.rand(d, generator=torch.Generator().manual_seed(2)) * 3
        y = tikmix_ext.sketch(x, k, 5, 77, scale)
        expected = reference(x, k, 5, 77, scale)
        assert_close(y, expected, atol=fp32_tolerance(x, k, 5, 77, expected, scale), rtol=0)
        # the product x ⊙ scale is formed in float32: same bits as sketching it directly (fp32 path)
        xs = x.to(torch.float32) * scale
        assert_bits_equal(y, tikmix_ext.sketch(xs, k, 5, 77))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("n", [1, 4, 5, 64])
    def test_small_integers_exact(self, device, dtype, n):
        # |x| ≤ 4, d ≤ 2^16, k a power of 4: every partial sum and the scale 1/√k are exact in float32.
        require_kernel("sketch", device)
        d, k = 10000, 256
        x = torch.randint(-4, 5, (n, d), generator=torch.Generator().manual_seed(n)).to(dtype)
        y = tikmix_ext.sketch(x.to(device), k, 1, 2**40).cpu()
        assert torch.equal(y.double(), reference(x, k, 1, 2**40))

    def test_non_contiguous_inputs(self):
        base = random_x(40, 2000, seed=3)
        cases = {
            "transposed": random_x(2000, 6, seed=4).t(),
            "column stride 2": base[:9, ::2],
            "row stride > d": base[:7, 100:1100],
            "expanded rows (stride 0)": base[0:1, :500].expand(6, 500),
        }
        for name, x in cases.items():
            assert not x.is_contiguous(), name
            y = tikmix_ext.sketch(x, 70, 2, 1)
            assert_bits_equal(y, tikmix_ext.sketch(x.contiguous(), 70, 2, 1), name=name)
        bf = base.bfloat16()[:8, 1:1600]  # odd start: the bf16 pair packing starts mid-row
        assert_bits_equal(tikmix_ext.sketch(bf, 65, 2), tikmix_ext.sketch(bf.contiguous(), 65, 2))

    def test_thread_count_does_not_change_bits(self):
        # (8, 20000, 100): a d-chunked plan; (64, 4000, 600): several k-tiles; (3, 9000, 50): fused path.
        for n, d, k, dtype in ((8, 20000, 100, torch.float32), (64, 4000, 600, torch.bfloat16), (3, 9000, 50, torch.float16)):
            x = random_x(n, d, dtype, seed=5)
            one = with_threads(1, lambda: tikmix_ext.sketch(x, k, 9, 12345))
            two = with_threads(2, lambda: tikmix_ext.sketch(x, k, 9, 12345))
            assert_bits_equal(two, one, name=f"{(n, d, k, dtype)}")

    def test_repeatable(self):
        x = random_x(10, 3000, seed=6)
        assert_bits_equal(tikmix_ext.sketch(x, 100, 4), tikmix_ext.sketch(x, 100, 4))

    def test_prefix_property(self):
        x = random_x(6, 700, seed=7)
        big = tikmix_ext.sketch(x, 200, 8) * math.sqrt(200)
        small = tikmix_ext.sketch(x, 70, 8) * math.sqrt(70)
        assert_close(small, big[:, :70], atol=1e-3, rtol=1e-5)

    def test_nan_propagates_to_its_row_only(self):
        for n, dtype in ((2, torch.float32), (6, torch.float32), (6, torch.bfloat16)):
            x = random_x(n, 500, dtype, seed=8)
            x[1, 123] = float("nan")
            y = tikmix_ext.sketch(x, 64, 0)
            assert torch.isnan(y[1]).all()
            assert torch.isfinite(y[torch.arange(n) != 1]).all()

    def test_empty_inputs(self):
        assert tikmix_ext.sketch(torch.empty(0, 50), 16, 0).shape == (0, 16)
        assert torch.equal(tikmix_ext.sketch(torch.empty(3, 0), 16, 0), torch.zeros(3, 16))

    def test_generic_kernels_give_the_same_bits(self):
        # The portable kernels (any CPU; TIKMIX_CPU_ISA=generic forces them, in a subprocess) sum in the same order
        # as the AVX-512 ones: identical float32 results. The bf16 kernel (vdpbf16ps) is the one exception.
        cases = [(1, 3000, 100, "float32"), (4, 2000, 65, "float16"), (9, 20000, 130, "float32"),
                 (64, 3000, 257, "float16"), (10, 999, 64, "bfloat16")]
        script = (
            "import json, sys, torch, tikmix_ext\n"
            "from tikmix_ext._load import _C\n"
            "out = []\n"
            "for n, d, k, dt in json.loads(sys.argv[1]):\n"
            "    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).to(getattr(torch, dt))\n"
            "    out.append(tikmix_ext.sketch(x, k, 11, 2**40).tolist())\n"
            "print(json.dumps(out))\n"
        )
        env = dict(os.environ, TIKMIX_CPU_ISA="generic")
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(cases)], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        generic = [torch.tensor(v, dtype=torch.float32).reshape(n, k) for v, (n, _, k, _) in zip(json.loads(proc.stdout), cases)]
        for (n, d, k, dt), g in zip(cases, generic):
            x = torch.randn(n, d, generator=torch.Generator().manual_seed(d)).to(getattr(torch, dt))
            here = tikmix_ext.sketch(x, k, 11, 2**40)
            if dt == "bfloat16" and n > 4:
                assert_close(g, here, atol=1e-5, rtol=1e-5, name=f"{(n, d, k, dt)}")
            else:
                assert_bits_equal(g, here, name=f"{(n, d, k, dt)}")


class TestSketchAccumulate:
    @pytest.mark.parametrize("device", DEVICES)
    def test_adds_into_out(self, device):
        require_kernel("sketch_accumulate_", device)
        x = random_x(6, 900, seed=9).to(device)
        out0 = random_x(6, 80, seed=10).to(device)
        out = out0.clone()
        tikmix_ext.sketch_accumulate_(out, x, 4, 2**35)
        expected = out0.cpu().double() + reference(x, 80, 4, 2**35)
        assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-6)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_segments_sum_to_the_whole(self, dtype):
        # Streaming a flat vector segment by segment with global offsets equals sketching it at once.
        n, d, k, base = 5, 30000, 96, 2**42
        x = random_x(n, d, dtype, seed=11)
        cuts = [0, 1, 1000, 1001, 17000, d]
        out = torch.zeros(n, k)
        for a, b in zip(cuts[:-1], cuts[1:]):
            tikmix_ext.sketch_accumulate_(out, x[:, a:b], 2, base + a)
        whole = tikmix_ext.sketch(x, k, 2, base)
        expected = reference(x, k, 2, base)
        assert_close(out, expected, atol=2 * fp32_tolerance(x, k, 2, base, expected), rtol=0)
        assert_close(out, whole, atol=2 * fp32_tolerance(x, k, 2, base, expected), rtol=0)

    def test_segments_exact_on_small_integers(self):
        n, d, k = 7, 40000, 64
        x = torch.randint(-3, 4, (n, d), generator=torch.Generator().manual_seed(12)).float()
        scale = torch.randint(1, 4, (d,), generator=torch.Generator().manual_seed(13)).float()
        out = torch.zeros(n, k)
        for a, b in ((0, 5), (5, 9000), (9000, d)):
            tikmix_ext.sketch_accumulate_(out, x[:, a:b].bfloat16(), 3, 2**44 - d + a, scale[a:b])
        assert_bits_equal(out, tikmix_ext.sketch(x, k, 3, 2**44 - d, scale))

    def test_numpy_out_updated_in_place(self):
        x = np.random.default_rng(0).standard_normal((3, 200)).astype(np.float32)
        out = np.zeros((3, 32), dtype=np.float32)
        tikmix_ext.sketch_accumulate_(out, x, 1)
        tikmix_ext.sketch_accumulate_(out, x, 1)
        np.testing.assert_allclose(out, 2 * tikmix_ext.sketch(x, 32, 1), rtol=1e-6, atol=1e-6)


class TestRegistration:
    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        require_kernel("sketch", device)
        x = random_x(5, 300, seed=14).to(device).requires_grad_()
        scale = torch.rand(300, device=device, requires_grad=True)
        op = torch.ops.tikmix.sketch.default
        run_opcheck(op, (x, 70, 3, 5, scale))
        run_opcheck(torch.ops.tikmix.sketch_accumulate_.default, (torch.zeros(5, 70, device=device), x.detach(), 3, 5, None))
        run_opcheck(torch.ops.tikmix.projection.default, (100, 70, 3, 5))

    @pytest.mark.parametrize("device", DEVICES)
    def test_torch_compile_fullgraph(self, device):
        require_kernel("sketch", device)

        def fn(x, out):
            y = tikmix_ext.sketch(x, 48, 7, 100) * 2.0
            tikmix_ext.sketch_accumulate_(out, x, 7, 100)
            return y + torch.ops.tikmix.sketch(x, 48, 7, 100)

        x = random_x(6, 200, seed=15).to(device)
        out_eager, out_compiled = torch.zeros(6, 48, device=device), torch.zeros(6, 48, device=device)
        expected = fn(x, out_eager)
        got = compiled(fn, device)(x, out_compiled)
        assert_bits_equal(got, expected)
        assert_bits_equal(out_compiled, out_eager)

    def test_gradients(self):
        x = random_x(4, 300, seed=16).requires_grad_()
        scale = torch.rand(300, generator=torch.Generator().manual_seed(17)).requires_grad_()
        g = random_x(4, 70, seed=18)
        tikmix_ext.sketch(x, 70, 3, 9, scale).backward(g)
        x64 = x.detach().double().requires_grad_()
        s64 = scale.detach().double().requires_grad_()
        ((x64 * s64) @ tikmix_ext.projection(300, 70, 3, 9).double()).backward(g.double())
        assert_close(x.grad, x64.grad, atol=1e-5, rtol=1e-5, name="grad x")
        assert_close(scale.grad, s64.grad, atol=1e-5, rtol=1e-5, name="grad scale")

    def test_numpy_in_numpy_out(self):
        x = np.random.default_rng(1).standard_normal((4, 321)).astype(np.float32)
        y = tikmix_ext.sketch(x, 33, 2, 10)
        assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (4, 33)
        np.testing.assert_array_equal(y, tikmix_ext.sketch(torch.from_numpy(x), 33, 2, 10).numpy())
        x.flags.writeable = False  # read-only arrays work too
        np.testing.assert_array_equal(tikmix_ext.sketch(x, 33, 2, 10), y)

    def test_dlpack_capsule_provider(self):
        class Wrapped:  # any object speaking DLPack
            def __init__(self, t):
                self.t = t

            def __dlpack__(self, **kwargs):
                return self.t.__dlpack__(**kwargs)

            def __dlpack_device__(self):
                return self.t.__dlpack_device__()

        x = random_x(3, 100, seed=19)
        y = tikmix_ext.sketch(Wrapped(x), 20, 1)
        assert_bits_equal(torch.as_tensor(y), tikmix_ext.sketch(x, 20, 1))


class TestBadInputs:
    def test_x_rank_dtype_type(self):
        with pytest.raises(ValueError, match="x must be 2-D"):
            tikmix_ext.sketch(torch.ones(5), 8, 0)
        with pytest.raises(ValueError, match="x must be 2-D"):
            tikmix_ext.sketch(torch.ones(2, 3, 4), 8, 0)
        with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
            tikmix_ext.sketch(torch.ones(2, 3, dtype=torch.float64), 8, 0)
        with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
            tikmix_ext.sketch(torch.ones(2, 3, dtype=torch.int32), 8, 0)
        with pytest.raises(TypeError, match="x must be a torch.Tensor or an array"):
            tikmix_ext.sketch([[1.0, 2.0]], 8, 0)

    def test_integer_arguments(self):
        x = torch.ones(2, 3)
        for k in (0, -1, 2**26):
            with pytest.raises(ValueError, match="k must be"):
                tikmix_ext.sketch(x, k, 0)
            with pytest.raises(ValueError, match="k must be"):
                torch.ops.tikmix.sketch(x, k, 0)  # the kernel's own check
        with pytest.raises(TypeError, match="k must be an int"):
            tikmix_ext.sketch(x, 8.0, 0)
        with pytest.raises(ValueError, match="seed"):
            tikmix_ext.sketch(x, 8, -3)
        with pytest.raises(ValueError, match="seed"):
            torch.ops.tikmix.sketch(x, 8, -3)
        with pytest.raises(ValueError, match="offset"):
            tikmix_ext.sketch(x, 8, 0, -1)
        with pytest.raises(ValueError, match="offset"):
            torch.ops.tikmix.sketch(x, 8, 0, -1)
        with pytest.raises(ValueError, match="2\\^44"):
            tikmix_ext.sketch(x, 8, 0, 2**44 - 2)

    def test_scale(self):
        x = torch.ones(2, 3)
        with pytest.raises(ValueError, match="scale must be 1-D of length d=3"):
            tikmix_ext.sketch(x, 8, 0, 0, torch.ones(4))
        with pytest.raises(ValueError, match="scale must be 1-D"):
            tikmix_ext.sketch(x, 8, 0, 0, torch.ones(1, 3))
        with pytest.raises(TypeError, match="scale must be float32"):
            tikmix_ext.sketch(x, 8, 0, 0, torch.ones(3, dtype=torch.float64))

    def test_accumulate_out(self):
        x = torch.ones(2, 3)
        with pytest.raises(ValueError, match="out must be 2-D"):
            tikmix_ext.sketch_accumulate_(torch.zeros(8), x, 0)
        with pytest.raises(ValueError, match="out must be \\[N, k\\] with N=2"):
            tikmix_ext.sketch_accumulate_(torch.zeros(3, 8), x, 0)
        with pytest.raises(TypeError, match="out must be float32"):
            tikmix_ext.sketch_accumulate_(torch.zeros(2, 8, dtype=torch.float64), x, 0)
        with pytest.raises(ValueError, match="out must be contiguous"):
            tikmix_ext.sketch_accumulate_(torch.zeros(8, 2).t(), x, 0)
        with pytest.raises(ValueError, match="k must be"):
            tikmix_ext.sketch_accumulate_(torch.zeros(2, 0), x, 0)
