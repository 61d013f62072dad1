"""Copy the standard semi-supervised split lists into the package (maintainers only).

The lists are data (image ids and paths), taken unchanged from the public repositories that
define them, gzip-compressed, with their source, commit, sha256 and line count recorded in
``src/dualteacher/data/shipped/index.json`` (``tests/test_shipped_splits.py`` checks them).

Usage: python scripts/vendor_splits.py UNIMATCH_GIT UNIMATCH_V2_GIT U2PL_GIT DUAL_TEACHER_GIT
(each a clone or a bare git directory; the file is read at the commit below with ``git show``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "dualteacher" / "data" / "shipped"

SOURCES = {
    "unimatch": ("LiheYoung/UniMatch", "0324f3dd4a22128105a5eb135d2586c0bb3cc647"),
    "unimatch_v2": ("LiheYoung/UniMatch-V2", "f6afb4dfca2d9dcbcee2307e97717954ca75c0ba"),
    "u2pl": ("Haochen-Wang409/U2PL", "ab3d2be313d4d6b2885e7a0213d4fce82a803b79"),
    "dual_teacher": ("naver-ai/dual-teacher", "868e6e794d8b4f19caf0a5de8107f3636de6aad7"),
}

# name -> (source, protocol, labeled path, unlabeled path)
SPLITS: dict[str, tuple[str, str, str, str]] = {}
for n in (92, 183, 366, 732, 1464):
    d = f"splits/pascal/{n}"
    SPLITS[f"voc/{n}"] = ("unimatch", "VOC classic", f"{d}/labeled.txt", f"{d}/unlabeled.txt")
for f in ("1_16", "1_8", "1_4"):
    d = f"splits/pascal/{f}"
    SPLITS[f"voc/cps_{f}"] = (
        "unimatch",
        "VOC blended, CPS family",
        f"{d}/labeled.txt",
        f"{d}/unlabeled.txt",
    )
for f, n in (("1_16", 662), ("1_8", 1323), ("1_4", 2646), ("1_2", 5291)):
    d = f"data/splits/pascal/{n}"
    SPLITS[f"voc/u2pl_{f}"] = (
        "u2pl",
        "VOC blended, U2PL family",
        f"{d}/labeled.txt",
        f"{d}/unlabeled.txt",
    )
for f in ("1_30", "1_16", "1_8", "1_4", "1_2"):
    d = f"splits/cityscapes/{f}"
    SPLITS[f"cityscapes/{f}"] = ("unimatch", "Cityscapes", f"{d}/labeled.txt", f"{d}/unlabeled.txt")
for n in (631, 1263, 2526, 5052, 10105):
    d = "data/ADEChallengeData2016"
    SPLITS[f"ade20k/{n}"] = (
        "dual_teacher",
        "ADE20K, Dual Teacher",
        f"{d}/training{n}_l.txt",
        f"{d}/training{n}_u.txt",
    )
for f in ("1_64", "1_32", "1_16", "1_8", "1_4", "1_2"):
    d = f"splits/ade20k/{f}"
    SPLITS[f"ade20k/{f}"] = (
        "unimatch_v2",
        "ADE20K, UniMatch V2",
        f"{d}/labeled.txt",
        f"{d}/unlabeled.txt",
    )


def main(gits: list[str]) -> None:
    repos = dict(zip(SOURCES, gits, strict=True))
    index = {
        "sources": {k: {"repository": r, "commit": c} for k, (r, c) in SOURCES.items()},
        "splits": {},
    }
    for name, (src, protocol, lab, unl) in SPLITS.items():
        entry = {"source": src, "protocol": protocol}
        for part, path in (("labeled", lab), ("unlabeled", unl)):
            data = subprocess.run(
                ["git", "-C", repos[src], "show", f"{SOURCES[src][1]}:{path}"],
                check=True,
                capture_output=True,
            ).stdout
            target = OUT / name / f"{part}.txt.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            # mtime=0: the same bytes on every run
            target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
            lines = sum(1 for ln in data.decode().splitlines() if ln.strip())
            entry[part] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "lines": lines}
        index["splits"][name] = entry
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
