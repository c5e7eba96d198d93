"""The grain input pipeline: order, sharding, resume, transforms, global batches."""

import itertools
import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from jaxdiff import data
from jaxdiff.data import reader

N = 40  # records of the small array dataset


@pytest.fixture(scope="module")
def arrays_builder(tmp_path_factory):
    """N records whose pixel (0, 0, 0) is the record number, with labels and captions."""
    images = np.zeros((N, 4, 6, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(N)
    images[:, :, :3, 1] = 255  # left half bright in channel 1: a flip moves it right
    return data.get_builder(
        "arrays",
        data_dir=tmp_path_factory.mktemp("tfds"),
        images=images,
        labels=np.arange(N) % 3,
        captions=[f"record {i}" for i in range(N)],
    )


def _indices(batches):
    return np.concatenate([b["index"] for b in batches])


def _pipeline(builder, **kwargs):
    defaults = dict(global_batch_size=8, seed=0, with_index=True, read_threads=2)
    return data.make_pipeline(builder, **{**defaults, **kwargs})


@pytest.mark.parametrize(("cache", "table_max"), [(True, reader.TABLE_MAX), (False, 10)])
def test_seeded_order_and_a_new_permutation_each_epoch(
    arrays_builder, cache, table_max, monkeypatch
):
    monkeypatch.setattr(reader, "TABLE_MAX", table_max)  # 10: the per-batch permutation
    first = _indices(_pipeline(arrays_builder, num_epochs=2, cache=cache))
    again = _indices(_pipeline(arrays_builder, num_epochs=2, cache=cache))
    other = _indices(_pipeline(arrays_builder, num_epochs=2, seed=1, cache=cache))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(first) == 2 * N
    for epoch in (first[:N], first[N:], other[:N]):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
    assert not np.array_equal(first[:N], first[N:])
    unshuffled = _indices(_pipeline(arrays_builder, num_epochs=1, shuffle=False))
    np.testing.assert_array_equal(unshuffled, np.arange(N))


def test_permutations_are_bijections_and_the_small_split_one_is_uniform():
    for n in (1, 2, 3, 40, 1797, 4099):
        np.testing.assert_array_equal(np.sort(reader.permutation(n, 5)), np.arange(n))
        perm = reader.permute(np.arange(n), n, 5)
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        np.testing.assert_array_equal(reader.permute(np.arange(n)[::7], n, 5), perm[::7])
    # Where each of 5 records lands over 2000 epochs: a chi-square test of uniformity.
    n, trials = 5, 2000
    counts = np.zeros((n, n))
    for epoch in range(trials):
        counts[np.arange(n), reader.permutation(n, reader.epoch_seed(3, epoch))] += 1
    expected = trials / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 25 cells with fixed row and column sums: 16 degrees of freedom; P(chi2 > 39) ~ 1e-3.
    assert chi2 < 39, counts


def test_records_keep_image_label_and_caption_together(arrays_builder):
    batch = next(_pipeline(arrays_builder))
    index = batch["index"]
    np.testing.assert_allclose(batch["image"][:, 0, 0, 0], index / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], index % 3)
    assert batch["caption"].tolist() == [f"record {i}" for i in index]
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32


@pytest.mark.parametrize(("num_epochs", "cache"), [(1, True), (3, True), (3, False)])
def test_two_processes_split_each_epoch_disjointly(arrays_builder, num_epochs, cache):
    # 40 records, local batch 3: batches cross epoch boundaries; keep partial batches.
    kwargs = dict(global_batch_size=6, num_epochs=num_epochs, drop_remainder=False, cache=cache)
    single = list(_pipeline(arrays_builder, process_index=0, process_count=1, **kwargs))
    shards = [
        list(_pipeline(arrays_builder, process_index=p, process_count=2, **kwargs)) for p in (0, 1)
    ]
    assert not set(_indices(shards[0][:6])) & set(_indices(shards[1][:6]))
    # Process batches concatenated in process order are the one-process global batches.
    merged = [
        np.concatenate([b["index"] for b in pair if b is not None])
        for pair in itertools.zip_longest(*shards)
    ]
    np.testing.assert_array_equal(np.concatenate(merged), _indices(single))
    stream = np.concatenate(merged)
    assert len(stream) == num_epochs * N
    for epoch in range(num_epochs):
        np.testing.assert_array_equal(np.sort(stream[epoch * N : (epoch + 1) * N]), np.arange(N))


def test_finite_epochs_give_every_process_the_same_number_of_full_batches(arrays_builder):
    # 40 records in local batches of 8 make 5 batches: process 0 would get 3, process 1 only 2.
    shards = [
        list(
            _pipeline(
                arrays_builder, global_batch_size=16, num_epochs=1, process_index=p, process_count=2
            )
        )
        for p in (0, 1)
    ]
    assert [len(s) for s in shards] == [N // 16, N // 16]
    assert all(len(b["index"]) == 8 for s in shards for b in s)


@pytest.mark.parametrize(("worker_count", "cache"), [(0, True), (0, False), (1, False)])
def test_restored_iterator_continues_with_the_next_batch(arrays_builder, worker_count, cache):
    kwargs = dict(random_flip=True, global_batch_size=6, cache=cache)
    # Worker processes must not change the data: the reference reads in this process.
    reference = _pipeline(arrays_builder, **kwargs)
    expected = [next(reference) for _ in range(12)]
    interrupted = _pipeline(arrays_builder, worker_count=worker_count, **kwargs)
    for want in expected[:5]:
        np.testing.assert_array_equal(next(interrupted)["image"], want["image"])
    state = json.loads(json.dumps(interrupted.get_state()))
    del interrupted
    resumed = _pipeline(arrays_builder, worker_count=worker_count, **kwargs)
    resumed.set_state(state)
    for want in expected[5:]:
        got = next(resumed)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("cache", [True, False])
def test_random_flip_mirrors_about_half_the_images(arrays_builder, cache):
    plain = list(_pipeline(arrays_builder, num_epochs=2, cache=cache))
    flipped = list(_pipeline(arrays_builder, num_epochs=2, random_flip=True, cache=cache))
    a = np.concatenate([b["image"] for b in plain])
    b = np.concatenate([b["image"] for b in flipped])
    np.testing.assert_array_equal(_indices(plain), _indices(flipped))
    same = np.all(a == b, axis=(1, 2, 3))
    mirrored = np.all(a[:, :, ::-1, 1:] == b[:, :, :, 1:], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert 0.25 < mirrored.mean() < 0.75
    again = np.concatenate(
        [b["image"] for b in _pipeline(arrays_builder, num_epochs=2, random_flip=True, cache=cache)]
    )
    np.testing.assert_array_equal(b, again)


def test_resize_center_crop():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(data.resize_center_crop(wide, (6, 6)), wide[:, 2:8])
    tall = rng.integers(0, 256, (9, 4, 1), dtype=np.uint8)
    np.testing.assert_array_equal(data.resize_center_crop(tall, (5, 4)), tall[2:7])
    flat = np.full((7, 3, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.resize_center_crop(flat, (4, 5)), np.full((4, 5, 3), 77))


@pytest.mark.parametrize("cache", [True, False])
def test_pipeline_resizes_and_crops_the_centre(tmp_path, cache):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 6, 10, 3), dtype=np.uint8)
    builder = data.get_builder("arrays", data_dir=tmp_path, images=images)
    batch = next(
        data.make_pipeline(builder, global_batch_size=3, image_size=6, shuffle=False, cache=cache)
    )
    np.testing.assert_allclose(batch["image"], images[:, :, 2:8] / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("size", [0, -2, (4, 0), (4,), 2.5])
def test_non_positive_image_size_is_rejected(arrays_builder, size):
    with pytest.raises(ValueError, match="image_size"):
        _pipeline(arrays_builder, image_size=size)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(global_batch_size=0), "global_batch_size"),
        (dict(global_batch_size=5, process_count=2, process_index=0), "divisible"),
        (dict(process_count=2, process_index=2), "process_index"),
        (dict(seed=-1), "seed"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(split="validation"), "no split 'validation'"),
        (dict(global_batch_size=64, num_epochs=1), "do not fill one global batch"),
    ],
)
def test_invalid_arguments(arrays_builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _pipeline(arrays_builder, **kwargs)


@pytest.mark.parametrize("axes", [(("data",), (8,)), (("data", "model"), (4, 2))])
def test_global_batch_shards_the_batch_axis(arrays_builder, axes):
    names, shape = axes
    mesh = Mesh(np.array(jax.devices()).reshape(shape), names)
    batch = next(_pipeline(arrays_builder))
    out = data.global_batch(batch, mesh)
    assert out["caption"] is batch["caption"]
    for key in ("image", "label", "index"):
        assert out[key].shape == batch[key].shape
        assert out[key].sharding.spec == PartitionSpec(("data",))
        np.testing.assert_array_equal(np.asarray(out[key]), batch[key])
    shard = out["image"].addressable_shards[0]
    assert shard.data.shape[0] == 8 // shape[0]
    with pytest.raises(ValueError, match="divisible"):
        data.global_batch({"image": np.zeros((6, 2))}, mesh)
    with pytest.raises(ValueError, match="do not include"):
        data.global_batch(batch, mesh, data_axis="batch")
