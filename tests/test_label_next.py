"""``dualteacher suggest``, ``pseudolabel`` and ``demo-data``, and the label_next benchmark."""

import csv
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import dualteacher
from dualteacher.cli import main
from dualteacher.config import DemoDataConfig, load_config
from dualteacher.data import build_data
from dualteacher.data.annotations import Prediction, labelstudio_task
from dualteacher.data.demo import CLASSES, PALETTE, generate, write_demo_folder
from dualteacher.data.transforms import normalize
from dualteacher.engine.evaluate import predict_logits
from dualteacher.engine.trainer import train
from dualteacher.errors import ConfigError, DataError
from dualteacher.plots import SAMPLE_CELL
from dualteacher.serving.suggest import (
    combined_score,
    percentile_rank,
    ranking_order,
    rarity_weights,
    scoring_models,
)
from dualteacher.serving.trained import build_model_from_checkpoint

from .conftest import TINY

CELL_PX = round(SAMPLE_CELL * 100)  # plot_samples draws at 100 dpi
DEMO = DemoDataConfig(num_labeled=8, num_unlabeled=16, num_val=6, image_size=32)


def _train(root, *extra):
    train(load_config("demo", [*TINY, "train.steps=2", *extra, f"train.out_dir={root}"]))
    return root / "latest.pt"


@pytest.fixture(scope="module")
def dt_ckpt(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("dt"))


@pytest.fixture(scope="module")
def sup_ckpt(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("sup"), "method.name=supervised")


@pytest.fixture(scope="module")
def mt_ckpt(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mt"), "method.name=mean_teacher")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@functools.cache
def _trained(ckpt):
    return build_model_from_checkpoint(ckpt)


def _probs(ckpt, image: np.ndarray, model: str) -> np.ndarray:
    """(K, H, W) softmax of one model on one image, computed outside the code under test."""
    trained = _trained(ckpt)
    x = normalize(trained.cfg.data)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)))
    net = trained.models(model)[model]
    logits = predict_logits(net, x.as_subclass(torch.Tensor)[None], trained.cfg.eval, 5)
    return torch.softmax(logits, 1)[0].numpy().astype(np.float64)


# ------------------------------------------------------------------------- pure functions
def test_percentile_rank_ties_and_combined_formula():
    assert percentile_rank(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert percentile_rank(np.array([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]
    scores = {
        "sym_kl": np.array([0.1, 0.3, 0.2]),  # ranks 0, 1, 0.5
        "uncertainty": np.array([0.5, 0.4, 0.6]),  # ranks 0.5, 0, 1
        "rarity": np.array([0.9, 0.1, 0.5]),  # ranks 1, 0, 0.5
    }
    np.testing.assert_allclose(combined_score(scores, (1, 1, 1)), [0.5, 1 / 3, 2 / 3])
    np.testing.assert_allclose(combined_score(scores, (2, 0, 1)), [1 / 3, 2 / 3, 0.5])
    del scores["sym_kl"]  # a single model: uncertainty and rarity only, w_d unused
    np.testing.assert_allclose(combined_score(scores, (5, 1, 1)), [0.75, 0.0, 0.75])


def test_ranking_order_breaks_ties_by_name():
    assert ranking_order(["b", "a", "c", "d"], np.array([0.5, 0.5, 0.9, 0.1])) == [2, 1, 0, 3]


def test_rarity_weights():
    r = rarity_weights(np.array([600.0, 100.0, 300.0, 0.0]))
    assert r[0] == 0.0 and r[3] == 1.0  # most common 0, never labelled the rarest
    np.testing.assert_allclose(r[1], np.log(0.6 / (1 / 10)) / np.log(0.6 / 1e-4))
    assert rarity_weights(np.array([1.0, 1.0])).tolist() == [0.0, 0.0]


def test_scoring_models():
    assert scoring_models(["student", "teacher_a", "teacher_b"]) == (
        ("teacher_a", "teacher_b"),
        "student",
    )
    assert scoring_models(["student", "teacher"]) == (("student", "teacher"), "student")
    assert scoring_models(["student"]) == (None, "student")


# ------------------------------------------------------------------------------- suggest
def test_suggest_scores_and_ranks_every_unlabelled_image_once(dt_ckpt, tmp_path, capsys):
    out = tmp_path / "next"
    main(["suggest", str(dt_ckpt), "--top", "3", "--out", str(out)])
    assert "ranked 16 image(s)" in capsys.readouterr().out
    rows = _read_csv(out / "ranking.csv")
    assert list(rows[0]) == [
        "rank", "name", "path", "disagreement", "sym_kl", "uncertainty", "rarity", "combined"
    ]  # fmt: skip
    names = [r["name"] for r in rows]
    assert sorted(names) == [f"unlabeled_{i:05d}" for i in range(16)]  # each image once
    assert [int(r["rank"]) for r in rows] == list(range(1, 17))
    key = [(-float(r["combined"]), r["name"]) for r in rows]
    assert key == sorted(key)
    assert (out / "top.txt").read_text().split() == names[:3]

    # Scores recomputed here from the models' softmax, for one image.
    images, _ = generate(DEMO, "unlabeled")
    row = rows[5]
    image = images[int(row["name"].split("_")[1])]
    pa, pb, ps = (_probs(dt_ckpt, image, m) for m in ("teacher_a", "teacher_b", "student"))
    sym_kl = 0.5 * ((pa - pb) * (np.log(pa) - np.log(pb))).sum(0).mean()
    assert float(row["disagreement"]) == pytest.approx((pa.argmax(0) != pb.argmax(0)).mean())
    assert float(row["sym_kl"]) == pytest.approx(sym_kl, abs=2e-6)
    assert float(row["uncertainty"]) == pytest.approx(1 - ps.max(0).mean(), abs=2e-6)
    _, lab_masks = generate(DEMO, "labeled")
    r = rarity_weights(np.bincount(lab_masks.ravel(), minlength=5))
    assert float(row["rarity"]) == pytest.approx(r[ps.argmax(0)].mean(), abs=2e-6)
    summary = json.loads((out / "suggest.json").read_text())
    assert summary["pair"] == ["teacher_a", "teacher_b"]
    assert summary["rarity_reference"].startswith("labelled set (8 masks")
    assert summary["ranked"] == 16 and summary["top"] == 3


def test_suggest_is_deterministic_and_contact_sheet_shows_top_k(dt_ckpt, tmp_path):
    a = dualteacher.suggest(dt_ckpt, tmp_path / "a", top=4, progress=False)
    b = dualteacher.suggest(dt_ckpt, tmp_path / "b", top=4, batch_size=16, progress=False)
    assert (tmp_path / "a/ranking.csv").read_bytes() == (tmp_path / "b/ranking.csv").read_bytes()
    assert (
        [s["name"] for s in a.sheet]
        == [r["name"] for r in a.rows[:4]]
        == [r["name"] for r in b.top]
    )
    sheet = Image.open(tmp_path / "a/contact_sheet.png")
    assert sheet.size[0] == 4 * CELL_PX  # image | teacher_a | teacher_b | student
    assert 4 * CELL_PX < sheet.size[1] < 5 * CELL_PX  # four rows and the legend
    images, _ = generate(DEMO, "unlabeled")
    first = a.sheet[0]
    assert list(first["preds"]) == ["teacher_a", "teacher_b", "student"]
    image = images[int(first["name"].split("_")[1])]
    assert np.array_equal(first["image"], image)
    for model in ("teacher_a", "teacher_b", "student"):
        expected = _probs(dt_ckpt, image, model).argmax(0)
        assert (first["preds"][model] == expected).mean() > 0.999


def test_suggest_single_model_fallback(sup_ckpt, tmp_path):
    result = dualteacher.suggest(sup_ckpt, tmp_path / "s", top=2, progress=False)
    assert result.pair is None
    rows = _read_csv(tmp_path / "s/ranking.csv")
    assert len(rows) == 16
    assert all(r["disagreement"] == "" and r["sym_kl"] == "" for r in rows)
    u = np.array([float(r["uncertainty"]) for r in rows])
    rar = np.array([float(r["rarity"]) for r in rows])
    expected = (percentile_rank(u) + percentile_rank(rar)) / 2
    np.testing.assert_allclose([float(r["combined"]) for r in rows], expected, atol=1e-6)
    assert list(result.sheet[0]["preds"]) == ["student"]
    assert Image.open(tmp_path / "s/contact_sheet.png").size[0] == 2 * CELL_PX


def test_suggest_mean_teacher_pairs_student_and_teacher(mt_ckpt, tmp_path):
    result = dualteacher.suggest(mt_ckpt, tmp_path / "m", top=1, progress=False)
    assert result.pair == ("student", "teacher")
    assert list(result.sheet[0]["preds"]) == ["teacher", "student"]
    assert all(r["sym_kl"] is not None for r in result.rows)


def _write_images(folder: Path, n: int, size=(32, 32)) -> list[Path]:
    images, _ = generate(DEMO, "val")
    paths = []
    for i in range(n):
        p = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize(size).save(p)
        paths.append(p)
    return paths


def test_suggest_images_folder_with_unreadable_file(dt_ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _write_images(folder, 4, size=(40, 28))
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "n"
    # the data of the checkpoint is "not on this machine": rarity from the predictions
    argv = ["suggest", str(dt_ckpt), "--images", str(folder), "data.name=folder"]
    with pytest.raises(SystemExit) as e:
        main([*argv, "data.root=/nonexistent", "--top", "2", "--out", str(out)])
    assert e.value.code == 2  # unreadable inputs: exit 2, as in predict
    err = capsys.readouterr().err
    assert "1 input(s) failed" in err and "broken.png" in err
    rows = _read_csv(out / "ranking.csv")
    assert sorted(r["name"] for r in rows) == ["img0", "img2", "sub/img1", "sub/img3"]
    assert all(Path(r["path"]).is_file() for r in rows)
    reference = json.loads((out / "suggest.json").read_text())["rarity_reference"]
    assert reference.startswith("the student's predictions") and "/nonexistent" in reference


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")  # one line, no traceback
    return err


def test_suggest_bad_inputs(dt_ckpt, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    (tmp_path / "empty").mkdir()
    err = _error(["suggest", str(dt_ckpt), "--images", str(tmp_path / "empty"), *out], capsys)
    assert "nothing to rank" in err and "folder holds no files" in err
    err = _error(["suggest", str(dt_ckpt), "data.demo.num_unlabeled=0", *out], capsys)
    assert "unlabelled set of its config" in err and "--images" in err
    err = _error(["suggest", str(dt_ckpt), "data.name=folder", "data.root=/nope", *out], capsys)
    assert "cannot rebuild the unlabelled set" in err and "/nope" in err
    assert "--top 0" in _error(["suggest", str(dt_ckpt), "--top", "0", *out], capsys)
    assert "--weights" in _error(["suggest", str(dt_ckpt), "--weights", "1,x", *out], capsys)
    assert "weights=1.0,-1.0" in _error(
        ["suggest", str(dt_ckpt), "--weights", "1,-1,1", *out], capsys
    )
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- pseudolabel
def test_pseudolabel_masks_confidence_and_palette(dt_ckpt, tmp_path):
    folder = tmp_path / "imgs"
    paths = _write_images(folder, 3, size=(37, 29))
    image = np.array(Image.open(paths[0]).convert("RGB"))
    p = _probs(dt_ckpt, image, "teacher_a")
    conf = float(np.median(p.max(0)))  # half the pixels above, half below
    out = tmp_path / "pl"
    result = dualteacher.pseudolabel(
        dt_ckpt, [str(folder)], out, conf=conf, model="teacher_a", progress=False
    )
    rel = sorted(q.relative_to(out / "masks").as_posix() for q in (out / "masks").rglob("*"))
    assert rel == ["img0.png", "img2.png", "sub", "sub/img1.png"]
    assert len(result.written) == 3 and 0.3 < result.kept < 0.7
    mask = Image.open(out / "masks/img0.png")
    assert mask.mode == "P" and mask.size == (37, 29)
    palette = np.array(mask.getpalette()[: 3 * 256]).reshape(-1, 3)
    assert palette[:5].tolist() == [list(c) for c in PALETTE]
    ids = np.asarray(mask)
    expected = np.where(p.max(0) >= conf, p.argmax(0), 255)
    near = np.abs(p.max(0) - conf) < 1e-5  # float noise at the threshold
    assert np.array_equal(ids[~near], expected[~near])
    assert set(np.unique(ids)) <= {0, 1, 2, 3, 4, 255} and (ids == 255).any()
    confidence = Image.open(out / "confidence/img0.png")
    assert confidence.mode == "L" and confidence.size == (37, 29)
    assert np.abs(np.asarray(confidence).astype(int) - np.round(255 * p.max(0))).max() <= 1

    # Fed back as labels: the folder dataset reads the masks and the classes.yaml.
    root = tmp_path / "root"
    for sub in ("train", "val"):
        (root / sub / "images").mkdir(parents=True)
        Image.open(paths[0]).save(root / sub / "images/img0.png")
        (root / sub / "masks").mkdir()
        (root / sub / "masks/img0.png").write_bytes((out / "masks/img0.png").read_bytes())
    (root / "classes.yaml").write_text((out / "classes.yaml").read_text())
    bundle = build_data(load_config("demo", ["data.name=folder", f"data.root={root}"]).data)
    assert bundle.classes == CLASSES and bundle.palette == [tuple(c) for c in PALETTE]
    assert np.array_equal(bundle.labeled.load(0).mask, ids)


def test_pseudolabel_student_default_and_overwrite(sup_ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    paths = _write_images(folder, 1)
    out = tmp_path / "pl"
    main(["pseudolabel", str(sup_ckpt), "--images", str(folder), "--out", str(out), "--conf", "1"])
    assert "wrote 1 pseudo-label(s)" in capsys.readouterr().out
    image = np.array(Image.open(paths[0]).convert("RGB"))
    ids = np.asarray(Image.open(out / "masks/img0.png"))
    p = _probs(sup_ckpt, image, "student")
    assert np.array_equal(ids, np.where(p.max(0) >= 1.0, p.argmax(0), 255))
    (out / "masks/img0.png").write_bytes(b"my corrections")
    argv = ["pseudolabel", str(sup_ckpt), "--images", str(folder), "--out", str(out)]
    assert "--overwrite" in _error(argv, capsys)
    assert (out / "masks/img0.png").read_bytes() == b"my corrections"
    main([*argv, "--overwrite"])
    assert Image.open(out / "masks/img0.png").mode == "P"


def test_pseudolabel_bad_inputs(dt_ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _write_images(folder, 1)
    base = ["pseudolabel", str(dt_ckpt), "--out", str(tmp_path / "o")]
    for bad in ("0", "1.5", "-0.1"):
        err = _error([*base, "--images", str(folder), "--conf", bad], capsys)
        assert f"--conf {float(bad)}" in err and "(0, 1]" in err
    assert "nothing to label" in _error([*base, "--images", str(tmp_path / "x.png")], capsys)
    err = _error([*base, "--images", str(folder), "--model", "teacher"], capsys)
    assert "no model named teacher" in err and "teacher_a" in err
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(SystemExit) as e:
        main([*base, "--images", str(folder)])
    assert e.value.code == 2
    assert "bad.jpg" in capsys.readouterr().err
    assert (tmp_path / "o/masks/img0.png").is_file()  # the good image is still written


# ----------------------------------------------------------------------------- demo-data
def test_demo_data_folder_matches_the_generator(tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = [f"data.demo.{k}={v}" for k, v in vars(DEMO).items()]
    main(["demo-data", "--out", str(out), *overrides])
    bundle = build_data(load_config("demo", ["data.name=folder", f"data.root={out}"]).data)
    assert (len(bundle.labeled), len(bundle.unlabeled), len(bundle.val)) == (8, 16, 6)
    assert bundle.classes == CLASSES
    for split, source in (("labeled", bundle.labeled), ("val", bundle.val)):
        images, masks = generate(DEMO, split)
        for i in (0, len(images) - 1):
            s = source.load(i)
            assert np.array_equal(s.image, images[i]) and np.array_equal(s.mask, masks[i])
    images, masks = generate(DEMO, "unlabeled")
    assert np.array_equal(bundle.unlabeled.load(3).image, images[3])
    true = np.asarray(Image.open(out / "unlabeled_masks/unlabeled_00003.png"))
    assert np.array_equal(true, masks[3])
    assert write_demo_folder(DEMO, out) is False  # same data already there
    with pytest.raises(DataError, match="another config"):
        write_demo_folder(DemoDataConfig(seed=1), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other/mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        write_demo_folder(DEMO, tmp_path / "other")


# ----------------------------------------------------------------------------- benchmark
def _bench_module():
    path = Path(__file__).parents[1] / "benchmarks" / "label_next.py"
    spec = importlib.util.spec_from_file_location("label_next_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_next_benchmark_splits(dt_ckpt, tmp_path):
    bench = _bench_module()
    data = tmp_path / "demo"
    write_demo_folder(DEMO, data)
    ranking = tmp_path / "ranking.csv"
    rows = [["rank", "name", "path"]]
    order = [7, 2, 11, *[i for i in range(16) if i not in (7, 2, 11)]]
    rows += [[r, f"u{i}", str(data / f"unlabeled/unlabeled_{i:05d}.png")] for r, i in
             enumerate(order, 1)]  # fmt: skip
    with open(ranking, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    chosen = bench.pick_suggested(ranking, data, 3)
    assert [p.name for p in chosen] == [f"unlabeled_{i:05d}.png" for i in (7, 2, 11)]
    assert bench.pick_random(data, 3, 0) == bench.pick_random(data, 3, 0)
    assert bench.pick_random(data, 3, 0) != bench.pick_random(data, 3, 1)
    bench.write_splits(data, chosen, tmp_path / "splits")
    cfg = load_config(
        "demo",
        [
            "data.name=folder",
            f"data.root={data}",
            f"data.labeled={tmp_path / 'splits/labeled.txt'}",
            f"data.unlabeled={tmp_path / 'splits/unlabeled.txt'}",
        ],
    ).data
    bundle = build_data(cfg)
    assert (len(bundle.labeled), len(bundle.unlabeled)) == (11, 13)
    _, true = generate(DEMO, "unlabeled")
    added = bundle.labeled.load(8)  # the first added image, with its true mask
    assert added.name == "unlabeled_00007" and np.array_equal(added.mask, true[7])
    unl_names = {bundle.unlabeled.load(i).name for i in range(13)}
    assert not unl_names & {"unlabeled_00007", "unlabeled_00002", "unlabeled_00011"}

    for seed, (b, r, s) in {0: (10.0, 11.0, 12.5), 1: (20.0, 21.0, 20.5)}.items():
        for arm, miou in zip(bench.ARMS, (b, r, s)):
            run = tmp_path / "out" / f"seed{seed}" / arm
            run.mkdir(parents=True)
            rows = [{"step": 2, "miou_student": miou - 5}, {"step": 4, "miou_student": miou}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    text = bench.table(tmp_path / "out", 3, [0, 1])
    assert "| 0 | 10.00 | 11.00 | 12.50 | +1.50 |" in text
    assert "| mean ± std | 15.00 ± 7.07 | 16.00 ± 7.07 | 16.50 ± 5.66 | 0.50 ± 1.41 |" in text
    assert (tmp_path / "out/label_next.md").read_text() == text


def test_suggest_help_states_the_formula(capsys):
    with pytest.raises(SystemExit):
        main(["suggest", "--help"])
    out = capsys.readouterr().out
    assert (
        "combined = (w_d R(sym_kl) + w_u R(uncertainty) + w_r R(rarity)) / (w_d + w_u + w_r)" in out
    )
    assert "log(f_max/f_c) / log(f_max/f_min)" in out


def test_api_names():
    for name in ("suggest", "pseudolabel", "write_demo_folder"):
        assert callable(getattr(dualteacher, name))
    with pytest.raises(ConfigError, match="--top 0"):
        dualteacher.suggest("unused.pt", "unused", top=0)


def _pre_annotations(data: Path, names: list[str]) -> list[dict]:
    """Label Studio pre-annotations as `suggest --format labelstudio` writes them, with a
    model mask that is wrong everywhere (the true class + 1), so that what is read back can
    only be the truth if the person's step replaced it."""
    tasks = []
    for rank, name in enumerate(names, 1):
        wrong = (np.asarray(Image.open(data / "unlabeled_masks" / name)) + 1) % len(CLASSES)
        p = Prediction("/data/local-files/?d=images/" + name, wrong.astype(np.uint8), 0.5, rank)
        tasks.append(labelstudio_task(p, CLASSES, model_version="test"))
    return tasks


def test_label_loop_annotate_exports_the_truth_through_label_studio(tmp_path, capsys):
    pytest.importorskip("label_studio_converter")
    bench = _bench_module()
    data = tmp_path / "demo"
    write_demo_folder(DEMO, data)
    names = ["unlabeled_00009.png", "unlabeled_00003.png", "unlabeled_00014.png"]
    pre = tmp_path / "labelstudio.json"
    pre.write_text(json.dumps(_pre_annotations(data, names)))
    root = tmp_path / "root"
    bench.main(["annotate", "--data", str(data), "--k", "3", "--pre", str(pre), "--out", str(root)])
    assert "3 images labelled with their true masks" in capsys.readouterr().out
    assert (root / "added.txt").read_text().split() == names  # suggest's order

    # Read back here, as training reads it: 8 + 3 labelled, all true masks; val true; the
    # rest of the pool unlabelled; the demo's classes in their order.
    bundle = build_data(load_config("demo", ["data.name=labelstudio", f"data.root={root}"]).data)
    assert bundle.classes == CLASSES
    assert (len(bundle.labeled), len(bundle.unlabeled), len(bundle.val)) == (11, 13, 6)
    _, lab_true = generate(DEMO, "labeled")
    _, unl_true = generate(DEMO, "unlabeled")
    _, val_true = generate(DEMO, "val")
    truth = {f"labeled_{i:05d}": m for i, m in enumerate(lab_true)}
    truth |= {f"unlabeled_{i:05d}": unl_true[i] for i in (9, 3, 14)}
    got = {s.name: s.mask for s in map(bundle.labeled.load, range(11))}
    assert sorted(got) == sorted(truth)
    assert all(np.array_equal(got[n], truth[n]) for n in truth)
    assert all(np.array_equal(bundle.val.load(i).mask, val_true[i]) for i in range(6))
    unl = {bundle.unlabeled.load(i).name for i in range(13)}
    assert unl == {f"unlabeled_{i:05d}" for i in range(16)} - {n[:-4] for n in names}

    # A second run writes nothing (a resumed run's data stays as it started).
    stamp = (root / "train.json").stat().st_mtime_ns
    bench.annotate(data, root, json.loads(pre.read_text()))
    assert (root / "train.json").stat().st_mtime_ns == stamp

    # The read-back check stops on a mask that is not the truth.
    tasks = json.loads((root / "train.json").read_text())
    tasks[-1]["annotations"] = [
        {"result": _pre_annotations(data, names[-1:])[0]["predictions"][0]["result"]}
    ]
    (root / "train.json").write_text(json.dumps(tasks))
    with pytest.raises(SystemExit, match="unlabeled_00014 read back is not its true mask"):
        bench.check_import(data, root, names)

    # --random: the seed's draw of label_next.sh's random arm, through the same export.
    bench.main(
        ["annotate", "--data", str(data), "--k", "3", "--random", "0", "--out", str(tmp_path / "r")]
    )
    drawn = [p.name for p in bench.pick_random(data, 3, 0)]
    assert (tmp_path / "r/added.txt").read_text().split() == drawn


def test_label_loop_table_pairs_by_seed(tmp_path):
    bench = _bench_module()
    miou = {  # seed -> base, continue_random, continue_suggest, scratch_suggest
        0: (50.0, 60.0, 64.0, 61.0),
        1: (52.0, 61.0, 66.0, 63.0),
        2: (51.0, 62.0, 65.0, 60.0),
    }
    for seed, values in miou.items():
        for arm, value in zip(bench.LOOP_ARMS, values):
            run = tmp_path / f"seed{seed}" / arm
            run.mkdir(parents=True)
            rows = [{"step": 4, "miou_student": value}, {"step": 2, "miou_student": 99.0}]
            (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    text = bench.loop_table(tmp_path, 24, [0, 1, 2], note="the note")
    assert bench.LOOP_ARMS == ("base", "continue_random", "continue_suggest", "scratch_suggest")
    assert "| 1 | 52.00 | 61.00 | 66.00 | 63.00 | +5.00 | +3.00 |" in text
    # suggest - random: 4, 5, 3 (mean 4, std 1); suggest - scratch: 3, 3, 5 (mean 3.67,
    # std 1.15); half widths t(0.975, 2) = 4.3027 x std / sqrt(3).
    assert "| +4.00 ± 1.00 [+1.52, +6.48] | +3.67 ± 1.15 [+0.80, +6.54] |" in text
    assert "| mean ± std | 51.00 ± 1.00 | 61.00 ± 1.00 | 65.00 ± 1.00 | 61.33 ± 1.53 |" in text
    assert "the note" in text and (tmp_path / "label_loop.md").read_text() == text
    summary = json.loads((tmp_path / "label_loop.json").read_text())
    d = summary["differences"]["continue_suggest - scratch_suggest"]
    assert d["per_seed"] == [3.0, 3.0, 5.0]
    assert d["ci95"] == pytest.approx(
        [11 / 3 - 4.302653 * 1.154701 / 3**0.5, 11 / 3 + 4.302653 * 1.154701 / 3**0.5], abs=1e-4
    )
    assert summary["miou"]["2"]["scratch_suggest"] == 60.0
