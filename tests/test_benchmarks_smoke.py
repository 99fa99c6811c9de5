"""The benchmark suite still runs: every benchmark once at its smallest size, then benchmarks/tables.py on the
JSON it saved (a run of the whole chain, not a timing)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_benchmark_suite_and_tables_run(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-only",
         "--bench-size", "smoke", f"--benchmark-json={out}", "-W", "ignore::pytest_benchmark.logger.PytestBenchmarkWarning"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    groups = {b["group"] for b in report["benchmarks"]}
    for prefix in ("sketch CPU", "influence CPU", "influence FSDP CPU", "TiKMiX-D", "TiKMiX-M labels", "sampler",
                   "mixing quality"):
        assert any(g.startswith(prefix) for g in groups), f"no benchmark group {prefix!r} ran: {sorted(groups)}"
    for group in groups:  # every CPU comparison ran with its baseline
        roles = [b["extra_info"]["role"] for b in report["benchmarks"] if b["group"] == group]
        assert roles.count("baseline") == 1, (group, roles)
    tables = subprocess.run([sys.executable, "benchmarks/tables.py", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert tables.returncode == 0, tables.stderr
    assert tables.stdout.count("(baseline)") == len(groups)
