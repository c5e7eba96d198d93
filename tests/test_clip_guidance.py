"""The noise-aware CLIP (config.task="clip") and CLIP guidance: the contrastive loss against a
NumPy reference, caption groups, the smoke run and its workdir read back, the guided
generator (scale 0 is the unguided model, the scale is traced, bad inputs named), the
x0-based variant, sample.py, and bad configs."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.experiment import load_workdir, train_and_evaluate, validate_config
from jaxdiff.experiment.clip_run import load_clip_workdir
from jaxdiff.experiment.clip_sampling import ClipGuidedGenerator
from jaxdiff.models.small_clip import SmallCLIP, clip_score_fn
from jaxdiff.schedules import make_schedule
from jaxdiff.training.clip_objective import canonical_caption, caption_groups, contrastive_loss

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))
import scenes_clip  # noqa: E402
import text2img  # noqa: E402
from test_end_to_end import run  # noqa: E402


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, data_dir):
    """Smoke runs of the CLIP and of the unconditional scene model (4 steps each)."""
    root = tmp_path_factory.mktemp("clip")
    out = train_and_evaluate(scenes_clip.get_config("smoke"), str(root / "clip"))
    assert out["step"] == 4 and not out["preempted"]
    train_and_evaluate(text2img.get_config("uncond,smoke"), str(root / "uncond"))
    return root / "clip", root / "uncond"


def _reference_loss(image, text, scale, groups):
    """CLIP's symmetric cross-entropy with multi-positive targets, in float64 NumPy."""
    logits = scale * image.astype(np.float64) @ text.astype(np.float64).T
    same = groups[:, None] == groups[None, :]
    target = same / same.sum(1, keepdims=True)

    def xent(lg):
        lg = lg - lg.max(1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        return -(target * logp).sum(1)

    return 0.5 * (xent(logits) + xent(logits.T))


def test_contrastive_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 5)).astype(np.float32)
    text = rng.normal(size=(6, 5)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    groups = np.array([3, 1, 3, 2, 1, 7], np.int32)
    loss, acc = contrastive_loss(jnp.asarray(image), jnp.asarray(text), 12.5, jnp.asarray(groups))
    np.testing.assert_allclose(loss, _reference_loss(image, text, 12.5, groups), rtol=1e-5)
    best = np.argmax(image @ text.T, axis=1)
    np.testing.assert_array_equal(acc, (groups[best] == groups).astype(np.float32))
    # No groups: each example is its own only positive (the identity targets).
    loss1, _ = contrastive_loss(jnp.asarray(image), jnp.asarray(text), 12.5)
    np.testing.assert_allclose(loss1, _reference_loss(image, text, 12.5, np.arange(6)), rtol=1e-5)


def test_captions_equal_up_to_number_words_share_a_group():
    assert canonical_caption("a Seven  above a 2") == "a 7 above a 2"
    g = caption_groups(["a 7 above a two", "a seven above a 2", "a 2 above a 7", "a 7 above a 2"])
    assert g.dtype == np.int32 and g[0] == g[1] == g[3] and g[2] != g[0]


def test_smoke_run_writes_its_workdir_and_reads_back(workdirs):
    clip_dir, _ = workdirs
    info = json.loads((clip_dir / "run_info.json").read_text())
    assert info == {"image_shape": [32, 32, 1], "num_classes": None, "task": "clip"}
    assert (clip_dir / "tokenizer.json").exists()
    module, params, schedule, tokenizer = load_clip_workdir(str(clip_dir))
    ids = tokenizer(["a 3 to the left of a seven", "a small 5 in the top right"])
    x = jnp.zeros((2, 32, 32, 1))
    image, text, scale = module.apply({"params": params}, x, jnp.zeros((2,)), ids)
    assert image.shape == text.shape == (2, 16)
    np.testing.assert_allclose(jnp.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    assert 1.0 < float(scale) <= module.max_logit_scale
    assert schedule.num_train_timesteps == 1000
    with pytest.raises(ValueError, match="not a CLIP run: it is a diffusion run"):
        load_clip_workdir(str(workdirs[1]))


def test_scale_zero_is_the_unguided_model_and_the_scale_is_traced(workdirs):
    clip_dir, uncond_dir = workdirs
    base = load_workdir(str(uncond_dir))
    gen = ClipGuidedGenerator(base, *load_clip_workdir(str(clip_dir)))
    prompts = ["a 3 to the left of a seven", "a four above a 1"]
    kw = dict(num_samples=3, sampler="ddim", num_steps=3, seed=2, progress=False)
    plain, _ = base.sample(**kw)
    off, got = gen.sample(prompts=prompts, guidance_scale=0.0, **kw)
    np.testing.assert_allclose(off, plain, atol=1e-5)
    assert list(got) == [prompts[0], prompts[1], prompts[0]]
    on, _ = gen.sample(prompts=prompts, guidance_scale=50.0, **kw)
    assert np.abs(on - off).max() > 1e-3  # the CLIP's gradient moved the samples
    assert len(gen._compiled) == 1  # one program for both scales
    with pytest.raises(ValueError, match="needs at least one prompt"):
        gen.sample(guidance_scale=1.0, **kw)
    with pytest.raises(ValueError, match="CLIP scale must be >= 0"):
        gen.sample(prompts=prompts, guidance_scale=-1.0, **kw)
    with pytest.raises(ValueError, match="Class labels were given"):
        gen.sample(prompts=prompts, labels=[1], **kw)


def test_clip_of_another_schedule_or_a_conditional_model_is_refused(workdirs, tmp_path):
    clip_dir, uncond_dir = workdirs
    module, params, _, tokenizer = load_clip_workdir(str(clip_dir))
    other = make_schedule("cosine", 1000)
    with pytest.raises(ValueError, match="CLIP was trained on another noise schedule"):
        ClipGuidedGenerator(load_workdir(str(uncond_dir)), module, params, other, tokenizer)


def test_x0_based_guidance_reads_the_prediction_at_t_zero(workdirs):
    clip_dir, uncond_dir = workdirs
    module, params, schedule, tokenizer = load_clip_workdir(str(clip_dir))
    score = clip_score_fn(module, params)
    text = module.apply({"params": params}, tokenizer(["a four above a 1"]),
                        method=SmallCLIP.text_embeds)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
    # The score is the scaled cosine of the two towers' embeddings.
    image = module.apply({"params": params}, x, jnp.zeros((1,)), method=SmallCLIP.image_embeds)
    scale = module.apply({"params": params}, method=SmallCLIP.logit_scale)
    np.testing.assert_allclose(score(x, 0.0, text), scale * jnp.sum(image * text), rtol=1e-5)
    gen = ClipGuidedGenerator(load_workdir(str(uncond_dir)), module, params, schedule,
                              tokenizer, x0_based=True)  # fmt: skip
    kw = dict(num_samples=2, sampler="ddim", num_steps=3, prompts=["a four above a 1"],
              progress=False)  # fmt: skip
    off, _ = gen.sample(guidance_scale=0.0, **kw)
    on, _ = gen.sample(guidance_scale=50.0, **kw)
    assert np.isfinite(on).all() and np.abs(on - off).max() > 1e-3


def test_sample_py_guides_by_a_clip_workdir(workdirs, tmp_path):
    clip_dir, uncond_dir = workdirs
    out = tmp_path / "out"
    common = [f"--workdir={uncond_dir}", f"--clip_workdir={clip_dir}", "--prompt=a four above a 1"]
    run(["sample.py", *common, "--clip_scale=3", "--num_samples=2", "--num_steps=2",
         f"--out={out}"], tmp_path)  # fmt: skip
    with np.load(out / "samples.npz") as f:
        assert f["images"].shape == (2, 32, 32, 1)
    result = run(["sample.py", *common, "--guidance_scale=3", f"--out={out}"], tmp_path,
                 check=False)  # fmt: skip
    assert result.returncode != 0 and "give --clip_scale" in result.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text.encoder": "none"}, "a CLIP run trains its text tower; set config.text.encoder"),
        ({"diffusion.objective": "edm"}, "config.task='clip' needs config.diffusion.objective"),
        ({"clip.eval_timesteps": [1000]}, r"config.clip.eval_timesteps has \[1000\] beyond"),
        ({"clip.embed_dim": 1}, "config.clip.embed_dim=1 is invalid"),
    ],
)
def test_bad_clip_configs_are_named(change, message):
    config = scenes_clip.get_config("smoke")
    for name, value in change.items():
        section, field = name.split(".")
        config[section][field] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_bad_image_towers_are_named_before_compiling(data_dir, tmp_path):
    config = scenes_clip.get_config("smoke")
    config.clip.kwargs.num_outputs = 3
    with pytest.raises(ValueError, match="num_outputs=3 but config.clip.embed_dim=16"):
        train_and_evaluate(config, tmp_path / "w")
    config = scenes_clip.get_config("smoke")
    config.clip.kwargs.pool = "max"
    with pytest.raises(ValueError, match="pool must be 'mean' or 'flatten'"):
        train_and_evaluate(config, tmp_path / "w2")
