"""``benchmarks/gain_suite.py``: its datasets, the tuning / held-out rule, the table, diagnose.

Tiny scale: a few images per split, 2-4 training steps of the scratch test model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dualteacher.config import DataConfig, DemoDataConfig
from dualteacher.data import demo, folder
from tests.conftest import TINY

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import gain_suite as gs

SIZES = {"num_labeled": 3, "num_unlabeled": 4, "num_val": 2}
SPLITS = {  # split -> (images, masks) under the dataset directory
    "labeled": ("data/train/images", "data/train/masks"),
    "unlabeled": ("data/unlabeled", "truth/unlabeled"),
    "val": ("data/val/images", "data/val/masks"),
}


def _read(folder_path: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder_path.glob("*.png"))]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Every suite dataset at draw 100, tiny (small_objects at 96 px: still above its crop)."""
    root = tmp_path_factory.mktemp("suite")
    out = {}
    for name, ds in gs.DATASETS.items():
        size = 96 if name == "small_objects" else 32
        out[name] = root / name
        gs.write_dataset(ds, 100, out[name], image_size=size, **SIZES)
    return out


@pytest.mark.parametrize("name", list(gs.DATASETS))
def test_dataset_is_a_folder_layout_with_its_truth_outside_the_root(written, name):
    ds, where = gs.DATASETS[name], written[name]
    for split, (images, masks) in SPLITS.items():
        n = SIZES[f"num_{split}"]
        assert len(list((where / images).glob("*.png"))) == n
        ms = _read(where / masks)
        assert len(ms) == n
        assert all(m.ndim == 2 and m.dtype == np.uint8 and m.max() < len(ds.classes) for m in ms)
        ims = _read(where / images)
        assert all(im.shape == (*m.shape, 3) for im, m in zip(ims, ms))
    doc = yaml.safe_load((where / "data" / "classes.yaml").read_text())
    names = [c if isinstance(c, str) else c["name"] for c in doc["classes"]]
    assert names == ds.classes
    meta = json.loads((where / "dataset.json").read_text())
    assert meta["name"] == name and meta["draw"] == 100 and meta["num_unlabeled"] == 4
    # what the folder dataset reads: the true masks of the unlabelled images are not in it
    bundle = folder.build(DataConfig(name="folder", root=str(where / "data")))
    assert (len(bundle.labeled), len(bundle.unlabeled), len(bundle.val)) == (3, 4, 2)
    read = [*bundle.labeled.entries.iter_images(), *bundle.unlabeled.entries.iter_images()]
    read += list(bundle.val.entries.iter_images())
    assert not any("truth" in Path(p).parts for p in read)
    assert not (where / "truth").resolve().is_relative_to((where / "data").resolve())
    assert bundle.classes == ds.classes


def test_defaults_cover_the_kinds_of_data_the_suite_promises():
    d = gs.DATASETS
    assert len(d) >= 6
    assert all(20 <= ds.num_labeled <= 100 for ds in d.values())
    assert all(ds.num_unlabeled >= 1000 and ds.num_val >= 200 for ds in d.values())
    assert any(len(ds.classes) >= 11 for ds in d.values())  # >= 10 classes besides background
    assert d["scratches"].classes == ["surface", "defect"]  # binary
    small = d["small_objects"]
    crop = int(next(o for o in small.overrides if o.startswith("data.crop_size=")).split("=")[1])
    assert small.image_size > crop  # trained on crops smaller than the image
    # the issue's folder case: shapes in 128 px images, trained on whole images
    s128 = d["shapes128"]
    assert s128.render is d["shapes"].render and s128.num_labeled == 40
    assert s128.image_size == 128 and "data.crop_size=128" in s128.overrides
    assert all(ds.character for ds in d.values())


def test_tuning_and_held_out_draws_are_declared_apart():
    assert set(gs.DRAWS) == {"tuning", "heldout"}
    assert gs.DRAWS["tuning"] and gs.DRAWS["heldout"]
    assert not set(gs.DRAWS["tuning"]) & set(gs.DRAWS["heldout"])
    doc = " ".join(gs.__doc__.lower().replace("**", "").split())
    assert "nothing is ever chosen on a held-out draw" in doc


def test_rare_foreground_is_at_most_five_percent_and_present():
    ds = gs.DATASETS["scratches"]
    masks = [m for _, m in gs.generate(ds, 100, "unlabeled", 60, 64)]
    shares = np.array([(m > 0).mean() for m in masks])
    assert shares.max() <= 0.05
    assert 0.001 < shares.mean() <= 0.05
    assert (shares == 0).any()  # some surfaces have no defect at all


def test_gray_dataset_is_grey_and_the_others_are_not(written):
    for split, (images, _) in SPLITS.items():
        for im in _read(written["gray"] / images):
            assert (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all(), split
    colour = _read(written["shapes"] / "data" / "val" / "images")
    assert any((im[..., 0] != im[..., 1]).any() for im in colour)


def test_shape_classes_are_not_told_by_colour():
    """The shapes' colours are drawn independently of the class: over 300 images the per-class
    mean colours agree within ~15 levels, where the demo's class colours differ by ~50."""

    def spread(name: str) -> float:
        ds = gs.DATASETS[name]
        pairs = list(gs.generate(ds, 100, "labeled", 300, 32))
        means = [
            np.concatenate([im[m == c] for im, m in pairs]).astype(float).mean(0)
            for c in range(1, len(ds.classes))
        ]
        return float(np.ptp(np.array(means), axis=0).max())

    assert spread("shapes") < 25 < 40 < spread("demo")


def test_same_draw_same_bytes_other_draw_other_bytes(written, tmp_path):
    for name, ds in gs.DATASETS.items():
        size = 96 if name == "small_objects" else 32
        again, other = tmp_path / f"{name}_again", tmp_path / f"{name}_other"
        gs.write_dataset(ds, 100, again, image_size=size, **SIZES)
        gs.write_dataset(ds, 101, other, image_size=size, **SIZES)
        files = sorted(p.relative_to(written[name]) for p in written[name].rglob("*.png"))
        assert len(files) == 3 + 3 + 4 + 4 + 2 + 2
        assert all((written[name] / f).read_bytes() == (again / f).read_bytes() for f in files)
        differ = [(written[name] / f).read_bytes() != (other / f).read_bytes() for f in files]
        assert all(differ[i] for i, f in enumerate(files) if "images" in f.parts), name


def test_cached_dataset_is_reused_and_another_is_refused(written):
    ds, where = gs.DATASETS["gray"], written["gray"]
    stamp = (where / "dataset.json").stat().st_mtime_ns
    gs.write_dataset(ds, 100, where, image_size=32, **SIZES)  # same parameters: nothing written
    assert (where / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="other parameters"):
        gs.write_dataset(ds, 100, where, image_size=32, **{**SIZES, "num_val": 3})


def test_demo_row_is_the_demo_data_of_that_seed(written):
    cfg = DemoDataConfig(num_labeled=3, num_unlabeled=4, num_val=2, image_size=32, seed=100)
    images, masks = demo.generate(cfg, "unlabeled")
    assert np.array_equal(np.stack(_read(written["demo"] / "data" / "unlabeled")), images)
    assert np.array_equal(np.stack(_read(written["demo"] / "truth" / "unlabeled")), masks)


# ------------------------------------------------------------------------------ end to end
def _tiny_suite(out, datasets: str, extra=(), steps_dt: int = 2, **kw) -> dict:
    """The tuning suite on tiny images: 2 seeds, supervised 4 steps, Dual Teacher 2."""
    overrides = [o for o in TINY if not o.startswith("data.demo.")] + ["train.eval_every=1"]
    overrides += list(extra)
    sizes = {"image_size": 32, **SIZES}
    return gs.run_suite(
        "tuning", out, seeds=2, datasets=datasets, steps_sup=4, steps_dt=steps_dt,
        overrides=overrides, sizes=sizes, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, _tiny_suite(out, "scratches,shapes")


def test_suite_prints_one_table_and_writes_suite_json(suite, capsys):
    out, result = suite
    doc = json.loads((out / "tuning" / "suite.json").read_text())
    assert doc == json.loads(json.dumps(result))
    assert doc["split"] == "tuning" and doc["draws"] == list(gs.DRAWS["tuning"])
    assert doc["steps"] == {"supervised": 4, "dual_teacher": 2}
    assert [r["dataset"] for r in doc["datasets"]] == ["scratches", "shapes"]
    for r in doc["datasets"]:
        summary = json.loads(Path(r["summary"]).read_text())
        sup, dt = summary["results"]
        assert sup["steps"] == 4 and dt["steps"] == 2  # supervised at twice the steps
        assert r["supervised"]["miou_per_seed"] == sup["miou_per_seed"]
        assert r["dual_teacher"]["miou_per_seed"] == dt["miou_per_seed"]
        d = r["final_vs_final"]
        assert d["per_seed"] == pytest.approx(
            [a - b for a, b in zip(dt["miou_per_seed"], sup["miou_per_seed"])]
        )
        assert d == summary["results"][1]["vs"][sup["method"]]["miou"]  # compare's statistics
        assert r["final_vs_best"]["per_seed"] == pytest.approx(
            [a - b for a, b in zip(dt["miou_per_seed"], sup["best_miou_per_seed"])]
        )
        assert len(d["ci95"]) == 2 and d["ci95"][0] <= d["mean"] <= d["ci95"][1]
        assert Path(r["truth"]).is_dir() and not Path(r["truth"]).is_relative_to(r["root"])
        # per class: DT's final IoU minus supervised's, mean over seeds, in the classes' order
        assert list(r["class_diff"]) == summary["classes"]
        for k, name in enumerate(summary["classes"]):
            pairs = [
                (a[k], b[k])
                for a, b in zip(dt["class_iou_per_seed"], sup["class_iou_per_seed"])
                if a[k] is not None and b[k] is not None
            ]
            want = np.mean([a - b for a, b in pairs]) if pairs else None
            assert r["class_diff"][name] == (None if want is None else pytest.approx(want))
        sd = np.std(dt["miou_per_seed"], ddof=1) / np.std(sup["miou_per_seed"], ddof=1)
        assert r["spread_ratio"] == pytest.approx(sd)
    for key in ("final_vs_final", "final_vs_best"):
        s = doc["suite"][key]
        means = [r[key]["mean"] for r in doc["datasets"]]
        assert s["mean"] == pytest.approx(np.mean(means))
        assert s["n_datasets"] == 2 and s["n_pooled"] == 4 and len(s["ci95"]) == 2
    md = (out / "tuning" / "suite.md").read_text()
    assert "| scratches@100 |" in md and "SUITE MEAN" in md
    table = gs.format_table(doc)
    assert table.count("\n") >= 5 and "shapes@100" in table and "SUITE MEAN (2 datasets)" in table
    worst = min(
        ((v, r["dataset"], c) for r in doc["datasets"] for c, v in r["class_diff"].items()),
        key=lambda t: t[0] if t[0] is not None else np.inf,
    )
    suite_row = next(line for line in table.splitlines() if line.startswith("SUITE MEAN"))
    assert f"{worst[1]}: {worst[2]} {worst[0]:+.1f}" in suite_row
    assert table.splitlines()[-5:] == ["Against the bar:", *gs.against_the_bar(doc)]
    assert "\n".join(gs.against_the_bar(doc)) in md


def test_table_prints_a_finished_suite_again(suite, capsys, tmp_path):
    out, result = suite
    capsys.readouterr()
    assert gs.main(["table", str(out / "tuning" / "suite.json")]) == json.loads(json.dumps(result))
    assert capsys.readouterr().out == gs.format_table(result) + "\n"
    with pytest.raises(SystemExit, match="no such file"):
        gs.main(["table", str(tmp_path / "suite.json")])


def test_against_the_bar_names_what_misses_it():
    """Each line of the bar, on rows just either side of its threshold."""

    def row(name, lo, drop, ratio):
        d = {"mean": lo + 1.0, "ci95": [lo, lo + 2.0], "per_seed": [lo + 1.0]}
        return {
            "dataset": name, "draw": 7, "final_vs_best": d, "spread_ratio": ratio,
            "class_diff": {"bg": 1.0, "rare": drop, "gone": None},
        }  # fmt: skip

    rows = [row("a", 0.1, -5.1, 1.6), row("b", -0.1, -4.9, 1.4), row("c", 0.5, -2.0, None)]
    result = {"datasets": rows, "suite": {"final_vs_best": {"mean": 2.9}}}
    lines = gs.against_the_bar(result)
    assert lines[0].startswith("- DT final above sup best, 95 % interval above 0: 2 of 3")
    assert "(a@7, c@7); not: b@7 +0.90 [-0.10, +1.90]" in lines[0]
    assert lines[1] == "- suite mean of DT final - sup best: +2.90 (below the bar of +3)"
    assert lines[2] == "- classes more than 5 points below sup final: a@7: rare -5.1"
    assert lines[3] == "- std DT / sup final above 1.5x: a@7 1.6x"
    result["suite"]["final_vs_best"]["mean"] = 3.0
    assert gs.against_the_bar(result)[1].endswith("(meets the bar of +3)")


def test_suite_run_in_turns_keeps_every_datasets_row(suite, capsys):
    """A rerun of some datasets into the same ``--out`` with the same settings reuses their
    runs and keeps the other datasets' rows; another setting's table is replaced, and said."""
    out, result = suite
    again = _tiny_suite(out, "shapes")  # every run reused: nothing trains
    assert [r["dataset"] for r in again["datasets"]] == ["scratches", "shapes"]
    assert again["datasets"] == json.loads(json.dumps(result["datasets"]))
    assert again["suite"] == json.loads(json.dumps(result["suite"]))
    path = out / "tuning" / "suite.json"
    settings = {k: again[k] for k in ("split", "steps", "overrides")}
    rows = [again["datasets"][1]]
    assert gs.merge_rows(path, settings, rows) == again["datasets"]
    assert gs.merge_rows(path, {**settings, "steps": {"supervised": 8}}, rows) == rows
    assert "holds a table of other settings" in capsys.readouterr().out


def test_worst_class_and_spread_ratio_by_hand():
    dt = {"class_iou_per_seed": [[50.0, 10.0, None], [52.0, 20.0, None]]}
    sup = {"class_iou_per_seed": [[40.0, 18.0, 5.0], [44.0, 20.0, None]]}
    diff = gs.class_differences(["a", "b", "c"], dt, sup)
    assert diff == {"a": pytest.approx(9.0), "b": pytest.approx(-4.0), "c": None}
    assert gs.worst_class(diff) == ("b", pytest.approx(-4.0))
    assert gs.worst_class({"c": None}) is None
    assert gs.spread_ratio([1.0, 3.0], [2.0, 3.0]) == pytest.approx(2.0)
    assert gs.spread_ratio([1.0, 3.0], [2.0, 2.0]) == float("inf")
    assert gs.spread_ratio([1.0], [2.0]) is None


def test_suite_rejects_an_unknown_split_or_dataset(tmp_path):
    with pytest.raises(SystemExit, match="choose one of"):
        gs.run_suite("test", tmp_path)
    with pytest.raises(SystemExit, match="unknown dataset"):
        gs.run_suite("tuning", tmp_path, datasets="shapes,nope")


def _same(got, expected) -> None:
    assert got is None if expected is None else got == pytest.approx(expected)


def test_diagnose_compares_pseudo_labels_with_the_truth(suite):
    import torch

    from dualteacher.serving.segmenter import load_segmenter

    _, result = suite
    row = next(r for r in result["datasets"] if r["dataset"] == "shapes")
    run_dir = Path(row["summary"]).parent / "dual_teacher_seed0"
    # independent check of the student's numbers: predictions of the same checkpoint
    truth = np.stack(_read(Path(row["truth"]) / "unlabeled"))
    seg = load_segmenter(run_dir / "latest.pt", models="all", device="cpu")
    images = [np.array(Image.open(p)) for p in sorted(Path(row["root"], "unlabeled").glob("*"))]
    with torch.no_grad():
        prob = seg.logits(seg.to_input(images), "student").softmax(1)
    conf, pred = (t.numpy() for t in prob.max(1))
    # a threshold at which about half of the pixels are confident (after 2 steps, hardly any
    # pixel reaches the run's 0.95)
    thresh = float(np.median(conf))
    d = gs.diagnose(run_dir, row["truth"], conf_thresh=thresh)
    classes = gs.DATASETS["shapes"].classes
    assert d["classes"] == classes and d["images"] == 4 and d["step"] == 2
    assert set(d["models"]) == {"student", "teacher_a", "teacher_b"}
    assert d["conf_thresh"] == thresh
    expected = np.bincount(truth.ravel(), minlength=len(classes)) / truth.size * 100
    assert list(d["truth_balance"].values()) == pytest.approx(expected)
    st = d["models"]["student"]
    confident = conf >= thresh
    for c, name in enumerate(classes):
        tp = ((pred == c) & (truth == c)).sum()
        union = ((pred == c) | (truth == c)).sum()
        _same(st["iou"][name], 100 * tp / union if union else None)
        share = 100 * (pred == c).mean()
        assert st["balance"]["pseudo"][name] == pytest.approx(share)
        true_c = truth == c
        ratio = 100 * confident[true_c].mean() if true_c.any() else None
        _same(st["confident_ratio_by_true_class"][name], ratio)
        said_c = confident & (pred == c)
        precision = 100 * (truth[said_c] == c).mean() if said_c.any() else None
        _same(st["confident"]["precision"][name], precision)
        confident_share = 100 * said_c.sum() / confident.sum()
        assert st["balance"]["confident_pseudo"][name] == pytest.approx(confident_share)
        # the other class that takes most of the truly-c pixels, and their percent
        taken = np.bincount(pred[true_c], minlength=len(classes)).astype(float)
        taken[c] = 0
        if taken.max() > 0:
            other, pct = st["confused_with"][name]
            assert pct == pytest.approx(100 * taken.max() / true_c.sum())
            assert taken[classes.index(other)] == taken.max() and other != name
        else:
            assert st["confused_with"][name] is None
    assert st["confident_share"] == pytest.approx(100 * confident.mean())
    assert 30 < st["confident_share"] < 70
    with torch.no_grad():
        pred_a = seg.logits(seg.to_input(images), "teacher_a").argmax(1).numpy()
    assert d["models"]["teacher_a"]["agreement_with_student"] == pytest.approx(
        100 * (pred_a == pred).mean()
    )
    assert "agreement_with_student" not in st
    # by default the run's own threshold (method.conf_thresh)
    default = gs.diagnose(run_dir, row["truth"], models="student")
    assert default["conf_thresh"] == seg.cfg.method.conf_thresh == 0.95
    assert list(default["models"]) == ["student"]
    text = gs.format_diagnosis(d)
    assert all(f"  {c} " in text for c in classes) and "teacher_b: pseudo-label mIoU" in text


def test_panel_follows_one_class_through_checkpoints(suite, tmp_path, capsys):
    import torch

    from dualteacher.serving.segmenter import load_segmenter

    _, result = suite
    row = next(r for r in result["datasets"] if r["dataset"] == "shapes")
    runs = Path(row["summary"]).parent
    sources = {"dt": runs / "dual_teacher_seed0", "sup": next(runs.glob("supervised*_seed1"))}
    classes = gs.DATASETS["shapes"].classes
    val = Path(row["root"], "val")
    names = sorted(p.stem for p in (val / "masks").glob("*.png"))
    masks = np.stack(_read(val / "masks"))
    images = [np.array(Image.open(val / "images" / f"{n}.png").convert("RGB")) for n in names]
    # the object class in the most validation images (the tiny draw has few)
    c = 1 + int(np.argmax([((masks == k).sum((1, 2)) > 0).sum() for k in range(1, len(classes))]))
    cls = classes[c]
    out = tmp_path / "panel.png"
    r = gs.class_panel(row["root"], sources, cls, out, n=2)
    # the two images with the most pixels of cls, most first
    per_image = (masks == c).sum((1, 2))
    assert r["images"] == [names[i] for i in np.argsort(-per_image, kind="stable")[:2]]
    assert per_image[names.index(r["images"][0])] >= per_image[names.index(r["images"][1])] > 0
    assert Image.open(out).size[0] > 0
    for label, source in sources.items():
        seg = load_segmenter(source / "latest.pt", models="student", device="cpu")
        with torch.no_grad():
            pred = seg.logits(seg.to_input(images), "student").argmax(1).numpy()
        tp, true, said = ((pred == c) & (masks == c)).sum(), (masks == c).sum(), (pred == c).sum()
        got = r["checkpoints"][label]
        _same(got["iou"], 100 * tp / (true + said - tp) if true + said else None)
        _same(got["recall"], 100 * tp / true if true else None)
        _same(got["precision"], 100 * tp / said if said else None)
        lost = np.bincount(pred[(masks == c) & (pred != c)], minlength=len(classes))
        if lost.any():
            assert got["confused_with"] == [
                classes[int(lost.argmax())],
                pytest.approx(100 * lost.max() / true),
            ]
    with pytest.raises(SystemExit, match="no class 'moon'"):
        gs.class_panel(row["root"], sources, "moon", out)
    with pytest.raises(SystemExit):
        gs.main(["panel", str(sources["dt"]), str(sources["dt"]), "--data", row["root"],
                 "--class", cls, "--out", str(out)])  # fmt: skip
    assert "two checkpoints labelled 'dual_teacher_seed0'" in capsys.readouterr().err
    r = gs.main(["panel", f"a={sources['dt']}", "--data", row["root"], "--class", cls,
                 "--out", str(tmp_path / "cli.png"), "--n", "1"])  # fmt: skip
    assert len(r["images"]) == 1 and (tmp_path / "cli.png").is_file()
    assert f"{cls} on the validation images" in capsys.readouterr().out


def test_warm_start_suite_measures_dual_teacher_against_supervised_continued(tmp_path):
    """``--warm-start``: Dual Teacher and supervised both continue from supervised's final
    checkpoint of the same seed; the paired difference is against the continued supervised
    run, and "sup best" is per seed the best of either supervised run."""
    result = _tiny_suite(tmp_path, "shapes", warm_start=True)
    assert result["methods"] == [
        "supervised:2.0x",
        "dual_teacher@supervised:2.0x",
        "supervised@supervised:2.0x",
    ]
    (row,) = result["datasets"]
    first, dt, cont = json.loads(Path(row["summary"]).read_text())["results"]
    assert row["supervised"]["miou_per_seed"] == cont["miou_per_seed"]
    assert row["final_vs_final"]["per_seed"] == pytest.approx(
        [a - b for a, b in zip(dt["miou_per_seed"], cont["miou_per_seed"])]
    )
    best = [max(a, b) for a, b in zip(first["best_miou_per_seed"], cont["best_miou_per_seed"])]
    assert row["final_vs_best"]["per_seed"] == pytest.approx(
        [a - b for a, b in zip(dt["miou_per_seed"], best)]
    )
    assert "warm start" in (tmp_path / "tuning" / "suite.md").read_text()

    # --supervised-from: a Dual Teacher setting screened against the very same supervised runs
    runs = tmp_path / "tuning" / "shapes_draw100"
    sources = sorted(runs.glob("supervised*/latest.pt"))
    assert len(sources) == 4  # first and continued runs, two seeds
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sources}
    other = _tiny_suite(
        tmp_path / "b",
        "shapes",
        warm_start=True,
        supervised_from=tmp_path,
        extra=["method.dual_teacher.ic_weight=0.5"],
    )
    (row_b,) = other["datasets"]
    assert row_b["supervised"]["miou_per_seed"] == row["supervised"]["miou_per_seed"]
    assert row_b["supervised_best_per_seed"] == row["supervised_best_per_seed"]
    copied = tmp_path / "b" / "tuning" / "shapes_draw100"
    for src, (mtime, data) in stamps.items():
        assert (src.stat().st_mtime_ns, src.read_bytes()) == (mtime, data)  # source untouched
        assert (copied / src.parent.name / "latest.pt").read_bytes() == data  # not retrained
    dt_b = json.loads(Path(row_b["summary"]).read_text())["results"][1]
    assert dt_b["run_dirs"][0].startswith(str(copied))  # Dual Teacher trained anew there

    # another Dual Teacher budget (ratio 4x, not 2x): the same first supervised runs, renamed
    longer = _tiny_suite(tmp_path / "c", "shapes", warm_start=True, supervised_from=tmp_path,
                         steps_dt=1)  # fmt: skip
    (row_c,) = longer["datasets"]
    assert longer["methods"][0] == "supervised:4.0x"
    first_c = json.loads(Path(row_c["summary"]).read_text())["results"][0]
    first_a = json.loads(Path(row["summary"]).read_text())["results"][0]
    assert first_c["miou_per_seed"] == first_a["miou_per_seed"]
    runs_c = tmp_path / "c" / "tuning" / "shapes_draw100"
    for seed in (0, 1):
        src = runs / f"supervised_2x_seed{seed}" / "latest.pt"
        assert (runs_c / f"supervised_4x_seed{seed}" / "latest.pt").read_bytes() == stamps[src][1]
    # the 2x continued runs are of another length: not copied, the 4x ones trained there
    assert sorted(d.name for d in runs_c.glob("supervised_from_*")) == [
        "supervised_from_supervised_4x_seed0",
        "supervised_from_supervised_4x_seed1",
    ]
