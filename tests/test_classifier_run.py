"""The noisy-classifier run (config.task="classifier"): configs/digits_classifier.py:smoke on 8
devices, its TensorBoard scalars, exact resume, the classifier read back for guidance, bad
configs, and workdirs of other tasks refused by both readers and by sample.py."""

import glob
import json
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models, training
from jaxdiff.experiment import Generator, load_workdir, train_and_evaluate, validate_config
from jaxdiff.experiment.autoencoder_run import load_autoencoder_workdir
from jaxdiff.experiment.classifier_run import load_classifier_workdir
from jaxdiff.experiment.classifier_sampling import ClassifierGuidedGenerator
from jaxdiff.schedules import make_schedule

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))
import digits_classifier  # noqa: E402
from test_end_to_end import run  # noqa: E402

EVAL_TAGS = {f"eval/accuracy_t{t}" for t in (0, 250, 500, 750)} | {"eval/accuracy"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """An uninterrupted smoke run (4 steps, checkpoints at 2 and 4)."""
    work = tmp_path_factory.mktemp("clf") / "straight"
    out = train_and_evaluate(digits_classifier.get_config("smoke"), str(work))
    assert out == {"step": 4, "workdir": str(work), "preempted": False}
    return work


def _scalars(workdir):
    """{tag: [(step, value)]} of a workdir's TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    found = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4  # length, its crc, record, its crc
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_smoke_run_writes_its_workdir_and_metrics(trained):
    info = json.loads((trained / "run_info.json").read_text())
    assert info == {"image_shape": [8, 8, 1], "num_classes": 10, "task": "classifier"}
    steps = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    scalars = _scalars(trained)
    assert [s for s, _ in scalars["train/loss"]] == [2, 4]
    assert all(np.isfinite(v) and v > 0 for _, v in scalars["train/loss"])
    assert [s for s, _ in scalars["train/accuracy"]] == [2, 4]
    for tag in EVAL_TAGS:  # eval at sample_every = the last step
        ((step, value),) = scalars[tag]
        assert step == 4 and 0.0 <= value <= 1.0
    by_t = [scalars[f"eval/accuracy_t{t}"][0][1] for t in (0, 250, 500, 750)]
    np.testing.assert_allclose(scalars["eval/accuracy"][0][1], np.mean(by_t), rtol=1e-6)


def test_resumed_run_ends_bit_identical(trained, tmp_path):
    config = digits_classifier.get_config("smoke")
    config.train.num_steps = 2
    work = tmp_path / "resumed"
    assert train_and_evaluate(config, str(work))["step"] == 2
    config.train.num_steps = 4
    assert train_and_evaluate(config, str(work))["step"] == 4
    _, straight, _ = load_classifier_workdir(str(trained))
    _, resumed, _ = load_classifier_workdir(str(work))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    scalars = _scalars(work)  # the resumed invocation logs on from step 2
    assert sorted(s for s, _ in scalars["train/loss"]) == [2, 4]
    assert sorted(s for s, _ in scalars["eval/accuracy"]) == [2, 4]  # each invocation's end


def test_loaded_classifier_gives_normalised_log_probs(trained):
    module, params, schedule = load_classifier_workdir(str(trained))
    assert module.num_outputs == 10 and schedule.num_train_timesteps == 1000
    log_prob = jax.jit(training.classifier_log_prob(module.apply, params))
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0.0, 500.0, 999.0])
    table = jnp.stack([log_prob(x, t, jnp.full((3,), k, jnp.int32)) for k in range(10)], -1)
    assert np.all(np.isfinite(table)) and np.all(table <= 0)
    np.testing.assert_allclose(jax.nn.logsumexp(table, axis=-1), 0.0, atol=1e-5)
    # Guidance differentiates it in x_t.
    grad = jax.grad(lambda x: log_prob(x, t, jnp.array([1, 2, 3])).sum())(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    early = load_classifier_workdir(str(trained), step=2)[1]
    pairs = zip(jax.tree.leaves(early), jax.tree.leaves(params), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)  # step 2's parameters
    with pytest.raises(ValueError, match="No checkpoint at step 3"):
        load_classifier_workdir(str(trained), step=3)


def _fake_workdir(path, **info):
    (path / "checkpoints").mkdir(parents=True)
    (path / "run_info.json").write_text(json.dumps({"image_shape": [8, 8, 1], **info}))
    return str(path)


def test_workdirs_of_other_tasks_are_refused(trained, tmp_path):
    diffusion = _fake_workdir(tmp_path / "diffusion", num_classes=0)
    vae = _fake_workdir(tmp_path / "vae", num_classes=10, task="autoencoder")
    with pytest.raises(ValueError, match=r"not a classifier run: it is a diffusion run"):
        load_classifier_workdir(diffusion)
    with pytest.raises(ValueError, match=r"not a classifier run: it is a autoencoder run"):
        load_classifier_workdir(vae)
    with pytest.raises(ValueError, match="is a classifier run"):
        load_workdir(str(trained))
    with pytest.raises(ValueError, match="not an autoencoder run: it is a classifier run"):
        load_autoencoder_workdir(str(trained))


def test_sample_py_refuses_a_classifier_workdir_in_one_line(trained, tmp_path):
    proc = run(["sample.py", f"--workdir={trained}", "--num_samples=2"], tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("sample.py: error: ") and "is a classifier run" in lines[-1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classifier.eval_timesteps": [0, 1000]}, r"eval_timesteps has \[1000\] beyond"),
        ({"classifier.eval_timesteps": []}, "a non-empty list of ints >= 0"),
        ({"classifier.max_timestep": 0}, "max_timestep=0 is invalid; allowed: None or an int"),
        ({"classifier.max_timestep": 1001}, r"max_timestep=1001 is beyond .* \[1, 1000\]"),
        ({"diffusion.objective": "edm"}, "needs config.diffusion.objective='diffusion'"),
        ({"latent.vae": "w"}, "a classifier run .* set config.latent.vae=None"),
        ({"text.encoder": "small"}, "set config.text.encoder='none'"),
        ({"classifier.kwargz": {}}, "Unknown config field classifier.kwargz"),
        ({"task": "clf"}, r"config.task='clf' is invalid; allowed: one of \(.*'classifier'.*\)"),
    ],
)
def test_bad_classifier_configs_are_named(change, message):
    config = digits_classifier.get_config("smoke")
    for name, value in change.items():
        *sections, field = name.split(".")
        section = config
        for s in sections:
            section = section[s]
        section[field] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channelz": (4,)}, r"Unknown NoisyClassifier field\(s\) \['channelz'\]"),
        ({"num_outputs": 3}, "num_outputs=3 but the dataset has 10 classes; allowed: 10"),
        ({"num_classes": 10}, "num_classes=10 would condition the classifier"),
        ({"attention_levels": (5,)}, r"config.classifier.kwargs: UNet: attention_levels \[5\]"),
    ],
)
def test_bad_classifier_setups_are_named_before_compiling(data_dir, tmp_path, kwargs, message):
    config = digits_classifier.get_config("smoke")
    config.classifier.kwargs.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path / "w")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="allowed: smoke"):
        digits_classifier.get_config("big")


def _unconditional_generator(schedule, **unet_fields):
    unet = models.UNet(channels=(8,), num_res_blocks=1, attention_levels=(), norm_groups=4,
                       mid_attention=False, **unet_fields)  # fmt: skip
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
    labels = jnp.zeros((1,), jnp.int32) if unet_fields.get("num_classes") else None
    params = jax.jit(unet.init)(jax.random.key(0), x, t, labels=labels)["params"]
    return Generator(unet, params, schedule, objective="diffusion", prediction_type="epsilon",
                     sigma_data=0.5, image_shape=(8, 8, 1))  # fmt: skip


def test_classifier_guided_generator(trained):
    """sample.py --classifier_workdir: scale 0 is the unguided model, a scale > 0 moves the
    samples; labels, conditional models and other schedules are refused."""
    classifier = load_classifier_workdir(str(trained))
    base = _unconditional_generator(classifier[2])
    guided = ClassifierGuidedGenerator(base, *classifier)
    assert guided.num_classes == 10
    kwargs = dict(num_samples=4, sampler="ddim", num_steps=3, seed=2, progress=False)
    plain, _ = base.sample(**kwargs)
    unguided, labels = guided.sample(**kwargs, guidance_scale=0.0, labels=[3, 7])
    np.testing.assert_array_equal(labels, [3, 7, 3, 7])
    np.testing.assert_allclose(unguided, plain, rtol=1e-5, atol=1e-5)
    steered, _ = guided.sample(**kwargs, guidance_scale=50.0, labels=[3, 7])
    assert np.all(np.isfinite(steered)) and np.abs(steered - plain).max() > 1e-3
    with pytest.raises(ValueError, match="Class label 10 is out of range"):
        guided.sample(**kwargs, labels=[10])
    with pytest.raises(ValueError, match="model is conditional"):
        ClassifierGuidedGenerator(_unconditional_generator(classifier[2], num_classes=10),
                                  *classifier)  # fmt: skip
    with pytest.raises(ValueError, match="another noise schedule"):
        ClassifierGuidedGenerator(_unconditional_generator(make_schedule("cosine", 1000)),
                                  *classifier)  # fmt: skip
