"""Models ready to segment new images, from a checkpoint or an exported directory, run by
PyTorch or ONNX Runtime.

``load_segmenter(SOURCE)`` is what ``dualteacher predict`` uses: ``SOURCE`` is a training
checkpoint (``best.pt``) or a directory written by ``dualteacher export``; ``runtime="onnx"``
runs the directory's ``model.onnx`` with ONNX Runtime instead of PyTorch. Every runtime goes
through the same pre- and post-processing: ``Segmenter.to_input`` normalises as in training,
``Segmenter.logits`` is ``models.windows.predict_logits`` (whole image, sliding window or
resize, by the ``eval`` settings, as validation runs it), so the runtimes differ only in the
network's forward pass. This is the one way serving gets a model: ``predict``, ``suggest``,
``pseudolabel``, ``eval --report`` and ``export``'s ONNX check all go through it.

``load_exported(DIR)`` is the one-call Python API::

    from dualteacher import load_exported
    model = load_exported("exported/", runtime="onnx")
    ids = model.predict(np.asarray(Image.open("photo.jpg").convert("RGB")))  # (H, W) class ids
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from dualteacher.config import Config, load_config
from dualteacher.data.transforms import normalize
from dualteacher.device import select_device
from dualteacher.errors import CheckpointError, ConfigError
from dualteacher.models import build_model
from dualteacher.models.windows import predict_logits
from dualteacher.serving.export_format import load_weights, read_export
from dualteacher.serving.trained import TrainedModels, build_model_from_checkpoint

RUNTIMES = ("torch", "onnx")
ONNX_EXTRA_HINT = "install the ONNX extra: pip install 'dualteacher[onnx]'"


def import_onnxruntime():
    """``onnxruntime``, or a ``ConfigError`` saying how to install it."""
    try:  # optional: the ONNX extra (pip install 'dualteacher[onnx]')
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX Runtime is not installed: {ONNX_EXTRA_HINT}") from None
    return onnxruntime


class OnnxModel:
    """An ONNX Runtime session called like the PyTorch model: ``(B, 3, H, W)`` float tensor ->
    ``(B, K, H, W)`` logits on the input's device (the graph pads to its divisor itself)."""

    def __init__(self, path: str | Path, device: torch.device, threads: int | None = None):
        ort = import_onnxruntime()
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    f"--device {device} with --runtime onnx needs onnxruntime-gpu (this "
                    f"onnxruntime has {', '.join(ort.get_available_providers())}); use "
                    "--device cpu or pip install onnxruntime-gpu"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        elif device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ConfigError(f"--runtime onnx runs on cpu or cuda, not {device}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / ... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"cannot load {path} with ONNX Runtime ({first[:300]}): the file is damaged or "
                "not a dualteacher export; export the checkpoint again (dualteacher export)"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(logits).to(x.device)

    def eval(self) -> OnnxModel:  # the protocol of nn.Module that predict relies on
        return self


@dataclass
class Segmenter:
    """One or more models of one label space, with the settings to run them on images."""

    models: dict[str, Callable[[torch.Tensor], torch.Tensor]]  # name -> network
    cfg: Config  # data.mean / data.std normalise, eval.* choose whole / sliding / resize
    classes: list[str]
    palette: list[tuple[int, int, int]]
    device: torch.device
    runtime: str = "torch"
    info: dict = field(default_factory=dict)  # model.json of an exported directory
    step: int | None = None  # the checkpoint's step (None: an export)

    @classmethod
    def from_trained(cls, trained: TrainedModels, models: str = "student") -> Segmenter:
        """The models named by ``models`` of a checkpoint's ``TrainedModels``."""
        return cls(
            trained.models(models),
            trained.cfg,
            trained.classes,
            trained.palette,
            trained.device,
            step=trained.step,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_input(self, images: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 RGB images of one size -> (B, 3, H, W) normalised as in training,
        on the device."""
        norm = normalize(self.cfg.data)
        x = torch.stack(
            [norm(tv_tensors.Image(torch.from_numpy(im).permute(2, 0, 1))) for im in images]
        ).as_subclass(torch.Tensor)
        return x.to(self.device)

    def logits(self, x: torch.Tensor, name: str | None = None) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` of model ``name`` (default: the first) for ``to_input``'s
        ``x``, by the ``eval`` settings."""
        net = self.models[name or next(iter(self.models))]
        return predict_logits(net, x, self.cfg.eval, self.num_classes)

    def predict(self, image, name: str | None = None) -> np.ndarray:
        """Class ids ``(H, W)`` for one RGB image (``(H, W, 3)`` uint8 array or PIL image)."""
        if not isinstance(image, np.ndarray):
            image = np.asarray(image.convert("RGB"))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape}")
        return self.logits(self.to_input([image]), name).argmax(1)[0].cpu().numpy()


def load_segmenter(
    source: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    models: str = "student",
    device: str | torch.device | None = None,
    runtime: str = "torch",
) -> Segmenter:
    """The models named by ``models`` (``student``, ``all`` or names separated by ``,``) of a
    checkpoint file or an exported directory, run by ``runtime`` (``torch`` or ``onnx``).
    ``overrides`` change the stored config (``eval.mode=sliding``); ``device`` defaults to the
    config's ``train.device`` (PyTorch) or the CPU (ONNX Runtime)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: choose one of {', '.join(RUNTIMES)}")
    if device == "auto":
        device = select_device("auto")
    if Path(source).is_dir():
        return load_exported(source, runtime, device, overrides, models)
    if runtime == "onnx":
        raise ConfigError(
            f"--runtime onnx runs an exported directory, and {source} is a checkpoint: run "
            f"`dualteacher export {source} --out DIR --format safetensors,onnx` and predict "
            "with DIR"
        )
    return Segmenter.from_trained(build_model_from_checkpoint(source, overrides, device), models)


def load_exported(
    path: str | Path,
    runtime: str = "torch",
    device: str | torch.device | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    models: str = "student",
) -> Segmenter:
    """Load a directory written by ``dualteacher export`` in one call, ready to ``predict``.

    ``runtime="torch"`` rebuilds the architecture and loads ``model.safetensors``;
    ``runtime="onnx"`` opens ``model.onnx`` with ONNX Runtime. A directory that is not an
    export, or whose files are damaged, is a ``CheckpointError`` naming the file.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    path = Path(path)
    info = read_export(path, runtime)
    name = info["exported_model"]
    if models not in ("all", name):
        raise ConfigError(
            f"{path} holds the model {name!r} only (exported with --model {name}); use "
            f"--models {name}, or export the checkpoint again with --model {models}"
        )
    cfg = load_config(None, overrides, base=info["config"])
    threads = cfg.train.threads
    # The training machine's train.device says nothing about this one: CPU for ONNX Runtime
    # (what the export targets), PyTorch's best device otherwise.
    if runtime == "onnx":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        net = OnnxModel(path / info["files"]["onnx"]["name"], dev, threads)
    else:
        dev = torch.device(device) if device is not None else select_device("auto")
        if threads:
            torch.set_num_threads(threads)
        # The file holds every weight: never read encoder weights from model.pretrained.
        net = build_model(replace(cfg.model, pretrained=None), len(info["classes"]), verbose=False)
        load_weights(net, path / info["files"]["safetensors"]["name"])
        net = net.to(dev).eval()
    palette = [tuple(c) for c in info["palette"]]
    return Segmenter({name: net}, cfg, list(info["classes"]), palette, dev, runtime, info)
