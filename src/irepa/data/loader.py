"""A resumable, deterministic, infinite loader: the global batch at step ``s`` depends on (seed, s) only.

Epoch ``e`` visits the dataset in the order ``permutation_e`` and flips item positions by
``flips_e``, both drawn from ``numpy.random.default_rng([seed, e])``. With ``drop_last`` every
epoch has ``len(dataset) // batch_size`` steps (the remainder is left out that epoch); without
it the epochs form one continuous stream cut into batches. Rank ``k`` of ``W`` takes positions
``[k * B / W, (k + 1) * B / W)`` of each global batch of ``B`` items. Starting at ``start_step``
only does this arithmetic; no item before it is loaded. Worker processes get ready-made
``SampleKey(index, flip)`` lists, so their random state plays no part.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from irepa.errors import DataError

from .base import SampleKey


@lru_cache(maxsize=4)
def epoch_plan(size: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Visiting order and per-position flip bits of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(size)
    flips = rng.random(size) < 0.5
    order.flags.writeable = False
    flips.flags.writeable = False
    return order, flips


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode images; one thread each avoids oversubscription


class StepLoader:
    """Iterable of batches (dicts of stacked tensors) from ``start_step`` on, forever."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        prefetch_factor: int = 2,
    ):
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise DataError("the dataset is empty", fix="check data.path and data.limit")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"the global batch size {batch_size} must be a positive multiple of world_size={world_size}"
            )
        if drop_last and batch_size > self.size:
            raise DataError(
                f"a batch of {batch_size} items exceeds the dataset ({self.size} items)",
                fix="lower train.batch_size, or raise train.grad_accum (a batch is train.batch_size / "
                "train.grad_accum items), or use more data",
            )
        if seed < 0 or start_step < 0:
            raise ValueError(f"seed and start_step must be >= 0, got {seed} and {start_step}")
        self.dataset = dataset
        self.batch_size, self.seed, self.start_step = batch_size, seed, start_step
        self.rank, self.world_size = rank, world_size
        self.local_batch_size = batch_size // world_size
        self.num_workers, self.drop_last, self.prefetch_factor = num_workers, drop_last, prefetch_factor
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.steps_per_epoch = self.size // batch_size if drop_last else None

    def epoch_of(self, step: int) -> int:
        """Epoch that the first item of ``step`` belongs to."""
        if self.drop_last:
            return step // self.steps_per_epoch
        return step * self.batch_size // self.size

    def global_keys(self, step: int) -> list[SampleKey]:
        """All ``batch_size`` keys of the global batch at ``step``."""
        if self.drop_last:
            epoch, within = divmod(step, self.steps_per_epoch)
            order, flips = epoch_plan(self.size, self.seed, epoch)
            lo = within * self.batch_size
            return [SampleKey(int(order[p]), bool(flips[p])) for p in range(lo, lo + self.batch_size)]
        keys = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, p = divmod(position, self.size)
            order, flips = epoch_plan(self.size, self.seed, epoch)
            keys.append(SampleKey(int(order[p]), bool(flips[p])))
        return keys

    def keys(self, step: int) -> list[SampleKey]:
        """This rank's slice of the global batch at ``step``."""
        lo = self.rank * self.local_batch_size
        return self.global_keys(step)[lo : lo + self.local_batch_size]

    def _key_batches(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        extra = (
            {"prefetch_factor": self.prefetch_factor, "worker_init_fn": _worker_init}
            if self.num_workers
            else {}
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=self._key_batches(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **extra,
        )
        return iter(loader)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = True,
) -> StepLoader:
    """Infinite deterministic batches; ``batch_size`` is the GLOBAL batch (each rank gets
    ``batch_size // world_size``). Batches at step ``s`` equal those of an uninterrupted run."""
    return StepLoader(
        dataset, batch_size, seed, start_step, rank, world_size, num_workers, pin_memory, drop_last
    )
