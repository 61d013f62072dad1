"""Large unlabelled pools: compact entry tables, cached folder scans, streamed split files,
sampled start-up checks, ``check --sample`` and exact sharding on compact storage."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dualteacher.cli import main
from dualteacher.config import load_config
from dualteacher.data import build_data, sample_indices
from dualteacher.data import index as index_module
from dualteacher.data import splits as splits_module
from dualteacher.data.base import UnlabeledTrainSet
from dualteacher.data.files import IMAGE_EXTS, scan_images
from dualteacher.data.fingerprint import data_fingerprint
from dualteacher.data.folder import FolderLayout
from dualteacher.data.index import Entry, EntryTable, ScanIndex, Strings, using_index
from dualteacher.data.loaders import build_train_loaders
from dualteacher.data.voc import VocLayout
from dualteacher.engine.evaluate import evaluate_checkpoint
from dualteacher.errors import INPUT_EXIT, DataError
from dualteacher.study.check import check_data

from . import trees


def folder_cfg(root, *overrides: str):
    return load_config(None, ["data.name=folder", f"data.root={root}", *overrides])


def age(root: Path, seconds: float = 3600) -> None:
    """Set every directory's modification time into the past (a tree written long ago)."""
    past = time.time() - seconds
    for d, _, _ in os.walk(root):
        os.utime(d, (past, past))


def pool(root: Path, n: int, folders: int = 4) -> Path:
    """``n`` unlabelled hard links to one real image, in ``folders`` sub-folders."""
    data = trees.make_folder(root, n_unlabeled=1)
    src = data / "unlabeled" / "u0.jpg"
    for i in range(n):
        d = data / "unlabeled" / f"d{i % folders}"
        d.mkdir(exist_ok=True)
        os.link(src, d / f"img_{i:06d}.jpg")
    return data


# ------------------------------------------------------------------------------- tables
def test_entry_table_round_trips_and_is_compact(tmp_path):
    entries = [
        Entry(Path("/d/a/x1.jpg"), Path("/d/m/x1.png"), "x1"),
        Entry(Path("/d/a/b/y.png"), None, "b/y"),
        Entry(Path("/c/aachen_1_leftImg8bit.png"), None, "aachen_1"),  # a name rule with a cut
        Entry(Path("rel/z.jpg"), None, "not-the-stem"),  # kept apart
    ]
    table = EntryTable.from_entries(entries)
    assert list(table) == entries and table[-1] == entries[-1]
    assert list(pickle.loads(pickle.dumps(table))) == entries  # spawned workers get it pickled
    assert list(table.take([3, 0])) == [entries[3], entries[0]]
    assert list(table + entries[:1]) == entries + entries[:1]
    assert list(entries[:1] + table) == entries[:1] + entries
    no_masks = [Entry(e.image, None, e.name) for e in entries]
    assert list(table.without_masks().drop_images(entries[1:2])) == no_masks[:1] + no_masks[2:]

    # a scanned pool: one image costs its file name + 8 bytes, no Python object per entry
    data = pool(tmp_path, 2000)
    os.link(data / "unlabeled" / "u0.jpg", data / "unlabeled" / "d3" / "UPPER.JPG")
    (data / "unlabeled" / "d3" / "notes.txt").write_text("not an image")
    (data / "unlabeled" / ".hidden").mkdir()
    os.link(data / "unlabeled" / "u0.jpg", data / "unlabeled" / ".hidden" / "h.jpg")
    scanned = scan_images(data / "unlabeled")
    assert len(scanned) == 2002 and len(scanned.groups) == 5 and not scanned.names
    assert next(e.name for e in scanned if e.name.startswith("d3/")) == "d3/UPPER"  # sorted
    assert isinstance(scanned.files, Strings) and isinstance(scanned.group, np.ndarray)
    assert scanned.nbytes / len(scanned) <= len("img_000000.jpg") + 8 + 0.01
    assert scanned[1].image == data / "unlabeled" / "d0" / "img_000000.jpg"
    assert scanned[1].name == "d0/img_000000"
    # the same order as a sorted top-down walk
    walked = [
        os.path.join(d, f)
        for d, dirs, files in sorted(os.walk(data / "unlabeled"))
        for f in sorted(files)
        if ".hidden" not in d and f != "notes.txt"
    ]
    assert [str(e.image) for e in scanned] == walked
    assert list(scanned.take(np.arange(1, 2001, 7))) == [scanned[i] for i in range(1, 2001, 7)]
    keep = np.arange(len(scanned)) % 3 != 1
    assert list(scanned.take(keep)) == [e for e, k in zip(scanned, keep) if k]


# -------------------------------------------------------------------------------- index
def test_scan_index_is_reused_until_a_folder_changes(tmp_path, monkeypatch):
    data = pool(tmp_path, 12)
    age(data)
    index = tmp_path / "idx.npz"
    cfg = folder_cfg(data, f"data.index={index}").data
    first = build_data(cfg)
    assert index.is_file() and len(first.unlabeled) == 13 + 1  # + the train image without mask

    scans = []
    real = index_module.scan_folder
    monkeypatch.setattr(
        index_module, "scan_folder", lambda f, e: scans.append(Path(f).name) or real(f, e)
    )
    again = build_data(cfg)
    assert scans == [] and list(again.unlabeled.entries) == list(first.unlabeled.entries)
    assert list(again.labeled.entries) == list(first.labeled.entries)

    # a new file changes its folder's time: that folder is scanned again, the others are not
    os.link(data / "unlabeled" / "u0.jpg", data / "unlabeled" / "d1" / "new.jpg")
    changed = build_data(cfg)
    assert scans == ["unlabeled"]
    assert "unlabeled/d1/new" in [e.name for e in changed.unlabeled.entries]
    age(data)
    build_data(cfg)  # the changed folder, scanned again (its new time is not racy any more)
    scans.clear()
    build_data(cfg)
    assert scans == []
    build_data(folder_cfg(data, f"data.index={index}", "data.rescan=true").data)
    assert sorted(scans) == ["images", "images", "masks", "masks", "unlabeled"]

    # a folder written just now is not cached: a file added in the same tick could be missed
    fresh = pool(tmp_path / "fresh", 3)
    idx2 = tmp_path / "idx2.npz"
    build_data(folder_cfg(fresh, f"data.index={idx2}").data)
    assert not idx2.exists()
    # a file that is not an index is never overwritten
    (tmp_path / "other.npz").write_bytes(b"not an index")
    with pytest.raises(DataError, match=r"other\.npz is not a data index.*new file name"):
        build_data(folder_cfg(data, f"data.index={tmp_path / 'other.npz'}").data)


def test_two_images_of_one_name_are_an_error(tmp_path):
    data = trees.make_folder(tmp_path)
    trees.save_rgb(data / "unlabeled" / "u0.png", trees.image(1))  # next to u0.jpg
    with pytest.raises(DataError, match=r"u0\.jpg and .*u0\.png have the same name"):
        build_data(folder_cfg(data).data)


def test_resumed_train_and_compare_do_not_scan_again(tmp_path, monkeypatch, capsys):
    data = trees.make_folder(tmp_path)
    age(data)
    out = tmp_path / "run"
    run = ["train", "demo", *TRAIN, "data.name=folder", f"data.root={data}", "--out", str(out)]
    main([*run, "train.steps=2", "train.ckpt_every=1"])
    assert (out / "data_index.npz").is_file()
    scans = []
    real = index_module.scan_folder
    monkeypatch.setattr(index_module, "scan_folder", lambda f, e: scans.append(f) or real(f, e))
    main([*run, "train.steps=3"])  # resumes from step 2
    assert "resuming" in capsys.readouterr().out and scans == []
    main([*run, "train.steps=4", "--rescan"])
    assert len(scans) == 5  # train/images, train/masks, unlabeled, val/images, val/masks
    scans.clear()
    evaluate_checkpoint(out / "latest.pt")  # reads the index of the checkpoint's run directory
    assert scans == []

    scans.clear()
    cmp = tmp_path / "cmp"
    methods = ["--methods", "supervised,mean_teacher", "--steps", "1", "--out", str(cmp)]
    main(["compare", "demo", *TRAIN, "data.name=folder", f"data.root={data}", *methods])
    assert len(scans) == 5 and (cmp / "data_index.npz").is_file()  # one build for both


TRAIN = [
    "model.name=unet-r18",
    "model.pretrained=null",
    "data.crop_size=32",
    "data.batch_size=2",
    "train.eval_every=100",
    "train.threads=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.curves=false",
    "eval.batch_size=2",
]


# ---------------------------------------------------------------------------- split files
def test_unlabelled_split_file_is_looked_up_only_for_its_first_lines(tmp_path, monkeypatch):
    data = pool(tmp_path, 40, folders=1)
    lines = [f"unlabeled/d0/img_{i:06d}.jpg" for i in range(40)] + ["unlabeled/d0/gone.jpg"]
    split = tmp_path / "unl.txt"
    split.write_text("# header\n" + "\n".join(lines) + "\n")
    looked = []
    for name in ("exists", "is_file"):
        real = getattr(Path, name)
        monkeypatch.setattr(
            Path, name, lambda self, _r=real, _n=name: looked.append(_n) or _r(self)
        )
    cfg = folder_cfg(data, f"data.unlabeled={split}").data
    table = splits_module.read_split(cfg.unlabeled, cfg, FolderLayout(data), False, "k")
    monkeypatch.undo()
    # the probe lines are looked up (a few calls each), the other 25 lines not at all
    assert len(looked) <= 3 * splits_module.PROBE_LINES + 4
    assert len(table) == 41 and table[40].image == data / "unlabeled" / "d0" / "gone.jpg"
    assert [e.name for e in table][:2] == ["img_000000", "img_000001"]
    assert all(e.mask is None for e in table)
    # the missing file: named before training (the set is small: every file is checked)
    with pytest.raises(DataError, match=r"gone\.jpg: image file is missing"):
        build_data(cfg)

    # VOC: paths relative to data.root (the folder above VOCdevkit), not to the VOC folder
    voc = trees.make_voc(tmp_path / "v")
    ids = trees.VOC_TRAIN + trees.VOC_AUG_ONLY
    lines = [f"VOCdevkit/VOC2012/JPEGImages/{ids[i % len(ids)]}.jpg" for i in range(30)]
    (tmp_path / "voc_unl.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, ["data.name=voc", f"data.root={tmp_path / 'v'}"]).data
    lay = VocLayout(voc)
    table = splits_module.read_split(str(tmp_path / "voc_unl.txt"), cfg, lay, False, "k")
    assert [e.image for e in table] == [voc / "JPEGImages" / f"{ids[i % 7]}.jpg" for i in range(30)]


# ---------------------------------------------------------------------- start-up checks
def test_large_unlabelled_sets_are_checked_by_a_seeded_sample(tmp_path, monkeypatch, capsys):
    import dualteacher.data as data_module

    data = pool(tmp_path, 22, folders=1)
    monkeypatch.setattr(data_module, "FULL_CHECK_MAX", 10)
    monkeypatch.setattr(data_module, "SAMPLE_CHECK", 4)
    links = sorted((data / "unlabeled" / "d0").iterdir())
    split = tmp_path / "unl.txt"  # a list goes stale when files go; a folder scan would not
    split.write_text("".join(f"{p}\n" for p in links))
    cfg = folder_cfg(data, f"data.unlabeled={split}").data
    checked = sample_indices(22, 4).tolist()
    assert len(set(checked)) == 4 and checked == sorted(checked)
    assert sample_indices(22, 4, seed=1).tolist() != checked
    unseen = next(i for i in range(22) if i not in checked)
    links[unseen].unlink()
    build_data(cfg)  # not in the sample: found when it is read (next test), not at start
    links[checked[0]].unlink()
    with pytest.raises(DataError, match=rf"{links[checked[0]].name}: image file is missing"):
        build_data(cfg)
    skip = folder_cfg(data, f"data.unlabeled={split}", "data.skip_bad=true").data
    build_data(skip)  # skip_bad: a warning only
    assert "1 of 4 unlabelled files checked (a random sample of 4 of 22)" in capsys.readouterr().err
    for p in links:
        p.unlink(missing_ok=True)
    with pytest.raises(DataError, match="4 problem"):
        build_data(skip)  # every checked file is missing: an error even with skip_bad


def test_missing_unlabelled_file_is_skipped_when_read(tmp_path):
    data = pool(tmp_path, 6, folders=1)
    cfg = folder_cfg(data, "data.skip_bad=true", "data.crop_size=32").data
    bundle = build_data(cfg)
    gone = bundle.unlabeled.entries[2].image
    gone.unlink()
    ds = UnlabeledTrainSet(bundle.unlabeled, cfg, with_strong=False)
    out = ds[(2, 0)]
    assert out["_skipped"] == [(str(gone), "image file is missing")]
    assert out["image"].shape == (3, 32, 32)


def test_fingerprint_of_a_large_set_stats_a_sample_and_digests_every_name(tmp_path, monkeypatch):
    import hashlib

    import dualteacher.data as data_module

    data = pool(tmp_path, 20, folders=1)
    monkeypatch.setattr(data_module, "FULL_CHECK_MAX", 10)
    monkeypatch.setattr(data_module, "SAMPLE_CHECK", 3)
    monkeypatch.setattr(index_module, "CHUNK", 4)  # names digested over several chunks
    bundle = build_data(folder_cfg(data).data)
    entries = bundle.unlabeled.entries
    fp = data_fingerprint(bundle)
    digest = hashlib.sha256(b"".join(e.name.encode() + b"\0" for e in entries)).hexdigest()
    assert fp["unlabeled"]["names"] == digest[:16]  # the one definition, whatever the size
    assert fp["unlabeled"]["files_sampled"] == 3 and "files_sampled" not in fp["labeled"]
    picked = sample_indices(len(entries), 3).tolist()
    other = next(i for i in range(len(entries)) if i not in picked)
    for i, changes in ((other, False), (picked[0], True)):
        entries[i].image.unlink()  # a hard link: give it other content, not its source
        entries[i].image.write_bytes(b"\xff\xd8 another file")
        assert (
            data_fingerprint(bundle)["unlabeled"]["files"] != fp["unlabeled"]["files"]
        ) is changes


# --------------------------------------------------------------------------- check --sample
def test_check_sample_counts_everything_and_reads_a_seeded_sample(tmp_path, capsys):
    data = pool(tmp_path, 30, folders=2)
    entries = build_data(folder_cfg(data).data).unlabeled.entries  # 32
    picked = sample_indices(len(entries), 5, seed=3).tolist()
    bad = entries[picked[0]].image  # a hard link: replace it, do not write through it
    bad.unlink()
    bad.write_bytes(b"\xff\xd8garbage")
    other = entries[next(i for i in range(len(entries)) if i not in picked)].image
    other.unlink()
    other.write_bytes(b"\xff\xd8garbage")  # not in the sample: not reported
    report = check_data(folder_cfg(data), workers=1, sample=5, seed=3)
    again = check_data(folder_cfg(data), workers=1, sample=5, seed=3).sets[1].problems
    assert [str(p) for p in again] == [str(p) for p in report.sets[1].problems]  # seeded
    unl = report.sets[1]
    assert (unl.count, unl.sampled, unl.readable, unl.bad_files) == (32, 5, 4, 1)
    assert str(unl.problems[0].path) == str(bad)
    assert report.sets[0].sampled is None and report.sets[0].count == 4  # small sets: all read
    with pytest.raises(SystemExit) as e:
        main(["check", "demo", "data.name=folder", f"data.root={data}", *SAMPLE])
    assert e.value.code == INPUT_EXIT
    out = capsys.readouterr().out
    assert "sampled: unlabeled 5 of 32 samples checked and read, drawn at random" in out
    assert "(--sample 5, seed 3)" in out and str(bad) in out and str(other) not in out
    full = check_data(folder_cfg(data), workers=1)
    assert full.sets[1].bad_files == 2 and full.sets[1].sampled is None


SAMPLE = ["--sample", "5", "--seed", "3", "--workers", "1"]


# ------------------------------------------------------------------------------ sharding
def test_ranks_and_workers_split_the_stream_exactly_on_compact_storage(tmp_path):
    """Global draw p is the same sample with the same augmentation whatever the number of
    ranks and workers: rank r of 2 gets draws r, r + 2, ... of the one-process stream."""
    data = pool(tmp_path, 9, folders=2)
    bundle = build_data(folder_cfg(data).data)  # 11 unlabelled images
    assert isinstance(bundle.unlabeled.entries, EntryTable)

    def draws(rank: int, world: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = folder_cfg(data, "data.crop_size=32", f"data.batch_size_u={4 // world}").data
        cfg.num_workers = workers
        _, loader = build_train_loaders(
            bundle, cfg, seed=5, start_step=0, need_unlabeled=True, need_strong=True,
            rank=rank, world_size=world,
        )  # fmt: skip
        it = iter(loader)
        batches = [next(it) for _ in range(3)]
        return [(b["image"][k], b["image_s"][k]) for b in batches for k in range(len(b["image"]))]

    single = draws(0, 1, 0)  # 12 draws: more than one pass over the 11 images
    r0, r1 = draws(0, 2, 2), draws(1, 2, 2)
    assert len(single) == 12 and len(r0) == len(r1) == 6
    for mine, theirs in ((r0, single[0::2]), (r1, single[1::2])):
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(mine, theirs))
    assert not torch.equal(r0[0][0], r1[0][0])


def test_scan_index_api_without_a_file(tmp_path):
    data = pool(tmp_path, 3, folders=1)
    idx = ScanIndex(None)
    with using_index(idx):
        table = scan_images(data / "unlabeled")
    assert len(table) == 4 and idx.used == [f"{data / 'unlabeled'} (scanned)"]
    assert index_module.scan_folder(data / "unlabeled", IMAGE_EXTS)[0].nbytes == table.nbytes
