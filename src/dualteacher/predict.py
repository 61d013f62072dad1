"""``dualteacher predict CHECKPOINT INPUT... --out DIR``: segment images of any size.

Inputs are image files, folders (searched recursively for image files by extension; other
files there are skipped and counted) and glob patterns (``"photos/**/*.jpg"``). For each image
``NAME`` (a folder's sub-folders are kept under ``DIR``) three files are written:

- ``NAME.png``: the class ids, a palette PNG (mode ``P``) whose palette is the dataset's
  colours, so it opens as a colour picture and reads back as ids;
- ``NAME_color.png``: the same as an RGB picture;
- ``NAME_overlay.png``: the image blended with the colours.

With several ``--models`` each gets a sub-folder ``DIR/<model>/``. ``DIR/classes.json`` lists
the class ids, names and colours. Inference follows the checkpoint's ``eval`` settings (whole
image, sliding window or resize; override e.g. ``eval.mode=sliding``), images are normalised as
in training. Images are read with EXIF orientation applied (as viewers show them) and converted
to RGB. An input that cannot be read is reported and skipped; the rest are still written.

The model comes from a checkpoint or from a directory written by ``dualteacher export``, run
by PyTorch or (``runtime="onnx"``, an export with ``model.onnx``) ONNX Runtime: see
``dualteacher.inference``.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif"}
_GLOB_CHARS = set("*?[")


@dataclass
class PredictResult:
    written: list[Path] = field(default_factory=list)  # index PNGs written
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    skipped: list[Path] = field(default_factory=list)  # non-image files found in folders


@dataclass
class _Input:
    path: Path
    name: str  # output name without extension, may contain sub-folders ("sub/img")


def collect_inputs(inputs: list[str]) -> tuple[list[_Input], list[tuple[str, str]], list[Path]]:
    """Expand files, folders and globs into a list of images with unique output names.

    Returns ``(images, failed, skipped)``: ``failed`` holds inputs that match nothing,
    ``skipped`` the non-image files found inside folders.
    """
    found: list[_Input] = []
    failed: list[tuple[str, str]] = []
    skipped: list[Path] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            for f in files:
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append(_Input(f, f.relative_to(p).with_suffix("").as_posix()))
                else:
                    skipped.append(f)
            if not files:
                failed.append((arg, "folder holds no files"))
        elif p.is_file():
            found.append(_Input(p, p.stem))  # given by name: read whatever its extension
        elif _GLOB_CHARS & set(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                failed.append((arg, "no file matches this pattern"))
            found += [_Input(m, m.stem) for m in matches]
        else:
            failed.append((arg, "no such file or folder"))
    # The same file twice is predicted once; two files with one name get _2, _3, ...
    unique: list[_Input] = []
    seen_paths: set[Path] = set()
    used: set[str] = set()
    for item in found:
        real = item.path.resolve()
        if real in seen_paths:
            continue
        seen_paths.add(real)
        name, k = item.name, 1
        while name in used:
            k += 1
            name = f"{item.name}_{k}"
        used.add(name)
        unique.append(_Input(item.path, name))
    return unique, failed, skipped


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied. Raises ``ValueError`` with the reason."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.array(im.convert("RGB"))  # a writable copy
    except UnidentifiedImageError:
        raise ValueError("not an image file PIL can read (corrupt or unsupported)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged image data
        raise ValueError(f"cannot decode: {e}") from None


class _ImageFiles(Dataset):
    def __init__(self, items: list[_Input]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            return {"item": item, "image": read_image(item.path)}
        except ValueError as e:
            return {"item": item, "error": str(e)}


def _save_outputs(
    out: Path, name: str, image: np.ndarray, pred: np.ndarray, lut: np.ndarray, alpha: float
) -> Path:
    from dualteacher.plots import colorize, overlay

    base = out / name
    base.parent.mkdir(parents=True, exist_ok=True)
    if lut.shape[0] <= 256 and pred.max(initial=0) < 256:
        index = Image.fromarray(pred.astype(np.uint8))  # mode L; the palette makes it P
        index.putpalette(lut[:256].reshape(-1).tolist())
    else:  # more than 256 classes: 16-bit grey ids, no palette
        index = Image.fromarray(pred.astype(np.uint16))
    index_path = base.with_name(base.name + ".png")
    index.save(index_path)
    color = colorize(pred, lut)
    Image.fromarray(color).save(base.with_name(base.name + "_color.png"))
    Image.fromarray(overlay(image, color, alpha)).save(base.with_name(base.name + "_overlay.png"))
    return index_path


def predict(
    checkpoint: str | Path,
    inputs: list[str],
    out_dir: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    models: str = "student",
    batch_size: int | None = None,
    alpha: float = 0.5,
    device: str | None = None,
    workers: int = 0,
    progress: bool = True,
    runtime: str = "torch",
) -> PredictResult:
    """Predict every image of ``inputs`` with ``checkpoint`` (a checkpoint file or a directory
    written by ``dualteacher export``); see the module docstring.

    Args:
        overrides: ``key=value`` changes of the stored config, e.g. ``eval.mode=sliding``.
        models: ``student``, ``all`` or comma-separated model names (``teacher_a``, ...).
        batch_size: images per forward pass (equal sizes only); default ``eval.batch_size``.
        alpha: weight of the colours in the overlay.
        workers: DataLoader workers that read images.
        runtime: ``torch``, or ``onnx`` (ONNX Runtime; an exported directory with model.onnx).
    """
    from dualteacher.inference import load_segmenter
    from dualteacher.plots import label_colors

    items, failed, skipped = collect_inputs(list(inputs))
    result = PredictResult(failed=failed, skipped=skipped)
    if not items:
        return result
    trained = load_segmenter(checkpoint, overrides, models, device, runtime)
    nets = trained.models
    cfg = trained.cfg
    lut = label_colors(trained.palette, trained.num_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.json").write_text(
        json.dumps(
            [{"id": i, "name": c, "color": lut[i].tolist()} for i, c in enumerate(trained.classes)],
            indent=1,
        )
    )
    outs = {n: out_dir / n if len(nets) > 1 else out_dir for n in nets}
    inputs_resolved = {it.path.resolve() for it in items}
    loader = DataLoader(
        _ImageFiles(items),
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=workers,
        collate_fn=list,
    )
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
    for chunk in loader:
        groups: dict[tuple[int, int], list[dict]] = {}
        for s in chunk:
            if "error" in s:
                result.failed.append((str(s["item"].path), s["error"]))
                bar.update(1)
                continue
            clash = [o for o in outs.values() if _targets(o, s["item"].name) & inputs_resolved]
            if clash:
                result.failed.append(
                    (str(s["item"].path), "an output would overwrite an input; use another --out")
                )
                bar.update(1)
                continue
            groups.setdefault(s["image"].shape[:2], []).append(s)
        for group in groups.values():
            # (B, 3, H, W) normalised like the training images
            x = trained.to_input([s["image"] for s in group])
            for name in nets:
                pred = trained.logits(x, name).argmax(1).cpu().numpy()
                for s, p in zip(group, pred):
                    path = _save_outputs(outs[name], s["item"].name, s["image"], p, lut, alpha)
                    if name == next(iter(nets)):
                        result.written.append(path)
            bar.update(len(group))
    bar.close()
    return result


def _targets(out: Path, name: str) -> set[Path]:
    base = out / name
    return {
        base.with_name(base.name + sfx).resolve() for sfx in (".png", "_color.png", "_overlay.png")
    }


def format_failures(result: PredictResult) -> str:
    """The end-of-run listing of inputs that could not be predicted."""
    lines = [f"{len(result.failed)} input(s) failed:"]
    lines += [f"  {path}: {reason}" for path, reason in result.failed]
    return "\n".join(lines)
