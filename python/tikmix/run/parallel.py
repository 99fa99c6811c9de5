"""Data parallelism of ``tikmix run``: DistributedDataParallel (``parallel: ddp``) or FSDP2 (``parallel: fsdp``),
and the sharded checkpoints FSDP2 needs (``torch.distributed.checkpoint``: every rank writes its shards; a run saved
at one world size resumes at another, DCP reshards on load).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from tikmix._distributed import is_initialized

__all__ = ["wrap_model", "save_sharded", "load_sharded", "prune_sharded"]


def wrap_model(model: nn.Module, parallel: str, world: int) -> nn.Module:
    """The module the training loop calls: ``model`` itself (one process), a DDP wrapper, or ``model`` sharded in
    place with ``fully_shard`` — every child of every ``nn.ModuleList`` (the transformer blocks) as its own unit, then
    the root (which keeps the rest: embeddings, a tied head, the final norm). Create the optimizer afterwards."""
    if parallel == "fsdp":
        if not is_initialized():  # one process without a process group: nothing to shard
            return model
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def _dcp_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoint_dcp" / f"step{step:09d}"


def save_sharded(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Write the model's and optimizer's (sharded) state with DCP, a collective on every rank; returns the folder,
    relative to ``out_dir``, for the checkpoint file to name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    path = _dcp_dir(out_dir, step)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
    return str(path.relative_to(out_dir))


def load_sharded(out_dir: Path, folder: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint into ``model``/``optimizer`` as they are sharded now (any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from .checkpoint import CheckpointError

    if not isinstance(folder, str) or not re.fullmatch(r"checkpoint_dcp/step\d{9}", folder):
        raise CheckpointError(f"the checkpoint names the sharded state {folder!r}, not a folder of the form "
                              "checkpoint_dcp/stepNNNNNNNNN inside the run's output folder")
    path = Path(out_dir) / folder
    if not path.is_dir():
        raise FileNotFoundError(f"the checkpoint names the sharded state {path}, which does not exist")
    _check_dcp_metadata(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path), planner=_weights_only_planner())
    except CheckpointException as exc:
        raise CheckpointError(f"the sharded state in {path} cannot be read safely: {exc}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` allowing only the classes DCP writes there (metadata records, torch.Size,
    dtypes, the layout helper, paths): DCP itself reads it with plain ``pickle.load``, which would run any code."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in (
                ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
                ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP metadata file")


def _check_dcp_metadata(path: Path) -> None:
    from .checkpoint import CheckpointError

    for meta in path.glob(".metadata*"):
        try:
            with open(meta, "rb") as f:
                _MetadataUnpickler(f).load()
        except Exception as exc:  # any failure means the file is not what DCP wrote: refuse it
            raise CheckpointError(f"{meta} is not a plain DCP metadata file, refusing to load it: {exc}") from None


def _weights_only_planner() -> Any:
    """DCP's default load planner, except that non-tensor values (e.g. the optimizer's hyper-parameters) are read
    with ``torch.load(weights_only=True)`` (DCP's own planner uses ``weights_only=False``)."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            torch.load(value, weights_only=True)  # raises on anything but tensors and plain values
            value.seek(0)
            super().load_bytes(read_item, value)

    return WeightsOnlyLoadPlanner()


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it assumes a single process when there is no process group: that is intended here."""
    with warnings.catch_warnings():
        if not is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def prune_sharded(out_dir: Path, keep_steps: Iterable[int]) -> None:
    """Remove DCP folders other than those of ``keep_steps`` (call on one rank, after the checkpoint files that
    name the kept folders are written)."""
    root = Path(out_dir) / "checkpoint_dcp"
    if not root.is_dir():
        return
    keep = {_dcp_dir(out_dir, step) for step in keep_steps}
    for child in root.iterdir():
        if child.is_dir() and child not in keep:
            shutil.rmtree(child, ignore_errors=True)
