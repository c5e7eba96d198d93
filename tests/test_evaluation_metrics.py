"""FID against pytorch-fid, streamed statistics, precision/recall, feature extraction, CLIP
score, and the input checks."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.evaluation import (
    ClipScorer,
    FeatureExtractor,
    FeatureStatistics,
    SingularCovarianceWarning,
    clip_score,
    frechet_distance,
    gaussian_frechet_distance,
    inception_extractor,
    load_statistics,
    precision_recall,
    save_statistics,
    to_unit_range,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation")


def feature_sets(seed, n, dim):
    """tests/fixtures/evaluation/generate.py's synthetic features (same seeds, same draws)."""
    rng = np.random.default_rng(seed)
    mix_a = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    mix_b = mix_a + 0.3 * rng.standard_normal((dim, dim)) / np.sqrt(dim)
    a = np.maximum(rng.standard_normal((n, dim)) @ mix_a + 0.2, 0.0)
    b = np.maximum(rng.standard_normal((n, dim)) @ mix_b + 0.3, 0.0)
    return a, b


@pytest.mark.parametrize("name,seed,n,dim", [("d2048", 7, 2500, 2048), ("d16", 8, 200, 16),
                                             ("d64", 9, 300, 64)])  # fmt: skip
def test_fid_equals_pytorch_fid(name, seed, n, dim):
    want = float(np.load(os.path.join(FIXTURES, "fid.npz"))[name])
    a, b = feature_sets(seed, n, dim)
    if dim == 2048:  # ~5 s per FID here: the direct one only
        assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)  # measured 4e-15
        return
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)  # measured 2e-14
    # Streamed in uneven batches: the same statistics and FID.
    stats = [FeatureStatistics(), FeatureStatistics()]
    for s, f in zip(stats, (a, b), strict=True):
        for i in range(0, n, 33):
            s.update(f[i : i + 33])
    np.testing.assert_allclose(stats[0].covariance, np.cov(a, rowvar=False), rtol=1e-12)
    fid = gaussian_frechet_distance(stats[0].mean, stats[0].covariance,
                                    stats[1].mean, stats[1].covariance)  # fmt: skip
    assert fid == pytest.approx(want, rel=1e-6)


def test_statistics_merge_and_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(loc=1e4, size=(500, 5))  # a large mean: the centred merge keeps digits
    whole = FeatureStatistics().update(x)
    parts = FeatureStatistics().update(x[:123]).merge(FeatureStatistics().update(x[123:]))
    np.testing.assert_allclose(parts.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(parts.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(whole.covariance, parts.covariance, rtol=1e-9, atol=1e-9)
    whole.save(tmp_path / "ours.npz")
    mu, sigma, n = load_statistics(tmp_path / "ours.npz")
    assert n == 500 and np.array_equal(mu, whole.mean)
    # pytorch-fid's files hold only mu and sigma.
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu, sigma=sigma)
    assert load_statistics(tmp_path / "theirs.npz")[2] is None
    save_statistics(tmp_path / "bad.npz", mu, sigma[:2])
    with pytest.raises(ValueError, match="not \\[D\\] and \\[D, D\\]"):
        load_statistics(tmp_path / "bad.npz")
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="needs arrays 'mu' and 'sigma'"):
        load_statistics(tmp_path / "images.npz")
    with pytest.raises(ValueError, match=r"features must be \[B, 5\]"):
        whole.update(np.zeros((3, 4)))


def test_fewer_samples_than_dimensions_warns():
    a, b = feature_sets(1, 20, 32)
    with pytest.warns(SingularCovarianceWarning, match="covariance estimate is singular"):
        value = frechet_distance(a, b)
    assert np.isfinite(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frechet_distance(*feature_sets(1, 40, 32))


def _brute_force_pr(real, fake, k):
    """The paper's definition, written directly on the full float64 distance matrices."""

    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def inside(ref, q):
        d = np.linalg.norm(q[:, None] - ref[None], axis=-1)
        return (d <= radii(ref)[None]).any(1).mean()

    return inside(real, fake), inside(fake, real)


def test_precision_recall_known_manifolds():
    # Real: a 10 x 10 lattice of spacing 1, so with k = 3 every ball has radius 1 (sqrt(2) at
    # the corners). Fake: the left 6 columns shifted by (0.1, 0.1) (inside the real manifold)
    # and a 5 x 8 lattice far away (outside): precision = 60 / 100. The fake manifold covers
    # the real columns 0-6 (column 6 is 0.906 from fake column 5, whose radius is 1) but not
    # 7-9 (1.9 away): recall = 70 / 100.
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij"), -1)
    real = grid.reshape(-1, 2)
    near = grid[:6].reshape(-1, 2) + 0.1
    far = np.stack(np.meshgrid(np.arange(5.0), np.arange(8.0), indexing="ij"), -1)
    fake = np.concatenate([near, far.reshape(-1, 2) + 100.0])
    out = precision_recall(real, fake, k=3, batch_size=16)  # blocks of 16 over 8 devices
    assert out == {"precision": pytest.approx(0.6), "recall": pytest.approx(0.7)}
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_equals_the_definition():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(loc=0.3, scale=1.2, size=(250, 16))
    for k in (1, 3, 5):
        got = precision_recall(real, fake, k=k, batch_size=64)
        p, r = _brute_force_pr(real, fake, k)
        assert (got["precision"], got["recall"]) == (pytest.approx(p), pytest.approx(r)), k
        assert 0.05 < p < 0.99 and 0.05 < r < 0.99  # not a degenerate case
    with pytest.raises(ValueError, match="need more than k = 3 samples"):
        precision_recall(real[:3], fake)


def test_feature_extractor_is_data_parallel():
    w = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)

    def apply(p, x):  # mean colour and a projection of the flattened image
        return jnp.concatenate([x.mean((1, 2)), x.reshape(len(x), -1)[:, :12] @ p], axis=1)

    images = np.random.default_rng(1).integers(0, 256, size=(37, 4, 4, 3), dtype=np.uint8)
    ext = FeatureExtractor(apply, w, batch_size=12)
    assert ext.batch_size == 16 and len(jax.local_devices()) == 8
    want = np.asarray(apply(w, images.astype(np.float32) / 255))
    np.testing.assert_allclose(ext(images), want, rtol=1e-6, atol=1e-6)
    batches = [images[:10], images[10:]]  # an iterable of batches, as read from disk
    np.testing.assert_allclose(ext(batches), want, rtol=1e-6, atol=1e-6)
    stats = ext.statistics(images * np.float32(2 / 255) - 1, value_range=(-1, 1), progress=False)
    np.testing.assert_allclose(stats.covariance, np.cov(want, rowvar=False), rtol=1e-5, atol=1e-7)


def test_image_checks():
    ok = to_unit_range(np.full((2, 3, 3, 1), 255, np.uint8))
    assert ok.shape == (2, 3, 3, 3) and ok.max() == 1.0
    np.testing.assert_allclose(to_unit_range(np.zeros((1, 2, 2, 3)), (-1, 1)), 0.5)
    with pytest.raises(ValueError, match=r"value_range \[0.0, 1.0\].*pass value_range=\(-1, 1\)"):
        to_unit_range(np.full((1, 2, 2, 3), -0.5))
    with pytest.raises(ValueError, match="looks like NCHW"):
        to_unit_range(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="uint8 or float"):
        to_unit_range(np.zeros((1, 2, 2, 3), np.int32))
    with pytest.raises(ValueError, match="NaN"):
        to_unit_range(np.full((1, 2, 2, 3), np.nan))


def test_inception_extractor_without_weights(monkeypatch):
    monkeypatch.delenv("JAXDIFF_INCEPTION", raising=False)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception_extractor()


def test_clip_score_equals_transformers():
    path = os.path.join(FIXTURES, "clip")
    io = np.load(os.path.join(path, "io.npz"))
    with open(os.path.join(path, "prompts.json")) as f:
        prompts = json.load(f)
    scorer = ClipScorer(path, batch_size=3)
    np.testing.assert_array_equal(scorer.tokenizer(prompts), io["input_ids"])
    for shift in range(4):  # every image with every prompt (both signs of cos occur)
        order = [(i + shift) % 4 for i in range(4)]
        want = 100 * np.maximum(io["cos"][np.arange(4), order], 0)
        got = scorer.scores(io["pixel_values"], [prompts[j] for j in order])
        np.testing.assert_allclose(got, want, atol=1e-4)  # measured 1.2e-5
        # From the uint8 images: the resize is within one uint8 level of transformers' one.
        np.testing.assert_allclose(scorer(io["images"], [prompts[j] for j in order]), want,
                                   atol=0.2)  # fmt: skip
    assert (io["cos"] < 0).any() and (io["cos"] > 0).any()
    pixels = scorer.pixel_values(io["images"])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    assert (np.abs(pixels - io["pixel_values"]) * std * 255).max() <= 1.0 + 1e-3
    value = clip_score(io["images"], prompts, model=scorer)
    assert value == pytest.approx(100 * np.maximum(np.diag(io["cos"]), 0).mean(), abs=0.2)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(io["images"], prompts[:2])
    with pytest.raises(ValueError, match=r"needs both towers \(architectures \['CLIPModel'\]\)"):
        ClipScorer(os.path.join(FIXTURES, "clip_vision"))
