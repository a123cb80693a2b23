"""Every seed of a run, derived in one place: the determinism contract (core module).

A step is a function of (config, seed, step): the same command gives the same weights,
whether the steps run in one command or one command each, whatever the number of loader
workers, and after a resume. That holds because every random draw of a step comes from one
of the derivations below, each from ``train.seed`` and the step and, where a draw repeats,
the position it is made at, never from how much a process drew before:

* :func:`step_seed`: Python's, NumPy's and torch's global generators when a step starts
  (model initialisation: the new classifier, a from-scratch backbone);
* :func:`epoch_seed`: the permutation that epoch ``e`` of a step's sample stream visits
  (the resumable training sampler);
* :func:`sample_rng`: the crop, flip and pastes of one training sample, from its position
  in the step's sample stream (not from a worker's call counter);
* :func:`iteration_seed`: torch's global generator before each training iteration (dropout),
  so a step resumed at iteration ``i`` draws what the uninterrupted step drew, and each
  process of a multi-GPU run draws its own;
* :func:`bank_rng`: the bank's selection when step ``step`` ends (pool and class order).

:func:`epoch_seed` and :func:`iteration_seed` mix the same three numbers; they seed
different generators (a ``torch.Generator`` for ``randperm``, torch's global one for
dropout), so equal values do not correlate anything that matters.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Iterator

import numpy as np

__all__ = [
    "bank_rng",
    "derived_seed",
    "epoch_seed",
    "iteration_seed",
    "numpy_global_seed",
    "sample_rng",
    "step_seed",
    "unpositioned_sample_rng",
]


def derived_seed(*parts: int) -> int:
    """A 63-bit seed determined by ``parts`` (non-negative integers), well mixed by SeedSequence."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def step_seed(seed: int, step: int) -> int:
    """The seed of the global generators (Python, NumPy, torch) when step ``step`` starts."""
    return derived_seed(seed, step) % 2**31


def epoch_seed(seed: int, step: int, epoch: int) -> int:
    """The seed of the permutation that epoch ``epoch`` of step ``step``'s sample stream visits."""
    return derived_seed(seed, step, epoch)


def iteration_seed(seed: int, step: int, iteration: int, rank: int = 0) -> int:
    """The seed of torch's global generator before training iteration ``iteration`` (dropout)
    in process ``rank``: each process of a multi-GPU run draws its own dropout masks for its
    part of the batch (rank 0 draws what a single-process run draws).

    Set after the iteration's batch is taken: creating the loader's iterator draws from it.
    """
    parts = (seed, step, iteration) if rank == 0 else (seed, step, iteration, rank)
    return derived_seed(*parts) % 2**31


def _image_key(image_id) -> int:
    return zlib.crc32(str(image_id).encode("utf-8"))


def sample_rng(seed: int, step: int, position: int, image_id) -> np.random.Generator:
    """The generator of one training sample: its crop, flip and pastes.

    Drawn from (seed, step, position in the step's sample stream, CRC-32 of the image id),
    so it depends neither on the loader's workers nor on where the step was resumed.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), int(position), _image_key(image_id)])


def unpositioned_sample_rng(seed: int, rank: int, worker: int, calls: int, image_id) -> np.random.Generator:
    """The generator of a sample mapped outside the runner's stream (a mapper called directly):
    from the process's rank, the loader worker (0 = the main process, else its id + 1) and the
    count of the mapper copy's calls, in place of a stream position."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(worker), int(calls), _image_key(image_id)])
    return np.random.default_rng(ss)


def bank_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of the bank's selection when step ``step`` ends: pool order, then class order."""
    if int(seed) < 0:
        raise ValueError(f"bank seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([int(seed), int(step)])


@contextlib.contextmanager
def numpy_global_seed(rng: np.random.Generator) -> Iterator[None]:
    """Seed NumPy's global generator from ``rng`` for the duration (Detectron2's augmentations
    draw from ``numpy.random``); the previous global state is restored afterwards."""
    state = np.random.get_state()
    np.random.seed(int(rng.integers(2**32)))
    try:
        yield
    finally:
        np.random.set_state(state)
