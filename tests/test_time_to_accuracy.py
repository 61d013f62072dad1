"""``compare``'s time to accuracy, from synthetic run logs (no training): the seconds to reach
the supervised row's best mIoU and the mean mIoU over time (latest first validation to the
last one; a finished run keeps its final mIoU; a warm row is its source's curve, then its own)."""

from __future__ import annotations

import json
import statistics

import pytest

from dualteacher.engine.trainer import TrainResult
from dualteacher.metrics import SegMetrics
from dualteacher.study.compare import (
    RunSpec,
    mean_miou_over,
    summarise_runs,
    time_span,
    time_to_reach,
    write_summary,
)


def _run(curve: list[tuple[float, float]], best: float) -> TrainResult:
    """A finished run whose validations were ``curve``: ``(training seconds, student mIoU)``."""
    last = curve[-1]
    return TrainResult(
        out_dir="runs/x",
        steps=100 * len(curve),
        final={"student": SegMetrics(miou=last[1], iou=[], acc=0.0, num_pixels=0)},
        best_miou=best,
        best_step=100,
        train_seconds=last[0],
        history=[
            {"step": 100 * (i + 1), "time": t, "miou_student": m} for i, (t, m) in enumerate(curve)
        ],
        step_seconds=last[0] / (100 * len(curve)),
        peak_memory_mb=100.0,
        memory_kind="peak_rss",
    )


# Two seeds per row. supervised:2x has the larger budget, so its best (mean of 55 and 53: 54)
# is the target; supervised (1x) never reaches it; Dual Teacher's seeds reach it at their
# second and third validation (48: a validation at exactly the target counts).
CURVES = {
    "supervised": [[(10, 20), (20, 40), (30, 50)], [(11, 22), (21, 38), (31, 46)]],
    "supervised:2x": [
        [(10, 20), (20, 40), (30, 50), (40, 54), (50, 55), (60, 55)],
        [(10, 21), (20, 39), (30, 49), (40, 52), (50, 53), (60, 53)],
    ],
    "dual_teacher": [[(15, 30), (30, 56), (45, 60)], [(16, 28), (32, 50), (48, 54)]],
}
BEST = {"supervised": [50, 46], "supervised:2x": [55, 53], "dual_teacher": [60, 54]}
SPECS = [RunSpec("supervised"), RunSpec("supervised", 2.0), RunSpec("dual_teacher")]


def _summary() -> tuple[list[dict], dict, dict]:
    runs = {label: [_run(c, b) for c, b in zip(CURVES[label], BEST[label])] for label in CURVES}
    planned = {label: {"steps": 300} for label in CURVES}
    results, tta = summarise_runs(SPECS, runs, [0, 1], planned)
    return results, tta, runs


def test_time_to_supervised_best_per_seed_and_over_seeds():
    results, tta, _ = _summary()
    assert tta["reference"] == "supervised:2x" and tta["target_miou"] == 54.0
    sup, sup2, dt = results
    assert dt["time_to_target_per_seed"] == [30, 48]
    assert dt["time_to_target"] == 39.0 and dt["time_to_target_reached"] == 2
    assert dt["time_to_target_std"] == pytest.approx(statistics.stdev([30, 48]))
    assert sup2["time_to_target_per_seed"] == [40, None]  # seed 1's best is 53 < 54
    assert sup2["time_to_target"] == 40 and sup2["time_to_target_reached"] == 1
    assert sup2["time_to_target_std"] is None
    assert sup["time_to_target_per_seed"] == [None, None] and sup["time_to_target"] is None
    assert sup["time_to_target_reached"] == 0


def test_mean_miou_over_time_holds_a_finished_runs_final_miou():
    results, tta, _ = _summary()
    # latest first validation: 16 s (dual_teacher seed 1); last validation: 60 s (supervised:2x)
    assert tta["span_seconds"] == [16, 60]
    sup, sup2, dt = results
    # supervised seed 0 over 16..60 s: 32 at 16 s (on the line from 20 at 10 s to 40 at 20 s),
    # 40 at 20 s, 50 at 30 s, then its final 50 until 60 s: trapezoids over 44 s
    seed0 = ((32 + 40) / 2 * 4 + (40 + 50) / 2 * 10 + 50 * 30) / 44
    # seed 1: 22 at 11 s to 38 at 21 s: 22 + 16 * 5 / 10 = 30 at 16 s; 38 at 21 s; 46 at 31 s,
    # then 46 until 60 s
    seed1 = ((30 + 38) / 2 * 5 + (38 + 46) / 2 * 10 + 46 * 29) / 44
    assert sup["mean_miou_over_time_per_seed"] == pytest.approx([seed0, seed1])
    assert sup["mean_miou_over_time"] == pytest.approx((seed0 + seed1) / 2)
    assert sup["mean_miou_over_time_std"] == pytest.approx(statistics.stdev([seed0, seed1]))
    # dual_teacher seed 0: 30 + 26 / 15 at 16 s, 56 at 30 s, 60 at 45 s, then 60 until 60 s
    dt0 = ((30 + 26 / 15 + 56) / 2 * 14 + (56 + 60) / 2 * 15 + 60 * 15) / 44
    assert dt["mean_miou_over_time_per_seed"][0] == pytest.approx(dt0)
    # supervised:2x seed 0 validates at 60 s last: no held part
    sup2_0 = ((32 + 40) / 2 * 4 + (40 + 50) / 2 * 10 + (50 + 54) / 2 * 10 + (54 + 55) / 2 * 10
              + 55 * 10) / 44  # fmt: skip
    assert sup2["mean_miou_over_time_per_seed"][0] == pytest.approx(sup2_0)


def test_a_warm_rows_time_line_is_its_source_run_then_its_own():
    # supervised: 20 at 10 s, 40 at 20 s (train time 20 s); dt@supervised from it: its own
    # validations at 5 and 10 s of its training, so at 25 and 30 s on the user's clock
    runs = {
        "supervised": [_run([(10, 20), (20, 40)], 40)],
        "dual_teacher@supervised": [_run([(5, 50), (10, 60)], 60)],
    }
    specs = [RunSpec("supervised"), RunSpec("dual_teacher", start_from="supervised")]
    results, tta = summarise_runs(specs, runs, [0], {k: {"steps": 1} for k in runs})
    assert tta["span_seconds"] == [10, 30]
    sup, warm = results
    # supervised: 20 -> 40 over 10..20 s, then its final 40 until 30 s
    assert sup["mean_miou_over_time"] == pytest.approx((30 * 10 + 40 * 10) / 20)
    # the warm row: supervised's curve until 20 s, then 40 -> 50 -> 60 at 20, 25, 30 s
    assert warm["mean_miou_over_time"] == pytest.approx((30 * 10 + 45 * 5 + 55 * 5) / 20)
    # the time to target still counts the warm row's own validations only (offset by 20 s)
    assert warm["time_to_target_per_seed"] == [25]


def test_no_supervised_row_and_no_time_span():
    assert time_to_reach([(5, 10), (9, 30)], 30) == 9 and time_to_reach([(5, 10)], 11) is None
    assert time_span([[(1, 10), (5, 20)], [(6, 30), (9, 40)]]) == (6, 9)  # the first one holds 20
    assert time_span([[(1, 10)]]) is None  # one validation: no span
    assert time_span([[(1, 10)], [(3, 10)], []]) is None  # the latest first one is the last one
    assert mean_miou_over([(0, 0), (10, 100)], (2, 4)) == pytest.approx(30)
    assert mean_miou_over([(0, 0), (10, 100)], (5, 15)) == pytest.approx((75 * 5 + 100 * 5) / 10)
    runs = {"dual_teacher": [_run([(10, 30)], 30)]}
    results, tta = summarise_runs(
        [RunSpec("dual_teacher")], runs, [0], {"dual_teacher": {"steps": 1}}
    )
    assert tta["reference"] is None and tta["target_miou"] is None and tta["span_seconds"] is None
    (row,) = results
    assert row["time_to_target_per_seed"] is None and row["time_to_target"] is None
    assert row["mean_miou_over_time"] is None
    # a run without a validation has no curve: no figure for its seed, the others count
    runs = {"supervised": [_run([(10, 20), (20, 40)], 40)], "dual_teacher": [_run([(0, 0)], 0)]}
    runs["dual_teacher"].append(_run([(10, 30), (20, 50)], 50))
    runs["dual_teacher"][0].history = []
    specs = [RunSpec("supervised"), RunSpec("dual_teacher")]
    results, tta = summarise_runs(specs, runs, [0, 1], {k: {"steps": 1} for k in runs})
    assert tta["span_seconds"] == [10, 20]
    assert results[1]["mean_miou_over_time_per_seed"] == [None, 40.0]
    assert results[1]["mean_miou_over_time"] == 40.0
    assert results[1]["time_to_target_per_seed"] == [None, 20]


def test_summary_files_and_table_carry_the_time_to_accuracy(tmp_path, capsys, monkeypatch):
    import dualteacher.plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    results, tta, runs = _summary()
    summary = {"results": results, "budget": {"steps": 300}, "seeds": [0, 1], "jobs": 1,
               "model": "unet-r18", "data": "demo", "select": {"chosen_on": "val"},
               "time_to_accuracy": tta}  # fmt: skip
    write_summary(tmp_path, summary, runs)
    printed = capsys.readouterr().out
    assert "time to target" in printed and "mean mIoU over time" in printed
    assert "39.0 ± 12.7 s" in printed  # dual_teacher: 30 and 48 s
    assert "40.0 s (1/2 seeds; the others never)" in printed  # supervised:2x
    flat = " ".join(printed.split())  # the note is wrapped
    assert "at least 54.00, the best mIoU of supervised:2x" in flat
    assert "16.0-60.0 s, from the latest first validation to the last one" in flat
    rows = {ln.split()[0]: ln for ln in printed.splitlines() if ln.startswith(tuple(CURVES))}
    assert rows["supervised"].split()[-4:-2] == ["never", _pm_text(results[0])]

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["time_to_accuracy"]["target_miou"] == 54.0
    assert saved["results"][2]["time_to_target_per_seed"] == [30, 48]
    assert saved["results"][0]["time_to_target_per_seed"] == [None, None]

    md = (tmp_path / "summary.md").read_text()
    assert "| method | time to supervised:2x's best mIoU (54.00) | mean mIoU over time " in md
    assert "| dual_teacher | 39.0 ± 12.7 s |" in md and "| supervised | never |" in md

    # the plot: a dashed line at the target, a marker where each seed reaches it
    ax = figs[0].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    line = lines["supervised:2x best (54.00)"]
    assert list(line.get_ydata()) == [54.0, 54.0] and line.get_linestyle() == "--"
    dt = lines["dual_teacher reaches it (2 of 2 seeds)"]
    assert list(dt.get_xdata()) == [30, 48] and list(dt.get_ydata()) == [54.0, 54.0]
    assert list(lines["supervised:2x reaches it (1 of 2 seeds)"].get_xdata()) == [40]
    assert not any(label.startswith("supervised reaches") for label in lines)


def _pm_text(row: dict) -> str:
    """The first number of a row's mean mIoU over time as the table prints it."""
    return f"{row['mean_miou_over_time']:.2f}"
