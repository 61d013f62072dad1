"""``dualteacher export CKPT --out DIR``: one trained model, for deployment and sharing.

A checkpoint is a training state (optimizer, teachers, RNG) that only this package reads. An
export directory holds one of its models:

- ``model.safetensors``: the weights only (safetensors' ``save_model``; PyTorch state-dict
  keys of the ``SegModel``);
- ``model.onnx`` (``--format onnx``): the network with input ``image`` ``(N, 3, H, W)`` and
  output ``logits`` ``(N, K, H, W)``, batch, height and width dynamic: the padding to the
  architecture's multiple and the crop back are part of the graph, so any size runs. ONNX
  opset ``OPSET``. At export the file is run by ONNX Runtime against PyTorch at two input
  sizes; the agreement is written to ``model.json`` and an export that disagrees is refused;
- ``model.json``: architecture, classes, palette, normalisation, input-size rule, inference
  settings, validation metrics, the training config, and each file's size and SHA-256;
- ``README.md``: a short model card.

``dualteacher predict DIR ...`` and ``dualteacher.load_exported(DIR)`` read it
(``serving.export_format``, ``serving.segmenter``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from dualteacher import __version__
from dualteacher.checkpoint import load_checkpoint
from dualteacher.config import Config, load_config, to_dict
from dualteacher.errors import CheckpointError, ConfigError
from dualteacher.models import MODELS, SegModel
from dualteacher.outputs import check_inside_out, writes_under
from dualteacher.plots import label_colors
from dualteacher.serving.export_format import FILES, FORMAT, FORMATS, VERSION, file_sha256
from dualteacher.serving.segmenter import ONNX_EXTRA_HINT, OnnxModel
from dualteacher.serving.trained import build_model_from_checkpoint

# Opset 18: run by ONNX Runtime >= 1.14 on CPU; has LayerNormalization as one op (SegFormer,
# DINOv2; ONNX Runtime's fused kernel) and Resize with antialiasing (DINOv2's
# position-embedding resampling).
OPSET = 18
MIN_AGREEMENT = 0.999  # share of pixels whose ONNX Runtime argmax must equal PyTorch's
MIN_TORCH = "2.6"  # torch.onnx.export(dynamo=False) with opset 18 and dynamic axes, as used here


@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path]  # every file written, model.json last
    info: dict[str, Any]  # the content of model.json


def parse_formats(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"safetensors,onnx"`` -> ``("safetensors", "onnx")``; unknown names are an error."""
    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(
            f"--format {','.join(names) or repr(text)}: choose from {', '.join(FORMATS)} "
            "(several separated by ',')"
        )
    return tuple(f for f in FORMATS if f in names)


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    formats: str | tuple[str, ...] = ("safetensors",),
    model: str = "student",
    overrides: list[str] | tuple[str, ...] = (),
    force: bool = False,
) -> ExportResult:
    """Export the model ``model`` (``student``, ``teacher_a``, ...) of a checkpoint to
    ``out_dir``. ``overrides`` (``eval.mode=sliding``, ...) change the stored inference
    settings."""
    formats = parse_formats(formats)
    if model == "all" or "," in model:
        raise ConfigError(f"--model {model}: an export holds one model; name one (e.g. student)")
    trained = build_model_from_checkpoint(checkpoint, overrides, device="cpu")
    net = trained.models(model, single=True)[model]
    state = load_checkpoint(checkpoint)  # the training record: history, best, step
    # The config as trained (model.pretrained included, which rebuilding the model drops),
    # with the overrides of the inference settings.
    cfg = load_config(None, overrides, base=state["config"])
    return export_model(
        net,
        cfg,
        trained.classes,
        trained.palette,
        out_dir,
        formats,
        name=model,
        metrics=training_metrics(state, model, trained.classes),
        source=str(checkpoint),
        force=force,
    )


EXPORT_NAMES = ("model.json", "README.md", *FILES.values())  # what an export writes


def _earlier_export_files(out: Path, formats: tuple[str, ...], force: bool) -> set[str]:
    """The names of the files an earlier export listed in ``out/model.json`` (with its
    README.md and model.json): the only files an export replaces or removes. Refuses (unless
    ``force``) a non-empty folder that is no export, and files in the export's names that the
    earlier export did not write."""
    if not out.is_dir():
        return set()
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return set()
    listed: set[str] | None = None
    try:
        info = json.loads((out / "model.json").read_text())
        if isinstance(info, dict) and info.get("format") == FORMAT:
            listed = {f["name"] for f in info.get("files", {}).values()}
            listed |= {"model.json", "README.md"}
    except (OSError, ValueError, TypeError, KeyError):
        listed = None
    if force:
        return set(EXPORT_NAMES)
    if listed is None:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise ConfigError(
            f"--out {out} holds files no export wrote ({shown}): give a new or empty folder "
            "(or an earlier export's), or pass --force to write the export's files there "
            f"({', '.join(EXPORT_NAMES)} are then replaced; nothing else is touched)"
        )
    targets = {"model.json", "README.md", *(FILES[f] for f in formats)}
    foreign = sorted(n for n in targets & set(present) if n not in listed)
    if foreign:
        raise ConfigError(
            f"--out {out}: {', '.join(foreign)} there is not a file of the earlier export "
            "(its model.json does not list it): move it away, give another --out, or pass "
            "--force to replace it"
        )
    return listed


@writes_under("out_dir")
def export_model(
    net: SegModel,
    cfg: Config,
    classes: list[str],
    palette: list[tuple[int, int, int]],
    out_dir: str | Path,
    formats: str | tuple[str, ...] = ("safetensors",),
    *,
    name: str = "student",
    metrics: dict | None = None,
    source: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Write ``net`` (a ``SegModel`` built from ``cfg.model``) as an export directory.

    ``out_dir`` is a new or empty folder, or one an earlier export wrote (its ``model.json``
    lists its files): only the files that list names are replaced or removed. A folder holding
    other files in the export's names (``model.*``, ``README.md``), or a non-empty folder that is
    no export, is refused unless ``force`` (then those names are replaced; nothing else is
    touched)."""
    formats = parse_formats(formats)
    if "onnx" in formats:
        _require_onnx()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the export")
    ours = _earlier_export_files(out, formats, force)
    out.mkdir(parents=True, exist_ok=True)
    # Without model.json the directory is no export: a crash below leaves nothing half-valid.
    (out / "model.json").unlink(missing_ok=True)
    net = net.cpu().eval()
    files: dict[str, dict] = {}
    written: list[Path] = []
    onnx_info = None
    for fmt in FORMATS:
        path = out / FILES[fmt]
        if fmt not in formats:
            if path.name in ours:  # a file of the earlier export would not match
                path.unlink(missing_ok=True)
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        check_inside_out(tmp)  # written by safetensors / torch.onnx, which follow links
        try:
            if fmt == "safetensors":
                save_model(net, str(tmp), metadata={"format": "pt", "producer": FORMAT})
            else:
                onnx_info = export_onnx(net, tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; as any file here
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        files[fmt] = {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        written.append(path)
    info = _model_info(net, cfg, classes, palette, name, metrics, source, files, onnx_info)
    for name in ("README.md", "model.json"):
        check_inside_out(out / name)
    (out / "README.md").write_text(model_card(info))
    (out / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    return ExportResult(out, [*written, out / "README.md", out / "model.json"], info)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_export(result: ExportResult) -> str:
    """What ``dualteacher export`` prints: the files and, with ONNX, how well it agrees."""
    lines = [f"wrote {result.out_dir}:"]
    for path in result.files:
        lines.append(f"  {path.name:<18} {_size(path.stat().st_size):>9}")
    onnx = result.info.get("onnx")
    if onnx:
        lines.append(
            f"ONNX (opset {onnx['opset']}, dynamic batch, height and width) against PyTorch:"
        )
        for c in onnx["check"]:
            lines.append(
                f"  input {'x'.join(map(str, c['shape']))}: max abs logit difference "
                f"{c['max_abs_diff']:.2g} (logits up to {c['max_abs_logit']:.3g}), argmax "
                f"agreement {100 * c['argmax_agreement']:.3f} %"
            )
    m = result.info.get("metrics") or {}
    if m.get("miou") is not None:
        lines.append(f"validation mIoU {m['miou']:.2f} (step {m['step']})")
    return "\n".join(lines)


def _require_onnx() -> None:
    if torch.__version__ < MIN_TORCH:
        raise ConfigError(
            f"--format onnx needs torch {MIN_TORCH} or newer (this is {torch.__version__})"
        )
    missing = [m for m in ("onnx", "onnxruntime") if not _importable(m)]
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: {ONNX_EXTRA_HINT}")


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def example_side(net: SegModel) -> int:
    """Side of the square example input the graph is recorded with: a multiple of the
    divisor, at least 64 px (small, so that recording is fast)."""
    d = net.size_divisor
    return d * max(2, math.ceil(64 / d))


def export_onnx(net: SegModel, path: Path) -> dict[str, Any]:
    """Write ``net`` as ONNX to ``path`` with dynamic batch, height and width, run it with
    ONNX Runtime against PyTorch at two sizes and return what ``model.json`` says of it.

    Raises ``CheckpointError`` when ONNX Runtime's predictions differ (the file is deleted).
    """
    side = example_side(net)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    _register_bicubic_aa()
    # The TorchScript exporter: it records the input's shape arithmetic (the padding, the
    # decoders' resizes, ViT position-embedding resampling) as graph operations, and exports
    # every registered model in seconds. torch's newer torch.export-based exporter
    # (dynamo=True) gives the same graphs for all of them too, but takes 10-20x longer (on 2
    # cores about 30 s for DPT-DINOv2-S). It warns (deprecation, tracing of shape arithmetic);
    # whether the graph is right is checked below on inputs of two other sizes.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_axes={"image": axes, "logits": axes},
            dynamo=False,
        )
    check = check_onnx(net, path)
    worst = min(c["argmax_agreement"] for c in check)
    if worst < MIN_AGREEMENT:
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"the ONNX export of {net.name} predicts differently from PyTorch (argmax "
            f"agreement {100 * worst:.3f} % at {check}); not written. Export without onnx "
            "(--format safetensors) and report this model"
        )
    return {
        "opset": OPSET,
        "exporter": "torch.onnx (TorchScript)",
        "torch": torch.__version__,
        "input": "image",
        "output": "logits",
        "dynamic": {"batch": True, "height": True, "width": True},
        "check": check,
    }


def _register_bicubic_aa() -> None:
    """Teach the TorchScript exporter ``F.interpolate(mode="bicubic", antialias=True)``, which
    timm's ViT uses to resample DINOv2's position embeddings to the input's patch grid: ONNX
    ``Resize`` with the attributes onnxscript (torch's newer exporter) uses for the same op:
    Keys cubic ``a = -0.5`` and out-of-bounds taps dropped, as PyTorch's antialiased kernel."""
    # Here, not at the top: torch.onnx loads the exporter (slow), needed only for --format onnx.
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    # Traced as _upsample_bicubic2d_aa.vec(input, output_size, align_corners, scale_factors)
    @symbolic_helper.parse_args("v", "v", "b", "none")
    def bicubic_aa(g, x, output_size, align_corners, scale_factors):
        # sizes = (N, C) of x, then the requested (H, W): a shape computed in the graph
        shape = g.op("Shape", x)
        start, stop = (g.op("Constant", value_t=torch.tensor([i])) for i in (0, 2))
        head = g.op("Slice", shape, start, stop)
        sizes = g.op("Concat", head, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: int64
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))  # roi, scales
        return g.op(
            "Resize",
            x,
            empty,
            empty,
            sizes,
            mode_s="cubic",
            coordinate_transformation_mode_s="align_corners" if align_corners else "half_pixel",
            cubic_coeff_a_f=-0.5,
            antialias_i=1,
            exclude_outside_i=1,
        )

    register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", bicubic_aa, OPSET)


def check_sizes(net: SegModel) -> list[tuple[int, int, int]]:
    """Two (batch, height, width) to compare ONNX Runtime with PyTorch at, both other than
    the recorded example: a non-square multiple of the divisor at batch 1, and sides that are
    no multiples (so the graph's padding runs) at batch 2."""
    side, d = example_side(net), net.size_divisor
    return [(1, side, side + d), (2, side - d + 7, side + 11)]


def check_onnx(net: SegModel, path: Path, sizes=None) -> list[dict[str, Any]]:
    """ONNX Runtime against PyTorch on seeded random inputs: per size, the largest absolute
    logit difference, the largest absolute logit (for scale) and the share of pixels whose
    argmax agrees."""
    session = OnnxModel(path, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    out = []
    for b, h, w in sizes or check_sizes(net):
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = net(x).float()
        got = session(x)
        if got.shape != ref.shape:
            agreement, diff = 0.0, float("inf")
        else:
            agreement = (got.argmax(1) == ref.argmax(1)).float().mean().item()
            diff = (got - ref).abs().max().item()
        out.append(
            {
                "shape": [b, 3, h, w],
                "max_abs_diff": diff,
                "max_abs_logit": ref.abs().max().item(),
                "argmax_agreement": agreement,
            }
        )
    return out


def training_metrics(state: dict, name: str, classes: list[str]) -> dict[str, Any]:
    """What a checkpoint recorded of model ``name``'s validation at (or before) its step."""
    cfg = state["config"]
    rows = [
        h
        for h in state.get("history") or []
        if h.get("step", 0) <= state["step"] and f"miou_{name}" in h
    ]
    out: dict[str, Any] = {
        "checkpoint_step": state["step"],
        "train_seconds": state.get("train_seconds"),
        "validation": {
            "dataset": cfg["data"]["name"],
            "split": cfg["data"].get("val") or "the dataset's default validation set",
            "eval": cfg.get("eval"),
        },
    }
    if not rows:
        out["note"] = f"the checkpoint holds no validation of {name}"
        return out
    last = rows[-1]
    iou = (last.get("iou") or {}).get(name) or []
    out.update(
        step=last["step"],
        miou=_finite(last[f"miou_{name}"]),
        iou={c: _finite(v) for c, v in zip(classes, iou)},
    )
    best = state.get("best") or {}
    if name == "student" and best.get("step"):
        out["best_student"] = {"miou": _finite(best["miou"]), "step": best["step"]}
    return out


def _finite(v) -> float | None:
    """JSON has no NaN (an IoU of a class absent from the validation set)."""
    v = float(v)
    return round(v, 4) if math.isfinite(v) else None


def _model_info(net, cfg, classes, palette, name, metrics, source, files, onnx_info) -> dict:
    lut = label_colors(palette, len(classes))
    d = net.size_divisor
    info = {
        "format": FORMAT,
        "version": VERSION,
        "dualteacher_version": __version__,
        "architecture": {
            "name": net.name,
            "description": MODELS[net.name].description,
            "output_stride": cfg.model.output_stride,
            "num_classes": len(classes),
            "parameters": sum(p.numel() for p in net.parameters()),
        },
        "exported_model": name,
        "source": source,
        "classes": list(classes),
        "palette": [[int(v) for v in lut[i]] for i in range(len(classes))],
        "input": {
            "layout": "NCHW float32, RGB",
            "normalization": {
                "mean": list(cfg.data.mean),
                "std": list(cfg.data.std),
                "formula": "x = (pixel / 255 - mean) / std, per channel",
            },
            "size_rule": (
                f"any height and width; the model pads the bottom and right with zeros to "
                f"multiples of {d} and crops the logits back"
            ),
            "size_divisor": d,
            "training_crop": cfg.data.crop_size,
        },
        "output": "logits (N, K, H, W) float32 at the input's size; class id = argmax over K",
        "inference": to_dict(cfg)["eval"],
        "metrics": metrics,
        "method": to_dict(cfg)["method"]["name"],
        "config": to_dict(cfg),
        "files": files,
    }
    if onnx_info is not None:
        info["onnx"] = onnx_info
    return info


def model_card(info: dict[str, Any]) -> str:
    """The export's README.md: what the model is, how well it did, how to run it."""
    arch, m, inp = info["architecture"], info.get("metrics") or {}, info["input"]
    cfg = info["config"]
    lines = [
        f"# {arch['name']} ({info['exported_model']}), {cfg['data']['name']}, {info['method']}",
        "",
        f"Semantic segmentation model exported by dualteacher {info['dualteacher_version']}"
        + (f" from `{info['source']}`" if info.get("source") else "")
        + ".",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{arch['name']}`: {arch['description']} "
        f"({arch['parameters'] / 1e6:.1f} M parameters) |",
        f"| trained with | `{info['method']}`, {m.get('checkpoint_step', '?')} steps, data "
        f"`{cfg['data']['name']}` |",
    ]
    if m.get("miou") is not None:
        ev = m["validation"]["eval"] or {}
        lines.append(
            f"| validation mIoU | {m['miou']:.2f} at step {m['step']} "
            f"(`{m['validation']['dataset']}` validation set, eval.mode {ev.get('mode')}) |"
        )
    else:
        lines.append(f"| validation mIoU | not recorded ({m.get('note', 'no metrics')}) |")
    norm = inp["normalization"]
    lines += [
        f"| input | RGB, {inp['size_rule']}; normalised as `(pixel / 255 - mean) / std`, mean "
        f"{norm['mean']}, std {norm['std']} |",
        f"| output | {info['output']} |",
        "| files | " + ", ".join(f"`{f['name']}`" for f in info["files"].values()) + " |",
    ]
    onnx = info.get("onnx")
    if onnx:
        worst = min(c["argmax_agreement"] for c in onnx["check"])
        diff = max(c["max_abs_diff"] for c in onnx["check"])
        lines.append(
            f"| ONNX | opset {onnx['opset']}, dynamic batch, height and width; ONNX Runtime vs "
            f"PyTorch at {len(onnx['check'])} sizes: max abs logit difference {diff:.2g}, "
            f"argmax agreement {100 * worst:.2f} % |"
        )
    lines += ["", "## Classes", "", "| id | name | colour (RGB) |", "|---|---|---|"]
    lines += [f"| {i} | {c} | {tuple(info['palette'][i])} |" for i, c in enumerate(info["classes"])]
    if m.get("iou"):
        lines += ["", "Validation IoU per class (`-`: class absent from the validation set):", ""]
        lines += [
            "| class | IoU |",
            "|---|---|",
            *(f"| {c} | {'-' if v is None else f'{v:.2f}'} |" for c, v in m["iou"].items()),
        ]
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        "pip install 'dualteacher[onnx]'",
        "dualteacher predict THIS_DIR photos/ --out predictions"
        + ("                  # PyTorch" if "safetensors" in info["files"] else ""),
    ]
    if onnx:
        lines.append("dualteacher predict THIS_DIR photos/ --out predictions --runtime onnx")
    lines += [
        "```",
        "",
        "```python",
        "from dualteacher import load_exported",
        'model = load_exported("THIS_DIR"' + (', runtime="onnx")' if onnx else ")"),
        "ids = model.predict(rgb_uint8_array)  # (H, W) class ids",
        "```",
    ]
    if onnx:
        lines += [
            "",
            "With ONNX Runtime alone:",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])',
            f"mean, std = np.array({norm['mean']}), np.array({norm['std']})",
            "x = (rgb_uint8_array / 255 - mean) / std  # (H, W, 3)",
            'x = x.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, H, W) "image"',
            'ids = session.run(None, {"image": x})[0].argmax(1)[0]',
            "```",
            "",
            "This is whole-image inference; `dualteacher predict` follows `inference` in "
            "model.json (sliding window or resize where the model was validated that way).",
        ]
    lines += [
        "",
        "## Limits",
        "",
        "The metrics are those of the training run's validation set; on other images, measure "
        "before relying on them. `model.json` holds the full training config.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "ExportResult",
    "check_onnx",
    "export_checkpoint",
    "export_model",
    "format_export",
    "model_card",
    "parse_formats",
]
