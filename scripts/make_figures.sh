#!/usr/bin/env bash
# The one way the README's and the docs' figures (docs/img/demo_*.png) are made: from the named demo run
#   tikmix demo --seed 0 --threads 1        (default budget; the run the README's seed-0 row reports)
# drawn by `tikmix report`. Usage, from anywhere:
#   bash scripts/make_figures.sh            # runs the demo into tikmix-demo/seed0 unless its report.json exists
#   bash scripts/make_figures.sh RUN_DIR    # draw from RUN_DIR/report.json (it must be that same named run)
# FIG_DIR (default docs/img) sets where the PNGs go.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RUN=${1:-tikmix-demo/seed0}
FIG_DIR=${FIG_DIR:-docs/img}
if [ ! -f "$RUN/report.json" ]; then
  "$PY" -m tikmix demo --seed 0 --threads 1 --out "$RUN" --no-plots
fi
# Refuse any other run (a --quick one, another seed or thread count): the figures must match the quoted numbers.
"$PY" - "$RUN/report.json" <<'PY'
import json, sys
from tikmix.demo.run import DemoSettings

report = json.load(open(sys.argv[1]))
want = {"seed": 0, "steps": DemoSettings().steps, "torch_threads": 1}
got = {"seed": report["settings"]["seed"], "steps": report["settings"]["steps"], "torch_threads": report.get("torch_threads")}
if got != want:
    sys.exit(f"{sys.argv[1]} is not the named run (tikmix demo --seed 0 --threads 1): {got} != {want}")
PY
"$PY" -m tikmix report "$RUN/report.json" --out "$FIG_DIR" --prefix demo_
