"""Issue 27: reruns and shared folders. A command never reads its own outputs (present or
earlier), never deletes what it did not write, and its results are tied to their budget."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.engine.trainer import train

from .conftest import TINY


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("dt")
    train(load_config("demo", [*TINY, "train.steps=2", f"train.out_dir={root}"]))
    return root / "latest.pt"


def _images(folder: Path, names=("a.png", "b.png", "c.png"), size=(32, 24)) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        p = folder / n
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert "\n" not in err and err.startswith("error: "), err  # one line, no traceback
    return err


# ---------------------------------------------------------------- own outputs never inputs
@pytest.mark.parametrize("inside", ["pseudo", "."])
def test_pseudolabel_twice_into_a_folder_inside_its_inputs(ckpt, tmp_path, capsys, inside):
    folder = tmp_path / "imgs"
    _images(folder)
    out = folder / inside
    argv = ["pseudolabel", str(ckpt), "--images", str(folder), "--out", str(out), "--conf", "0.5"]
    main(argv)
    first = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*"))
    assert first == ["a.png", "b.png", "c.png"]
    capsys.readouterr()
    main([*argv, "--overwrite"])
    printed = capsys.readouterr().out
    assert "wrote 3 pseudo-label(s)" in printed
    again = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*"))
    assert again == first  # no masks/pseudo/masks/..., no mask of a mask


@pytest.mark.parametrize("inside", ["next", "."])
def test_suggest_twice_never_ranks_its_own_contact_sheet(ckpt, tmp_path, inside):
    folder = tmp_path / "imgs"
    _images(folder, [f"i{k}.png" for k in range(4)])
    out = folder / inside
    argv = ["suggest", str(ckpt), "--images", str(folder), "--top", "3", "--out", str(out)]
    for _ in range(2):
        main(argv)
        with open(out / "ranking.csv") as f:
            names = sorted(r["name"] for r in csv.DictReader(f))
        assert names == ["i0", "i1", "i2", "i3"]
    assert (out / "contact_sheet.png").is_file()


def test_pseudolabel_same_stem_names_carry_the_extension(ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _images(folder, ["x.png", "y.png"])
    Image.open(folder / "x.png").save(folder / "x.jpg")
    out = tmp_path / "pl"
    main(["pseudolabel", str(ckpt), "--images", str(folder), "--out", str(out)])
    printed = capsys.readouterr().out
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == ["x.jpg.png", "x.png.png", "y.png"]
    assert "x.jpg" in printed and "pseudolabels.tsv" in printed
    rows = (out / "pseudolabels.tsv").read_text().splitlines()
    assert rows[0] == "image\tmask\tconfidence"
    mapping = {Path(r.split("\t")[0]).name: Path(r.split("\t")[1]).name for r in rows[1:]}
    assert mapping == {"x.jpg": "x.jpg.png", "x.png": "x.png.png", "y.png": "y.png"}


# ------------------------------------------------------------- --out at an existing file
VERBS = [
    ["train", "demo"],
    ["eval", "CKPT", "--report"],
    ["predict", "CKPT", "IMG"],
    ["export", "CKPT"],
    ["compare", "demo", "--methods", "supervised"],
    ["suggest", "CKPT"],
    ["pseudolabel", "CKPT", "--images", "IMG"],
    ["demo-data"],
    ["demo"],
    ["splits", "--root", "IMGDIR", "--dataset", "folder", "--labeled", "1"],
]


@pytest.mark.parametrize("below", [False, True], ids=["file", "below_a_file"])
@pytest.mark.parametrize("verb", VERBS, ids=[v[0] for v in VERBS])
def test_out_at_an_existing_file_is_one_line(ckpt, tmp_path, capsys, verb, below):
    img = _images(tmp_path / "imgs", ["a.png"])[0]
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    target = file / "sub" if below else file
    names = {"CKPT": str(ckpt), "IMG": str(img), "IMGDIR": str(img.parent)}
    argv = [names.get(a, a) for a in verb]
    if argv[-1] != "--report":
        argv.append("--out")
    err = _one_line_error([*argv, str(target)], capsys)
    assert "is a file" in err and str(file) in err
    assert file.read_text() == "mine"


# ---------------------------------------------------------------- results tied to budget
def _compare(out: Path, steps: int, *extra: str) -> None:
    main(["compare", "demo", *TINY, "--methods", "supervised", "--steps", str(steps),
          "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("second", [2, 6], ids=["smaller", "larger"])
def test_compare_rerun_with_another_budget_is_refused_then_fresh(tmp_path, capsys, second):
    import json

    out = tmp_path / "cmp"
    _compare(out, 4)
    run = out / "supervised"
    (run / "my_notes.txt").write_text("mine")  # a user's file in the run folder
    assert json.loads((out / "summary.json").read_text())["results"][0]["steps"] == 4
    capsys.readouterr()
    err = _one_line_error(["compare", "demo", *TINY, "--methods", "supervised", "--steps",
                           str(second), "--out", str(out)], capsys)  # fmt: skip
    assert str(run) in err and "train.steps=4" in err and f"train.steps={second}" in err
    assert "--fresh" in err
    assert json.loads((out / "summary.json").read_text())["budget"] == {"steps": 4}
    _compare(out, second, "--fresh")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"] == {"steps": second}
    assert summary["results"][0]["steps"] == second  # redone, neither reused nor extended
    assert (run / "my_notes.txt").read_text() == "mine"  # not compare's: never deleted
    _compare(out, second)  # the same budget again: reused


def test_compare_runs_of_an_older_compare_without_a_budget_record(tmp_path, capsys):
    import json

    out = tmp_path / "cmp"
    _compare(out, 4)
    run = out / "supervised"
    record = run / "compare_budget.json"
    record.unlink()  # as an older compare left it
    trained = (run / "latest.pt").stat().st_mtime_ns
    # the same budget, read from the run's own checkpoint: reused (not retrained), now recorded
    _compare(out, 4)
    assert (run / "latest.pt").stat().st_mtime_ns == trained
    assert json.loads(record.read_text())["budget"]["train.steps"] == 4
    # another budget: refused, naming the run, both budgets and where the old one was read
    record.unlink()
    capsys.readouterr()
    err = _one_line_error(["compare", "demo", *TINY, "--methods", "supervised", "--steps", "2",
                           "--out", str(out)], capsys)  # fmt: skip
    assert str(run) in err and "train.steps=4" in err and "train.steps=2" in err
    assert "as its latest.pt records" in err and "--fresh" in err
    # nothing left to read the budget from: refused, never adopted unseen
    for f in run.glob("*.pt"):
        f.write_bytes(b"not a checkpoint")
    (run / "config.yaml").unlink()
    capsys.readouterr()
    err = _one_line_error(["compare", "demo", *TINY, "--methods", "supervised", "--steps", "4",
                           "--out", str(out)], capsys)  # fmt: skip
    assert str(run) in err and "recorded no budget" in err and "--fresh" in err
    assert not record.exists()
    _compare(out, 4, "--fresh")  # redone
    assert json.loads((out / "summary.json").read_text())["results"][0]["steps"] == 4


# ------------------------------------------------------------------------------- export
def test_export_into_a_folder_with_user_files(ckpt, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    user = {"README.md": "my readme", "model.onnx": "my onnx", "notes.txt": "my notes"}
    for name, text in user.items():
        (out / name).write_text(text)
    err = _one_line_error(["export", str(ckpt), "--out", str(out)], capsys)
    assert str(out) in err and "--force" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == user  # nothing written or deleted

    # an earlier export's folder: reused; a file it did not write is never deleted
    exp = tmp_path / "exp"
    main(["export", str(ckpt), "--out", str(exp)])
    (exp / "model.onnx").write_text("my onnx")
    (exp / "notes.txt").write_text("my notes")
    capsys.readouterr()
    main(["export", str(ckpt), "--out", str(exp)])
    assert (exp / "model.onnx").read_text() == "my onnx"
    assert (exp / "notes.txt").read_text() == "my notes"
    assert (exp / "model.safetensors").is_file()

    main(["export", str(ckpt), "--out", str(out), "--force"])  # said, not silent
    assert (out / "notes.txt").read_text() == "my notes" and (out / "model.json").is_file()


# ----------------------------------------------------------------------------- messages
def test_a_run_or_export_folder_where_a_checkpoint_is_meant(ckpt, tmp_path, capsys):
    run = ckpt.parent
    img = _images(tmp_path / "imgs", ["a.png"])[0]
    for argv in (
        ["eval", str(run)],
        ["export", str(run), "--out", str(tmp_path / "e1")],
        ["suggest", str(run), "--images", str(img), "--out", str(tmp_path / "s")],
        ["pseudolabel", str(run), "--images", str(img), "--out", str(tmp_path / "p")],
        ["predict", str(run), str(img), "--out", str(tmp_path / "pr")],
    ):
        err = _one_line_error(argv, capsys)
        assert "is a directory" in err and f"did you mean {run / 'best.pt'}" in err, argv
    exp = tmp_path / "exp"
    main(["export", str(ckpt), "--out", str(exp)])
    capsys.readouterr()
    for argv in (["eval", str(exp)], ["export", str(exp), "--out", str(tmp_path / "e2")]):
        err = _one_line_error(argv, capsys)
        assert "is a directory" in err and "an export" in err and "source" in err, argv


def test_ctrl_c_in_compare_says_rerun_the_same_compare(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from dualteacher.methods.supervised import Supervised

    step_fn = Supervised.training_step

    def interrupt(self, batch_x, batch_u, info):
        if info.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step_fn(self, batch_x, batch_u, info)

    monkeypatch.setattr(Supervised, "training_step", interrupt)
    with pytest.raises(SystemExit) as e:
        _compare(tmp_path / "cmp", 4)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interrupted: supervised: stopped by SIGINT")
    assert "Rerun the same compare command" in err and "dualteacher train" not in err


@pytest.mark.parametrize("verb", ["predict", "suggest", "pseudolabel"])
def test_unreadable_images_exit_2_on_every_serving_verb(ckpt, tmp_path, capsys, verb):
    folder = tmp_path / "imgs"
    _images(folder, ["a.png", "b.png"])
    (folder / "broken.png").write_bytes(b"not a png")
    out = ["--out", str(tmp_path / "o")]
    argv = {
        "predict": ["predict", str(ckpt), str(folder), *out],
        "suggest": ["suggest", str(ckpt), "--images", str(folder), "--top", "1", *out],
        "pseudolabel": ["pseudolabel", str(ckpt), "--images", str(folder), *out],
    }[verb]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "broken.png" in capsys.readouterr().err


def test_export_model_on_a_supervised_run_does_not_offer_all(tmp_path, capsys):
    root = tmp_path / "sup"
    train(load_config("demo", [*TINY, "train.steps=1", "method.name=supervised",
                               f"train.out_dir={root}"]))  # fmt: skip
    capsys.readouterr()
    argv = ["export", str(root / "latest.pt"), "--model", "teacher", "--out", str(tmp_path / "e")]
    err = _one_line_error(argv, capsys)
    assert "student" in err and "'all'" not in err


def test_splits_fraction_that_rounds_to_zero_says_the_rounding(tmp_path, capsys):
    root = tmp_path / "data"
    main(["demo-data", "--out", str(root), "data.demo.num_labeled=8", "data.demo.num_unlabeled=4",
          "data.demo.num_val=2", "data.demo.image_size=32"])  # fmt: skip
    capsys.readouterr()
    argv = ["splits", "--root", str(root), "--dataset", "folder", "--fraction", "0.01"]
    err = _one_line_error([*argv, "--out", str(tmp_path / "s")], capsys)
    assert "rounds to 0" in err and "--labeled" in err


def test_check_lists_every_image_name_clash(tmp_path, capsys):
    root = tmp_path / "data"
    main(["demo-data", "--out", str(root), "data.demo.num_labeled=4", "data.demo.num_unlabeled=4",
          "data.demo.num_val=2", "data.demo.image_size=32"])  # fmt: skip
    unl = sorted((root / "unlabeled").iterdir())
    for p in unl[:2]:
        Image.open(p).save(p.with_suffix(".bmp"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["check", "demo", "data.name=folder", f"data.root={root}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(p.with_suffix(".bmp").name in err for p in unl[:2]), err


# ---------------------------------------------------------------- dataset image formats
def test_folder_dataset_reads_webp_and_gif_in_unlabeled(tmp_path):
    from dualteacher.data import build_data

    root = tmp_path / "data"
    main(["demo-data", "--out", str(root), "data.demo.num_labeled=4", "data.demo.num_unlabeled=4",
          "data.demo.num_val=2", "data.demo.image_size=32"])  # fmt: skip
    unl = sorted((root / "unlabeled").iterdir())
    for p, ext in zip(unl[:2], (".webp", ".gif")):
        Image.open(p).save(p.with_suffix(ext))
        p.unlink()
    bundle = build_data(load_config("demo", ["data.name=folder", f"data.root={root}"]).data)
    assert len(bundle.unlabeled) == 4
    names = {Path(e.image).suffix for e in bundle.unlabeled.entries}
    assert {".webp", ".gif"} <= names
    assert bundle.unlabeled.load(0).image.shape[-1] == 3


def test_check_reports_alpha_and_colour_mode_conversions(tmp_path, capsys):
    root = tmp_path / "data"
    main(["demo-data", "--out", str(root), "data.demo.num_labeled=4", "data.demo.num_unlabeled=4",
          "data.demo.num_val=2", "data.demo.image_size=32"])  # fmt: skip
    first = sorted((root / "train" / "images").iterdir())[0]
    Image.open(first).convert("RGBA").save(first)
    capsys.readouterr()
    main(["check", "demo", "data.name=folder", f"data.root={root}"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "RGBA converted to RGB, alpha dropped" in text and first.name in text


# ------------------------------------------------------------------------------ figures
def _capture_figures(monkeypatch) -> list:
    import dualteacher.plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig))
    return figs


def test_curves_draw_per_shift_losses_as_lines(tmp_path, monkeypatch):
    from dualteacher.plots import plot_training_curves

    figs = _capture_figures(monkeypatch)
    rows = []
    for step in range(1, 21):
        row = {"step": step, "loss": 1.0 / step, "loss_sup": 0.5 / step}
        row["loss_cutmix" if step % 2 else "loss_classmix"] = 0.3  # alternate rows
        rows.append(row)
    plot_training_curves(rows, tmp_path / "curves.png")
    lines = {ln.get_label(): ln for ln in figs[0].axes[0].lines}
    for key in ("loss_cutmix", "loss_classmix"):
        y = np.asarray(lines[key].get_ydata(), dtype=float)
        finite = ~np.isnan(y)
        assert (finite[1:] & finite[:-1]).any(), key  # two adjacent points: a visible line


def test_miou_vs_time_legend_promises_only_what_is_drawn(tmp_path, monkeypatch):
    from dualteacher.plots import plot_miou_vs_time

    figs = _capture_figures(monkeypatch)
    plot_miou_vs_time({"supervised": [[(1.0, 10.0)], [(1.2, 12.0)]]}, tmp_path / "m.png")
    ax = figs[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    drawn_band = any(c.__class__.__name__ == "PolyCollection" and len(c.get_paths()[0]) > 3
                     for c in ax.collections)  # fmt: skip
    assert not any("band" in label for label in labels) or drawn_band, labels


def test_predict_writes_a_legend_beside_the_colour_pngs(ckpt, tmp_path):
    img = _images(tmp_path / "imgs", ["a.png"])[0]
    out = tmp_path / "pred"
    main(["predict", str(ckpt), str(img), "--out", str(out)])
    assert (out / "a_color.png").is_file()
    legend = Image.open(out / "legend.png")
    assert legend.size[0] > 50 and legend.size[1] > 50


# ------------------------------------------------------------------------ hostile matrix
SERVING = {
    "predict": (lambda ck, imgs, out: ["predict", ck, imgs, "--out", out], "wrote {n} prediction"),
    "suggest": (
        lambda ck, imgs, out: ["suggest", ck, "--images", imgs, "--top", "1", "--out", out],
        "ranked {n} image",
    ),
    "pseudolabel": (
        lambda ck, imgs, out: ["pseudolabel", ck, "--images", imgs, "--out", out, "--overwrite"],
        "wrote {n} pseudo-label",
    ),
}


@pytest.mark.parametrize("other", list(SERVING))
@pytest.mark.parametrize("verb", list(SERVING))
def test_serving_verbs_inside_their_inputs_and_another_verbs_folder(
    ckpt, tmp_path, capsys, verb, other
):
    folder = tmp_path / "imgs"
    _images(folder, ["a.png", "b.png"])
    shared = folder / "shared"  # inside the inputs, holding another verb's outputs first
    (argv_of, said), (other_argv, _) = SERVING[verb], SERVING[other]
    main(other_argv(str(ckpt), str(folder), str(shared)))
    before = {p: p.read_bytes() for p in shared.rglob("*") if p.is_file()}
    for _ in range(2):
        capsys.readouterr()
        main(argv_of(str(ckpt), str(folder), str(shared)))
        assert said.format(n=2) in capsys.readouterr().out  # only a.png and b.png, every time
    assert all(p.exists() for p in before)  # nothing of the other verb deleted
