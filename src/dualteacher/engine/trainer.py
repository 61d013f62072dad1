"""The training loop: plain, iteration-based, method-agnostic.

One step: next labelled (and unlabelled) batch -> ``method.training_step`` -> backward of
``"loss"`` -> optimizer and scheduler step -> ``method.after_step`` (teacher updates). Every
``eval_every`` steps the student and each teacher are validated; every ``ckpt_every`` steps
``latest.pt`` is written; ``best.pt`` follows the student's best mIoU. A run directory that
already holds ``latest.pt`` resumes from it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dualteacher.config import Config, load_config, to_dict, to_yaml
from dualteacher.data import DataBundle, build_data
from dualteacher.data.base import EvalSet
from dualteacher.data.loaders import build_train_loaders
from dualteacher.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dualteacher.engine.distributed import DistInfo, init_distributed, resolve_device
from dualteacher.engine.evaluate import evaluate
from dualteacher.engine.optim import build_optimizer, build_scheduler
from dualteacher.errors import CheckpointError
from dualteacher.methods import Method, StepInfo, build_method
from dualteacher.metrics import SegMetrics
from dualteacher.models import SegModel, build_model


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_per_epoch(cfg: Config, num_labeled: int, world_size: int = 1) -> int:
    """What an "epoch" is: ``train.epoch_steps`` if set, else one pass over the labelled set
    (``num_labeled // global labelled batch``, at least 1). Dual Teacher switches by it."""
    if cfg.train.epoch_steps:
        return cfg.train.epoch_steps
    return max(1, num_labeled // (cfg.data.batch_size * world_size))


@dataclass
class Run:
    """Everything built from a config, shared by training, evaluation and prediction."""

    cfg: Config
    dist: DistInfo
    device: torch.device
    bundle: DataBundle
    method: Method
    val_set: EvalSet
    checkpoint: dict | None = None


def build_run(
    cfg: Config | None = None,
    *,
    checkpoint: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    for_training: bool = True,
) -> Run:
    """Build data, student and method from ``cfg``, or from a checkpoint's stored config (with
    ``overrides``) and load its weights."""
    state = None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        cfg = load_config(None, overrides, base=state["config"])
    assert cfg is not None
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    bundle = build_data(cfg.data)
    if state is not None:
        _check_compatible(state, cfg, bundle, checkpoint)

    # Same seed on every rank: identical initial student and teachers everywhere.
    seed_all(cfg.train.seed)

    def make_model() -> SegModel:
        return build_model(cfg.model, bundle.num_classes)

    method = build_method(cfg, make_model(), make_model).to(device)
    if state is not None:
        method.load_state_dict(state["state"])
    return Run(cfg, dist, device, bundle, method, EvalSet(bundle.val, cfg.data), state)


def _check_compatible(state: dict, cfg: Config, bundle: DataBundle, path) -> None:
    stored = state["config"]
    problems = []
    if stored["model"]["name"] != cfg.model.name:
        problems.append(f"model {stored['model']['name']!r} (config says {cfg.model.name!r})")
    if stored["method"]["name"] != cfg.method.name:
        problems.append(f"method {stored['method']['name']!r} (config says {cfg.method.name!r})")
    if len(state["classes"]) != bundle.num_classes:
        problems.append(
            f"{len(state['classes'])} classes (dataset {cfg.data.name!r} has {bundle.num_classes})"
        )
    if problems:
        raise CheckpointError(
            f"{path} was trained with {'; '.join(problems)}. Use a run directory (--out) of its "
            "own for this config, or a checkpoint of the same model, method and classes."
        )


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    final: dict[str, SegMetrics]  # last validation, per evaluated model
    best_miou: float  # best student mIoU over the run
    best_step: int
    train_seconds: float  # wall-clock of the training steps (validation excluded)
    history: list[dict] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return self.final["student"].miou


class MetricWriter:
    """``metrics.jsonl`` (one JSON object per line) plus TensorBoard scalars; rank 0 only."""

    def __init__(self, out_dir: Path, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))

    def write(self, row: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def default_out_dir(cfg: Config) -> str:
    return f"runs/{cfg.data.name}_{cfg.method.name}"


def train(cfg: Config, *, stop_after: int | None = None) -> TrainResult:
    """Train ``cfg`` in ``cfg.train.out_dir``, resuming from its ``latest.pt`` if present.

    ``stop_after``: leave after this global step with ``latest.pt`` written, as an interrupted
    run would (tests use it; the schedule still spans ``train.steps``).
    """
    out_dir = Path(cfg.train.out_dir or default_out_dir(cfg))
    latest = out_dir / "latest.pt"
    run = build_run(cfg)
    method, dist, device = run.method, run.dist, run.device
    student = method.student
    optimizer = build_optimizer(student, cfg.optim)
    total = cfg.train.steps
    scheduler = build_scheduler(optimizer, total, cfg.optim)
    epoch_steps = steps_per_epoch(cfg, len(run.bundle.labeled), dist.world_size)

    start, best, history, t_train = 0, {"miou": float("-inf"), "step": 0}, [], 0.0
    if latest.is_file():
        state = load_checkpoint(latest)
        _check_compatible(state, cfg, run.bundle, latest)
        method.load_state_dict(state["state"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, history = state["step"], state["best"], state["history"]
        t_train = state["train_seconds"]
        set_rng_state(state["rng"])
        if dist.is_main:
            print(f"resuming {out_dir} from step {start}")
    else:
        # Per-rank randomness (mixing boxes, dropout) from here on; weights are identical.
        seed_all(cfg.train.seed + 1000 * dist.rank)

    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
    loader_x, loader_u = build_train_loaders(
        run.bundle,
        cfg.data,
        seed=cfg.train.seed,
        start_step=start,
        need_unlabeled=method.uses_unlabeled,
        need_strong=method.needs_strong_view,
        num_strong=method.num_strong_views,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
    )
    it_x = iter(loader_x)
    it_u = iter(loader_u) if loader_u is not None else None
    writer = MetricWriter(out_dir, cfg.train.tensorboard, dist.is_main)
    models = method.eval_models() if cfg.train.eval_teachers else {"student": student}
    final: dict[str, SegMetrics] = {}

    def checkpoint_state(step: int) -> dict:
        return {
            "config": to_dict(cfg),
            "classes": run.bundle.classes,
            "palette": run.bundle.palette,
            "state": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "best": best,
            "history": history,
            "train_seconds": t_train,
            "rng": rng_state(),
        }

    def validate() -> dict[str, SegMetrics]:
        return {
            name: evaluate(
                m,
                run.val_set,
                run.bundle.num_classes,
                cfg.eval,
                device,
                run.bundle.ignore_index,
                dist.rank,
                dist.world_size,
            )
            for name, m in models.items()
        }

    bar = tqdm(
        total=total,
        initial=start,
        disable=not (cfg.train.progress and dist.is_main),
        desc=f"{cfg.method.name}",
        dynamic_ncols=True,
    )
    step = start
    for step in range(start, total):
        t0 = time.perf_counter()
        batch_x = _to_device(next(it_x), device)
        batch_u = _to_device(next(it_u), device) if it_u is not None else None
        info = StepInfo(step, epoch_steps)
        method.train()
        out = method.training_step(batch_x, batch_u, info)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        scheduler.step()
        method.after_step(info)
        t_train += time.perf_counter() - t0
        done = step + 1
        bar.update(1)

        if done % cfg.train.log_every == 0 or done == total:
            row = {"step": done, "epoch": info.epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: float(v.detach() if torch.is_tensor(v) else v) for k, v in out.items()})
            row["time"] = t_train
            writer.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")

        if done % cfg.train.eval_every == 0 or done == total:
            final = validate()
            row = {"step": done, "time": t_train}
            row.update({f"miou_{n}": r.miou for n, r in final.items()})
            history.append({**row, "iou": {n: r.iou for n, r in final.items()}})
            writer.write(row, prefix="val")
            improved = final["student"].miou > best["miou"]
            if improved:
                best = {"miou": final["student"].miou, "step": done}
            if dist.is_main:
                parts = "  ".join(f"{n} {r.miou:5.2f}" for n, r in final.items())
                bar.write(f"step {done:>6}  val mIoU  {parts}  (best {best['miou']:.2f})")
                if improved:
                    save_checkpoint(checkpoint_state(done), out_dir / "best.pt")

        stopping = stop_after is not None and done >= stop_after
        if dist.is_main and (done % cfg.train.ckpt_every == 0 or done == total or stopping):
            save_checkpoint(checkpoint_state(done), latest)
        if stopping:
            break
    bar.close()
    writer.close()
    done = min(step + 1, total) if total > start else start
    if not final:  # nothing validated in this process (resumed a finished run, or stopped)
        final = validate()
    result = TrainResult(
        out_dir=str(out_dir),
        steps=done,
        final=final,
        best_miou=best["miou"],
        best_step=best["step"],
        train_seconds=t_train,
        history=history,
    )
    if dist.is_main and final:
        print(
            f"done: {done} steps in {t_train:.0f} s; student mIoU final {result.miou:.2f}, "
            f"best {result.best_miou:.2f} (step {result.best_step}); run dir {out_dir}"
        )
    return result
