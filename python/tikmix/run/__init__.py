"""``tikmix run CONFIG.yaml``: staged TiKMiX training on the user's own data, from a validated YAML config.

* :mod:`tikmix.run.config` -- the schema (keys, types, defaults, bounds), :func:`load_config`, :class:`ConfigError`
* :mod:`tikmix.run.sources` -- the configured domains and targets as datasets
* :mod:`tikmix.run.model` -- the model the run trains
* :mod:`tikmix.run.preflight` -- checks against the machine, the data and the library, before anything is built
* :mod:`tikmix.run.checkpoint` -- checkpoints: safe loading, atomic writes, the last two kept, RNG states
* :mod:`tikmix.run.parallel` -- DDP or FSDP2, and the sharded (DCP) checkpoints of FSDP2
* :mod:`tikmix.run.train` -- the training loop, :func:`train`

The config is validated completely before anything is built or trained; every problem raises
:class:`ConfigError` (a ValueError) whose message starts with the dotted key, e.g.
``data.domains.web.token_file: file not found: data/web.bin``. Under ``torchrun`` (``WORLD_SIZE > 1``)
the process group is initialised (gloo on CPU, nccl on CUDA), the model is wrapped in
DistributedDataParallel (or sharded with FSDP2, ``train.parallel: fsdp``; :mod:`tikmix.run.parallel`), every rank reads its slice of each global batch from the
:class:`tikmix.MixtureSampler`, and influence sketches are all-reduced.
"""

from .._extras import require

require("pydantic", "run", "tikmix run")  # the config schema; before importing it, for a clear message
from .config import ConfigError, ConfigWarning, RunConfig, load_config, reference_markdown, validate_config  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["ConfigError", "ConfigWarning", "RunConfig", "load_config", "validate_config", "reference_markdown", "train"]
