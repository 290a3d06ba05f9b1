"""The resumable deterministic loader: resume equality, rank slices, epochs, flips, no data read to skip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from irepa.data import make_loader
from irepa.data.synthetic import SyntheticShapes

torch.set_num_threads(1)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


class CountingDataset(SyntheticShapes):
    """Counts item reads, to prove that skipping steps loads nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = 0

    def item(self, index, flip):
        self.reads += 1
        return super().item(index, flip)


@pytest.fixture(scope="module")
def data():
    return SyntheticShapes(size=22, resolution=16, num_classes=4, seed=1)


def test_resumed_loader_equals_uninterrupted_run(data):
    full = take(make_loader(data, batch_size=4, seed=7), 12)  # 5 steps per epoch: crosses two epochs
    for k in (1, 5, 8):
        resumed = take(make_loader(data, batch_size=4, seed=7, start_step=k, num_workers=2), 12 - k)
        for a, b in zip(full[k:], resumed):
            assert_batches_equal(a, b)
    other_seed = take(make_loader(data, batch_size=4, seed=8), 1)[0]
    assert not torch.equal(other_seed["index"], full[0]["index"])


def test_rank_slices_are_disjoint_and_make_up_the_global_batch(data):
    one = make_loader(data, batch_size=8, seed=3)
    for world in (2, 4):
        ranks = [make_loader(data, batch_size=8, seed=3, rank=r, world_size=world) for r in range(world)]
        for step in (0, 1, 2, 7):
            parts = [loader.keys(step) for loader in ranks]
            assert all(len(p) == 8 // world for p in parts)
            indices = [k.index for p in parts for k in p]
            assert len(set(indices)) == 8  # disjoint
            assert [k for p in parts for k in p] == one.global_keys(step)
    # Same through the real batches (images included).
    batches = [
        take(make_loader(data, batch_size=8, seed=3, rank=r, world_size=2, start_step=2), 1)[0]
        for r in range(2)
    ]
    glob = take(make_loader(data, batch_size=8, seed=3, start_step=2), 1)[0]
    for key in glob:
        torch.testing.assert_close(torch.cat([batches[0][key], batches[1][key]]), glob[key], rtol=0, atol=0)


def test_each_epoch_is_a_fresh_permutation(data):
    loader = make_loader(data, batch_size=4, seed=11)
    per_epoch = loader.steps_per_epoch
    assert per_epoch == len(data) // 4
    epochs = []
    for e in range(3):
        idx = [k.index for s in range(e * per_epoch, (e + 1) * per_epoch) for k in loader.global_keys(s)]
        assert len(set(idx)) == len(idx) == per_epoch * 4  # no repeats inside an epoch
        epochs.append(idx)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    stream = make_loader(data, batch_size=4, seed=11, drop_last=False)
    positions = [k.index for s in range(11) for k in stream.global_keys(s)]  # 44 items = 2 full epochs
    assert sorted(positions[:22]) == list(range(22)) and sorted(positions[22:]) == list(range(22))


def test_flips_are_a_function_of_seed_and_step(data):
    a = make_loader(data, batch_size=4, seed=5)
    b = make_loader(data, batch_size=4, seed=5, start_step=3, num_workers=2)
    flips = [k.flip for s in range(40) for k in a.global_keys(s)]
    assert 0.35 < np.mean(flips) < 0.65
    batch_a = take(a, 4)[3]
    batch_b = take(b, 1)[0]
    torch.testing.assert_close(batch_a["flipped"], batch_b["flipped"], rtol=0, atol=0)
    for image, index, flipped in zip(batch_b["image"], batch_b["index"], batch_b["flipped"]):
        plain = data[int(index)]["image"]
        torch.testing.assert_close(image, plain.flip(-1) if flipped else plain, rtol=0, atol=0)


def test_start_step_skips_by_arithmetic_not_by_loading():
    counting = CountingDataset(size=30, resolution=16, num_classes=3)
    batch = take(make_loader(counting, batch_size=6, seed=0, start_step=10_000), 1)[0]
    assert counting.reads == 6 and batch["image"].shape == (6, 3, 16, 16)


def test_loader_rejects_bad_arguments(data):
    with pytest.raises(ValueError, match="multiple of world_size"):
        make_loader(data, batch_size=6, seed=0, world_size=4)
    with pytest.raises(ValueError, match="exceeds the dataset"):
        make_loader(data, batch_size=64, seed=0)
    with pytest.raises(ValueError, match="rank"):
        make_loader(data, batch_size=4, seed=0, rank=2, world_size=2)
    assert len(take(make_loader(data, batch_size=64, seed=0, drop_last=False), 1)[0]["label"]) == 64
