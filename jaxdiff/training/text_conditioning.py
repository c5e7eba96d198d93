"""Text conditioning in the train step: captions -> ids (host) -> encoder (in the step) -> context.

The data pipeline tokenizes captions on the host (:class:`TokenizeCaptions`), so integer ids
travel in the batch under ``"input_ids"``; the step encodes them and feeds the U-Net's
cross-attention ``context`` (and a pooled embedding, for a U-Net that takes one). Three text
encoders share that path (:class:`TextConditioner`):

- :class:`TrainedTextEncoder`: a module trained jointly with the U-Net (e.g.
  `jaxdiff.models.SmallTextEncoder` over a `jaxdiff.text.WordTokenizer`); its parameters are
  part of the train state (``params["text_encoder"]``), so they are checkpointed, EMA-averaged
  and resumed with the rest;
- :class:`FrozenTextEncoder`: a pretrained encoder (CLIP, T5) with fixed parameters, run in
  the step under ``stop_gradient``; its parameters stay out of the train state;
- :class:`CachedTextEncoder`: a frozen encoder's outputs computed once per distinct caption;
  the "ids" are then one caption index per example and encoding is a table lookup.

Caption dropout for classifier-free guidance replaces a dropped example's ids by those of the
empty caption (:meth:`TextConditionedModel.null_conditions`, given to
:func:`jaxdiff.training.make_diffusion_loss_fn`), so the unconditional model is the one that
reads "" - the input guidance uses at sampling time.

:class:`TextConditionedModel` joins a U-Net and a conditioner behind the U-Net's ``init`` /
``apply`` interface, with parameters ``{"unet": ..., "text_encoder": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INPUT_IDS = "input_ids"
Encoded = tuple[jax.Array, jax.Array | None]  # context [B, L, D], pooled [B, D] (or None)


class TextConditioner:
    """How captions become a context: host ``tokenize``, in-step ``encode``.

    Attributes:
      width: the context's last dimension D (the U-Net's ``context_dim`` must equal it).
      trainable: whether :meth:`init` returns parameters for the train state.
    """

    width: int
    trainable: bool = False

    def tokenize(self, captions: Sequence[str]) -> np.ndarray:
        """int32 rows [B, L] for the batch (host side)."""
        raise NotImplementedError

    def null_row(self) -> np.ndarray:
        """The row of the empty caption [L]: the unconditional input of guidance."""
        return self.tokenize([""])[0]

    def init(self, key: jax.Array) -> Any:
        """Trainable parameters, or None."""
        del key
        return None

    def encode(self, params: Any, rows: jax.Array, *, train: bool = False, rngs=None) -> Encoded:
        """(context [B, L, D], pooled [B, D] or None) of the rows."""
        raise NotImplementedError

    def for_prompts(self) -> TextConditioner:
        """The conditioner that encodes any prompt (a cache gives back its encoder)."""
        return self


def _text_outputs(out: Any, hidden_layer: int) -> Encoded:
    context = out.last_hidden_state if hidden_layer == -1 else out.hidden_states[hidden_layer]
    pooled = out.text_embeds if out.text_embeds is not None else out.pooled_output
    return context, pooled


class TrainedTextEncoder(TextConditioner):
    """A text encoder module trained with the U-Net.

    Args:
      module: a Flax text encoder, ``apply({"params": p}, ids, train=..., rngs=...)`` returning
        a `jaxdiff.models.TextEncoderOutput` (e.g. `jaxdiff.models.SmallTextEncoder`).
      tokenizer: ``tokenizer(captions) -> int32 ids [B, L]`` (e.g. `WordTokenizer`).
      width: the module's output width (default ``module.width``).
    """

    trainable = True

    def __init__(self, module: Any, tokenizer: Callable[..., np.ndarray], width: int | None = None):
        self.module, self.tokenizer = module, tokenizer
        self.width = int(width if width is not None else module.width)

    def tokenize(self, captions: Sequence[str]) -> np.ndarray:
        return np.asarray(self.tokenizer(list(captions)), np.int32)

    def init(self, key: jax.Array) -> Any:
        return self.module.init({"params": key}, jnp.asarray(self.null_row()[None]))["params"]

    def encode(self, params, rows, *, train=False, rngs=None) -> Encoded:
        out = self.module.apply({"params": params}, rows, train=train, rngs=rngs)
        return out.last_hidden_state, out.pooled_output


class FrozenTextEncoder(TextConditioner):
    """A pretrained text encoder with fixed parameters (CLIP, T5: `load_text_encoder`).

    Args:
      module: the encoder module.
      params: its parameters (a constant of the step, outside the train state).
      tokenizer: its tokenizer (`jaxdiff.text.load_tokenizer`).
      hidden_layer: the hidden state used as context: -1 the last (after the final norm),
        -2 the penultimate ("clip skip"), ...
      attention_mask: pass the padding mask to the encoder (T5-conditioned models do,
        CLIP-conditioned Stable Diffusion does not).
    """

    def __init__(
        self,
        module: Any,
        params: Any,
        tokenizer: Any,
        *,
        hidden_layer: int = -1,
        attention_mask: bool = False,
    ):
        self.module, self.params, self.tokenizer = module, params, tokenizer
        self.hidden_layer, self.attention_mask = int(hidden_layer), attention_mask
        self.width = int(getattr(module, "hidden_size", None) or module.d_model)

    def tokenize(self, captions: Sequence[str]) -> np.ndarray:
        return np.asarray(self.tokenizer(list(captions)), np.int32)

    def encode(self, params, rows, *, train=False, rngs=None) -> Encoded:
        del params, train, rngs  # fixed parameters, inference mode
        frozen = jax.lax.stop_gradient(self.params)
        mask = (rows != self.tokenizer.pad_token_id) if self.attention_mask else None
        out = self.module.apply({"params": frozen}, rows, attention_mask=mask)
        return _text_outputs(out, self.hidden_layer)


class CachedTextEncoder(TextConditioner):
    """A frozen encoder's outputs, computed once for each distinct caption (and "").

    The rows are caption indices [B, 1]; encoding is a lookup in the cached tables (kept as
    float32 constants of the step). Captions outside the cache are refused by
    :meth:`tokenize`; :meth:`for_prompts` gives the encoder itself for new prompts.

    Args:
      encoder: the frozen encoder.
      captions: the captions to cache (e.g. every distinct training caption).
      batch_size: captions encoded per call while filling the cache.
    """

    def __init__(self, encoder: FrozenTextEncoder, captions: Sequence[str], batch_size: int = 256):
        self.encoder, self.width = encoder, encoder.width
        self.captions = tuple(dict.fromkeys(["", *captions]))
        self.index = {c: i for i, c in enumerate(self.captions)}
        encode = jax.jit(lambda ids: encoder.encode(None, ids))
        contexts, pooled = [], []
        for start in range(0, len(self.captions), batch_size):
            ids = encoder.tokenize(self.captions[start : start + batch_size])
            c, p = encode(jnp.asarray(ids))
            contexts.append(np.asarray(c, np.float32))
            pooled.append(None if p is None else np.asarray(p, np.float32))
        self.context_table = np.concatenate(contexts)
        self.pooled_table = None if pooled[0] is None else np.concatenate(pooled)

    def tokenize(self, captions: Sequence[str]) -> np.ndarray:
        missing = [c for c in captions if c not in self.index]
        if missing:
            raise ValueError(
                f"Caption {missing[0]!r} is not in the text-embedding cache ({len(self.index)} "
                "captions); use the encoder itself (for_prompts()) for new prompts."
            )
        return np.array([[self.index[c]] for c in captions], np.int32)

    def encode(self, params, rows, *, train=False, rngs=None) -> Encoded:
        del params, train, rngs
        index = rows[:, 0]
        pooled = None if self.pooled_table is None else jnp.asarray(self.pooled_table)[index]
        return jnp.asarray(self.context_table)[index], pooled

    def for_prompts(self) -> TextConditioner:
        return self.encoder


class TextConditionedModel:
    """A U-Net whose cross-attention context comes from a text conditioner.

    Offers the U-Net's interface: ``init(rngs, x, t, labels=None)`` and
    ``apply(variables, x, t, labels=None, input_ids=..., train=False, rngs=None)`` with
    parameters ``{"unet": ..., "text_encoder": ...}`` (no ``text_encoder`` entry when the
    conditioner has nothing to train).

    Args:
      unet: the U-Net module (``context_dim`` equal to the conditioner's width).
      conditioner: see :class:`TextConditioner`.
      pooled_kwarg: the U-Net keyword that takes the pooled text embedding [B, D]; None when
        the U-Net takes none (the jaxdiff U-Net reads the context only).
    """

    def __init__(self, unet: Any, conditioner: TextConditioner, *, pooled_kwarg: str | None = None):
        context_dim = getattr(unet, "context_dim", conditioner.width)
        if context_dim != conditioner.width:
            raise ValueError(
                f"The text encoder's outputs are {conditioner.width} wide but the U-Net's "
                f"cross-attention takes context_dim={context_dim} (diffusers' "
                "cross_attention_dim); they must be equal."
            )
        self.unet, self.conditioner, self.pooled_kwarg = unet, conditioner, pooled_kwarg

    @property
    def num_classes(self) -> int | None:
        """The U-Net's class count (class labels can be used beside text)."""
        return getattr(self.unet, "num_classes", None)

    def null_conditions(self) -> dict[str, np.ndarray]:
        """What caption dropout puts in a dropped example's batch entries: the empty caption."""
        return {INPUT_IDS: self.conditioner.null_row()}

    def init(self, rngs: Any, x: jax.Array, t: jax.Array, labels: Any = None) -> dict:
        """Fresh ``{"params": {"unet": ..., "text_encoder": ...}}``."""
        key = rngs["params"] if isinstance(rngs, Mapping) else rngs
        k_unet, k_text = jax.random.split(key)
        rows = jnp.asarray(np.repeat(self.conditioner.null_row()[None], x.shape[0], 0))
        text_params = self.conditioner.init(k_text)
        context, pooled = self.conditioner.encode(text_params, rows)
        inputs = self._unet_inputs(context, pooled)
        params = {"unet": self.unet.init({"params": k_unet}, x, t, labels=labels, **inputs)}
        params["unet"] = params["unet"]["params"]
        if self.conditioner.trainable:
            params["text_encoder"] = text_params
        return {"params": params}

    def _unet_inputs(self, context, pooled) -> dict[str, jax.Array]:
        inputs = {"context": context}
        if self.pooled_kwarg is not None:
            if pooled is None:
                raise ValueError(
                    f"The U-Net takes {self.pooled_kwarg!r} but the encoder pools none."
                )
            inputs[self.pooled_kwarg] = pooled
        return inputs

    def encode(self, params: Any, input_ids: Any, *, train: bool = False, rngs=None) -> Encoded:
        """(context, pooled) of id rows with the model's parameters."""
        return self.conditioner.encode(
            params.get("text_encoder"), jnp.asarray(input_ids), train=train, rngs=rngs
        )

    def apply(
        self,
        variables: Mapping[str, Any],
        x: jax.Array,
        t: jax.Array,
        labels: Any = None,
        *,
        input_ids: Any = None,
        context: Any = None,
        pooled: Any = None,
        train: bool = False,
        rngs: Any = None,
    ) -> jax.Array:
        """The U-Net's output with the context of ``input_ids`` (or a precomputed ``context``
        and ``pooled``, e.g. encoded once per prompt for sampling)."""
        params = variables["params"]
        if context is None:
            if input_ids is None:
                raise ValueError("TextConditionedModel.apply needs input_ids (or a context).")
            context, pooled = self.encode(params, input_ids, train=train, rngs=rngs)
        return self.unet.apply(
            {"params": params["unet"]}, x, t, labels=labels, train=train, rngs=rngs,
            **self._unet_inputs(context, pooled),
        )  # fmt: skip


class TokenizeCaptions:
    """A data-pipeline transform: ``batch["caption"]`` -> ``batch["input_ids"]`` (host side).

    Picklable (so it also runs in grain's worker processes) when the tokenize function is.
    """

    def __init__(self, tokenize: Callable[[Sequence[str]], np.ndarray], caption_key="caption"):
        self.tokenize, self.caption_key = tokenize, caption_key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.caption_key not in batch:
            raise ValueError(
                f"Text conditioning needs captions, but the batch has only {sorted(batch)}."
            )
        captions = [str(c) for c in batch[self.caption_key]]
        return {**batch, INPUT_IDS: np.asarray(self.tokenize(captions), np.int32)}
