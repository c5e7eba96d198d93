"""``config.text`` -> the text conditioning of a run: tokenizer, text encoder, conditioned model.

Encoders (``config.text.encoder``):

- "none": no text (the default; every other field is ignored);
- "small": `jaxdiff.models.SmallTextEncoder` over a `jaxdiff.text.WordTokenizer` built from
  the training split's captions, trained jointly with the U-Net. The tokenizer is part of the
  workdir (``tokenizer.json``): sampling reads it, and a resume on captions with another
  vocabulary is refused;
- "pretrained": a frozen transformers-format encoder (``config.text.pretrained_dir``, CLIP or
  T5) with its tokenizer (``config.text.tokenizer_dir``, default the ``tokenizer`` folder
  beside it; needs the ``text`` extra); with ``config.text.cache`` its outputs are computed
  once per distinct training caption.

The U-Net's ``context_dim`` must equal the encoder's width (``config.text.width`` for
"small", the checkpoint's hidden size for "pretrained").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from jaxdiff.training import text_conditioning as tc

TOKENIZER_FILE = "tokenizer.json"
ENCODERS = ("none", "small", "pretrained")


def is_text_conditioned(config: Mapping[str, Any]) -> bool:
    """Whether the run's U-Net is conditioned on captions."""
    return config["text"]["encoder"] != "none"


def read_captions(builder: Any, split: str) -> list[str]:
    """Every caption of a split, in stored order (images are not decoded)."""
    import tensorflow_datasets as tfds

    if "caption" not in builder.info.features.keys():
        raise ValueError(
            f"config.text.encoder needs captions, but dataset {builder.info.name!r} has none "
            f"(features: {sorted(builder.info.features.keys())})."
        )
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    records = source.__getitems__(list(range(len(source))))
    return [r["caption"].decode() if isinstance(r["caption"], bytes) else r["caption"]
            for r in records]  # fmt: skip


def _pretrained(text_config: Mapping[str, Any]):
    from jaxdiff.models import load_text_encoder
    from jaxdiff.text import load_tokenizer

    path = text_config["pretrained_dir"]
    tokenizer_dir = text_config["tokenizer_dir"] or os.path.join(os.path.dirname(path), "tokenizer")
    module, params = load_text_encoder(path)
    tokenizer = load_tokenizer(tokenizer_dir, max_length=text_config["max_length"])
    return tc.FrozenTextEncoder(module, params, tokenizer, hidden_layer=text_config["hidden_layer"])


def small_encoder(text_config: Mapping[str, Any], tokenizer: Any) -> tc.TrainedTextEncoder:
    """The jointly trained encoder of ``config.text`` over ``tokenizer``."""
    from jaxdiff.models.small_text import SmallTextEncoder

    module = SmallTextEncoder(
        vocab_size=tokenizer.vocab_size,
        max_length=tokenizer.max_length,
        width=text_config["width"],
        num_layers=text_config["num_layers"],
        num_heads=text_config["num_heads"],
        mlp_ratio=text_config["mlp_ratio"],
        dropout=text_config["dropout"],
    )
    return tc.TrainedTextEncoder(module, tokenizer)


def conditioned_model(
    config: ml_collections.ConfigDict, unet: Any, conditioner: tc.TextConditioner
) -> tc.TextConditionedModel:
    """The U-Net with its text conditioner; a width mismatch names the config fields."""
    try:
        return tc.TextConditionedModel(unet, conditioner)
    except ValueError as e:
        field = "config.text.width" if config.text.encoder == "small" else "the encoder's width"
        raise ValueError(
            f"{e} Set config.model.kwargs.context_dim={conditioner.width} (the text encoder's "
            f"width, {field}) and config.model.kwargs.attention_type='transformer'."
        ) from None


def model_for_training(
    config: ml_collections.ConfigDict, unet: Any, builder: Any, workdir: str
) -> tc.TextConditionedModel:
    """The text-conditioned model of a training run; writes (or checks) the workdir's tokenizer.

    Raises:
      ValueError: the dataset has no captions, the workdir's tokenizer differs from the one
        of these captions, or the encoder's width is not the U-Net's ``context_dim``.
    """
    text_config = config.text
    captions = read_captions(builder, config.data.split)
    if text_config.encoder == "pretrained":
        frozen = _pretrained(text_config)
        model = conditioned_model(config, unet, frozen)  # checks the width before caching
        if text_config.cache:
            model = tc.TextConditionedModel(unet, tc.CachedTextEncoder(frozen, captions))
        return model
    tokenizer = workdir_tokenizer(captions, text_config.max_length, workdir)
    return conditioned_model(config, unet, small_encoder(text_config, tokenizer))


def workdir_tokenizer(captions: list[str], max_length: int | None, workdir: str) -> Any:
    """The `WordTokenizer` of a training run's captions, written to the workdir (process 0)
    or, on resume, checked against the one there.

    Raises:
      ValueError: the workdir's tokenizer differs from the one of these captions.
    """
    from jaxdiff.text import WordTokenizer

    tokenizer = WordTokenizer.from_captions(captions, max_length=max_length)
    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path):
        stored = WordTokenizer.load(path)
        if stored != tokenizer:
            raise ValueError(
                f"{path} holds a tokenizer of {stored.vocab_size} ids (max_length "
                f"{stored.max_length}) but this run's captions give {tokenizer.vocab_size} "
                f"(max_length {tokenizer.max_length}); use a new --workdir for other captions."
            )
    elif jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer


def model_for_sampling(
    config: ml_collections.ConfigDict, unet: Any, workdir: str
) -> tc.TextConditionedModel:
    """The text-conditioned model of a trained workdir (its tokenizer, or the pretrained one)."""
    from jaxdiff.text import WordTokenizer

    if config.text.encoder == "pretrained":
        return conditioned_model(config, unet, _pretrained(config.text))
    path = os.path.join(workdir, TOKENIZER_FILE)
    if not os.path.exists(path):
        raise ValueError(f"{workdir} is a text-conditioned run but {TOKENIZER_FILE} is missing.")
    return conditioned_model(config, unet, small_encoder(config.text, WordTokenizer.load(path)))
