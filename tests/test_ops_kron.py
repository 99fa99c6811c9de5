"""sketch_kron: equals the dense Kronecker projection of the materialised per-sample gradients (float64), bit-exact
on small integers, uses the documented kron_seed tiles, deterministic; opcheck, torch.compile, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_ops_common import DEVICES, assert_bits_equal, assert_close, compiled, opcheck_samples, require_kernel, with_threads

import tikmix_ext
from tikmix_ext.reference import kron_seed_ref, projection_ref, sketch_kron_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (N, T, in_features, out_features, k_in, k_out): N=1, T=1, k=1, odd sizes, k > features, > 64 columns
SHAPES = [(1, 1, 1, 1, 1, 1), (1, 3, 5, 7, 2, 3), (3, 5, 37, 11, 8, 4), (2, 17, 70, 9, 65, 3), (4, 2, 6, 13, 1, 16)]


def _inputs(n, t, i, o, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, t, i, generator=gen).to(dtype)
    g = torch.randn(n, t, o, generator=gen).to(dtype)
    return a.to(device), g.to(device)


def sample_inputs(device, requires_grad=False):
    """(a, g, k_in, k_out, seed, layer)."""
    out = []
    for (n, t, i, o, ki, ko), dtype, seed, layer in [((2, 3, 5, 4, 3, 2), torch.float32, 0, 0), ((1, 2, 9, 3, 4, 5), torch.bfloat16, 7, 3)]:
        a, g = _inputs(n, t, i, o, dtype, device=device)
        out.append((a.requires_grad_(requires_grad), g, ki, ko, seed, layer))
    return out


class TestSketchKron:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_matches_dense_kronecker_projection(self, device, dtype, shape):
        require_kernel("sketch_kron", device)
        n, t, i, o, ki, ko = shape
        a, g = _inputs(n, t, i, o, dtype, device=device)
        out = tikmix_ext.sketch_kron(a, g, ki, ko, seed=5, layer=2)
        assert out.dtype == torch.float32 and out.shape == (n, ki * ko) and out.device == a.device
        expected = sketch_kron_ref(a.cpu(), g.cpu(), ki, ko, 5, 2)
        # fp32 products: error ≲ eps32 · Σ_t |g||a| summed over the projection (each R entry has |.| = 1/√k).
        w_abs = torch.einsum("nto,nti->noi", g.cpu().double().abs(), a.cpu().double().abs())
        bound = w_abs.reshape(n, -1).sum(1, keepdim=True) / math.sqrt(ki * ko)
        assert_close(out, expected, atol=float(8 * 2.0**-24 * bound.max()), rtol=0, name="sketch_kron")

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_small_integers_bit_exact(self, device, dtype):
        """Small-integer inputs make every fp32 partial sum exact: only the final scale rounds, once."""
        require_kernel("sketch_kron", device)
        gen = torch.Generator().manual_seed(1)
        a = torch.randint(-4, 5, (3, 6, 21), generator=gen).to(dtype)
        g = torch.randint(-4, 5, (3, 6, 10), generator=gen).to(dtype)
        ki, ko = 7, 3
        out = tikmix_ext.sketch_kron(a.to(device), g.to(device), ki, ko, seed=11, layer=0)
        unit = sketch_kron_ref(a, g, ki, ko, 11, 0) * math.sqrt(ki * ko)  # integers up to float64 rounding (±1 tiles)
        assert (unit - unit.round()).abs().max() < 1e-9
        scale = float(np.float32(1.0 / math.sqrt(ki * ko)))
        assert_bits_equal(out.cpu(), (unit.round() * scale).float(), name="sketch_kron small integers")

    def test_uses_kron_seed_tiles(self):
        """One-hot a and g select a single W entry: y = R_out[p, :] ⊗ R_in[q, :], with R_in/R_out the RNG contract's
        projection for seeds kron_seed(seed, layer, 0/1) (checked against the sketch family's projection op)."""
        i, o, ki, ko, seed, layer = 9, 5, 70, 3, 123, 4
        a = torch.zeros(1, 1, i)
        g = torch.zeros(1, 1, o)
        a[0, 0, 6] = 1.0
        g[0, 0, 2] = 1.0
        y = tikmix_ext.sketch_kron(a, g, ki, ko, seed, layer).reshape(ko, ki)
        seed_in, seed_out = kron_seed_ref(seed, layer, 0), kron_seed_ref(seed, layer, 1)
        r_in, r_out = projection_ref(i, ki, seed_in), projection_ref(o, ko, seed_out)
        assert torch.equal(y.sign().double(), torch.outer(r_out[2].sign(), r_in[6].sign()))
        assert torch.all(y.abs() == np.float32(1.0 / math.sqrt(ki * ko)))
        for s, r, rows, k in [(seed_in, r_in, i, ki), (seed_out, r_out, o, ko)]:
            if s < 2**63:  # the projection op takes a (signed) int64 seed
                assert torch.equal(tikmix_ext.projection(rows, k, s).sign().double(), r.sign())

    def test_layers_and_seeds_independent(self):
        a, g = _inputs(2, 4, 16, 8, torch.float32)
        base = tikmix_ext.sketch_kron(a, g, 8, 8, 0, 0)
        for seed, layer in [(0, 1), (1, 0)]:
            other = tikmix_ext.sketch_kron(a, g, 8, 8, seed, layer)
            cos = torch.nn.functional.cosine_similarity(base.flatten(), other.flatten(), dim=0)
            assert abs(float(cos)) < 0.5, (seed, layer, float(cos))

    def test_inner_products_preserved_in_expectation(self):
        """JL sanity: ⟨y_1, y_2⟩ ≈ ⟨W_1, W_2⟩ on average over layers (independent projections)."""
        a, g = _inputs(2, 3, 24, 24, torch.float32, seed=4)
        w = torch.einsum("nto,nti->noi", g.double(), a.double()).reshape(2, -1)
        exact = float(w[0] @ w[1]) / float(w[0].norm() * w[1].norm())
        est = []
        for layer in range(40):
            y = tikmix_ext.sketch_kron(a, g, 16, 16, 9, layer).double()
            est.append(float(y[0] @ y[1]) / float(w[0].norm() * w[1].norm()))
        assert abs(np.mean(est) - exact) < 4 * np.std(est) / math.sqrt(len(est)) + 1e-3

    def test_deterministic_across_threads(self):
        a, g = _inputs(64, 32, 96, 80, torch.float32, seed=2)
        one = with_threads(1, lambda: tikmix_ext.sketch_kron(a, g, 32, 16, 3, 1))
        two = with_threads(2, lambda: tikmix_ext.sketch_kron(a, g, 32, 16, 3, 1))
        assert_bits_equal(two, one, name="sketch_kron 2 threads vs 1")
        assert_bits_equal(tikmix_ext.sketch_kron(a, g, 32, 16, 3, 1), two, name="sketch_kron rerun")

    def test_batch_split_consistent(self):
        """Each sample's sketch depends on its own rows only (up to fp32 rounding of the batched GEMMs)."""
        a, g = _inputs(5, 4, 12, 7, torch.float32, seed=6)
        whole = tikmix_ext.sketch_kron(a, g, 5, 6, 1, 0)
        parts = torch.cat([tikmix_ext.sketch_kron(a[j : j + 1], g[j : j + 1], 5, 6, 1, 0) for j in range(5)])
        assert_close(parts, whole, atol=1e-5, rtol=1e-5, name="per-sample calls vs batch")

    def test_non_contiguous(self):
        a, g = _inputs(4, 6, 10, 8, torch.float32, seed=8)
        a_nc = a.transpose(0, 1).contiguous().transpose(0, 1)[:, ::2]  # strided over N and T
        g_nc = g[:, ::2]
        assert not a_nc.is_contiguous()
        out = tikmix_ext.sketch_kron(a_nc, g_nc, 3, 4, 0, 0)
        assert_close(out, sketch_kron_ref(a_nc, g_nc, 3, 4, 0, 0), atol=1e-5, rtol=1e-5)

    def test_empty_sizes(self):
        assert tikmix_ext.sketch_kron(torch.zeros(0, 3, 4), torch.zeros(0, 3, 2), 2, 2, 0, 0).shape == (0, 4)
        out = tikmix_ext.sketch_kron(torch.zeros(2, 0, 4), torch.zeros(2, 0, 2), 3, 2, 0, 0)
        assert torch.equal(out, torch.zeros(2, 6))

    def test_numpy_in_numpy_out(self):
        a, g = _inputs(2, 3, 5, 4, torch.float32)
        out = tikmix_ext.sketch_kron(a.numpy(), g.numpy(), 2, 3, 0, 0)
        assert isinstance(out, np.ndarray) and out.shape == (2, 6) and out.dtype == np.float32
        assert_close(out, sketch_kron_ref(a, g, 2, 3, 0, 0), atol=1e-5, rtol=1e-5)

    def test_no_autograd_formula(self):
        """Documented: no gradient formula; the forward works on inputs that require grad, backward raises clearly
        (never torch's deprecated fallback that would silently drop the gradient)."""
        a, g = _inputs(2, 3, 4, 5, torch.float32)
        y = tikmix_ext.sketch_kron(a.requires_grad_(True), g, 2, 2, 0, 0)
        assert_close(y, sketch_kron_ref(a.detach(), g, 2, 2, 0, 0), atol=1e-5, rtol=1e-5)
        with pytest.raises(NotImplementedError, match="sketch_kron has no backward"):
            y.sum().backward()

    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        # Inputs never require grad here: the registered backward raises by design (test_no_autograd_formula).
        opcheck_samples("sketch_kron", device, sample_inputs)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_fullgraph(self, device):
        require_kernel("sketch_kron", device)
        a, g = _inputs(3, 4, 6, 5, torch.float32, device=device)
        f = compiled(lambda x, y: tikmix_ext.sketch_kron(x * 2.0, y, 4, 3, 1, 0) + 1.0, device)
        assert_close(f(a, g), tikmix_ext.sketch_kron(a * 2.0, g, 4, 3, 1, 0) + 1.0, atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize(
        "change, exc, match",
        [
            (dict(a=torch.ones(2, 3, 4, dtype=torch.float64)), TypeError, "a must be float32, bfloat16 or float16"),
            (dict(g=torch.ones(2, 3, 5, dtype=torch.bfloat16)), TypeError, "g must have a's dtype"),
            (dict(a=torch.ones(2, 4)), ValueError, r"a must be 3-D \[N, T, in_features\]"),
            (dict(g=torch.ones(2, 3)), ValueError, r"g must be 3-D \[N, T, out_features\]"),
            (dict(g=torch.ones(2, 4, 5)), ValueError, r"g must be \[N, T, out_features\] with a's N=2 and T=3"),
            (dict(g=torch.ones(3, 3, 5)), ValueError, r"g must be \[N, T, out_features\]"),
            (dict(k_in=0), ValueError, r"k_in must be in \[1, 2\^26\), got 0"),
            (dict(k_out=-3), ValueError, r"k_out must be in \[1, 2\^26\), got -3"),
            (dict(k_in=2**13, k_out=2**13), ValueError, r"k_in·k_out must be < 2\^26"),
            (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
            (dict(layer=-1), ValueError, "layer must be a non-negative integer"),
            (dict(g=torch.ones(2, 3, 5, device="meta")), ValueError, "one device"),
            (dict(a="activations"), TypeError, "a must be a torch.Tensor or an array supporting DLPack"),
            (dict(k_in=2.0), TypeError, "k_in must be an int, got float"),
            (dict(layer=None), TypeError, "layer must be an int, got NoneType"),
        ],
    )
    def test_bad_inputs(self, change, exc, match):
        args = dict(a=torch.ones(2, 3, 4), g=torch.ones(2, 3, 5), k_in=2, k_out=2, seed=0, layer=0)
        args.update(change)
        with pytest.raises(exc, match=match):
            tikmix_ext.sketch_kron(**args)


def test_reference_equals_factored_form():
    """The dense reference ((R_out ⊗ R_in)ᵀ vec_row W) equals the factored R_outᵀ W R_in (both float64)."""
    a, g = _inputs(2, 3, 6, 4, torch.float64)
    r_in = projection_ref(6, 5, kron_seed_ref(3, 1, 0))
    r_out = projection_ref(4, 2, kron_seed_ref(3, 1, 1))
    w = torch.einsum("nto,nti->noi", g, a)
    factored = torch.stack([r_out.T @ w[n] @ r_in for n in range(2)]).reshape(2, -1)
    assert_close(sketch_kron_ref(a, g, 5, 2, 3, 1), factored, atol=1e-12, rtol=1e-12)
