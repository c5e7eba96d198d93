"""The super-resolution run (config.task="super_resolution", configs/scenes_sr.py): the smoke
run's workdir and metrics, the stage read back and upsampling (per-sample determinism, bad
inputs), the sample.py cascade, and bad configs."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.experiment import load_workdir, train_and_evaluate, validate_config
from jaxdiff.experiment.super_resolution_run import (
    bicubic_upsample,
    load_super_resolution_workdir,
    psnr,
)
from jaxdiff.models.super_resolution import downsample

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))
import scenes_sr  # noqa: E402
from test_classifier_run import _scalars  # noqa: E402
from test_end_to_end import run  # noqa: E402


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, data_dir):
    """Smoke runs of the stage and of the 8x8 base model (4 steps each)."""
    root = tmp_path_factory.mktemp("sr")
    out = train_and_evaluate(scenes_sr.get_config("smoke"), str(root / "sr"))
    assert out["step"] == 4 and not out["preempted"]
    train_and_evaluate(scenes_sr.get_config("base_smoke"), str(root / "base"))
    return root / "sr", root / "base"


def test_smoke_run_writes_its_workdir_and_metrics(workdirs):
    sr_dir, base_dir = workdirs
    info = json.loads((sr_dir / "run_info.json").read_text())
    assert info == {"image_shape": [32, 32, 1], "num_classes": None,
                    "task": "super_resolution", "factor": 4}  # fmt: skip
    assert (sr_dir / "samples" / "step_4.png").exists()
    scalars = _scalars(sr_dir)
    ((step, value),) = scalars["eval/psnr"]
    ((_, bicubic),) = scalars["eval/psnr_bicubic"]
    assert step == 4 and np.isfinite(value) and 5.0 < bicubic < 60.0
    base_info = json.loads((base_dir / "run_info.json").read_text())
    assert base_info["image_shape"] == [8, 8, 1]


def test_psnr_and_bicubic_upsampling():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 4, 4, 1)).astype(np.float32)
    b = a + 0.1
    np.testing.assert_allclose(psnr(b, a), 10 * np.log10(4.0 / 0.01), rtol=1e-5)
    flat = np.full((1, 2, 2, 1), 0.25, np.float32)
    np.testing.assert_allclose(bicubic_upsample(flat, 4), 0.25, atol=1e-6)
    # Average pooling of a bicubic upsampling of a smooth ramp gives back about the ramp.
    ramp = np.linspace(-0.5, 0.5, 8, dtype=np.float32)[None, :, None, None] * np.ones((1, 1, 8, 1))
    back = np.asarray(downsample(jnp.asarray(bicubic_upsample(ramp, 4)), 4))
    np.testing.assert_allclose(back[:, 2:-2], ramp[:, 2:-2], atol=2e-2)


def test_stage_upsamples_per_sample_deterministically(workdirs):
    sr_dir, _ = workdirs
    stage = load_super_resolution_workdir(str(sr_dir))
    assert stage.factor == 4 and stage.sample_level == 1 and stage.augment_levels == 8
    low = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    a = stage.upsample(low, num_steps=2, seed=5, batch_size=3)
    b = stage.upsample(low, num_steps=2, seed=5, batch_size=2)
    assert a.shape == (3, 32, 32, 1) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)  # image i depends on (seed, i) only
    c = stage.upsample(low, num_steps=2, seed=5, level=0)
    assert np.abs(a - c).max() > 1e-4  # the augmentation level reaches the model
    with pytest.raises(ValueError, match=r"upsamples images of 8x8x1 \(to 32x32\)"):
        stage.upsample(low[:, :4], num_steps=2)
    with pytest.raises(ValueError, match=r"level 8 is out of range; allowed: 0..7"):
        stage.upsample(low, level=8)
    with pytest.raises(ValueError, match="not a super-resolution run: it is a diffusion run"):
        load_super_resolution_workdir(str(workdirs[1]))
    with pytest.raises(ValueError, match="is a super_resolution run .* --sr_workdir"):
        load_workdir(str(sr_dir))


def test_sample_py_runs_the_cascade(workdirs, tmp_path):
    sr_dir, base_dir = workdirs
    out = tmp_path / "out"
    run(["sample.py", f"--workdir={base_dir}", f"--sr_workdir={sr_dir}", "--num_samples=2",
         "--num_steps=2", "--sr_steps=2", f"--out={out}"], tmp_path)  # fmt: skip
    with np.load(out / "samples.npz") as f:
        images = f["images"]
    assert images.shape == (2, 32, 32, 1) and np.abs(images).max() <= 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"super_resolution.sample_level": 8}, "sample_level=8 must be below augment_levels=8"),
        ({"text.encoder": "small"}, "conditioned on the low-resolution image"),
        ({"diffusion.learned_variance": True}, "needs learned_variance=False"),
        ({"super_resolution.factor": 1}, "config.super_resolution.factor=1 is invalid"),
    ],
)
def test_bad_super_resolution_configs_are_named(change, message):
    config = scenes_sr.get_config("smoke")
    for name, value in change.items():
        section, field = name.split(".")
        config[section][field] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_bad_stage_setups_are_named_before_compiling(data_dir, tmp_path):
    config = scenes_sr.get_config("smoke")
    config.model.kwargs.num_classes = 3
    with pytest.raises(ValueError, match="classes are the augmentation levels; allowed: 8"):
        train_and_evaluate(config, tmp_path / "w")
    config = scenes_sr.get_config("smoke")
    config.super_resolution.factor = 3
    with pytest.raises(ValueError, match="not a multiple of config.super_resolution.factor=3"):
        train_and_evaluate(config, tmp_path / "w2")
