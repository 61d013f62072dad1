"""Training and evaluation loaders.

Training data come as an endless stream: draw ``p = 0, 1, 2, ...`` of a stream takes position
``p % n`` of a fresh permutation per pass (pass ``p // n``), each pass shuffled from
``(seed, stream, pass)``, the pass index playing the role of ``DistributedSampler.set_epoch``
(labelled and unlabelled streams count their passes separately). Rank ``r`` of ``W`` takes
draws ``r, r + W, ...``, so the ranks split every global batch into disjoint parts. Each draw also
carries its own augmentation seed. So the data order and every augmentation depend only on the
run seed and the step: a resumed run continues with exactly the batches an uninterrupted run
would have seen, with any number of workers.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from dualteacher.config import DataConfig
from dualteacher.data.base import SKIPPED_KEY, DataBundle, LabeledTrainSet, UnlabeledTrainSet
from dualteacher.errors import DataError

STREAM_LABELED, STREAM_UNLABELED = 1, 2


def _mix(*xs: int) -> int:
    """A stable 63-bit hash of integers (seeds must not depend on Python's hash salt)."""
    digest = hashlib.blake2b(repr(xs).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StreamSampler(Sampler):
    """Endless ``(index, augmentation_seed)`` pairs, see the module docstring."""

    def __init__(
        self,
        n: int,
        seed: int,
        stream: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ):
        self.n, self.seed, self.stream = n, seed, stream
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle

    def permutation(self, pass_index: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(_mix(self.seed, self.stream, pass_index))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start  # local draw counter of this rank
        cached_pass, perm = -1, None
        while True:
            p = self.rank + self.world_size * k  # global draw index
            pass_index, pos = divmod(p, self.n)
            if pass_index != cached_pass:
                cached_pass, perm = pass_index, self.permutation(pass_index)
            yield int(perm[pos]), _mix(self.seed, self.stream, p, 7)
            k += 1


class TrainBatch(dict):
    """A collated batch; ``skipped`` lists the ``(path, reason)`` of bad files that
    ``data.skip_bad`` replaced in it (an attribute, so a method never sees it as a key)."""

    skipped: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()


def collate_train(samples: list[dict]) -> TrainBatch:
    skipped = [bad for s in samples for bad in s.pop(SKIPPED_KEY, ())]
    batch = TrainBatch(default_collate(samples))
    batch.skipped = skipped
    return batch


def _quiet_worker_signals(worker_id: int) -> None:
    """Workers leave SIGINT (Ctrl-C reaches the whole process group) to the main process,
    which finishes its step and writes a checkpoint. On SIGTERM (a scheduler signals every
    process) a worker exits with status 0: torch aborts the main process at once, mid-step,
    only for a worker killed by a signal; a worker gone quietly shows at the next batch fetch,
    after the main process has seen its own SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def _loader(dataset, sampler, batch_size: int, cfg: DataConfig, device: torch.device):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_train,
        worker_init_fn=_quiet_worker_signals,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda" if cfg.pin_memory is None else cfg.pin_memory,
        persistent_workers=cfg.num_workers > 0 and cfg.persistent_workers,
        drop_last=True,
        # A private generator: creating the iterator must not consume the global RNG, or a
        # resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(0),
    )


def build_train_loaders(
    bundle: DataBundle,
    cfg: DataConfig,
    *,
    seed: int,
    start_step: int,
    need_unlabeled: bool,
    need_strong: bool,
    num_strong: int = 1,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    accum_steps: int = 1,
    official_pad: bool = False,
) -> tuple[DataLoader, DataLoader | None]:
    """Endless labelled and unlabelled loaders positioned at optimizer step ``start_step``
    (``accum_steps`` batches per optimizer step).

    With ``need_strong``, unlabelled batches carry ``num_strong`` strong views (``image_s``,
    ``image_s2``, ...). ``official_pad``: weak views padded as mmseg does (``Method.official_pad``,
    see ``data.transforms``)."""
    device = torch.device(device)
    if len(bundle.labeled) == 0:
        hint = getattr(bundle.labeled, "empty_hint", "") or "give images with masks (data.labeled)"
        raise DataError(f"the labelled set is empty: {hint}")
    bx = cfg.batch_size
    bu = cfg.batch_size_u or cfg.batch_size
    start_batch = start_step * accum_steps  # batches this rank has already drawn
    sx = StreamSampler(
        len(bundle.labeled), seed, STREAM_LABELED, rank, world_size, start_batch * bx
    )
    loader_x = _loader(LabeledTrainSet(bundle.labeled, cfg, official_pad), sx, bx, cfg, device)
    loader_u = None
    if need_unlabeled:
        if bundle.unlabeled is None or len(bundle.unlabeled) == 0:
            hint = getattr(bundle.unlabeled, "empty_hint", "") or "give data.unlabeled=SPLIT_FILE"
            raise DataError(
                f"the unlabelled set of data.name={cfg.name} is empty, but this method trains "
                f"on unlabelled images: {hint}; or use method.name=supervised"
            )
        su = StreamSampler(
            len(bundle.unlabeled), seed, STREAM_UNLABELED, rank, world_size, start_batch * bu
        )
        unlabeled = UnlabeledTrainSet(bundle.unlabeled, cfg, need_strong, num_strong, official_pad)
        loader_u = _loader(unlabeled, su, bu, cfg, device)
    return loader_x, loader_u
