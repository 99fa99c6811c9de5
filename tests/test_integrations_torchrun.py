"""The HF and Lightning docs examples run as written under torchrun with 2 processes (gloo, CPU): the sampler and
controller are built before the process group exists and bind to the rank and world size at first use."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from test_docs import DOCS, OFFLINE_GUARD, _blocks, _expand_snippets

TIMEOUT_S = 400


@pytest.mark.parametrize("page,framework", [("hf-trainer.md", "transformers"), ("lightning.md", "lightning")])
def test_docs_example_under_torchrun(tmp_path, page, framework):
    pytest.importorskip(framework)
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    code = [c for c, reason in _blocks(_expand_snippets((DOCS / page).read_text())) if reason is None]
    script = tmp_path / "page.py"
    # the first block is the complete run; the pages' later blocks (resume, per-sample paths) build on it
    # each rank writes its result to a file of its own: the ranks' stdout lines interleave on the shared pipe
    script.write_text(OFFLINE_GUARD + "\n\n".join(code) + "\nimport json as _json, pathlib as _pathlib\n"
                      f"_pathlib.Path({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.json').write_text(_json.dumps("
                      "[controller.history['stages'][1]['weights'], controller.history['final']['step']]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", str(script)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{page} under torchrun:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    done = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert done[0] == done[1]  # both ranks chose the same mixture and finished at the same step
