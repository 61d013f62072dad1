"""The export folder's format, read side: ``model.json`` checked (format, version, fields),
each file it names kept inside the folder and checked against its recorded size and SHA-256
before any parser sees it (``read_export``), and the weights loaded (``load_weights``).
Written by ``serving.export``; read by ``serving.segmenter.load_exported``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
from safetensors import SafetensorError

from dualteacher.checkpoint import file_sha256
from dualteacher.errors import CheckpointError
from dualteacher.models import SegModel

FORMAT = "dualteacher-export"
VERSION = 1
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx"}
FORMATS = tuple(FILES)


def read_export(path: str | Path, runtime: str = "torch") -> dict[str, Any]:
    """``model.json`` of an export directory, with the file ``runtime`` needs checked against
    its recorded size and SHA-256. Anything else is a one-line ``CheckpointError``."""
    path = Path(path)
    meta = path / "model.json"
    again = "export the checkpoint again (dualteacher export CKPT --out DIR)"
    if not meta.is_file():
        run = next((path / n for n in ("best.pt", "latest.pt") if (path / n).is_file()), None)
        if run is not None:  # a run directory given where its checkpoint is meant
            raise CheckpointError(
                f"{path} is a directory, not a checkpoint file: did you mean {run}?"
            )
        raise CheckpointError(
            f"{path} is not a dualteacher export (no model.json): give a checkpoint (.pt) or "
            "a directory written by `dualteacher export CKPT --out DIR`"
        )
    try:
        info = json.loads(meta.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta} is damaged ({e}); {again}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta} is not a dualteacher export (no '{FORMAT}' marker): give a directory "
            "written by `dualteacher export CKPT --out DIR`"
        )
    version = info.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{meta}: version {version!r} is no export version; {again}")
    if version > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer dualteacher (export version {info['version']}); "
            "upgrade the package to read it"
        )
    missing = [
        k for k in ("config", "classes", "palette", "exported_model", "files") if k not in info
    ]
    if missing:
        raise CheckpointError(f"{meta} lacks {', '.join(missing)}; {again}")
    if not isinstance(info["files"], dict):
        raise CheckpointError(f"{meta}: files must map formats to their files; {again}")
    fmt = "onnx" if runtime == "onnx" else "safetensors"
    entry = info["files"].get(fmt)
    if entry is None:
        other = "--runtime onnx" if fmt == "safetensors" else "--runtime torch"
        raise CheckpointError(
            f"{path} has no {FILES[fmt]} (exported with --format "
            f"{','.join(info['files'])}): use {other}, or {again} --format safetensors,onnx"
        )
    file = _export_file(path, meta, fmt, entry, again)
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; {again}")
    # The hash is checked before the file is handed to safetensors or ONNX Runtime: a parser
    # only ever sees the bytes that were exported.
    if file.stat().st_size != entry["bytes"] or file_sha256(file) != entry["sha256"]:
        raise CheckpointError(
            f"{file} is damaged or was replaced (its size or SHA-256 differs from model.json); "
            f"{again}"
        )
    return info


def _export_file(path: Path, meta: Path, fmt: str, entry, again: str) -> Path:
    """The file ``model.json``'s ``files.<fmt>`` names, refused (one line naming model.json and
    the field) unless it lies inside the export folder: a plain name, no ``..``, not absolute,
    and not a link that resolves outside. An export from someone else must not make us read,
    hash or load a file elsewhere on this machine."""
    key = f"files.{fmt}"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("name"), str)
        or not isinstance(entry.get("bytes"), int)
        or not isinstance(entry.get("sha256"), str)
    ):
        raise CheckpointError(
            f"{meta}: {key} must record the file's name, bytes and sha256; {again}"
        )
    name = entry["name"]
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or rel.drive or rel == Path("."):
        raise CheckpointError(
            f"{meta}: {key}.name {name!r} leads outside the export folder (an export names "
            f"its files inside it, e.g. {FILES[fmt]}); {again}"
        )
    file = path / rel
    real = file.resolve()
    if not real.is_relative_to(path.resolve()):
        raise CheckpointError(
            f"{meta}: {key}.name {name!r} is a link to {real}, outside the export folder "
            f"{path}; copy the file into the folder, or {again}"
        )
    return file


def load_weights(net: SegModel, path: Path) -> None:
    """Load ``model.safetensors`` into ``net``; a file of another model is a clear error."""
    try:
        safetensors.torch.load_model(net, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        detail = "; ".join(ln.strip() for ln in str(e).strip().splitlines()[:3])
        raise CheckpointError(
            f"cannot load {path} into {net.name} ({detail[:300]}); export the checkpoint again"
        ) from None
