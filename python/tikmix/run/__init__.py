"""``tikmix run CONFIG.yaml``: staged TiKMiX training on the user's own data, from a validated YAML config.

The package in layers, each importing only those above it:

* :mod:`tikmix.run.schema` -- the config schema (keys, types, defaults, bounds; declarations only), :class:`ConfigError`
* :mod:`tikmix.run.sources` -- the configured domains and targets, opened once each
* :mod:`tikmix.run.model` -- the model the run trains
* :mod:`tikmix.run.preflight` -- checks against the machine, the libraries and the data
* :mod:`tikmix.run.config` -- :func:`load_config`: YAML -> validated :class:`RunConfig`, errors that name the key
* :mod:`tikmix.run.prepare` -- :func:`prepare`: tokenizer loaded once, sources opened once, vocabulary known
* :mod:`tikmix.run.reference` -- the config reference page, rendered from the schema
* :mod:`tikmix.run.checkpoint` -- checkpoints: safe loading, atomic writes, the last two kept, RNG states
* :mod:`tikmix.run.parallel` -- DDP or FSDP2, and the sharded (DCP) checkpoints of FSDP2
* :mod:`tikmix.run.train` -- the training loop, :func:`train`
* :mod:`tikmix.run.search` -- :func:`search`: a static mixture found by proxy search (RegMix), the baseline

Every problem raises :class:`ConfigError` (a ValueError) whose message starts with the dotted key, e.g.
``data.domains.web.token_file: file not found: data/web.bin``. Under ``torchrun`` (``WORLD_SIZE > 1``)
the process group is initialised (gloo on CPU, nccl on CUDA), the ranks check that they run the same config, the
model is wrapped in DistributedDataParallel (or sharded with FSDP2, ``train.parallel: fsdp``;
:mod:`tikmix.run.parallel`), every rank reads its slice of each global batch from the :class:`tikmix.MixtureSampler`,
and influence sketches are all-reduced.
"""

from .._extras import require

require("pydantic", "run", "tikmix run")  # the config schema; before importing it, for a clear message
from .config import load_config, parse_config, validate_config  # noqa: E402
from .prepare import PreparedRun, prepare  # noqa: E402
from .preflight import check_config  # noqa: E402
from .reference import reference_markdown  # noqa: E402
from .schema import ConfigError, ConfigWarning, RunConfig  # noqa: E402
from .train import train  # noqa: E402
from .search import SearchResult, fit_search, search  # noqa: E402

__all__ = ["ConfigError", "ConfigWarning", "RunConfig", "load_config", "parse_config", "validate_config",
           "check_config", "prepare", "PreparedRun", "reference_markdown", "train",
           "search", "fit_search", "SearchResult"]
