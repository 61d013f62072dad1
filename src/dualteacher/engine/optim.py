"""Optimizer parameter groups and the learning-rate schedule (pure functions of the step)."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from dualteacher.config import Config, LrScaling, OptimConfig, OptimName, Schedule
from dualteacher.errors import ConfigError
from dualteacher.models import SegModel


def no_decay_params(model: nn.Module) -> set[int]:
    """Ids of the parameters AdamW should not decay: norms, biases and layer-scale gammas (all
    1-D), plus what a timm-style module lists in ``no_weight_decay()`` (a ViT's position
    embedding and class token, which are 3-D)."""
    ids = {id(p) for p in model.parameters() if p.ndim <= 1}
    for module in model.modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            own = dict(module.named_parameters())
            ids |= {id(own[n]) for n in names() if n in own}
    return ids


def param_groups(model: SegModel, cfg: OptimConfig) -> list[dict]:
    """Backbone at ``lr``, the rest (decoder, head) at ``lr * head_lr_mult`` (10 in the paper
    recipes: pretrained encoder, randomly initialised head).

    With AdamW, norms, biases and position embeddings get no weight decay (``no_decay_params``;
    SegFormer's recipe); SGD decays everything (UniMatch's recipe). The official Dual Teacher
    code groups by name instead: ``docs/method.md`` F18.
    """
    encoder = {id(p) for p in model.encoder.parameters()}
    skip_decay = no_decay_params(model) if cfg.name == OptimName.adamw else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        no_decay = id(p) in skip_decay
        groups.setdefault((id(p) in encoder, no_decay), []).append(p)
    out = []
    for (is_encoder, no_decay), params in sorted(groups.items(), reverse=True):
        lr = cfg.lr if is_encoder else cfg.lr * cfg.head_lr_mult
        wd = 0.0 if no_decay else cfg.weight_decay
        name = ("backbone" if is_encoder else "head") + ("_no_decay" if no_decay else "")
        out.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
    return out


def build_optimizer(model: SegModel, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == OptimName.sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of every group's base lr at ``step``.

    Linear warm-up from ``warmup_ratio`` over ``warmup_steps``, then ``poly``:
    ``(1 - step / horizon) ** poly_power`` (or ``constant``: 1). The horizon is the run's
    ``total_steps``, or ``optim.schedule_steps`` when set; past that horizon the factor keeps
    its value at the last step before it (the official ``PolyWarmupAdamW`` stops updating).
    """
    if step < cfg.warmup_steps:
        return cfg.warmup_ratio + (1 - cfg.warmup_ratio) * step / cfg.warmup_steps
    if cfg.schedule == Schedule.constant:
        return 1.0
    if cfg.schedule_steps is not None:
        total_steps = cfg.schedule_steps
        step = min(step, total_steps - 1)
    return max(0.0, 1.0 - step / max(1, total_steps)) ** cfg.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig):
    if cfg.schedule_steps is not None and cfg.schedule_steps < 1:
        raise ConfigError(
            f"optim.schedule_steps={cfg.schedule_steps} must be a positive number of steps "
            "(or null: the schedule spans the run)"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg)
    )


def load_keeping_config(optimizer: torch.optim.Optimizer, scheduler, state: dict) -> None:
    """Load a checkpoint's optimizer and scheduler states (momenta, step count) but keep the
    hyper-parameters of the current config (learning rates, weight decay, momentum, betas):
    ``load_state_dict`` alone would bring back the checkpoint's, so that resuming with
    ``train.resume_with_changes=true optim.lr=...`` (the advice after a blow-up) would train
    on with the old learning rate. With an unchanged config this changes nothing."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base = list(scheduler.base_lrs)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = base
    for g, saved, b in zip(optimizer.param_groups, groups, base):
        g.update(saved)
        g["initial_lr"] = b
        g["lr"] = b * scheduler.lr_lambdas[0](scheduler.last_epoch)  # as LambdaLR computes it


def scaled_optim_config(cfg: Config, world_size: int = 1) -> tuple[OptimConfig, str]:
    """``cfg.optim`` with ``lr`` scaled by ``optim.scale_lr`` for the global labelled batch
    ``data.batch_size * world_size * train.accum_steps`` relative to ``optim.ref_batch_size``
    (default ``data.batch_size``), and a line that says what the effective lr is and why.

    ``cfg`` itself is not changed: a resumed run scales the stored lr again, by its own
    global batch.
    """
    o = cfg.optim
    ref = cfg.data.batch_size if o.ref_batch_size is None else o.ref_batch_size
    if ref < 1:
        raise ConfigError(f"optim.ref_batch_size={ref} must be a positive number of images")
    global_batch = cfg.data.batch_size * world_size * cfg.train.accum_steps
    ratio = global_batch / ref
    factor = {LrScaling.none: 1.0, LrScaling.linear: ratio, LrScaling.sqrt: math.sqrt(ratio)}
    lr = o.lr * factor[o.scale_lr]
    line = (
        f"learning rate {lr:g} (optim.lr {o.lr:g} x {factor[o.scale_lr]:g}, "
        f"optim.scale_lr={o.scale_lr.value}): global batch {global_batch} = "
        f"{cfg.data.batch_size} per process x {world_size} processes x "
        f"{cfg.train.accum_steps} accumulation steps, reference batch {ref}"
    )
    return replace(o, lr=lr), line
