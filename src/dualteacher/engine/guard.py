"""What keeps a long run from losing work: signals, checkpoints, bad files and non-finite losses.

One class per job, used by the training loop (``engine.trainer``):

- ``StopSignals``: SIGTERM / SIGINT set a flag; the loop writes a checkpoint at the end of the
  current step and stops with ``TrainingStopped`` (exit status 143 / 130 from the CLI). A second
  SIGINT stops at once, without a checkpoint. Under DDP the ranks agree on the flag in the
  step's one all-reduce (``engine.step``), so they all stop after the same step.
- ``Checkpointer``: writes the checkpoints of a run (rank 0) with their retention, refuses
  non-finite weights and blown-up states (``GoodStates``), and knows on every rank which step
  was saved last.
- ``GoodStates``: a checkpoint is written only from a good state: neither the last loss nor
  the largest |weight| more than ``EXPLODED`` times (and above a floor) their level at the last
  good checkpoint (or at the start). Otherwise the run stops (exit status 1) naming the last
  good checkpoint, which resuming then really starts from.
- ``BadSampleLog``: counts and logs the samples ``data.skip_bad`` replaced; notes a failed read.
- ``NonFiniteSteps``: counts the steps skipped for a non-finite loss (the skip itself is the step
  runner's) and stops the run after ``train.max_bad_steps`` of them in a row; no periodic
  checkpoint is written on a skipped step, and none from non-finite weights.
- ``save_after_fault``: a bad data file (``BadSampleError``) or any other failure of the data
  loader stops the run with the file named, after writing a checkpoint of the last completed
  step. A step reads its batches before its first forward pass, and buffers and RNG are
  rewound to the step's start should a read come later.

The counters live in ``engine.state.TrainState``, so they travel in every checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import statistics
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dualteacher.checkpoint import remove_stale_temp_files, save_run_checkpoint
from dualteacher.engine.distributed import any_rank
from dualteacher.engine.state import TrainState
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


def _say(msg: str) -> None:
    """Write to stderr without Python's buffered I/O, which a signal handler may interrupt."""
    with contextlib.suppress(OSError):
        os.write(2, (msg + "\n").encode())


def check_writable(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` and write a file in it, so that a read-only or mistyped output path is
    reported before anything is built. Returns the folders it created, deepest first, for
    ``remove_empty`` when the run fails before writing anything (a bad data root must not leave
    an empty ``runs/<data>_<method>`` behind)."""
    created = list(itertools.takewhile(lambda p: not p.exists(), (out_dir, *out_dir.parents)))
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
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty; keep anything with a file."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it and its parents stay
            return


def nan_fix() -> str:
    return (
        "Lower optim.lr (or raise optim.warmup_steps), check the data with `dualteacher "
        "check`, then resume with train.resume_with_changes=true, or start a new --out."
    )


class StopSignals:
    """SIGTERM and SIGINT handlers for the duration of a run (a context manager): ``received``
    is the signal that arrived, if any."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        # Python runs signal handlers in the main thread only; elsewhere (a library caller's
        # worker thread) the process keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT:
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: now
        _say(
            f"\n{name} received: stopping after the current step with a checkpoint"
            + (" (Ctrl-C again stops at once, without one)" if signum == signal.SIGINT else "")
        )
        self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def stopped(self, step: int, checkpoints: Checkpointer) -> TrainingStopped:
        """The error that ends a run stopped by a signal after ``step`` (checkpoint written)."""
        sig = self.received or signal.SIGTERM
        return TrainingStopped(
            f"stopped by {signal.Signals(sig).name} after step {step}; checkpoint "
            f"{checkpoints.out_dir / 'latest.pt'} written. {checkpoints.resume_hint()}",
            exit_code=SIGNAL_EXIT.get(sig, 1),
            label="interrupted",
        )


def blown_up(value: float, reference: float | None, floor: float) -> bool:
    """``value`` is more than ``EXPLODED`` times ``reference`` and above ``floor``."""
    return reference is not None and value > max(EXPLODED * reference, floor)


class GoodStates:
    """Whether the current state is good enough to checkpoint: its last finite loss and its
    largest |weight| against their levels at the last good checkpoint (or at the start).

    Losses are kept as 0-d tensors (``record``: no host synchronisation per step); they are
    read when a checkpoint is due. ``state.loss_ref`` travels in the checkpoints."""

    def __init__(self, state: TrainState):
        self.state = state
        self._losses: list[torch.Tensor] = []  # finite step losses since the last good save
        self._weight_ref: float | None = largest_weight(state.method)  # the starting weights

    def record(self, loss: torch.Tensor, skipped: bool) -> None:
        if not skipped:
            self._losses = [*self._losses[-19:], loss.detach().float().sum()]

    def problem(self, step: int) -> str | None:
        """What blew up by ``step`` (None: the state is good)."""
        losses = [float(v) for v in torch.stack(self._losses).tolist()] if self._losses else []
        if self.state.loss_ref is None and losses:
            self.state.loss_ref = losses[0]  # the loss of the weights the run started from
        ref = self.state.loss_ref
        if losses and blown_up(losses[-1], ref, LOSS_FLOOR):
            return f"the loss exploded to {losses[-1]:.3g} (it was {ref:.3g}) by step {step}"
        peak = largest_weight(self.state.method)
        if peak is not None and blown_up(peak, self._weight_ref, WEIGHT_FLOOR):
            return (
                f"the largest weight exploded to {peak:.3g} (it was {self._weight_ref:.3g}) by "
                f"step {step}"
            )
        return None

    def saved(self) -> None:
        """A good checkpoint was written: its levels are the reference from now on."""
        if self._losses:
            values = torch.stack(self._losses).tolist()
            self.state.loss_ref = float(statistics.median(values))
            self._losses = self._losses[-1:]
        self._weight_ref = largest_weight(self.state.method)


def largest_weight(method: torch.nn.Module) -> float | None:
    """max |parameter| of ``method`` (student and teachers), one host synchronisation."""
    with torch.no_grad():
        peaks = [p.detach().abs().max() for p in method.parameters() if p.numel()]
        return float(torch.stack(peaks).max().float()) if peaks else None


class Checkpointer:
    """The checkpoints of one run directory: rank 0 writes them, every rank knows the last."""

    def __init__(
        self,
        out_dir: Path,
        keep_last: int,
        is_main: bool,
        device: torch.device,
        saved_step: int | None = None,
        good: GoodStates | None = None,
    ):
        self.out_dir, self.keep_last, self.is_main = Path(out_dir), keep_last, is_main
        self.device = device
        self.saved_step = saved_step  # step of the last checkpoint written or resumed from
        self.good = good
        if is_main:
            remove_stale_temp_files(self.out_dir)

    def check_good(self, state: TrainState) -> None:
        """``TrainingStopped`` when the state of ``state.step`` has blown up on any rank
        (``GoodStates``), so that no checkpoint (``best.pt`` neither) is written from it."""
        problem = self.good.problem(state.step) if self.good is not None else None
        (blown,) = any_rank(self.device, problem is not None)
        if blown:
            raise TrainingStopped(
                f"{problem or 'the state blew up on another rank'}: the run is stopped and no "
                f"checkpoint is written from this state. {self.last_good()} {nan_fix()}"
            )

    def save(self, state: TrainState, agree: bool = True) -> None:
        """Write the checkpoint of ``state.step`` (rank 0) and prune old ones. Non-finite
        weights are refused, so that the last checkpoint stays a good one. Under DDP every
        rank checks its own (identical) weights and, with ``agree``, learns whether rank 0's
        write worked (one all-reduce), so that all of them go on or stop together; a rank that
        is stopping on its own (a data fault) does not wait for the others."""
        step = state.step
        bad = _non_finite(state.method)
        if bad:
            raise TrainingStopped(
                f"the weights are no longer finite at step {step} ({', '.join(bad[:3])}, ...): "
                f"the run is stopped and no checkpoint is written. {self.last_good()} "
                f"{nan_fix()}"
            )
        if agree:  # a rank stopping on its own (a data fault) does not wait for the others
            self.check_good(state)
        error = None
        if self.is_main:
            try:
                save_run_checkpoint(state.state_dict(), self.out_dir, step, self.keep_last)
            except CheckpointError as e:
                error = e
        (failed,) = any_rank(self.device, error is not None) if agree else (False,)
        if error is not None:
            raise error
        if failed:
            raise CheckpointError(
                f"rank 0 could not write the checkpoint of step {step} to {self.out_dir} "
                "(its error says why); every rank stops"
            )
        self.saved_step = step
        if self.good is not None:
            self.good.saved()

    def last_good(self) -> str:
        if self.saved_step is None:
            return "No checkpoint was written before."
        return f"The last good checkpoint is {self.out_dir / 'latest.pt'} (step {self.saved_step})."

    def resume_hint(self) -> str:
        return (
            f"Run the same command again (same config, --out {self.out_dir}) to resume "
            f"from step {self.saved_step}."
        )


def _non_finite(method: torch.nn.Module) -> list[str]:
    """Names of the floating-point tensors of ``method``'s state that hold NaN or infinity;
    one host synchronisation for all of them."""
    floats = [(k, v) for k, v in method.state_dict().items() if v.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([v.isfinite().all() for _, v in floats])
    if bool(finite.all()):
        return []
    return [k for (k, _), ok in zip(floats, finite.tolist()) if not ok]


class BadSampleLog:
    """Passes training batches through, counting (in ``state``) and logging once per file the
    samples ``data.skip_bad`` replaced (the loaders attach them to the batch as ``.skipped``);
    ``fetch_failed`` notes a read that raised."""

    def __init__(self, state: TrainState, is_main: bool):
        self.state, self.is_main = state, is_main
        self.fetch_failed = False
        self._logged: set[str] = set()

    def watch(self, batches: Iterator[dict] | None) -> Iterator[dict] | None:
        return None if batches is None else self._watch(iter(batches))

    def _watch(self, it: Iterator[dict]) -> Iterator[dict]:
        state = self.state
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except Exception:  # not KeyboardInterrupt: a second Ctrl-C means "no checkpoint"
                self.fetch_failed = True  # the step has not changed any weight yet
                raise
            for path, reason in getattr(batch, "skipped", ()):
                state.bad_samples += 1
                if path not in state.bad_files:
                    state.bad_files.append(path)
                if path not in self._logged and self.is_main:
                    self._logged.add(path)
                    print(
                        f"warning: skipped bad training file {path}: {reason} (data.skip_bad="
                        f"true: replaced by another sample; {state.bad_samples} skipped so far)",
                        file=sys.stderr,
                    )
            yield batch


class NonFiniteSteps:
    """The steps skipped for a non-finite loss: counted in ``state.bad_steps``, logged, and
    ``max_bad`` of them in a row stop the run."""

    def __init__(self, state: TrainState, max_bad: int, is_main: bool):
        self.state, self.max_bad, self.is_main = state, max_bad, is_main
        self.in_a_row = 0

    def record(self, skipped: bool, loss: torch.Tensor, step: int, checkpoints) -> None:
        """After step ``step`` (0-based): ``skipped`` says whether it was skipped."""
        if not skipped:
            self.in_a_row = 0
            return
        self.state.bad_steps += 1
        self.in_a_row += 1
        if self.is_main:
            print(
                f"warning: step {step + 1}: the loss is {float(loss.detach().float().sum())}; "
                f"step skipped (no weight or teacher update), {self.in_a_row} in a row of "
                f"train.max_bad_steps={self.max_bad}, {self.state.bad_steps} in total",
                file=sys.stderr,
            )
        if self.in_a_row >= self.max_bad:
            raise TrainingStopped(
                f"the loss was not finite for {self.in_a_row} steps in a row (up to step "
                f"{step + 1}, train.max_bad_steps={self.max_bad}): the run is stopped. "
                f"{checkpoints.last_good()} {nan_fix()}"
            )


def save_after_fault(
    error: BaseException,
    state: TrainState,
    checkpoints: Checkpointer,
    samples: BadSampleLog,
    signals: StopSignals,
    rewind,
) -> BaseException | None:
    """What to raise instead of ``error``, after a checkpoint of the last completed step, when
    reading data failed (``None``: re-raise ``error`` itself, or it is no data fault).
    ``rewind()`` restores what the failed step changed before its read failed."""
    if not (isinstance(error, BadSampleError) or samples.fetch_failed):
        return None
    saved = False
    if state.step and state.step != checkpoints.saved_step:
        rewind()
        with contextlib.suppress(TrainingStopped, CheckpointError):
            checkpoints.save(state, agree=False)
            saved = True
    if isinstance(error, BadValidationFile):
        kept = (
            f"Checkpoint {checkpoints.out_dir / 'latest.pt'} (step {checkpoints.saved_step}) "
            "is kept."
            if checkpoints.saved_step is not None
            else "No training step was done yet."
        )
        return DataError(
            f"bad validation file, the run is stopped at its validation: {error}\n{kept} "
            "Validation files are never skipped (data.skip_bad applies to training files "
            "only): fix or replace the file, or leave it out of the validation set (a split "
            "file data.val=...), then run the same command to resume. `dualteacher check "
            "CONFIG` lists every bad file."
        )
    if isinstance(error, BadSampleError):
        kept = (
            f"Checkpoint {checkpoints.out_dir / 'latest.pt'} (step {checkpoints.saved_step}) "
            "is kept."
            if checkpoints.saved_step is not None
            else "No training step was done yet."
        )
        return DataError(
            f"bad data file, the run is stopped: {error}\n{kept} Fix or remove the file "
            "(`dualteacher check CONFIG` lists every bad file) and run the same command to "
            "resume, or set data.skip_bad=true to skip bad files."
        )
    if signals.received is not None:  # the workers were stopped by the same signal
        return signals.stopped(state.step, checkpoints)
    if saved:  # an unexpected loader failure keeps its traceback
        _say(f"reading data failed; checkpoint of step {state.step} written first")
    return None
