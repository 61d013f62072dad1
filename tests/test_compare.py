"""``dualteacher compare``, the time budget, ``configs`` and every command's ``--help``."""

import json

import pytest
from PIL import Image

from dualteacher.checkpoint import load_checkpoint
from dualteacher.cli import build_parser, main
from dualteacher.config import load_config
from dualteacher.errors import ConfigError
from dualteacher.plots import read_metrics
from dualteacher.study.compare import RunSpec, paired_difference, parse_run_specs
from dualteacher.study.train import train

from .conftest import TINY


def test_paired_difference_uses_students_t():
    d = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 1.0])  # differences 2, 3, 3
    assert d["per_seed"] == [2.0, 3.0, 3.0]
    assert d["mean"] == pytest.approx(8 / 3) and d["std"] == pytest.approx(0.57735, abs=1e-5)
    half = 4.302653 * 0.57735 / 3**0.5  # t(0.975, df=2), not the normal 1.96
    assert d["ci95"] == pytest.approx([8 / 3 - half, 8 / 3 + half], abs=1e-4)
    one = paired_difference([3.0], [1.0])
    assert one["mean"] == 2.0 and one["std"] is None and one["ci95"] is None


def test_run_specs_with_budget_multipliers():
    specs = parse_run_specs(["supervised", "supervised:3x", "dual_teacher:0.5x"])
    assert specs == [
        RunSpec("supervised"),
        RunSpec("supervised", 3.0),
        RunSpec("dual_teacher", 0.5),
    ]
    assert [s.label for s in specs] == ["supervised", "supervised:3x", "dual_teacher:0.5x"]
    assert [s.dirname for s in specs] == ["supervised", "supervised_3x", "dual_teacher_0.5x"]
    for bad in (["supervised:0x"], ["supervised:abc"], ["supervised:-2x"], ["a", "a:1x"]):
        with pytest.raises(ConfigError):
            parse_run_specs(bad)


def test_compare_two_methods_two_seeds(tmp_path, capsys):
    out = tmp_path / "cmp"
    quick = ["train.eval_every=1"]
    budget = ["--steps", "2", "--seeds", "2", "--out", str(out)]
    methods = "supervised,supervised:2x,dual_teacher"
    # overrides may come before and after the options
    main(["compare", "demo", *TINY, "--methods", methods, *budget, *quick])
    printed = capsys.readouterr().out
    assert "dual_teacher - supervised:2x: final" in printed
    summary = json.loads((out / "summary.json").read_text())
    labels = [r["method"] for r in summary["results"]]
    assert labels == ["supervised", "supervised:2x", "dual_teacher"]
    assert summary["budget"] == {"steps": 2} and summary["seeds"] == [0, 1]
    sup, sup2, dt = summary["results"]
    assert sup2["steps"] == 4 and sup2["budget_mult"] == 2 and sup2["base_method"] == "supervised"
    assert set(dt["vs"]) == {"supervised", "supervised:2x"}
    # supervised rows: each against the supervised rows above it, not both ways
    assert set(sup["vs"]) == set() and set(sup2["vs"]) == {"supervised"}
    for ref in (sup, sup2):
        for key in ("miou", "best_miou"):
            d = dt["vs"][ref["method"]][key]
            expected = [a - b for a, b in zip(dt[f"{key}_per_seed"], ref[f"{key}_per_seed"])]
            assert d["per_seed"] == pytest.approx(expected)
            assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    for r in (sup, dt):
        assert {"method", "miou", "best_miou", "seconds"} <= set(r)  # the demo's keys
        assert r["steps"] == 2 and len(r["miou_per_seed"]) == 2
        assert r["miou"] == pytest.approx(sum(r["miou_per_seed"]) / 2)
        assert r["best_miou"] >= r["miou"] - 1e-9 and r["miou_std"] >= 0
        assert r["step_seconds"] > 0 and r["peak_memory_mb"] > 50 and r["memory_kind"]
        for d in r["run_dirs"]:
            assert load_checkpoint(f"{d}/latest.pt")["step"] == 2
    # time to accuracy: against the supervised row of the larger budget, one time per seed
    tta = summary["time_to_accuracy"]
    assert tta["reference"] == "supervised:2x" and tta["target_miou"] == sup2["best_miou"]
    assert len(dt["time_to_target_per_seed"]) == 2 and "time to target" in printed
    teachers = dt["final_miou_teachers"]
    assert set(teachers) == {"teacher_a", "teacher_b"}
    md = (out / "summary.md").read_text()
    assert "| supervised |" in md and "| dual_teacher |" in md and " ± " in md
    assert "| dual_teacher | supervised:2x |" in md and "Student's t" in md
    assert "2 steps per run" in md and "over 2 seeds" in md
    assert (out / "supervised_2x_seed1" / "latest.pt").is_file()
    plot = Image.open(out / "miou_vs_time.png")
    plot.load()
    assert plot.size == (640, 420)


def test_time_budget_stops_with_validation_and_checkpoint(tmp_path):
    budget = ["train.steps=50", "train.max_minutes=1e-9", "train.curves=true"]
    cfg = load_config("demo", [*TINY, *budget, f"train.out_dir={tmp_path}"])
    result = train(cfg)
    assert result.steps == 1 and result.stopped_by_time  # the first step used the budget up
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 1
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "miou_student" in r] == [
        1
    ]
    assert (tmp_path / "curves.png").is_file()


def test_compare_minutes_sets_steps_from_a_probe(tmp_path):
    out = tmp_path / "cmp"
    budget = ["--minutes", "0.005", "--out", str(out)]
    main(["compare", "demo", *TINY, "--methods", "supervised", *budget])
    (row,) = json.loads((out / "summary.json").read_text())["results"]
    assert row["probe_step_seconds"] > 0
    # 0.3 s of budget: the probe's estimate, or fewer steps if the run was slower
    assert row["planned_steps"] == max(1, int(0.3 / row["probe_step_seconds"]))
    assert 1 <= row["steps"] <= row["planned_steps"]
    assert row["stopped_by_time"] == [row["steps"] < row["planned_steps"]]


def test_configs_lists_builtin_configs(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    assert "demo" in out and "The CPU demo" in out


def test_every_command_has_help_with_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "eval", "demo", "predict", "compare", "configs"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert "example" in p.format_help() and "dualteacher " + name in p.format_help(), name


def test_compare_checks_every_method_before_training_any(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "demo", *TINY, "--methods", "supervised,dual_teacher,mean_teachr"]
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown method(s) mean_teachr" in err
    assert "nothing was trained" in err and not out.exists()  # before: 2 runs trained first


def test_compare_rerun_keeps_the_measured_figures_of_finished_runs(tmp_path, monkeypatch):
    import dualteacher.engine.trainer as trainer

    out = tmp_path / "cmp"
    args = ["compare", "demo", *TINY, "--methods", "supervised", "--out", str(out)]

    def row():
        return json.loads((out / "summary.json").read_text())["results"][0]

    main([*args, "--steps", "2"])
    first = row()
    # a re-run only validates the finished run: what it measures now is not the training's
    monkeypatch.setattr(trainer, "peak_memory_mb", lambda device, kind: 1.0)
    main([*args, "--steps", "2"])
    assert row()["peak_memory_mb"] == first["peak_memory_mb"] > 50
    assert row()["seconds"] == first["seconds"]
    # another budget is refused (issue 27); --fresh trains it again: measured again
    main([*args, "--steps", "3", "--fresh"])
    assert row()["steps"] == 3 and row()["peak_memory_mb"] == 1.0


def test_compare_says_before_training_that_a_method_lacks_unlabelled_images(tmp_path, capsys):
    from . import trees

    root = trees.make_folder(tmp_path, n_unlabeled=0)
    (root / "train" / "images" / "nomask.png").unlink()  # no unlabelled image left
    out = tmp_path / "cmp"
    args = ["compare", "demo", *TINY, "data.name=folder", f"data.root={root}", "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main([*args, "--methods", "supervised,dual_teacher"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unlabelled set of data.name=folder is empty" in err
    assert "dual_teacher train(s) on unlabelled images" in err and not out.exists()


# ------------------------------------------------------------ budgets with every kind of config
# compare's probe and bench build their runs where train does (engine.run.build_training);
# these failed when each had its own copy of the set-up.


def test_compare_minutes_with_a_method_of_two_strong_views(tmp_path, capsys):
    """UniMatch needs image_s and image_s2; the probe's loaders gave one strong view."""
    out = tmp_path / "cmp"
    main(
        ["compare", "demo", *TINY, "--methods", "unimatch", "--minutes", "0.002", "--out", str(out)]
    )
    (row,) = json.loads((out / "summary.json").read_text())["results"]
    assert row["method"] == "unimatch" and row["probe_step_seconds"] > 0 and row["steps"] >= 1


def test_compare_minutes_with_epochs_over_the_unlabelled_set(tmp_path):
    """The probe counted an epoch without the unlabelled set ("the unlabelled set is empty")."""
    out = tmp_path / "cmp"
    cfg = [*TINY, "train.epoch_unit=unlabeled", "train.epochs=3"]
    main(
        [
            "compare",
            "demo",
            *cfg,
            "--methods",
            "supervised",
            "--minutes",
            "0.002",
            "--out",
            str(out),
        ]
    )
    (row,) = json.loads((out / "summary.json").read_text())["results"]
    assert row["planned_steps"] == max(1, int(0.12 / row["probe_step_seconds"]))
    assert 1 <= row["steps"] <= row["planned_steps"]


def test_compare_steps_replace_the_config_epochs(tmp_path, capsys):
    """--steps 3 with train.epochs=2 (8 labelled images, batch 2: 4 steps per epoch) ran 8."""
    out = tmp_path / "cmp"
    main(["compare", "demo", *TINY, "train.epochs=2", "--methods", "supervised", "--steps", "3",
          "--out", str(out)])  # fmt: skip
    (row,) = json.loads((out / "summary.json").read_text())["results"]
    assert row["steps"] == 3 and row["planned_steps"] == 3
    assert load_checkpoint(out / "supervised" / "latest.pt")["step"] == 3
    assert "--steps 3 sets the length of every run: train.epochs=2 is not used" in (
        capsys.readouterr().out
    )


def test_compare_without_a_budget_runs_the_config_epochs(tmp_path):
    out = tmp_path / "cmp"
    main(["compare", "demo", *TINY, "train.epochs=1", "--methods", "supervised", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == {"steps": 4, "epochs": 1}  # 8 labelled / batch 2
    assert summary["results"][0]["steps"] == 4
    assert "4 steps per run (1 epochs)" in (out / "summary.md").read_text()


def test_compare_jobs_trains_the_same_runs_in_worker_processes(tmp_path, capsys):
    from dualteacher.study.compare import RUN_LOG, compare

    cfg = load_config("demo", [*TINY, "train.threads=1", "train.eval_every=1"])
    methods = ["supervised", "dual_teacher"]
    one = compare(cfg, methods, tmp_path / "one", steps=2)
    capsys.readouterr()
    two = compare(cfg, methods, tmp_path / "two", steps=2, jobs=2)
    printed = capsys.readouterr().out
    # the costlier run starts first, so that no slot idles while it trains alone at the end
    assert printed.index("started dual_teacher") < printed.index("started supervised")
    assert two["jobs"] == 2 and one["jobs"] == 1
    for a, b in zip(one["results"], two["results"]):
        # the same run in a worker process: the same numbers, not just a number
        assert a["miou_per_seed"] == b["miou_per_seed"]
        assert a["best_miou_per_seed"] == b["best_miou_per_seed"]
        assert b["steps"] == 2
    for name in methods:
        log = (tmp_path / "two" / name / RUN_LOG).read_text()
        assert "done: 2 steps" in log  # the worker trained it and said so in its log
        assert not (tmp_path / "one" / name / RUN_LOG).exists()
    assert "2 at a time" in (tmp_path / "two" / "summary.md").read_text()


def test_compare_jobs_reports_a_failed_worker_and_keeps_the_others(tmp_path):
    from dualteacher.errors import RunsFailed
    from dualteacher.study.compare import BUDGET_FILE, compare, run_budget

    cfg = load_config("demo", [*TINY, "train.threads=1"])
    out = tmp_path / "cmp"
    (out / "supervised").mkdir(parents=True)
    (out / "supervised" / "latest.pt").write_bytes(b"not a checkpoint")
    # recorded as planned for this budget, so that its worker tries (and fails) to resume it
    # (without the record, compare refuses the unreadable run before any worker starts)
    budget = run_budget(load_config("demo", [*TINY, "train.steps=2"]), by_time=False)
    (out / "supervised" / BUDGET_FILE).write_text(json.dumps({"budget": budget}))
    with pytest.raises(RunsFailed) as err:
        compare(
            cfg, ["supervised", "dual_teacher", "mean_teacher@supervised"], out, steps=2, jobs=2
        )
    text = str(err.value)
    assert "2 of 3 runs failed: supervised, mean_teacher@supervised" in text.replace(
        "mean_teacher_from_supervised", "mean_teacher@supervised"
    )
    assert "latest.pt" in text and "train.log" in text
    assert (out / "dual_teacher" / "result.json").is_file()  # the other run finished
    # the run that starts from the failed one was not started at all
    assert not (out / "mean_teacher_from_supervised" / "train.log").exists()


def test_compare_jobs_refuses_a_time_budget(tmp_path):
    from dualteacher.study.compare import compare

    cfg = load_config("demo", TINY)
    with pytest.raises(ConfigError, match="--jobs 2 with --minutes"):
        compare(cfg, ["supervised"], tmp_path / "cmp", minutes=0.1, jobs=2)
    assert not (tmp_path / "cmp").exists()


def test_run_specs_with_a_warm_start():
    specs = parse_run_specs(["supervised:2x", "dual_teacher@supervised:2x"])
    assert specs[1] == RunSpec("dual_teacher", 1.0, "supervised:2x")
    assert specs[1].label == "dual_teacher@supervised:2x"
    assert specs[1].dirname == "dual_teacher_from_supervised_2x"
    # the source must be a row of the list that starts from scratch
    for bad in (
        ["dual_teacher@supervised"],  # no supervised row
        ["supervised", "mean_teacher@supervised", "dual_teacher@mean_teacher@supervised"],
        ["supervised", "dual_teacher@"],
    ):
        with pytest.raises(ConfigError):
            parse_run_specs(bad)
    with pytest.raises(ConfigError, match="--methods supervised:3x,dual_teacher@supervised:3x"):
        parse_run_specs(["supervised", "dual_teacher@supervised:3x"])


@pytest.mark.parametrize("jobs", [1, 2])
def test_compare_warm_start_row_starts_from_its_seeds_source_run(tmp_path, jobs, capsys):
    """``dual_teacher@supervised:2x``: each seed's Dual Teacher run is initialised from the
    final checkpoint of the supervised run of the same seed (listed after it: trained after it),
    its own budget, and its time to accuracy counts the source's training seconds first."""
    from dualteacher.study.compare import compare

    cfg = load_config("demo", [*TINY, "train.threads=1", "train.eval_every=1"])
    out = tmp_path / "cmp"
    methods = ["dual_teacher@supervised:2x", "supervised:2x"]  # the source listed second
    seeds = [0, 1]  # the slot order over more seeds: test_parallel_slots_take_sources_first
    summary = compare(cfg, methods, out, seeds=seeds, steps=2, jobs=jobs)
    warm, sup = summary["results"]
    assert warm["method"] == "dual_teacher@supervised:2x" and warm["steps"] == 2
    assert sup["steps"] == 4
    for seed in seeds:
        source = out / f"supervised_2x_seed{seed}" / "latest.pt"
        ckpt = load_checkpoint(out / f"dual_teacher_from_supervised_2x_seed{seed}" / "latest.pt")
        init = ckpt["config"]["train"]["init_from"]
        assert init == str(source)
        assert ckpt["init_from"]["step"] == 4  # the source's final step
    assert sum(warm["start_seconds_per_seed"]) / len(seeds) == pytest.approx(sup["seconds"])
    assert set(warm["vs"]) == {"supervised:2x"}
    assert "A row `A@B` starts each seed" in (out / "summary.md").read_text()
    if jobs == 2:  # each warm run starts after its own source, in the worker processes too
        printed = capsys.readouterr().out
        for seed in seeds:
            done = printed.index(f"finished supervised_2x_seed{seed}")
            assert printed.index(f"started dual_teacher_from_supervised_2x_seed{seed}") > done


def test_parallel_slots_take_sources_first(tmp_path, monkeypatch, capsys):
    """``_train_in_parallel``'s order, with workers that only sleep (the training itself is
    pinned above): a warm run starts once its own source has finished, and a free slot takes
    a source run before any warm run, so the third seed's source does not wait behind them."""
    import subprocess
    import sys

    from dualteacher.study import compare as cmp

    real_popen = subprocess.Popen

    def sleeper(cmd, **kw):  # the run's name in the command line, then a short sleep
        return real_popen([sys.executable, "-c", "import time; time.sleep(0.6)"], **kw)

    monkeypatch.setattr(cmp.subprocess, "Popen", sleeper)
    base = load_config("demo", TINY)
    todo, needs = [], {}
    for seed in (0, 1, 2):
        for name, method, source in (
            (f"dt_seed{seed}", "dual_teacher", f"sup_seed{seed}"),  # listed first, costlier
            (f"sup_seed{seed}", "supervised", None),
        ):
            todo.append((name, _with_dir(base, method, tmp_path / name)))
            if source:
                needs[name] = source
    cmp._train_in_parallel(todo, 2, tmp_path, needs)
    printed = capsys.readouterr().out
    for seed in (0, 1, 2):
        done = printed.index(f"finished sup_seed{seed}")
        assert printed.index(f"started dt_seed{seed}") > done
    assert printed.index("started sup_seed2") < printed.index("started dt_")
    assert printed.count("started ") == 6 and "FAILED" not in printed


def _with_dir(cfg, method: str, out_dir):
    from dataclasses import replace

    return replace(
        cfg,
        method=replace(cfg.method, name=method),
        train=replace(cfg.train, out_dir=str(out_dir)),
    )


def test_run_curves_count_the_source_runs_seconds_first():
    from types import SimpleNamespace

    from dualteacher.study.compare import run_curves

    def run(*points):
        return SimpleNamespace(history=[{"time": t, "miou_student": m} for t, m in points])

    runs = {"supervised": [run((1, 10), (2, 20))], "dt@supervised": [run((1, 30))]}
    results = [{"method": "supervised"}, {"method": "dt@supervised", "start_seconds_per_seed": [5]}]
    curves = run_curves(runs, results)
    assert curves == {"supervised": [[(1, 10), (2, 20)]], "dt@supervised": [[(6, 30)]]}
