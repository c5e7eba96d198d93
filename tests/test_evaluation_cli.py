"""``python -m jaxdiff.evaluation``: commands on small image sets with a stand-in feature
network (the Inception itself is tested in test_inception.py), and the bpd command on a
small random U-Net."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff.evaluation import FeatureExtractor, cli, frechet_distance, load_statistics
from jaxdiff.evaluation.features import to_unit_range

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation")
_W = np.random.default_rng(0).normal(size=(48, 6)).astype(np.float32)


def _features(x):
    return np.asarray(x.reshape(len(x), -1)[:, :48] @ _W, np.float64)


@pytest.fixture
def stand_in(monkeypatch):
    """A cheap 6-d 'feature network' in place of the Inception."""
    ext = FeatureExtractor(lambda p, x: x.reshape(len(x), -1)[:, :48] @ p, _W, batch_size=16)
    monkeypatch.setattr(cli, "_extractor", lambda args: ext)


def _image_sets(tmp_path):
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, size=(40, 4, 4, 3), dtype=np.uint8)
    folder = tmp_path / "real"
    folder.mkdir()
    for i, im in enumerate(real):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    fake = rng.uniform(-1, 0.8, size=(30, 4, 4, 3)).astype(np.float32)  # sample.py's range
    np.savez(tmp_path / "fake.npz", images=fake, labels=np.zeros(30))
    return real, fake, str(folder), str(tmp_path / "fake.npz")


def test_fid_kid_pr_and_stats_commands(tmp_path, stand_in, capsys):
    real, fake, folder, npz = _image_sets(tmp_path)
    f_real = _features(to_unit_range(real))
    f_fake = _features(to_unit_range(fake, (-1, 1)))
    out = tmp_path / "all.json"
    res = cli.main(["all", "--real", folder, "--fake", npz, "--out", str(out), "--no_progress",
                    "--kid_subset_size", "20", "--kid_subsets", "5"])  # fmt: skip
    assert res["num_real"] == 40 and res["num_fake"] == 30
    assert res["fid"] == pytest.approx(frechet_distance(f_real, f_fake), rel=1e-5)
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    assert json.loads(out.read_text())["fid"] == res["fid"]
    table = capsys.readouterr().out
    assert "fid" in table and "kid_std" in table and "precision" in table
    # Reference statistics in pytorch-fid's format, then FID against the file.
    stats = tmp_path / "real_stats.npz"
    cli.main(["stats", "--images", folder, "--save", str(stats), "--out", str(tmp_path / "s.json"),
              "--no_progress"])  # fmt: skip
    mu, sigma, n = load_statistics(stats)
    assert n == 40 and mu.shape == (6,) and sigma.shape == (6, 6)
    res2 = cli.main(["fid", "--real", str(stats), "--fake", npz, "--out", str(tmp_path / "f.json"),
                     "--no_progress"])  # fmt: skip
    assert res2["fid"] == pytest.approx(res["fid"], rel=1e-9)
    cache = tmp_path / "cache.npz"
    for real in (folder, "gone/"):  # computed and written, then read back (images unused)
        res3 = cli.main(["fid", "--real", real, "--fake", npz, "--real_stats_cache", str(cache),
                         "--out", str(tmp_path / "f.json"), "--no_progress"])  # fmt: skip
        assert res3["fid"] == pytest.approx(res["fid"], rel=1e-9) and cache.exists()
    with pytest.raises(SystemExit, match="KID and precision/recall need images"):
        cli.main(["kid", "--real", str(stats), "--fake", npz, "--out", str(tmp_path / "k.json")])


def test_bad_inputs_exit_with_a_message(tmp_path):
    env = dict(os.environ, JAXDIFF_INCEPTION=str(tmp_path))
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    run = [sys.executable, "-m", "jaxdiff.evaluation", "fid", "--real", str(tmp_path / "x.npz"),
           "--fake", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o.json")]  # fmt: skip
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "holds no pt_inception-2015-12-05-*.pth" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clip_command(tmp_path):
    path = os.path.join(FIXTURES, "clip")
    io = np.load(os.path.join(path, "io.npz"))
    np.save(tmp_path / "images.npy", io["images"])
    with open(os.path.join(path, "prompts.json")) as f:
        prompts = json.load(f)
    (tmp_path / "prompts.txt").write_text("\n".join(prompts[1:] + prompts[:1]))
    res = cli.main(["clip", "--images", str(tmp_path / "images.npy"), "--prompts",
                    str(tmp_path / "prompts.txt"), "--clip", path, "--batch_size", "3",
                    "--out", str(tmp_path / "c.json")])  # fmt: skip
    want = 100 * np.maximum(io["cos"][np.arange(4), [1, 2, 3, 0]], 0).mean()
    assert res["num_images"] == 4 and res["clip_score"] == pytest.approx(want, abs=0.2)


class _Denoiser(nn.Module):
    """A class-conditional stand-in for a trained U-Net (compiles in a second)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, t, labels=None):
        h = nn.Conv(x.shape[-1], (3, 3))(x) + (t / 20.0)[:, None, None, None]
        if labels is not None:
            h = h + nn.Embed(self.num_classes + 1, x.shape[-1])(labels)[:, None, None, :]
        return jnp.tanh(h)


def test_bpd_command(tmp_path, monkeypatch):
    from jaxdiff.experiment import sampling, workdir
    from jaxdiff.schedules import make_schedule

    model = _Denoiser()
    x = jnp.zeros((1, 8, 8, 1))
    params = model.init(jax.random.key(0), x, jnp.zeros((1,)), labels=jnp.zeros((1,), jnp.int32))
    schedule = make_schedule("linear", 20, beta_start=2e-3, beta_end=0.3)
    gen = sampling.Generator(
        model, params["params"], schedule, objective="diffusion", prediction_type="epsilon",
        sigma_data=0.5, image_shape=(8, 8, 1),
    )  # fmt: skip
    monkeypatch.setattr(workdir, "load_workdir", lambda path: gen)
    data = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8, 1)) / 8.0 - 1.0
    np.savez(tmp_path / "digits.npz", images=data.astype(np.float32), labels=np.arange(5))
    base = ["bpd", "--workdir", "unused", "--data", str(tmp_path / "digits.npz"), "--num_bins",
            "17", "--batch_size", "4", "--no_progress"]  # fmt: skip
    res = cli.main([*base, "--out", str(tmp_path / "b.json")])
    assert res["num_images"] == 5 and res["labels"] == "null"
    assert np.isfinite(res["ode_bpd"]) and res["ode_failed"] == 0 and res["vlb_bpd"] > 0
    cond = cli.main(
        [*base, "--labels", "data", "--methods", "vlb", "--out", str(tmp_path / "c.json")]
    )
    assert "ode_bpd" not in cond and cond["vlb_bpd"] != res["vlb_bpd"]
