"""The compiled layer's self-description and its device errors (tikmix_ext.build_info, tikmix_ext.info)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import tikmix_ext
from tikmix_ext._interop import check_devices


def test_build_info_lists_every_op_with_a_cpu_kernel():
    info = tikmix_ext.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(info["kernels"]) == set(tikmix_ext.OPS)
    for op, keys in info["kernels"].items():
        assert "cpu" in keys, op
        assert hasattr(torch.ops.tikmix, op)
    assert isinstance(info["with_cuda"], bool)
    assert info["rng"] == "splitmix64-rademacher-v1"
    assert info["cpu_isa"]


def test_info_module_prints_a_kernel_table():
    out = subprocess.run([sys.executable, "-m", "tikmix_ext.info"], capture_output=True, text=True, check=True).stdout
    for op in tikmix_ext.OPS:
        assert op in out


@pytest.mark.skipif(tikmix_ext.build_info()["with_cuda"], reason="this build has CUDA kernels")
def test_cuda_tensor_on_cpu_only_build_is_named_clearly():
    fake_cuda = SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"tikmix\.sketch: x is a CUDA tensor but this tikmix_ext build has no CUDA"):
        check_devices("sketch", x=fake_cuda)


def test_mixed_devices_are_listed_together():
    a = torch.zeros(2, 3)
    b = SimpleNamespace(device=torch.device("meta"))
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got train on cpu, target on meta"):
        check_devices("group_influence", train=a, target=b)


@pytest.mark.parametrize("op", tikmix_ext.OPS)
def test_has_kernel_cpu_for_every_op(op):
    assert tikmix_ext.has_kernel(op, "cpu") is True
    assert tikmix_ext.has_kernel(f"tikmix::{op}", torch.device("cpu")) is True
    assert tikmix_ext.has_kernel(op, "meta") is False  # meta gives shapes, never results


def test_has_kernel_cuda_follows_the_build():
    with_cuda = tikmix_ext.build_info()["with_cuda"]
    assert tikmix_ext.has_kernel("sketch", "cuda") is with_cuda
    assert tikmix_ext.has_kernel("segment_sum", torch.device("cuda", 1)) is with_cuda
    assert tikmix_ext.has_kernel("projection", "cuda") is False  # no tensor inputs: its output is always on the CPU


@pytest.mark.parametrize(
    "op, device, error, match",
    [
        ("nope", "cpu", ValueError, r"has_kernel: op must be one of sketch, .*got 'nope'"),
        ("sketch", "gpu", ValueError, r"has_kernel: device 'gpu' is not a valid device string"),
        (3, "cpu", TypeError, r"has_kernel: op must be a str, got int"),
        ("sketch", 0, TypeError, r"has_kernel: device must be a str or torch.device, got int"),
    ],
)
def test_has_kernel_bad_arguments(op, device, error, match):
    with pytest.raises(error, match=match):
        tikmix_ext.has_kernel(op, device)
