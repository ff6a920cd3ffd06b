"""ResumableRandomSampler: the order from (seed, epoch), resume mid-epoch, what the loop consumed
(not what the loader's workers prefetched), the state's round trip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402 - after importorskip("torch")

from envkit.checkpoint.sampler import ResumableRandomSampler  # noqa: E402 - after importorskip("torch")
from envkit.errors import BadInput  # noqa: E402 - after importorskip("torch")

DATA = list(range(20))


def test_order_is_a_permutation_drawn_from_seed_and_epoch_alone() -> None:
    a, b = ResumableRandomSampler(DATA, seed=3), ResumableRandomSampler(DATA, seed=3)
    torch.manual_seed(123)
    first = a.order(0)
    torch.manual_seed(456)  # the global RNG plays no part
    assert b.order(0) == first and sorted(first) == DATA
    assert a.order(1) != first and sorted(a.order(1)) == DATA
    assert ResumableRandomSampler(DATA, seed=4).order(0) != first
    a.set_epoch(1)
    assert list(a) == a.order(1) and len(a) == len(DATA)


def test_resume_mid_epoch_yields_the_rest_then_full_epochs() -> None:
    sampler = ResumableRandomSampler(DATA, seed=1)
    sampler.set_epoch(2)
    loader = DataLoader(DATA, batch_size=4, sampler=sampler)
    seen = []
    for i, batch in enumerate(loader):
        seen += batch.tolist()
        if i == 1:
            break
    state = sampler.state_dict()
    assert state["position"] == 8 and state["epoch"] == 2
    resumed = ResumableRandomSampler(DATA, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = [int(i) for b in DataLoader(DATA, batch_size=4, sampler=resumed) for i in b]
    assert seen + rest == sampler.order(2)
    resumed.set_epoch(3)
    assert list(resumed) == sampler.order(3)  # the next epoch starts from its beginning


def test_position_counts_what_the_loop_consumed_not_what_workers_prefetched() -> None:
    sampler = ResumableRandomSampler(DATA, seed=5)
    sampler.set_epoch(0)
    loader = DataLoader(DATA, batch_size=2, sampler=sampler, num_workers=2, prefetch_factor=2)
    iterator = iter(loader)
    consumed = [next(iterator).tolist() for _ in range(3)]
    assert sampler._yielded > 6  # the workers have fetched ahead of the loop
    state = sampler.state_dict()
    assert state["position"] == 6
    del iterator
    resumed = ResumableRandomSampler(DATA)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)
    assert [i for b in consumed for i in b] + list(resumed) == sampler.order(0)


def test_an_ended_epoch_resumes_with_nothing_left() -> None:
    sampler = ResumableRandomSampler(DATA, seed=2)
    sampler.set_epoch(1)
    assert list(sampler) == sampler.order(1)
    resumed = ResumableRandomSampler(DATA)
    resumed.load_state_dict(sampler.state_dict())
    resumed.set_epoch(1)
    assert list(resumed) == [] and len(resumed) == 0


def test_state_round_trip_and_a_different_dataset_is_refused() -> None:
    sampler = ResumableRandomSampler(DATA, seed=9)
    sampler.set_epoch(4)
    it = iter(sampler)
    for _ in range(5):
        next(it)
    state = sampler.state_dict()
    assert state == {"version": 1, "seed": 9, "epoch": 4, "position": 5, "size": 20}
    other = ResumableRandomSampler(DATA)
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(BadInput, match="saved over 20 samples and this dataset has 3"):
        ResumableRandomSampler([1, 2, 3]).load_state_dict(state)


def test_rng_restored_when_the_restored_epoch_is_iterated() -> None:
    from envkit.checkpoint.training_state import capture_rng

    sampler = ResumableRandomSampler(DATA)
    torch.manual_seed(7)
    saved = capture_rng()
    expected = torch.rand(1)
    torch.manual_seed(8)
    sampler.restore_rng_when_iterated(saved)
    iter(sampler).__next__()
    assert torch.equal(torch.rand(1), expected)
