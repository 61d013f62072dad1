"""The standard semi-supervised split lists, shipped with the package.

Paper protocols are defined by exact lists of labelled images. The lists of the protocols the
docs/data.md names are stored here unchanged (gzip-compressed, in ``data/shipped/``), as their
public repositories publish them: UniMatch (VOC classic 92 ... 1464, VOC blended CPS family,
Cityscapes 1/30 ... 1/2), U2PL (VOC blended U2PL family), Dual Teacher (ADE20K 631 ... 10105)
and UniMatch V2 (ADE20K 1/64 ... 1/2). ``index.json`` records each file's repository, commit,
path, sha256 and line count (``scripts/vendor_splits.py`` wrote it; a test re-checks it).

``data.split=voc/u2pl_1_16`` names one; it sets ``data.labeled`` and ``data.unlabeled`` to
``shipped:voc/u2pl_1_16/labeled`` and ``.../unlabeled``, which ``data.splits`` reads from the
package wherever it is installed (so a stored config stays valid after a reinstall).
``dualteacher splits --list`` prints them all.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from dualteacher.config import SHIPPED
from dualteacher.errors import ConfigError

SHIPPED_DIR = Path(__file__).with_name("shipped")
SCHEME = SHIPPED  # prefix of a split-file value that names a shipped list
PARTS = ("labeled", "unlabeled")


@functools.cache
def index() -> dict:
    """``{"sources": {key: {repository, commit}}, "splits": {name: {source, protocol,
    labeled: {path, sha256, lines}, unlabeled: {...}}}}``."""
    return json.loads((SHIPPED_DIR / "index.json").read_text())


def names() -> list[str]:
    return list(index()["splits"])


def check_name(name: str, key: str = "data.split") -> None:
    if name not in index()["splits"]:
        raise ConfigError(
            f"{key}={name}: no such shipped split. Shipped: {', '.join(names())} "
            "(`dualteacher splits --list` describes them), or set data.split=null and give "
            "your own files as data.labeled / data.unlabeled"
        )


def values(name: str) -> dict[str, str]:
    """The ``data.labeled`` / ``data.unlabeled`` values that ``data.split=name`` stands for."""
    check_name(name)
    return {part: f"{SCHEME}{name}/{part}" for part in PARTS}


def resolve(value: str, key: str) -> Path:
    """The packaged file of a ``shipped:NAME/PART`` value (config key ``key``)."""
    name, _, part = value[len(SCHEME) :].rpartition("/")
    check_name(name)  # data.split=NAME is how users write it
    if part not in PARTS:
        raise ConfigError(f"{key}={value}: the part after {name}/ is one of {', '.join(PARTS)}")
    return SHIPPED_DIR / name / f"{part}.txt.gz"


def listing() -> str:
    """The table ``dualteacher splits --list`` prints."""
    idx = index()
    rows = [f"{'name':<18} {'labelled':>8} {'unlabelled':>10}  protocol (source)"]
    for name, s in idx["splits"].items():
        src = idx["sources"][s["source"]]
        rows.append(
            f"{name:<18} {s['labeled']['lines']:>8} {s['unlabeled']['lines']:>10}  "
            f"{s['protocol']} ({src['repository']}@{src['commit'][:7]}, {s['labeled']['path']})"
        )
    rows.append(
        "use: data.split=NAME (e.g. data.split=voc/u2pl_1_16) with data.root of that dataset"
    )
    return "\n".join(rows)
