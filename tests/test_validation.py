"""The shared argument checks (tikmix._validation) and the single-process answers of tikmix._distributed."""
import numpy as np
import pytest
import torch

from tikmix import _distributed
from tikmix._validation import check_int, to_float64_array


@pytest.mark.parametrize("value", [0, 7, -3, np.int64(5), np.int32(-2), np.uint8(9), 2**70])
def test_check_int_accepts_python_and_numpy_ints(value):
    out = check_int(value, "n")
    assert type(out) is int and out == int(value)


@pytest.mark.parametrize("value", [True, False, 2.0, 2.5, "3", None, [1], np.float64(1.0), torch.tensor(1)])
def test_check_int_rejects_non_ints_with_type_error(value):
    with pytest.raises(TypeError, match=r"^n must be an int, got "):
        check_int(value, "n")


@pytest.mark.parametrize(
    "value,kw,match",
    [
        (0, dict(minimum=1), r"^n must be >= 1, got 0$"),
        (-5, dict(minimum=0), r"^n must be >= 0, got -5$"),
        (11, dict(maximum=10), r"^n must be <= 10, got 11$"),
        (11, dict(minimum=0, maximum=10), r"^n must be <= 10, got 11$"),
    ],
)
def test_check_int_range(value, kw, match):
    with pytest.raises(ValueError, match=match):
        check_int(value, "n", **kw)
    edge = kw.get("minimum", kw.get("maximum"))
    assert check_int(edge, "n", **kw) == edge


@pytest.mark.parametrize(
    "x",
    [
        [1, 2, 3],
        np.arange(6, dtype=np.int32).reshape(2, 3),
        torch.arange(4, dtype=torch.bfloat16),
        torch.tensor([[1.5, -2.0]], dtype=torch.float16, requires_grad=True),
        3,
    ],
)
def test_to_float64_array_matches_numpy_reference(x):
    ref = np.asarray(x.detach().double().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    out = to_float64_array(x, "x")
    assert out.dtype == np.float64 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("x", [object(), "abc", {"a": 1}])
def test_to_float64_array_names_the_argument(x):
    with pytest.raises(TypeError, match="weights must be a numeric array"):
        to_float64_array(x, "weights")


def test_distributed_helpers_without_process_group():
    if _distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    assert (_distributed.rank(), _distributed.world_size(), _distributed.is_active()) == (0, 1, False)
    _distributed.barrier()  # no-op
    t = torch.arange(3.0)
    _distributed.all_reduce_sum_([t])
    assert t.tolist() == [0.0, 1.0, 2.0]
    assert _distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    _distributed.check_same_on_all_ranks(("x",), "names")
    assert _distributed.init_from_env("cpu") == (0, 1, 0)


def test_process_group_from_env_leaves_the_process_as_it_found_it(tmp_path, monkeypatch):
    if _distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with _distributed.process_group_from_env("cpu") as info:  # a single process: nothing to join
        assert info == (0, 1, 0) and not _distributed.is_initialized()
    with pytest.raises(RuntimeError, match="inside"):
        with _distributed.process_group_from_env("cpu"):
            raise RuntimeError("inside")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:  # a group the caller made is used and kept, also when the block raises
        monkeypatch.setenv("WORLD_SIZE", "1")
        with _distributed.process_group_from_env("cpu") as info:
            assert info == (0, 1, 0)
        with pytest.raises(ValueError):
            with _distributed.process_group_from_env("cpu"):
                raise ValueError
        assert _distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("module,name,args", [
    ("tikmix.run.schema", "ConfigError", ("influence.params", "matches nothing")),
    ("tikmix.run.schema", "SchemaError", (("adaptive",), "needs n_bootstrap >= 1")),
    ("tikmix.decision", "DecisionOptionError", (("trust_region", "grow"), "must be > 1")),
    ("tikmix.solvers.result", "InfeasibleConstraintsError", ("pareto", "no mixture")),
    ("tikmix.compare", "CompareError", ("run folder has no history",)),
    ("tikmix.run.checkpoint", "CheckpointError", ("truncated",)),
    ("tikmix.data.tokenizers", "TokenizerSpecError", ("unknown kind",)),
])
def test_errors_survive_a_worker_process(module, name, args):
    """Errors cross process boundaries (parallel search proxies, benchmark workers): pickling keeps the class, the
    message and the attributes that locate the problem, instead of failing in the parent with a TypeError."""
    import importlib
    import pickle

    err = getattr(importlib.import_module(module), name)(*args)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
