"""Fuzz every op, raw (``torch.ops.tikmix``) and through its typed wrapper (tensors and numpy): each call ends in the
float64 reference's answer or in a clear exception (ValueError / TypeError / NotImplementedError whose message starts
with ``tikmix`` and names an argument of the op).

* Valid random inputs (hypothesis): the op equals its reference in ``tikmix_ext.reference`` within a bound derived
  from the same reference on absolute values (float32 accumulation), or bit for bit where the contract says so.
* One argument of a valid call replaced by a bad value (hypothesis over a pool, plus an explicit table of the
  classic mistakes): a clear exception, or, where the value happens to be valid, the reference's answer.
* Crash-prone cases (allocations of many GiB, huge group counts) run in a worker subprocess with a 4 GiB address
  space limit, so a crash fails that case, not the run; the worker is restarted after one.

Bounded on purpose (small shapes, fixed example counts, derandomized): the file runs in well under a minute.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tikmix_ext
from tikmix_ext import reference as ref

EPS32 = 2.0**-23
CLEAR = (ValueError, TypeError, NotImplementedError)
FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
VIAS = ("raw", "wrapper", "numpy")


# ---- valid calls ----------------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One call of ``op`` with named arguments, and how to check its result."""

    op: str
    args: Dict[str, Any]
    check: Callable[[Any, Dict[str, Any]], None]  # (result, args) -> None, raises AssertionError on a wrong answer


def _rand(gen: torch.Generator, shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _close(got: Any, expected: torch.Tensor, bound: torch.Tensor, what: str,
           magnitude: Optional[torch.Tensor] = None) -> None:
    """|got − expected| ≤ bound elementwise. Where ``magnitude`` (the sum of |terms|) exceeds float32's range, a
    float32 sum may overflow (documented IEEE behaviour, as in torch.mm), and ±inf is accepted there."""
    g = torch.as_tensor(got).detach().to(torch.float64)
    assert g.shape == expected.shape, f"{what}: shape {tuple(g.shape)} != {tuple(expected.shape)}"
    if magnitude is not None:
        may_overflow = (magnitude > torch.finfo(torch.float32).max) & g.isinf()
        expected = torch.where(may_overflow, g, expected)
    err = (g - expected).abs()
    bad = err > bound
    if bool(bad.any()):
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: got {g[i].item()!r}, reference {expected[i].item()!r}, bound {bound[i].item():.3g}")


def _sketch_check(result, a) -> None:
    x, k, scale = a["x"], a["k"], a["scale"]
    expected = ref.sketch_ref(x, k, a["seed"], a["offset"], scale)
    xs = x.double().abs() * (1.0 if scale is None else scale.double().abs())
    bound = ((x.shape[1] + 4) * EPS32 * xs.sum(1, keepdim=True) / math.sqrt(k)).expand_as(expected) + 1e-30
    _close(result, expected, bound, "sketch", magnitude=bound / ((x.shape[1] + 4) * EPS32))


def _valid_sketch(data, gen) -> Call:
    n, d = data.draw(st.integers(0, 4)), data.draw(st.integers(0, 40))
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    k = data.draw(st.integers(1, 70))
    seed = data.draw(st.one_of(st.integers(0, 5), st.integers(0, 2**63 - 1)))
    offset = data.draw(st.one_of(st.just(0), st.integers(0, 2**44 - d)))
    scale = _rand(gen, (d,)).abs() if data.draw(st.booleans()) else None
    return Call("sketch", dict(x=_rand(gen, (n, d), dtype), k=k, seed=seed, offset=offset, scale=scale), _sketch_check)


def _accumulate_check(result, a) -> None:
    out0, x, scale = a["_out0"], a["x"], a["scale"]
    k = out0.shape[1]
    expected = out0.double() + ref.sketch_ref(x, k, a["seed"], a["offset"], scale)
    xs = x.double().abs() * (1.0 if scale is None else scale.double().abs())
    bound = (x.shape[1] + 4) * EPS32 * (xs.sum(1, keepdim=True) / math.sqrt(k) + out0.double().abs()) + 1e-30
    _close(a["out"], expected, bound.expand_as(expected), "sketch_accumulate_ (out)",
           magnitude=bound.expand_as(expected) / ((x.shape[1] + 4) * EPS32))
    assert result is None


def _valid_accumulate(data, gen) -> Call:
    c = _valid_sketch(data, gen)
    out = _rand(gen, (c.args["x"].shape[0], c.args.pop("k")))
    return Call("sketch_accumulate_", dict(out=out, _out0=out.clone(), **c.args), _accumulate_check)


def _projection_check(result, a) -> None:
    expected = ref.projection_ref(a["rows"], a["k"], a["seed"], a["offset"]).to(torch.float32)
    assert torch.equal(torch.as_tensor(result), expected), "projection: not bit-identical to projection_ref"


def _valid_projection(data, gen) -> Call:
    rows, k = data.draw(st.integers(0, 12)), data.draw(st.integers(1, 130))
    return Call("projection", dict(rows=rows, k=k, seed=data.draw(st.integers(0, 2**63 - 1)),
                                   offset=data.draw(st.integers(0, 2**44 - rows))), _projection_check)


def _kron_check(result, a) -> None:
    x, g = a["a"], a["g"]
    expected = ref.sketch_kron_ref(x, g, a["k_in"], a["k_out"], a["seed"], a["layer"])
    mag = torch.einsum("nt,nt->n", g.double().abs().sum(2), x.double().abs().sum(2))
    terms = x.shape[2] + g.shape[2] + x.shape[1] + 4
    bound = (terms * EPS32 * mag / math.sqrt(a["k_in"] * a["k_out"])).unsqueeze(1).expand_as(expected) + 1e-30
    _close(result, expected, bound, "sketch_kron", magnitude=bound / (terms * EPS32))


def _valid_kron(data, gen) -> Call:
    n, t, i, o = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 4)), data.draw(st.integers(0, 6)),
                  data.draw(st.integers(0, 6)))
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return Call("sketch_kron", dict(a=_rand(gen, (n, t, i), dtype), g=_rand(gen, (n, t, o), dtype),
                                    k_in=data.draw(st.integers(1, 6)), k_out=data.draw(st.integers(1, 6)),
                                    seed=data.draw(st.integers(0, 2**63 - 1)), layer=data.draw(st.integers(0, 99))),
                _kron_check)


def _eps(dtype: torch.dtype) -> float:
    return EPS32 if dtype == torch.float32 else 2.0**-52


def _segment_check(mean: bool):
    def check(result, a) -> None:
        x, ids, g = a["x"], a["ids"], a["num_groups"]
        f = ref.segment_mean_ref if mean else ref.segment_sum_ref
        expected = f(x, ids, g)
        bound = (x.shape[0] + 2) * _eps(x.dtype) * f(x.abs(), ids, g) + 1e-300
        # Documented IEEE behaviour: a group sum beyond the dtype's range is ±inf (the mean divides that sum).
        sums = ref.segment_sum_ref(x, ids, g)
        beyond = sums.abs() > torch.finfo(x.dtype).max
        if bool(beyond.any()):
            got = torch.as_tensor(result).double()
            assert torch.equal(got[beyond], sums[beyond].sign() * math.inf), "an out-of-range group sum is not ±inf"
            expected, bound = expected.clone(), bound.clone()
            expected[beyond], bound[beyond] = got[beyond], 0.0
        _close(result, expected, bound, "segment_mean" if mean else "segment_sum")

    return check


def _valid_ids(data, gen, n: int, g: int) -> torch.Tensor:
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32]))
    return torch.randint(0, g, (n,), generator=gen, dtype=dtype)


def _valid_segment(mean: bool):
    def make(data, gen) -> Call:
        n, k, g = data.draw(st.integers(0, 30)), data.draw(st.integers(0, 5)), data.draw(st.integers(1, 6))
        dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
        return Call("segment_mean" if mean else "segment_sum",
                    dict(x=_rand(gen, (n, k), dtype), ids=_valid_ids(data, gen, n, g), num_groups=g),
                    _segment_check(mean))

    return make


def _influence_check(result, a) -> None:
    train, ids, g, target, precond = a["train"], a["ids"], a["num_groups"], a["target"], a["precond"]
    s_ref, ps_ref = ref.group_influence_ref(train, ids, g, target, precond)
    p_abs = None if precond is None else precond.abs()
    s_mag, ps_mag = ref.group_influence_ref(train.abs(), ids, g, target.abs(), p_abs)
    terms = 2 * train.shape[1] + train.shape[0] + 4
    s, ps = result
    _close(s, s_ref, terms * _eps(train.dtype) * s_mag + 1e-300, "group_influence S")
    _close(ps, ps_ref, terms * _eps(train.dtype) * ps_mag + 1e-300, "group_influence per_sample")


def _valid_influence(data, gen) -> Call:
    n, k, g, t = (data.draw(st.integers(0, 20)), data.draw(st.integers(0, 6)), data.draw(st.integers(1, 5)),
                  data.draw(st.integers(0, 3)))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    precond = _rand(gen, (k, k), dtype) if data.draw(st.booleans()) else None
    return Call("group_influence", dict(train=_rand(gen, (n, k), dtype), ids=_valid_ids(data, gen, n, g),
                                        num_groups=g, target=_rand(gen, (t, k), dtype), precond=precond),
                _influence_check)


def _scores_check(result, a) -> None:
    expected = ref.mixture_scores_ref(a["per_sample"], a["ids"], a["candidates"], a["draws"], a["seed"])
    bound = 4 * _eps(a["per_sample"].dtype) * ref.mixture_scores_ref(
        a["per_sample"].abs(), a["ids"], a["candidates"], a["draws"], a["seed"]) + 1e-300
    _close(result, expected, bound, "mixture_scores")


def _valid_scores(data, gen) -> Call:
    g, n = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 3))
    rows = data.draw(st.integers(g, 12))
    ids = torch.cat([torch.arange(g), torch.randint(0, g, (rows - g,), generator=gen)])  # every domain has rows
    c = data.draw(st.integers(0, 3))
    cand = torch.rand(c, g, generator=gen, dtype=torch.float64)
    if c and data.draw(st.booleans()):
        cand[:, 0] = 0.0  # a zero weight
        cand[:, -1] += 0.1  # keep each row's sum > 0
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    return Call("mixture_scores", dict(per_sample=_rand(gen, (rows, n), dtype), ids=ids,
                                       candidates=cand.to(data.draw(st.sampled_from([torch.float32, torch.float64]))),
                                       draws=data.draw(st.integers(1, 40)), seed=data.draw(st.integers(0, 2**63 - 1))),
                _scores_check)


VALID = {
    "sketch": _valid_sketch,
    "sketch_accumulate_": _valid_accumulate,
    "projection": _valid_projection,
    "sketch_kron": _valid_kron,
    "segment_sum": _valid_segment(False),
    "segment_mean": _valid_segment(True),
    "group_influence": _valid_influence,
    "mixture_scores": _valid_scores,
}
assert set(VALID) == set(tikmix_ext.OPS)


def _to_numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


def invoke(call: Call, via: str) -> Any:
    """Run the call raw, through the wrapper, or through the wrapper with numpy arrays (results back as tensors)."""
    args = {k: v for k, v in call.args.items() if not k.startswith("_")}
    if via == "raw":
        return getattr(torch.ops.tikmix, call.op)(*args.values())
    if via == "numpy":
        out = args.get("out")
        args = {k: _to_numpy(v) for k, v in args.items()}
        result = getattr(tikmix_ext, call.op)(*args.values())
        if isinstance(out, torch.Tensor):  # the in-place op updated the numpy view of out
            call.args["out"] = torch.from_numpy(args["out"])
        return tuple(map(torch.as_tensor, result)) if isinstance(result, tuple) else (
            None if result is None else torch.as_tensor(result))
    return getattr(tikmix_ext, call.op)(*args.values())


def _draw_valid_call(op: str, data: Any) -> Call:
    """A valid call of ``op`` drawn by hypothesis, its tensors from a generator seeded by the draw."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    return VALID[op](data, gen)


def _numpy_ok(call: Call) -> bool:
    return all(not isinstance(v, torch.Tensor) or v.dtype != torch.bfloat16 for v in call.args.values())


@pytest.mark.parametrize("op", tikmix_ext.OPS)
@FUZZ
@given(data=st.data())
def test_valid_inputs_match_the_reference(op, data):
    call = _draw_valid_call(op, data)
    via = data.draw(st.sampled_from(VIAS if _numpy_ok(call) else VIAS[:2]))
    call.check(invoke(call, via), call.args)


# ---- bad values for one argument ------------------------------------------------------------------------------------
_INT_ARGS = ("k", "seed", "offset", "rows", "k_in", "k_out", "layer", "num_groups", "draws")


def _bad_pool(value: Any) -> List[Tuple[str, Any]]:
    """Plausible mistakes for an argument whose valid value is ``value``."""
    if isinstance(value, torch.Tensor):
        pool = [
            ("int32", value.to(torch.int32)), ("int64", value.to(torch.int64)), ("bool", value.to(torch.bool)),
            ("float64", value.to(torch.float64)), ("float32", value.to(torch.float32)),
            ("complex", value.to(torch.complex64)),
            ("rank+1", value.unsqueeze(0)), ("rank-1", value.reshape(-1)[:1].reshape(()) if value.numel() else
                                             torch.zeros(())),
            ("one row more", torch.cat([value, value[:1]]) if value.dim() and value.shape[0] else value.new_zeros(
                (1, *value.shape[1:]))),
            ("one column more", torch.cat([value, value[..., :1]], -1) if value.dim() > 1 and value.shape[-1]
             else value),
            ("transposed", value.mT if value.dim() >= 2 else value),
            ("meta", value.to("meta")),
            ("list", value.tolist()), ("None", None), ("str", "x"),
        ]
        if value.is_floating_point():
            pool += [("nan", value.clone().fill_(float("nan"))), ("inf", value.clone().fill_(float("inf"))),
                     ("negative", -value.abs() - 1), ("huge", value.clone().fill_(torch.finfo(value.dtype).max))]
        else:
            pool += [("negative ids", value - 1), ("ids past the end", value + 10_000)]
        return pool
    return [("-1", -1), ("0", 0), ("2^31", 2**31), ("2^44", 2**44), ("2^63", 2**63), ("2^64", 2**64),
            ("-2^63-1", -(2**63) - 1), ("float", 2.0), ("bool", True), ("str", "3"), ("None", None),
            ("tensor", torch.tensor(3))]


def _judge(call: Call, run: Callable[[], Any], as_int: Optional[str] = None) -> None:
    """The call must give the reference's answer or raise a clear exception naming an argument of the op.

    ``as_int``: an int argument that holds a bad value; torch's schema parser accepts a bool or a 0-dim integer
    tensor for an int (True is 1), so if the call runs, the reference gets that int.
    """
    try:
        result = run()
    except CLEAR as exc:
        message = str(exc)
        names = [k for k in call.args if not k.startswith("_")]
        assert message.startswith("tikmix"), f"{type(exc).__name__} without the tikmix prefix: {message[:300]}"
        assert any(name in message for name in names), f"message names none of {names}: {message[:300]}"
        return
    except RuntimeError as exc:
        if "Expected a value of type" in str(exc) or "expected" in str(exc) and "but instead found type" in str(exc):
            return  # torch's schema parser on the raw op (e.g. an int beyond int64): clear, before any tikmix code
        raise
    if as_int is not None:
        call.args[as_int] = int(call.args[as_int])
    call.check(result, call.args)


@pytest.mark.parametrize("op", tikmix_ext.OPS)
@FUZZ
@given(data=st.data())
def test_one_bad_argument_is_refused_or_answered_right(op, data):
    call = _draw_valid_call(op, data)
    names = [k for k in call.args if not k.startswith("_") and call.args[k] is not None]
    name = data.draw(st.sampled_from(names))
    label, bad = data.draw(st.sampled_from(_bad_pool(call.args[name])))
    if isinstance(bad, (int, float)) and not isinstance(bad, bool) and abs(bad) >= 2**31 and name in (
            "num_groups", "rows", "draws", "k", "k_in", "k_out"):
        return  # a valid huge size is an allocation (or a long loop): covered by the subprocess cases below
    call.args[name] = bad
    if name == "out" and isinstance(bad, torch.Tensor):
        call.args["_out0"] = bad.clone() if bad.device.type != "meta" else bad
    via = data.draw(st.sampled_from(("raw", "wrapper")))
    _judge(call, lambda: invoke(call, via), as_int=name if name in _INT_ARGS else None)


class _FixedData:
    """Stands in for hypothesis' ``data`` to build one fixed valid call: integers cycle through 3, 4, 5, 2 (clamped
    to the strategy's bounds, so shapes are small and not square), booleans are True, sampled_from gives its first
    element."""

    def __init__(self) -> None:
        self.count = 0

    def draw(self, strategy):
        import re

        r = repr(strategy)
        if r.startswith("sampled_from"):
            return list(strategy.wrapped_strategy.elements if hasattr(strategy, "wrapped_strategy")
                        else strategy.elements)[0]
        if r.startswith("booleans"):
            return True
        if r.startswith("one_of"):
            return 3
        bounds = re.match(r"integers\(min_value=([\d_]+), max_value=([\d_]+)\)", r)
        assert bounds, f"unexpected strategy {r}"
        low, high = int(bounds.group(1).replace("_", "")), int(bounds.group(2).replace("_", ""))
        self.count += 1
        return min(max(low, (3, 4, 5, 2)[self.count % 4]), high)


@pytest.mark.parametrize("op", tikmix_ext.OPS)
def test_every_bad_value_of_every_argument(op):
    """Exhaustive counterpart of the hypothesis test above: every pool value for every argument, raw and wrapped."""
    failures = []
    names = [k for k in VALID[op](_FixedData(), torch.Generator().manual_seed(0)).args if not k.startswith("_")]
    for name in names:
        template = VALID[op](_FixedData(), torch.Generator().manual_seed(0))
        if template.args[name] is None:
            continue
        for label, bad in _bad_pool(template.args[name]):
            if isinstance(bad, int) and not isinstance(bad, bool) and abs(bad) >= 2**31 and name in (
                    "num_groups", "rows", "draws", "k", "k_in", "k_out"):
                continue  # valid huge sizes: the subprocess cases
            for via in ("raw", "wrapper"):
                call = VALID[op](_FixedData(), torch.Generator().manual_seed(0))
                call.args[name] = bad
                if name == "out" and isinstance(bad, torch.Tensor):
                    call.args["_out0"] = bad.clone()
                try:
                    _judge(call, lambda: invoke(call, via), as_int=name if name in _INT_ARGS else None)
                except Exception as exc:  # noqa: BLE001 — collected and reported together
                    failures.append(f"{name}={label} via {via}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not failures, f"{len(failures)} bad calls of {op} were not refused clearly or answered right:\n" + \
        "\n".join(failures)


# ---- explicit table of classic mistakes -----------------------------------------------------------------------------
def _t(*shape, dtype=torch.float32):
    return torch.ones(*shape, dtype=dtype)


_IDS = torch.tensor([0, 1, 2, 0])
TABLE: List[Tuple[str, Callable[[], Any], type, str]] = [
    ("sketch: x 1-D", lambda: tikmix_ext.sketch(_t(5), 8, 0), ValueError, r"x must be 2-D"),
    ("sketch: x float64", lambda: tikmix_ext.sketch(_t(2, 3, dtype=torch.float64), 8, 0), TypeError, r"x must be float32"),
    ("sketch: k=0", lambda: tikmix_ext.sketch(_t(2, 3), 0, 0), ValueError, r"k must be in"),
    ("sketch: k=2^26", lambda: torch.ops.tikmix.sketch(_t(2, 3), 2**26, 0), ValueError, r"k must be in"),
    ("sketch: seed float", lambda: tikmix_ext.sketch(_t(2, 3), 8, 1.5), TypeError, r"seed must be an int"),
    ("sketch: offset+d > 2^44", lambda: torch.ops.tikmix.sketch(_t(2, 3), 8, 0, 2**44 - 1), ValueError, r"2\^44"),
    ("sketch: scale length", lambda: tikmix_ext.sketch(_t(2, 3), 8, 0, 0, _t(4)), ValueError, r"scale must be 1-D"),
    ("sketch: scale float16", lambda: tikmix_ext.sketch(_t(2, 3), 8, 0, 0, _t(3, dtype=torch.float16)), TypeError,
     r"scale must be float32"),
    ("sketch: x list", lambda: tikmix_ext.sketch([[1.0]], 8, 0), TypeError, r"x must be a torch.Tensor"),
    ("accumulate: out bf16", lambda: tikmix_ext.sketch_accumulate_(_t(2, 8, dtype=torch.bfloat16), _t(2, 3), 0),
     TypeError, r"out must be float32"),
    ("accumulate: out not contiguous", lambda: tikmix_ext.sketch_accumulate_(_t(8, 2).t(), _t(2, 3), 0), ValueError,
     r"out must be contiguous"),
    ("accumulate: out expanded", lambda: tikmix_ext.sketch_accumulate_(_t(1, 8).expand(2, 8), _t(2, 3), 0),
     ValueError, r"out must be contiguous"),
    ("accumulate: x is out", lambda: (lambda o: tikmix_ext.sketch_accumulate_(o, o, 0))(_t(2, 8)), ValueError,
     r"x overlaps out"),
    ("accumulate: out tuple", lambda: tikmix_ext.sketch_accumulate_((1.0,), _t(2, 3), 0), TypeError, r"out"),
    ("projection: rows -1", lambda: torch.ops.tikmix.projection(-1, 8, 0), ValueError, r"rows must be >= 0"),
    ("projection: seed -1", lambda: torch.ops.tikmix.projection(2, 8, -1), ValueError, r"seed"),
    ("kron: a 2-D", lambda: tikmix_ext.sketch_kron(_t(2, 3), _t(2, 3, 4), 2, 2, 0, 0), ValueError, r"a must be 3-D"),
    ("kron: dtypes differ", lambda: tikmix_ext.sketch_kron(_t(2, 3, 4), _t(2, 3, 4, dtype=torch.float16), 2, 2, 0, 0),
     TypeError, r"g must have a's dtype"),
    ("kron: k_in·k_out >= 2^26", lambda: tikmix_ext.sketch_kron(_t(1, 1, 2), _t(1, 1, 2), 2**13, 2**13, 0, 0),
     ValueError, r"k_in·k_out must be < 2\^26"),
    ("kron: layer -1", lambda: tikmix_ext.sketch_kron(_t(1, 1, 2), _t(1, 1, 2), 2, 2, 0, -1), ValueError, r"layer"),
    ("kron: backward", lambda: tikmix_ext.sketch_kron(_t(1, 2, 3).requires_grad_(), _t(1, 2, 3), 2, 2, 0, 0).sum()
     .backward(), NotImplementedError, r"sketch_kron has no backward"),
    ("segment: ids float", lambda: tikmix_ext.segment_sum(_t(4, 2), _IDS.float(), 3), TypeError, r"ids must be int64"),
    ("segment: ids 2-D", lambda: tikmix_ext.segment_sum(_t(4, 2), _IDS[None], 3), ValueError, r"ids must be 1-D"),
    ("segment: ids out of range", lambda: tikmix_ext.segment_sum(_t(4, 2), _IDS, 2), ValueError,
     r"ids\[2\] = 2 is out of range"),
    ("segment: negative id", lambda: tikmix_ext.segment_mean(_t(4, 2), -_IDS, 3), ValueError, r"is out of range"),
    ("segment: num_groups bool", lambda: tikmix_ext.segment_sum(_t(4, 2), _IDS, True), TypeError,
     r"num_groups must be an int"),
    ("segment: x float16", lambda: tikmix_ext.segment_sum(_t(4, 2, dtype=torch.float16), _IDS, 3), TypeError,
     r"x must be float32 or float64"),
    ("influence: dtypes differ", lambda: tikmix_ext.group_influence(_t(4, 2), _IDS, 3, _t(1, 2, dtype=torch.float64)),
     TypeError, r"target must have train's dtype"),
    ("influence: precond shape", lambda: tikmix_ext.group_influence(_t(4, 2), _IDS, 3, _t(1, 2), _t(3, 3)),
     ValueError, r"precond must be \[k, k\]"),
    ("influence: NaN train", lambda: tikmix_ext.group_influence(_t(4, 2) * float("nan"), _IDS, 3, _t(1, 2)),
     ValueError, r"train must be finite"),
    ("influence: inf precond", lambda: tikmix_ext.group_influence(_t(4, 2), _IDS, 3, _t(1, 2), _t(2, 2) * math.inf),
     ValueError, r"precond must be finite"),
    ("influence: S overflow", lambda: tikmix_ext.group_influence(_t(4, 1) * 3e38, _IDS * 0, 1, _t(1, 1)),
     ValueError, r"S overflowed"),
    ("scores: negative weight", lambda: tikmix_ext.mixture_scores(_t(4, 2), _IDS, -_t(1, 3), 8, 0), ValueError,
     r"candidates must be >= 0"),
    ("scores: zero row", lambda: tikmix_ext.mixture_scores(_t(4, 2), _IDS, _t(1, 3) * 0, 8, 0), ValueError,
     r"finite sum > 0"),
    ("scores: NaN weight", lambda: tikmix_ext.mixture_scores(_t(4, 2), _IDS, _t(1, 3) * math.nan, 8, 0), ValueError,
     r"candidates must be finite"),
    ("scores: empty domain with weight", lambda: tikmix_ext.mixture_scores(_t(4, 2), _IDS, _t(1, 4), 8, 0),
     ValueError, r"ids has no rows of domain 3"),
    ("scores: draws 0", lambda: tikmix_ext.mixture_scores(_t(4, 2), _IDS, _t(1, 3), 0, 0), ValueError,
     r"draws must be in"),
    ("scores: NaN per_sample", lambda: tikmix_ext.mixture_scores(_t(4, 2) * math.nan, _IDS, _t(1, 3), 8, 0),
     ValueError, r"per_sample must be finite"),
    ("scores: backward", lambda: tikmix_ext.mixture_scores(_t(4, 2).requires_grad_(), _IDS, _t(1, 3), 8, 0).sum()
     .backward(), NotImplementedError, r"mixture_scores has no backward"),
    ("has_kernel: unknown op", lambda: tikmix_ext.has_kernel("sketchy", "cpu"), ValueError, r"op must be one of"),
]


@pytest.mark.parametrize("name, call, error, match", TABLE, ids=[row[0] for row in TABLE])
def test_table_of_bad_inputs(name, call, error, match):
    with pytest.raises(error, match=match) as info:
        call()
    assert str(info.value).startswith("tikmix")


# ---- crash-prone cases, in a worker subprocess ------------------------------------------------------------------
# Each is a valid-looking request for a huge allocation or a huge group count. The worker runs with a 4 GiB address
# space limit, so the allocation fails instead of taking the machine's memory. Expected: a clear error, or an
# out-of-memory error (MemoryError, or torch's "can't allocate memory") — never a crash, a hang or a wrong result.
RISKY: Dict[str, str] = {
    "segment_sum num_groups 2^31-1": "tikmix_ext.segment_sum(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), "
                                     "2**31 - 1)",
    "segment_mean num_groups 2^31": "tikmix_ext.segment_mean(torch.ones(4, 2), torch.zeros(4, dtype=torch.long), "
                                    "2**31)",
    "group_influence num_groups 2^40": "tikmix_ext.group_influence(torch.ones(4, 2), torch.zeros(4, dtype=torch.long),"
                                       " 2**40, torch.ones(1, 2))",
    "projection 2^40 rows": "tikmix_ext.projection(2**40, 8, 0)",
    "sketch 2^33 expanded rows": "tikmix_ext.sketch(torch.ones(1, 4).expand(2**33, 4), 8, 0)",
    "sketch k 2^26-1": "tikmix_ext.sketch(torch.ones(2**10, 4), 2**26 - 1, 0)",
    "sketch_kron k 2^13 x 2^12": "tikmix_ext.sketch_kron(torch.ones(64, 1, 2), torch.ones(64, 1, 2), 2**13, 2**12 - 1,"
                                 " 0, 0)",
    "mixture_scores G 2^20-1": "tikmix_ext.mixture_scores(torch.ones(2, 1), torch.zeros(2, dtype=torch.long), "
                               "torch.ones(1, 2**20 - 1), 8, 0)",
    "sketch_accumulate_ out 2^33 rows expanded x": "tikmix_ext.sketch_accumulate_(torch.zeros(1, 8), "
                                                   "torch.ones(1, 4).expand(2**33, 4), 0)",
}

# Cases whose out-of-memory error must name the argument that sized the allocation.
RISKY_NAMES = {"segment_sum num_groups 2^31-1": "num_groups"}

_WORKER = r"""
import json, resource, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import torch, tikmix_ext
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    source = json.loads(line)
    try:
        eval(source)
        out = {"outcome": "returned"}
    except BaseException as exc:
        out = {"outcome": "raised", "type": type(exc).__name__, "message": str(exc)[:500]}
    print(json.dumps(out), flush=True)
"""


class _Worker:
    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, source: str) -> Dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(source) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:  # the worker died on this case: report it; the next case starts a fresh worker
            code = self.proc.wait()
            return {"outcome": "crashed", "returncode": code}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker():
    w = _Worker()
    yield w
    w.close()


@pytest.mark.parametrize("name", list(RISKY))
def test_crash_prone_case_in_a_subprocess(worker, name):
    result = worker.run(RISKY[name])
    assert result["outcome"] != "crashed", f"{name}: the worker process died (exit code {result.get('returncode')})"
    if result["outcome"] == "returned":
        return  # it fit in memory; correctness at these sizes is the valid-input tests' job
    kind, message = result["type"], result["message"]
    out_of_memory = kind in ("MemoryError", "OutOfMemoryError") or "can't allocate memory" in message \
        or "not enough memory" in message
    assert out_of_memory or (kind in ("ValueError", "TypeError") and message.startswith("tikmix")), \
        f"{name}: unclear {kind}: {message}"
    if name in RISKY_NAMES:
        assert RISKY_NAMES[name] in message, f"{name}: the error does not name {RISKY_NAMES[name]}: {message}"
