"""tikmix.report on a small synthetic demo report: sign convention, time format, stage ranges, which methods share
a panel, and the PNGs (names, prefix)."""
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tikmix import report as rep
from tikmix.formats import DEMO, HISTORY

DOMAINS, TARGETS = ["a", "b", "c"], ["t1", "t2"]


def _history(weights, S_scale=1.0):
    stages = [{"step": s, "applies_from_step": s + 1, "weights": w, "S": (np.eye(2, 3) * S_scale + 0.1 * k).tolist(),
               "timing": {"train_s": 1.0, "influence_s": 0.1, "solve_s": 0.01, "controller_s": 0.12}}
              for k, (s, w) in enumerate(zip([10, 20], weights))]
    return {"format": HISTORY, "domains": DOMAINS, "targets": TARGETS, "solver": "tikmix-d",
            "stage_boundaries": {"unit": "steps", "values": [10, 20], "steps": [10, 20]},
            "initial_weights": [1 / 3] * 3, "stages": stages, "metrics": [], "final": {"step": 30}}


def _curve(offset):
    return [{"step": s, "target/t1": 3.0 - 0.05 * s + offset, "target/t2": 2.0 - 0.03 * s + offset}
            for s in (5, 10, 15, 20, 25, 30)]


def _report():
    w = [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]
    methods = {
        "uniform": {"final": {"t1": 1.5, "t2": 1.1}, "mean": 1.3, "curve": _curve(0.0), "history": None,
                    "timing": {"train_s": 12.345678, "influence_s": 0.0, "solve_s": 0.0, "eval_s": 0.5}},
        "tikmix-d": {"final": {"t1": 1.4, "t2": 1.0}, "mean": 1.2, "curve": _curve(-0.1), "history": _history(w),
                     "timing": {"train_s": 11.0, "influence_s": 0.4321, "solve_s": 0.0123, "eval_s": 0.5}},
        "tikmix-m": {"final": {"t1": 1.4, "t2": 1.0}, "mean": 1.2, "curve": _curve(-0.1),
                     "history": _history([[x + 1e-9 for x in r] for r in w]),
                     "timing": {"train_s": 11.0, "influence_s": 0.4, "solve_s": 123.456, "eval_s": 0.5}},
        "other": {"final": {"t1": 1.6, "t2": 1.2}, "mean": 1.4, "curve": _curve(0.2),
                  "history": _history([[0.2, 0.2, 0.6], [0.1, 0.1, 0.8]], S_scale=-1.0),
                  "timing": {"train_s": 11.0, "influence_s": 0.4, "solve_s": 0.1, "eval_s": 0.5}},
    }
    return {"format": DEMO, "domains": DOMAINS, "targets": TARGETS, "baseline": "uniform",
            "methods": methods}


def test_improvement_sign_convention():
    assert rep.improvement(2.0, 1.5) == pytest.approx((0.5, 25.0))  # lower loss = positive = better
    assert rep.improvement(2.0, 2.5) == pytest.approx((-0.5, -25.0))


@pytest.mark.parametrize("seconds,text", [(0.004, "0.00"), (0.4321, "0.43"), (7.349, "7.3"), (99.94, "99.9"),
                                          (118.6, "119"), (float("nan"), "nan")])
def test_seconds_precision(seconds, text):
    assert rep._seconds(seconds) == text


def test_tables_use_one_sign_and_short_times():
    text = rep.format_tables(_report())
    assert "Improvement over uniform (uniform loss − method loss; > 0 = better)" in text
    assert "+0.1000 (+7.7%)" in text and "-0.1000 (-7.7%)" in text
    timing = text[text.index("Time (wall clock"):]
    assert "12.3" in timing and "0.43" in timing and "123" in timing and "12.3456" not in timing


def test_stage_ranges_and_groups():
    r = _report()
    assert rep._stage_ranges(r["methods"]["tikmix-d"]["history"]) == [(1, 10), (11, 20), (21, 30)]
    v1 = {**r["methods"]["tikmix-d"]["history"], "format": "tikmix.history/1"}
    v1["stages"] = [{**st, "applies_from_step": st["step"]} for st in v1["stages"]]  # 0-based in version 1
    assert rep._stage_ranges(v1) == [(1, 10), (11, 20), (21, 30)]
    runs = {n: m["history"] for n, m in r["methods"].items() if m["history"]}
    groups = rep._same_runs(runs, lambda h: [w for _, w in rep._stage_weights(h)], atol=1e-6)
    assert [names for names, _ in groups] == [["tikmix-d", "tikmix-m"], ["other"]]
    assert [names for names, _ in rep._same_runs(runs, lambda h: [w for _, w in rep._stage_weights(h)], atol=0.0)] \
        == [["tikmix-d"], ["tikmix-m"], ["other"]]


def test_mixture_ticks_name_the_step_ranges():
    plt = rep.pyplot()
    fig, ax = plt.subplots()
    rep._mixture_plot(ax, _report()["methods"]["tikmix-d"]["history"], DOMAINS, "x")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage 1\nsteps 1–10", "stage 2\nsteps 11–20",
                                                            "stage 3\nsteps 21–30"]
    plt.close(fig)


def test_loss_plot_legend_and_zoom():
    plt = rep.pyplot()
    r = _report()
    fig = rep._loss_plot(plt, {n: m["curve"] for n, m in r["methods"].items()}, TARGETS, "uniform", [10, 20])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["uniform", "tikmix-d", "tikmix-m (= tikmix-d)", "other", "stage boundary (mixture re-solved)"]
    # rows of equal size: all steps from 0, zoomed from the first boundary, improvement; one column per panel
    assert len(fig.axes) == 3 * (1 + len(TARGETS))
    grid = np.array(fig.axes).reshape(3, 1 + len(TARGETS))
    sizes = {tuple(np.round(a.get_position().size, 3)) for a in fig.axes}
    assert len(sizes) == 1
    assert [a.get_title() for a in grid[:, 1]] == ["target: t1, all steps", "target: t1, steps ≥ 10",
                                                   "improvement over uniform: t1"]
    styles = {(line.get_linestyle(), line.get_marker()) for line in grid[0, 0].get_lines()[:4]}
    assert len(styles) == 4  # every method has its own line style and marker
    for a in (*grid[0], *grid[2]):
        assert a.get_xlim()[0] == 0  # the full rows start at step 0
    assert all(a.get_xlim()[0] > 5 for a in grid[1])
    # t1 lies in [1.4, 2.7] from step 10 on; "other" starts at 2.95 (step 5), which the zoomed axis leaves out
    lo, hi = grid[1, 1].get_ylim()
    assert 1.2 < lo < 1.4 and 2.7 < hi < 2.95
    assert grid[0, 1].get_ylim()[1] > 2.95
    plt.close(fig)


def test_loss_plot_without_baseline_or_points_before_the_boundary():
    plt = rep.pyplot()
    curve = [row for row in _curve(0.0) if row["step"] >= 10]
    fig = rep._loss_plot(plt, {"tikmix-d": curve}, TARGETS, None, [10, 20])
    assert [a.get_title() for a in fig.axes] == ["mean target loss, all steps", "target: t1, all steps",
                                                 "target: t2, all steps"]
    plt.close(fig)


def test_plot_all_writes_the_pngs(tmp_path):
    paths = rep.plot_all(_report(), tmp_path, prefix="demo_")
    assert [p.name for p in paths] == ["demo_mixture.png", "demo_loss_curves.png", "demo_influence.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = _history([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    (tmp_path / "h.json").write_text(json.dumps(hist))
    text, pngs = rep.render(tmp_path / "h.json", tmp_path / "h")
    assert "tikmix-d: domain weights per stage" in text
    assert sorted(p.name for p in pngs) == ["influence.png", "mixture.png"]  # no metrics: no loss curves


def test_controller_time_includes_the_rehearsal():
    """The rehearsal before training is the controller's time too: the run summary's and the history view's
    controller time add it (it is recorded once, in the first record after it)."""
    from types import SimpleNamespace

    hist = _history([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    hist["stages"][0]["timing"]["rehearsal_s"] = 0.5
    hist["stages"][1]["timing"]["rehearsal_s"] = 0.0
    run = SimpleNamespace(history=hist, eval_s=0.25, final={"t1": 1.0}, mean=1.0)
    t = rep.run_summary(run)["timing"]
    assert t["rehearsal_s"] == pytest.approx(0.5)
    assert t["controller_s"] == pytest.approx(2 * 0.12 + 0.5)
    assert t["train_s"] == pytest.approx(2.0 - 0.25)
    text = rep.format_tables(hist)
    assert "rehearsal 0.5 s; the controller took 37.0% of the training time" in text  # (0.24 + 0.5) / 2.0
    del hist["stages"][0]["timing"]["rehearsal_s"]  # histories written before the rehearsal was timed
    assert rep.run_summary(run)["timing"]["controller_s"] == pytest.approx(0.24)
