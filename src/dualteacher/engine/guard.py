"""What keeps a long run from losing work: signals, faults, retention and determinism.

``RunGuard`` is used by the training loop as a context manager around the whole run:

- SIGTERM / SIGINT set a flag; the loop writes a checkpoint at the end of the current step and
  stops with ``TrainingStopped`` (exit status 143 / 130 from the CLI). A second SIGINT stops at
  once, without a checkpoint.
- A bad data file met while training (``BadSampleError``) stops the run with the file named,
  after writing a checkpoint of the last completed step. So does any other failure of the
  data loader (e.g. a worker gone): a step reads its batches before its first forward pass,
  and buffers and RNG are rewound to the step's start should a read come later.
- A step whose loss is not finite is skipped: no optimizer, EMA or BatchNorm-statistics update.
  ``train.max_bad_steps`` of them in a row stop the run; the last checkpoint written before is
  kept: no periodic checkpoint is written on a skipped step, and none from non-finite weights.
- A checkpoint is written only from a good state: finite weights, and neither the loss nor the
  largest weight more than ``EXPLODED`` times (and above an absolute floor) their level at the
  last good checkpoint (or at the start). Otherwise the run stops (exit status 1) naming the
  last good checkpoint, which resuming then really starts from.
- Samples skipped under ``data.skip_bad`` are counted and each file is logged once.
- ``train.deterministic`` switches torch to deterministic algorithms for the run.

The counters travel in every checkpoint (``state["guard"]``), so they survive a resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dualteacher.config import Config
from dualteacher.engine.checkpoint import (
    remove_stale_temp_files,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from dualteacher.errors import (
    BadSampleError,
    BadValidationFile,
    CheckpointError,
    ConfigError,
    DataError,
    TrainingStopped,
)

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells do
# A state has blown up when its loss or its largest |weight| is this many times their level at
# the last good checkpoint (or the run's start) and above the floor (cross-entropy losses of a
# working model stay far below 100; weights of a normalised network far below 1000).
EXPLODED, LOSS_FLOOR, WEIGHT_FLOOR = 1e3, 100.0, 1e3


def blown_up(value: float, reference: float | None, floor: float) -> bool:
    """``value`` is more than ``EXPLODED`` times ``reference`` and above ``floor``."""
    return reference is not None and value > max(EXPLODED * reference, floor)


def _say(msg: str) -> None:
    """Write to stderr without Python's buffered I/O, which a signal handler may interrupt."""
    with contextlib.suppress(OSError):
        os.write(2, (msg + "\n").encode())


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write a file in it, so that a read-only or mistyped output path is
    reported before anything is built."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write to the run directory {out_dir} (--out / train.out_dir): "
            f"{e.strerror or e}. Give a writable directory with --out DIR, or fix its "
            "permissions."
        ) from None


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic torch algorithms (and cuDNN) inside the block; previous settings after.

    ``warn_only``: a CUDA op without a deterministic kernel (e.g. bilinear upsampling backward)
    warns instead of ending the run; on CPU every op the models use is deterministic.
    """
    if not enabled:
        yield
        return
    # cuBLAS reads this when CUDA starts; it is needed for deterministic matrix products.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def _any_rank(flag: bool) -> bool:
    """``flag`` of this process, or of any rank under DDP (one tiny all-reduce)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([float(flag)])
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


class RunGuard:
    """Signals, fault handling, counters and checkpoint retention of one training run."""

    def __init__(self, cfg: Config, out_dir: Path, is_main: bool = True):
        self.cfg, self.out_dir, self.is_main = cfg, Path(out_dir), is_main
        self.completed = 0  # optimizer steps done (the state a checkpoint would hold)
        self.saved_step: int | None = None  # step of the last checkpoint written or found
        self.bad_steps = 0  # steps skipped for a non-finite loss, in total
        self.bad_in_a_row = 0
        self.bad_samples = 0  # training samples replaced under data.skip_bad, in total
        self.bad_files: list[str] = []  # the distinct files among them
        self._logged: set[str] = set()
        self._signal: int | None = None
        self._handlers: dict[int, Any] = {}
        self._buffers: list[torch.Tensor] | None = None  # the running step's start state
        self._rng: dict | None = None
        self._method: torch.nn.Module | None = None
        self._checkpoint: Callable[[int], dict] | None = None
        self._skipped = False
        self._fetch_failed = False
        # blow-up detection (see ``check_good``): losses since the last good checkpoint, and
        # the loss / largest |weight| levels at it (or at the start of this process)
        self._losses: list[float] = []
        self.loss_ref: float | None = None
        self._weight_ref: float | None = None

    # --- context: deterministic mode, signal handlers, faults --------------------------------
    def __enter__(self) -> RunGuard:
        self._det = deterministic_mode(self.cfg.train.deterministic)
        self._det.__enter__()
        if self.is_main:
            remove_stale_temp_files(self.out_dir)
        # Python runs signal handlers in the main thread only; elsewhere (a library caller's
        # worker thread) the process keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT:
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()
        self._det.__exit__(exc_type, exc, tb)
        if exc is None or not (self._fetch_failed or isinstance(exc, BadSampleError)):
            return
        saved = self._save_after_fault()
        if isinstance(exc, BadSampleError):
            raise self._stop_on_bad_file(exc) from None
        if self._signal is not None:
            raise self.interrupted() from None
        if saved:  # an unexpected loader failure keeps its traceback
            _say(f"reading data failed; checkpoint of step {self.completed} written first")

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: now
        _say(
            f"\n{name} received: stopping after the current step with a checkpoint"
            + (" (Ctrl-C again stops at once, without one)" if signum == signal.SIGINT else "")
        )
        self._signal = signum

    def bind(self, checkpoint: Callable[[int], dict]) -> None:
        """``checkpoint(step)`` builds the checkpoint dict of the current state."""
        self._checkpoint = checkpoint

    # --- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "bad_steps": self.bad_steps,
            "bad_samples": self.bad_samples,
            "bad_files": list(self.bad_files),
            "loss_ref": self.loss_ref,
        }

    def load_state_dict(self, state: dict, step: int) -> None:
        self.bad_steps = state.get("bad_steps", 0)
        self.bad_samples = state.get("bad_samples", 0)
        self.bad_files = list(state.get("bad_files", []))
        self.loss_ref = state.get("loss_ref")
        self.completed = self.saved_step = step

    def counters(self) -> dict[str, int]:
        """For the metrics rows."""
        return {"bad_steps": self.bad_steps, "bad_samples": self.bad_samples}

    # --- checkpoints -------------------------------------------------------------------------
    def save(self, step: int, periodic: bool = False) -> Path | None:
        """Write the checkpoint of ``step`` (rank 0) and prune old ones. ``periodic`` saves
        are left out while the loss is not finite, and non-finite weights are refused, so that
        the last checkpoint stays a good one."""
        if not self.is_main or self._checkpoint is None or (periodic and self.bad_in_a_row):
            return None
        self.check_good(step)
        state = self._checkpoint(step)
        bad = [
            k for k, v in state["state"].items() if v.is_floating_point() and not v.isfinite().all()
        ]
        if bad:
            raise TrainingStopped(
                f"the weights are no longer finite at step {step} ({', '.join(bad[:3])}, ...): "
                f"the run is stopped and no checkpoint is written. {self._last_good()} "
                f"{self._nan_fix()}"
            )
        path = save_run_checkpoint(state, self.out_dir, step, self.cfg.train.keep_last)
        self.saved_step = step
        self._good_state_saved()
        return path

    def check_good(self, step: int) -> None:
        """Raise ``TrainingStopped`` when the state of ``step`` has blown up (its last finite
        loss or its largest |weight|, see ``EXPLODED``), so that no checkpoint is written
        from it and the last good one stays the one to resume from."""
        loss = self._losses[-1] if self._losses else None
        if loss is not None and blown_up(loss, self.loss_ref, LOSS_FLOOR):
            what = f"the loss exploded to {loss:.3g} (it was {self.loss_ref:.3g})"
        else:
            peak = self._largest_weight()
            if peak is None or not blown_up(peak, self._weight_ref, WEIGHT_FLOOR):
                return
            what = f"the largest weight exploded to {peak:.3g} (it was {self._weight_ref:.3g})"
        raise TrainingStopped(
            f"{what} by step {step}: the run is stopped and no checkpoint is written from this "
            f"state. {self._last_good()} {self._nan_fix()}"
        )

    def _largest_weight(self) -> float | None:
        """max |parameter| of the method (student and teachers); None before the first step."""
        if self._method is None:
            return None
        with torch.no_grad():
            peaks = [p.detach().abs().max() for p in self._method.parameters() if p.numel()]
            return float(torch.stack(peaks).max().float()) if peaks else None

    def _good_state_saved(self) -> None:
        """A good checkpoint was written: its levels are the reference from now on."""
        if self._losses:
            self.loss_ref = float(statistics.median(self._losses[-20:]))
            self._losses = self._losses[-1:]
        self._weight_ref = self._largest_weight()

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "No checkpoint was written before."
        return f"The last good checkpoint is {self.out_dir / 'latest.pt'} (step {self.saved_step})."

    def _nan_fix(self) -> str:
        return (
            "Lower optim.lr (or raise optim.warmup_steps), check the data with `dualteacher "
            "check`, then resume with train.resume_with_changes=true, or start a new --out."
        )

    def _resume_hint(self) -> str:
        return (
            f"Run the same command again (same config, --out {self.out_dir}) to resume "
            f"from step {self.saved_step}."
        )

    # --- per step ----------------------------------------------------------------------------
    def watch(self, batches: Iterator[dict]) -> Iterator[dict]:
        """Pass batches through, counting and logging the samples ``data.skip_bad`` replaced
        (the loaders attach them to the batch as ``.skipped``)."""
        it = iter(batches)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception:  # not KeyboardInterrupt: a second Ctrl-C means "no checkpoint"
                self._fetch_failed = True  # the step has not changed any weight yet
                raise
            for path, reason in getattr(batch, "skipped", ()):
                self.bad_samples += 1
                if path not in self.bad_files:
                    self.bad_files.append(path)
                if path not in self._logged and self.is_main:
                    self._logged.add(path)
                    print(
                        f"warning: skipped bad training file {path}: {reason} (data.skip_bad="
                        f"true: replaced by another sample; {self.bad_samples} skipped so far)",
                        file=sys.stderr,
                    )
            yield batch

    def begin_step(self, method: torch.nn.Module) -> None:
        """Remember what the forward pass changes: buffers (BatchNorm statistics) and RNG."""
        if self._method is None:
            self._method = method
            self._weight_ref = self._largest_weight()  # the weights the run starts from
        self._method = method
        self._buffers = [b.detach().clone() for b in method.buffers()]
        self._rng = rng_state()
        self._skipped = False

    def skip_step(self, loss: torch.Tensor, method: torch.nn.Module, step: int) -> bool:
        """True (and the step's buffer updates undone) when ``loss`` is not finite, on this
        rank or (under DDP) on any other: all ranks skip the same steps."""
        if not _any_rank(not bool(torch.isfinite(loss.detach()).all())):
            value = float(loss.detach().float().sum())  # synchronised already by isfinite
            if self.loss_ref is None:
                self.loss_ref = value  # the loss of the starting weights
            self._losses = [*self._losses[-99:], value]
            return False
        with torch.no_grad():
            for b, saved in zip(method.buffers(), self._buffers):
                b.copy_(saved)
        self._skipped = True
        self.bad_steps += 1
        self.bad_in_a_row += 1
        limit = self.cfg.train.max_bad_steps
        if self.is_main:
            print(
                f"warning: step {step + 1}: the loss is {float(loss.detach().float().sum())}; "
                f"step skipped (no weight or teacher update), {self.bad_in_a_row} in a row of "
                f"train.max_bad_steps={limit}, {self.bad_steps} in total",
                file=sys.stderr,
            )
        if self.bad_in_a_row >= limit:
            raise TrainingStopped(
                f"the loss was not finite for {self.bad_in_a_row} steps in a row (up to step "
                f"{step + 1}, train.max_bad_steps={limit}): the run is stopped. "
                f"{self._last_good()} {self._nan_fix()}"
            )
        return True

    def end_step(self, done: int) -> None:
        """Step ``done`` (1-based) is complete."""
        self.completed = done
        self._buffers = self._rng = None
        if not self._skipped:
            self.bad_in_a_row = 0

    def stop_requested(self) -> bool:
        """A signal arrived (on any rank: all ranks stop at the same step)."""
        return _any_rank(self._signal is not None)

    def interrupted(self) -> TrainingStopped:
        """The error that ends a run stopped by a signal (after its checkpoint was written)."""
        sig = self._signal or signal.SIGTERM
        return TrainingStopped(
            f"stopped by {signal.Signals(sig).name} after step {self.completed}; checkpoint "
            f"{self.out_dir / 'latest.pt'} written. {self._resume_hint()}",
            exit_code=SIGNAL_EXIT.get(sig, 1),
            label="interrupted",
        )

    def _save_after_fault(self) -> bool:
        """Checkpoint the last completed step, if newer than the last checkpoint, after
        rewinding what the failed step may have changed before its data read failed."""
        if not self.completed or self.completed == self.saved_step:
            return False
        if self._buffers is not None and self._method is not None:
            with torch.no_grad():
                for b, saved in zip(self._method.buffers(), self._buffers):
                    b.copy_(saved)
            set_rng_state(self._rng)
        with contextlib.suppress(TrainingStopped, CheckpointError):
            return self.save(self.completed) is not None
        return False

    def _stop_on_bad_file(self, err: BadSampleError) -> DataError:
        """The message of a run stopped by a bad file."""
        saved = (
            f"Checkpoint {self.out_dir / 'latest.pt'} (step {self.saved_step}) is kept."
            if self.saved_step is not None
            else "No training step was done yet."
        )
        if isinstance(err, BadValidationFile):
            return DataError(
                f"bad validation file, the run is stopped at its validation: {err}\n{saved} "
                "Validation files are never skipped (data.skip_bad applies to training files "
                "only): fix or replace the file, or leave it out of the validation set (a split "
                "file data.val=...), then run the same command to resume. `dualteacher check "
                "CONFIG` lists every bad file."
            )
        return DataError(
            f"bad data file, the run is stopped: {err}\n{saved} Fix or remove the file "
            "(`dualteacher check CONFIG` lists every bad file) and run the same command to "
            "resume, or set data.skip_bad=true to skip bad files."
        )
