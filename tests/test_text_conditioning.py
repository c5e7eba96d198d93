"""Text conditioning: the word tokenizer, the small text encoder, and captions through the
train step (trained jointly, frozen, cached; caption dropout; bad input)."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_helpers import FAST_COMPILE, IMAGE_SHAPE, TinyDenoiser

from jaxdiff import models, schedules, training
from jaxdiff.models.small_text import SmallTextEncoder
from jaxdiff.text import WordTokenizer
from jaxdiff.training import text_conditioning as tc

CAPTIONS = ["a small 5 in the top right", "a 3 to the left of a seven", "a two above a 2"]
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "text")


def test_word_tokenizer_rows_unknown_words_and_truncation(tmp_path, caplog):
    tok = WordTokenizer.from_captions(CAPTIONS)
    words = sorted(set(" ".join(CAPTIONS).split()))
    assert tok.words == tuple(words) and tok.max_length == 9 and tok.vocab_size == len(words) + 2
    ids = tok(["", "Seven  above A 5"])
    want = [[1] + [0] * 8, [1] + [words.index(w) + 2 for w in "seven above a 5".split()] + [0] * 4]
    np.testing.assert_array_equal(ids, want)
    assert ids.dtype == np.int32 and tok.decode(ids[1]) == "seven above a 5"
    with pytest.raises(ValueError, match=r"'eleven', 'cat'.*vocabulary is: 2 3 5 a above"):
        tok(["a small 5", "a eleven cat eleven"])
    with caplog.at_level(logging.WARNING):
        cut = tok(["a 3 to the left of a seven above a 2"])
    assert "truncated: prompt 0: 'above a 2'" in caplog.text
    np.testing.assert_array_equal(cut, tok(["a 3 to the left of a seven"]))
    tok.save(tmp_path / "t.json")
    assert WordTokenizer.load(tmp_path / "t.json") == tok


def _encoder(tok, **kw):
    return SmallTextEncoder(vocab_size=tok.vocab_size, max_length=12, width=16, num_heads=2, **kw)


def test_small_encoder_masks_padding_and_refuses_bad_ids():
    tok = WordTokenizer.from_captions(CAPTIONS)
    enc = _encoder(tok)
    ids = tok(CAPTIONS)
    params = jax.jit(enc.init)(jax.random.key(0), ids)["params"]
    apply = jax.jit(lambda p, i: enc.apply({"params": p}, i))
    out = apply(params, ids)
    assert out.last_hidden_state.shape == (3, 9, 16) and out.pooled_output.shape == (3, 16)
    assert len(out.hidden_states) == 3
    # Padding is invisible to the real tokens: three more pad positions change nothing there.
    longer = apply(params, tok(CAPTIONS, max_length=12))
    real = ids != 0
    np.testing.assert_allclose(
        longer.last_hidden_state[:, :9][real], out.last_hidden_state[real], rtol=1e-5, atol=1e-6
    )
    v = tok.vocab_size
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {v}\).*\[-1, {v}\]"):
        enc.apply({"params": params}, np.array([[1, v, -1]]))
    nan = apply(params, jnp.array([[1, v]])).last_hidden_state  # traced: NaN, not clamped
    assert np.isnan(np.asarray(nan)).all()
    with pytest.raises(ValueError, match="length <= max_length 12"):
        enc.apply({"params": params}, np.ones((1, 13), np.int32))


def _text_model(tok, unet=None):
    unet = unet if unet is not None else TinyDenoiser(num_classes=0)
    return tc.TextConditionedModel(unet, tc.TrainedTextEncoder(_encoder(tok), tok))


def _loss_and_step(model, cond_drop_prob=0.0):
    loss_fn = training.make_diffusion_loss_fn(
        model.apply,
        schedule=schedules.make_schedule("linear", num_train_timesteps=1000),
        cond_drop_prob=cond_drop_prob,
        null_conditions=model.null_conditions(),
    )
    opt = training.make_optimizer(learning_rate=1e-2)
    step = training.make_train_step(
        loss_fn, opt, ema_decay_fn=training.ema_decay_schedule(decay=0.9)
    )
    return jax.jit(loss_fn), opt, jax.jit(step, compiler_options=FAST_COMPILE)


def _batch(tok, captions, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (len(captions), *IMAGE_SHAPE)).astype(np.float32)
    return {"image": image, "input_ids": tok(captions)}


def _init(model):
    x = jnp.zeros((1, *IMAGE_SHAPE))
    return jax.jit(lambda k: model.init({"params": k}, x, jnp.zeros((1,)))["params"])(
        jax.random.key(0)
    )


def test_trained_encoder_is_updated_by_the_train_step():
    tok = WordTokenizer.from_captions(CAPTIONS)
    model = _text_model(tok)
    _, opt, step = _loss_and_step(model, cond_drop_prob=0.25)
    params = _init(model)
    assert set(params) == {"unet", "text_encoder"}
    state = training.create_train_state(params, opt)
    new, metrics = step(state, _batch(tok, CAPTIONS * 2), jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    for part in ("unet", "text_encoder"):
        moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params[part], new.params[part])
        assert all(jax.tree.leaves(moved)), part  # every tensor of both networks is trained


def test_caption_dropout_feeds_the_empty_caption():
    tok = WordTokenizer.from_captions(CAPTIONS)
    model = _text_model(tok)
    params = _init(model)
    keys = training.example_keys(jax.random.key(3), jnp.arange(6))
    all_dropped = _loss_and_step(model, cond_drop_prob=1.0)[0]
    kept = _loss_and_step(model, cond_drop_prob=0.0)[0]
    batch = _batch(tok, CAPTIONS * 2)
    empty = {**batch, "input_ids": tok([""] * 6)}
    dropped_loss = all_dropped(params, batch, keys, jax.random.key(4))[0]
    np.testing.assert_allclose(dropped_loss, kept(params, empty, keys, jax.random.key(4))[0])
    assert not np.allclose(dropped_loss, kept(params, batch, keys, jax.random.key(4))[0])


def test_context_width_must_match_the_unet():
    tok = WordTokenizer.from_captions(CAPTIONS)
    unet = models.TINY(num_classes=0, attention_type="transformer", context_dim=24)
    with pytest.raises(
        ValueError, match="16 wide but the U-Net's cross-attention takes context_dim=24"
    ):
        _text_model(tok, unet)
    with pytest.raises(ValueError, match="context_dim=None"):
        _text_model(tok, models.TINY(num_classes=0))


def test_the_pooled_embedding_reaches_a_unet_that_takes_one():
    class PooledDenoiser(TinyDenoiser):
        def __call__(self, x, t, labels=None, context=None, pooled=None, train=False):
            return super().__call__(x, t, labels, context, train) + pooled.sum()

    tok = WordTokenizer.from_captions(CAPTIONS)
    enc = tc.TrainedTextEncoder(_encoder(tok), tok)
    model = tc.TextConditionedModel(PooledDenoiser(num_classes=0), enc, pooled_kwarg="pooled")
    params = _init(model)
    x, t, ids = jnp.zeros((2, *IMAGE_SHAPE)), jnp.zeros((2,)), tok(CAPTIONS[:2])

    @jax.jit
    def both(params):
        context, pooled = model.encode(params, ids)
        plain = TinyDenoiser(num_classes=0).apply({"params": params["unet"]}, x, t, context=context)
        return model.apply({"params": params}, x, t, input_ids=ids), plain + pooled.sum()

    np.testing.assert_allclose(*both(params), rtol=1e-6)


def test_frozen_and_cached_pretrained_encoders():
    pytest.importorskip("transformers")
    from jaxdiff.text import load_tokenizer

    module, clip = models.load_text_encoder(os.path.join(FIXTURES, "models", "sd1"))
    tok = load_tokenizer(os.path.join(FIXTURES, "tokenizers", "clip"), max_length=16)
    frozen = tc.FrozenTextEncoder(module, clip, tok, hidden_layer=-2)
    cached = tc.CachedTextEncoder(frozen, CAPTIONS)
    assert cached.for_prompts() is frozen and frozen.width == 32
    losses = []
    for conditioner in (frozen, cached):
        model = tc.TextConditionedModel(TinyDenoiser(num_classes=0), conditioner)
        loss_fn = _loss_and_step(model, cond_drop_prob=0.5)[0]
        params = _init(model)
        assert set(params) == {"unet"}  # the frozen encoder is not in the train state
        batch = {
            "image": _batch(tok, CAPTIONS)["image"],
            "input_ids": conditioner.tokenize(CAPTIONS),
        }
        keys = training.example_keys(jax.random.key(3), jnp.arange(3))
        losses.append(loss_fn(params, batch, keys, jax.random.key(4))[0])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)  # cache == running the encoder
    np.testing.assert_array_equal(cached.tokenize(["", CAPTIONS[1]])[:, 0], [0, 2])
    with pytest.raises(ValueError, match="not in the text-embedding cache"):
        cached.tokenize(["a cat"])


def test_generators_refuse_the_other_kind_of_condition():
    from jaxdiff.experiment.sampling import Generator
    from jaxdiff.experiment.text_sampling import TextGenerator

    schedule = schedules.make_schedule("linear", num_train_timesteps=1000)
    kw = dict(objective="diffusion", prediction_type="epsilon", sigma_data=0.5,
              image_shape=IMAGE_SHAPE)  # fmt: skip
    tok = WordTokenizer.from_captions(CAPTIONS)
    text = TextGenerator(_text_model(tok), None, schedule, **kw)
    with pytest.raises(ValueError, match="conditioned on text; give prompts"):
        text.sample(num_samples=2, sampler="ddim", num_steps=2, labels=[3])
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary: 'cat'"):
        text.sample(num_samples=2, sampler="ddim", num_steps=2, prompts=["a cat"])
    labels = Generator(models.TINY(), None, schedule, **kw)
    with pytest.raises(ValueError, match="not conditioned on text .*class labels"):
        labels.sample(num_samples=2, sampler="ddim", num_steps=2, prompts=["a 3"])


def test_config_text_builds_a_cached_frozen_pretrained_encoder(tmp_path):
    pytest.importorskip("transformers")
    from jaxdiff import data
    from jaxdiff.experiment import base_config, validate_config
    from jaxdiff.experiment import text as text_lib

    config = base_config()
    config.text.encoder = "pretrained"
    with pytest.raises(ValueError, match="needs config.text.pretrained_dir"):
        validate_config(config)
    config.text.pretrained_dir = os.path.join(FIXTURES, "models", "sd1")
    config.text.tokenizer_dir = os.path.join(FIXTURES, "tokenizers", "clip")
    config.text.max_length = 20
    config.data.name = "digit_scenes"
    sizes = {"train": 6, "test": 1, "heldout": 1}
    builder = data.get_builder("digit_scenes", data_dir=tmp_path, split_sizes=sizes)
    unet = models.TINY(num_classes=0, attention_type="transformer", context_dim=16)
    with pytest.raises(
        ValueError, match="takes context_dim=16.*Set config.model.kwargs.context_dim=32"
    ):
        text_lib.model_for_training(config, unet, builder, str(tmp_path))
    unet = models.TINY(num_classes=0, attention_type="transformer", context_dim=32)
    model = text_lib.model_for_training(config, unet, builder, str(tmp_path))
    captions = text_lib.read_captions(builder, "train")
    assert isinstance(model.conditioner, tc.CachedTextEncoder)
    assert model.conditioner.captions == ("", *dict.fromkeys(captions))
    config.text.encoder, config.text.num_heads = "small", 5
    with pytest.raises(ValueError, match="config.text.width=64 must be divisible by"):
        validate_config(config)
