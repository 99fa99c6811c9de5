"""Shared helpers of the op tests (no tests here): device parametrisation, the one opcheck helper that names its
sub-checks, comparisons that report the worst element, and the torch.compile backend choice.

Import with ``from test_ops_common import ...`` (pytest puts tests/ on sys.path).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import pytest
import torch

import tikmix_ext

cuda_only = pytest.mark.cuda
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]

# torch.library.opcheck's sub-checks, by the name a failure should report.
OPCHECK_SUBCHECKS: Dict[str, str] = {
    "test_schema": "schema (mutation/aliasing declared in the schema match the kernel)",
    "test_autograd_registration": "autograd registration",
    "test_faketensor": "fake tensor (the Meta kernel or fake agrees with the real kernel)",
    "test_aot_dispatch_dynamic": "aot-dispatch (dynamic shapes)",
}


def require_kernel(op: str, device: str) -> None:
    """Skip when this build has no ``device`` kernel for ``tikmix::op`` (a CPU-only build must still pass)."""
    if not tikmix_ext.has_kernel(op, device):
        pytest.skip(f"tikmix::{op} has no {device} kernel in this build")


def opcheck_samples(op: str, device: str, sample_inputs: Callable[[str], Iterable[Sequence[Any]]]) -> None:
    """Run :func:`run_opcheck` on ``tikmix::op`` for every argument tuple ``sample_inputs(device)`` gives (skip when
    the build has no ``device`` kernel)."""
    require_kernel(op, device)
    for args in sample_inputs(device):
        run_opcheck(getattr(torch.ops.tikmix, op).default, args)


def run_opcheck(op: Any, args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None) -> None:
    """Run every opcheck sub-check separately, and fail with the names of those that failed and why."""
    failures = []
    for check, label in OPCHECK_SUBCHECKS.items():
        try:
            torch.library.opcheck(op, tuple(args), kwargs or {}, test_utils=(check,))
        except Exception as exc:  # noqa: BLE001 — collected and reported below
            failures.append(f"  - {label} [{check}]: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}")
    if failures:
        raise AssertionError(f"opcheck failed for {op}:\n" + "\n".join(failures))


def assert_close(actual: Any, expected: Any, *, atol: float, rtol: float, name: str = "output") -> None:
    """``|actual − expected| ≤ atol + rtol·|expected|`` elementwise (compared in float64); on failure report the
    worst element (value, expected, location) and the fraction of elements failing."""
    a = torch.as_tensor(actual).detach().cpu().to(torch.float64)
    e = torch.as_tensor(expected).detach().cpu().to(torch.float64)
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    if a.numel() == 0:
        return
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    assert not nan_mismatch.any(), f"{name}: NaN pattern differs at {nan_mismatch.nonzero()[0].tolist()}"
    err = (a - e).abs().nan_to_num(0.0)
    bound = atol + rtol * e.abs().nan_to_num(0.0)
    bad = err > bound
    if bad.any():
        excess = (err - bound).reshape(-1)
        flat = int(excess.argmax())
        where = list(torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else []
        where = [int(i) for i in where]
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements ({100.0 * float(bad.double().mean()):.3g}%) exceed "
            f"atol={atol:g} + rtol={rtol:g}·|expected|; worst at {where}: got {a.reshape(-1)[flat].item()!r}, "
            f"expected {e.reshape(-1)[flat].item()!r} (|diff| {err.reshape(-1)[flat].item():.3g}); "
            f"max |diff| overall {err.max().item():.3g}"
        )


def assert_bits_equal(actual: Any, expected: Any, name: str = "output") -> None:
    """Exact equality (same dtype, same bits; NaNs must coincide), reporting the first differing element."""
    a = torch.as_tensor(actual).detach().cpu()
    e = torch.as_tensor(expected).detach().cpu()
    assert a.dtype == e.dtype, f"{name}: dtype {a.dtype} != expected {e.dtype}"
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    same = (a == e) | (torch.isnan(a) & torch.isnan(e)) if a.is_floating_point() else a == e
    if not bool(same.all()):
        where = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: {int((~same).sum())}/{a.numel()} elements differ; first at {where}: got {a[tuple(where)].item()!r}, "
            f"expected {e[tuple(where)].item()!r}"
        )


def compile_backend(device: str) -> str:
    """Backend of the ``torch.compile(fullgraph=True)`` tests: inductor on CUDA; on CPU ``aot_eager`` (dynamo,
    fake tensors and AOT autograd — what an op registration can break — without the ~1 min C++ compile of
    inductor on the 2-core CI box). ``TIKMIX_COMPILE_BACKEND`` overrides both."""
    return os.environ.get("TIKMIX_COMPILE_BACKEND") or ("inductor" if device.startswith("cuda") else "aot_eager")


def compiled(fn: Callable, device: str) -> Callable:
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=compile_backend(device))


def with_threads(n: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with ``torch.set_num_threads(n)``, restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)
