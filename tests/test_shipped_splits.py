"""Issue 25 item 1: the papers' split lists ship with the package, unchanged, each checked
against the checksum and line count recorded with its source; ``data.split`` names one."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from dualteacher.config import load_config
from dualteacher.data import standard_splits
from dualteacher.data.splits import find_split_file
from dualteacher.errors import ConfigError

from .test_reliability import cli

INDEX = standard_splits.index()


@pytest.mark.parametrize("name", list(INDEX["splits"]))
def test_every_shipped_file_matches_its_recorded_checksum_and_count(name):
    entry = INDEX["splits"][name]
    assert entry["source"] in INDEX["sources"]
    for part in standard_splits.PARTS:
        data = gzip.decompress((standard_splits.SHIPPED_DIR / name / f"{part}.txt.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == entry[part]["sha256"], (name, part)
        assert sum(1 for ln in data.decode().splitlines() if ln.strip()) == entry[part]["lines"]


def test_the_protocols_have_their_published_sizes():
    sizes = {n: s["labeled"]["lines"] for n, s in INDEX["splits"].items()}
    for n in (92, 183, 366, 732, 1464):
        assert sizes[f"voc/{n}"] == n
    assert [sizes[f"voc/u2pl_{f}"] for f in ("1_16", "1_8", "1_4", "1_2")] == [
        662,
        1323,
        2646,
        5291,
    ]
    assert [sizes[f"cityscapes/{f}"] for f in ("1_16", "1_8", "1_4", "1_2")] == [
        186,
        372,
        744,
        1488,
    ]
    for n in (631, 1263, 2526, 5052, 10105):
        assert sizes[f"ade20k/{n}"] == n
    # nothing shipped but what the index lists
    on_disk = {p.parent.relative_to(standard_splits.SHIPPED_DIR).as_posix()
               for p in standard_splits.SHIPPED_DIR.rglob("labeled.txt.gz")}  # fmt: skip
    assert on_disk == set(INDEX["splits"])


def test_data_split_names_both_files_and_paper_configs_use_it():
    cfg = load_config("demo", ["data.split=voc/366"])
    assert cfg.data.labeled == "shipped:voc/366/labeled"
    path = find_split_file(cfg.data.unlabeled, cfg.data, "data.unlabeled")
    assert path == standard_splits.SHIPPED_DIR / "voc" / "366" / "unlabeled.txt.gz"
    for config, split in (("voc_blended_r101_513", "voc/u2pl_1_16"),
                          ("cityscapes_r101_801", "cityscapes/1_16"),
                          ("ade20k_mitb1_512", "ade20k/1263")):  # fmt: skip
        assert load_config(config).data.split == split
    # a stored config (labeled already resolved) loads again unchanged
    again = load_config(None, base={"data": {"split": "voc/366", "labeled": cfg.data.labeled}})
    assert again.data.labeled == cfg.data.labeled


def test_a_split_and_an_own_file_together_or_an_unknown_name_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"data.split=null to use your own files"):
        load_config("voc_blended_r101_513", ["data.labeled=mine.txt"])
    cfg = load_config("demo", ["data.split=voc/93"])
    with pytest.raises(ConfigError, match=r"data.split=voc/93: no such shipped split.*voc/92"):
        find_split_file(cfg.data.labeled, cfg.data, "data.labeled")


def test_splits_list_prints_every_split_with_its_source(capsys):
    code, out, _ = cli(capsys, "splits", "--list")
    assert code == 0
    for name in INDEX["splits"]:
        assert f"\n{name} " in out
    assert "Haochen-Wang409/U2PL@ab3d2be" in out and "naver-ai/dual-teacher@868e6e7" in out
