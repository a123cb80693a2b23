"""The training stream of a step as a function of (seed, step, position), so a resumed step
sees exactly the samples the uninterrupted step would have seen.

Detectron2's ``TrainingSampler`` draws its permutations one after another from a single
generator, so it can only start at the beginning of its stream: a step resumed at iteration
100 would replay the samples of iterations 0-99. Here the stream is a sequence of epochs,
epoch ``e`` being the permutation drawn from :func:`eir.seeding.epoch_seed` ``(seed, step, e)``; its sample at global
position ``p`` (``p = iteration * total_batch_size + slot``) is computable directly, so the
sampler starts at any position. Each yielded item is ``(position, index)``: the position
travels with the sample into the mapper (:data:`eir.data.mapper.POSITION_KEY`), whose
random streams (crop, flip, pasting) are drawn from ``(seed, step, position, sample)`` and
so do not depend on the number of data-loader workers or on where the step was resumed.
"""
from __future__ import annotations

import eir.require_detectron2  # noqa: F401  (first: says how to install a missing Detectron2)

# isort: split
from typing import Iterator

import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import Dataset, Sampler

from eir.data.mapper import POSITION_KEY
from eir.seeding import epoch_seed


def epoch_order(size: int, seed: int, step: int, epoch: int) -> list[int]:
    """The permutation of ``range(size)`` that epoch ``epoch`` of step ``step`` visits."""
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, step, epoch))
    return torch.randperm(size, generator=g).tolist()


class ResumableTrainingSampler(Sampler):
    """An infinite shuffled stream of ``(position, index)`` pairs from position ``start`` on.

    Under DDP, rank ``r`` of ``W`` takes the positions ``p`` with ``p % W == r``, so that
    iteration ``i`` of the whole job trains on positions ``i*B .. i*B + B - 1`` (``B`` the
    total batch size), whatever the number of processes.
    """

    def __init__(self, size: int, *, seed: int, step: int, start: int = 0):
        if size <= 0:
            raise ValueError(f"the training set is empty (size {size})")
        if start < 0:
            raise ValueError(f"start position must be >= 0, got {start}")
        self.size = int(size)
        self.seed = int(seed)
        self.step = int(step)
        self.start = int(start)
        self.rank = comm.get_rank()
        self.world = comm.get_world_size()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + (self.rank - self.start) % self.world
        epoch, order = None, []
        while True:
            e, i = divmod(position, self.size)
            if e != epoch:
                epoch, order = e, epoch_order(self.size, self.seed, self.step, e)
            yield position, order[i]
            position += self.world


class PositionedDataset(Dataset):
    """Dataset dicts looked up by the sampler's ``(position, index)``, mapped by ``mapper``.

    The mapper receives a copy of dict ``index`` with its stream position under
    :data:`~eir.data.mapper.POSITION_KEY`.
    """

    def __init__(self, dicts: list[dict], mapper):
        self.dicts = DatasetFromList(dicts, copy=True)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, index = key
        d = self.dicts[index]
        d[POSITION_KEY] = int(position)
        return self.mapper(d)
