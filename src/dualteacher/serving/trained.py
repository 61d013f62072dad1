"""A checkpoint's models, rebuilt for inference without its data: the one place where serving
reads a training checkpoint (``build_model_from_checkpoint``). The checkpoint file is read by
``dualteacher.checkpoint.load_checkpoint`` (safe: tensors, numbers and strings only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dualteacher.checkpoint import load_checkpoint, load_method_state
from dualteacher.config import Config, load_config, without_pretrained
from dualteacher.device import select_device
from dualteacher.errors import ConfigError
from dualteacher.methods import Method, build_seeded_method


@dataclass
class TrainedModels:
    """A checkpoint's student and teachers, ready for inference, built without its data."""

    cfg: Config
    device: torch.device
    method: Method
    classes: list[str]
    palette: list[tuple[int, int, int]]
    step: int

    def models(self, names: str = "student", single: bool = False) -> dict[str, torch.nn.Module]:
        """``student``, ``all`` or comma-separated names -> models in eval mode, by name.
        ``single``: the caller takes one model (``export``): the error offers no ``all``."""
        available = self.method.eval_models()
        wanted = list(available) if names == "all" else [n for n in names.split(",") if n]
        unknown = [n for n in wanted if n not in available]
        if unknown or not wanted:
            raise ConfigError(
                f"no model named {', '.join(unknown) or repr(names)} in this checkpoint; "
                f"it has: {', '.join(available)}"
                + (": name one of them" if single else " (or 'all')")
            )
        return {n: available[n].eval() for n in wanted}


def build_model_from_checkpoint(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device | None = None,
) -> TrainedModels:
    """Rebuild the model(s) of a checkpoint from its stored config and load the weights.

    Unlike ``build_run`` this does not build the dataset: predicting on new images needs
    neither the training data nor its root directory. ``overrides`` change the stored config
    (e.g. ``eval.mode=sliding``); ``device`` defaults to ``train.device`` of that config.
    """
    state = load_checkpoint(path)
    cfg = without_pretrained(load_config(None, overrides, base=state["config"]))
    device = select_device(str(device) if device is not None else cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    method = build_seeded_method(cfg, len(state["classes"]), device)
    load_method_state(method, state, path)
    method.eval()
    palette = [tuple(c) for c in state.get("palette") or []]
    return TrainedModels(cfg, device, method, list(state["classes"]), palette, state["step"])
