"""The determinism contract pinned: every seed derivation of eir.seeding gives the values the
recipes gave before they were gathered there (computed with the earlier code, commit f011e63),
so a refactor that slips a seed fails here, not only in the slow resume tests."""
import zlib

import numpy as np
import pytest
import torch

from eir import seeding


def test_derived_seed_is_pinned_and_63_bit():
    assert seeding.derived_seed(42, 1, 3) == 29573552708655077
    state = np.random.SeedSequence([42, 1, 3]).generate_state(2, dtype=np.uint32)
    assert seeding.derived_seed(42, 1, 3) == (int(state[0]) << 31) | (int(state[1]) >> 1)
    assert 0 <= seeding.derived_seed(0) < 2**63


def test_step_and_iteration_seeds_are_pinned():
    assert seeding.step_seed(42, 2) == 1376220893
    assert seeding.iteration_seed(42, 2, 100) == 140979740
    assert seeding.step_seed(42, 2) == seeding.derived_seed(42, 2) % 2**31


def test_each_process_draws_its_own_dropout_and_rank_0_the_single_process_draws():
    assert seeding.iteration_seed(42, 2, 100, rank=0) == 140979740
    others = {seeding.iteration_seed(42, 2, 100, rank=r) for r in range(1, 8)}
    assert len(others) == 7 and 140979740 not in others
    assert seeding.iteration_seed(42, 2, 100, rank=1) == seeding.derived_seed(42, 2, 100, 1) % 2**31


def test_epoch_seed_gives_the_pinned_permutation():
    g = torch.Generator()
    g.manual_seed(seeding.epoch_seed(42, 1, 3))
    assert torch.randperm(10, generator=g).tolist() == [5, 4, 0, 1, 7, 2, 9, 8, 3, 6]


def test_sample_rng_is_pinned_and_depends_on_every_part():
    draws = seeding.sample_rng(42, 1, 5, "img_7").integers(2**32, size=3).tolist()
    assert draws == [2893052080, 3788993548, 1053934989]
    key = zlib.crc32(b"img_7")
    assert np.random.default_rng([42, 1, 5, key]).integers(2**32, size=3).tolist() == draws
    for other in [(43, 1, 5, "img_7"), (42, 2, 5, "img_7"), (42, 1, 6, "img_7"), (42, 1, 5, "img_8")]:
        assert seeding.sample_rng(*other).integers(2**32, size=3).tolist() != draws


def test_unpositioned_sample_rng_is_pinned():
    draws = seeding.unpositioned_sample_rng(42, 0, 1, 3, "img_7").integers(2**32, size=3).tolist()
    assert draws == [4280127499, 1979137325, 3113463521]


def test_bank_rng_is_pinned_and_refuses_negative_seeds():
    assert seeding.bank_rng(42, 2).permutation(10).tolist() == [0, 8, 5, 9, 7, 4, 2, 6, 3, 1]
    with pytest.raises(ValueError, match="non-negative"):
        seeding.bank_rng(-1, 2)


def test_numpy_global_seed_restores_the_global_state():
    np.random.seed(7)
    expected_next = np.random.RandomState(7).random_sample()
    with seeding.numpy_global_seed(np.random.default_rng(0)):
        inside = np.random.random_sample()
    with seeding.numpy_global_seed(np.random.default_rng(0)):
        assert np.random.random_sample() == inside  # the same generator gives the same draws
    assert np.random.random_sample() == expected_next  # the outer stream is untouched
