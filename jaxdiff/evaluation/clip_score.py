"""CLIP score of generated images against their prompts (Hessel et al. 2021).

CLIP-S(image, prompt) = w * max(cos(E_image, E_text), 0) with w = 100, the scale text-to-image
papers and torchmetrics' ``CLIPScore`` report (Hessel et al. use w = 2.5). The model is a
transformers ``CLIPModel`` directory (e.g. a copy of ``openai/clip-vit-large-patch14``: config,
weights, tokenizer files and ``preprocessor_config.json``), loaded with
`jaxdiff.models.load_clip` and `jaxdiff.text.load_tokenizer`.

Images are preprocessed as transformers' ``CLIPImageProcessor`` does: the shorter side resized
to ``size["shortest_edge"]`` (bicubic with antialiasing; for uint8 input the result is rounded
to uint8 as the processor does), a centre crop to ``crop_size``, scaling to [0, 1] and
normalisation by ``image_mean`` / ``image_std``. The resampling kernels are not bit-identical
(jaxdiff's output differs from transformers' by at most one uint8 level at some pixels); pass
already processed ``pixel_values`` to `ClipScorer.scores` for an exact comparison.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.evaluation.features import to_unit_range
from jaxdiff.evaluation.parallel import DataParallel

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_NAME = "preprocessor_config.json"


def _edge(value: Any, key: str, fallback: int) -> int:
    if isinstance(value, dict):
        return int(value.get(key, value.get("height", fallback)))
    return int(value) if value is not None else fallback


def read_preprocessor(path: str, image_size: int) -> dict[str, Any]:
    """The image-processing settings of a CLIP directory (OpenAI's defaults when absent)."""
    config = {}
    file = os.path.join(path, PREPROCESSOR_NAME)
    if os.path.isfile(file):
        with open(file) as f:
            config = json.load(f)
    return {
        "shortest_edge": _edge(config.get("size"), "shortest_edge", image_size),
        "crop_size": _edge(config.get("crop_size"), "height", image_size),
        "mean": np.asarray(config.get("image_mean", OPENAI_CLIP_MEAN), np.float32),
        "std": np.asarray(config.get("image_std", OPENAI_CLIP_STD), np.float32),
    }


def preprocess(
    images: Any,
    *,
    shortest_edge: int,
    crop_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """CLIP pixel values [N, crop, crop, 3] of images (uint8, or floats in ``value_range``)."""
    raw = np.asarray(images)
    x = to_unit_range(raw, value_range) * np.float32(255.0)
    n, h, w, _ = x.shape
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(shortest_edge * long / short)  # the processor truncates the longer side
    nh, nw = (shortest_edge, new_long) if h <= w else (new_long, shortest_edge)
    y = jax.image.resize(jnp.asarray(x), (n, nh, nw, 3), method="bicubic", antialias=True)
    y = np.clip(np.asarray(y), 0.0, 255.0)
    if raw.dtype == np.uint8:
        y = np.round(y)
    if crop_size > min(nh, nw):
        raise ValueError(f"crop_size {crop_size} exceeds the resized image ({nh} x {nw}).")
    top, left = int(round((nh - crop_size) / 2)), int(round((nw - crop_size) / 2))
    y = y[:, top : top + crop_size, left : left + crop_size] / np.float32(255.0)
    return ((y - mean) / std).astype(np.float32)


class ClipScorer:
    """CLIP score with a transformers ``CLIPModel`` directory, data-parallel over devices.

    Args:
      path: the CLIP directory (config.json + weights + tokenizer files [+ preprocessor]).
      batch_size: image-prompt pairs per call.
      weight: w of CLIP-S = w * max(cos, 0) (100; Hessel et al. use 2.5).
      devices: default: the local devices.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int = 64,
        weight: float = 100.0,
        devices: Sequence[jax.Device] | None = None,
    ):
        from jaxdiff.models.clip import CLIPModel
        from jaxdiff.models.convert_clip import load_clip
        from jaxdiff.text import load_tokenizer

        path = os.fspath(path)
        self.module, params = load_clip(path)
        if not isinstance(self.module, CLIPModel):
            raise ValueError(
                f"{path}: CLIP score needs both towers (architectures ['CLIPModel']); this is a "
                f"{type(self.module).__name__}."
            )
        self.tokenizer = load_tokenizer(path)
        self.preprocessor = read_preprocessor(path, self.module.vision_config.image_size)
        self.weight = float(weight)
        module = self.module

        def cosine(p, batch):
            pixels, ids = batch
            img = module.apply({"params": p}, pixels, method="image_embeds")
            txt = module.apply({"params": p}, ids, method="text_embeds")
            img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
            txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
            return jnp.sum(img * txt, axis=-1)

        self._run = DataParallel(cosine, batch_size=batch_size, devices=devices)
        self._params = self._run.replicate(params)

    def pixel_values(
        self, images: Any, value_range: tuple[float, float] = (0.0, 1.0)
    ) -> np.ndarray:
        """Images -> CLIP pixel values (see `preprocess`)."""
        return preprocess(images, value_range=value_range, **self.preprocessor)

    def scores(self, pixel_values: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Per-pair CLIP-S [N] of preprocessed pixel values [N, S, S, 3] and N prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(pixel_values):
            raise ValueError(
                f"one prompt per image: got {len(pixel_values)} images and {len(prompts)} prompts."
            )
        ids = self.tokenizer(prompts)
        cos = []
        for i in range(0, len(ids), self._run.batch_size):
            j = i + self._run.batch_size
            cos.append(self._run(self._params, (pixel_values[i:j], ids[i:j])))
        return self.weight * np.maximum(np.concatenate(cos).astype(np.float64), 0.0)

    def __call__(
        self,
        images: Any,
        prompts: Sequence[str],
        *,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> np.ndarray:
        """Per-pair CLIP-S [N] of images (uint8 or floats in ``value_range``) and prompts."""
        return self.scores(self.pixel_values(images, value_range), prompts)


def clip_score(
    images: Any,
    prompts: Sequence[str],
    *,
    model: str | os.PathLike | ClipScorer,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> float:
    """Mean CLIP score 100 * max(cos(image, prompt), 0) over image-prompt pairs.

    Args:
      images: [N, H, W, 3] uint8, or floats in ``value_range``.
      prompts: N prompts (the i-th describes the i-th image).
      model: a `ClipScorer` or the path of a transformers ``CLIPModel`` directory.
      value_range: range of float images ((-1, 1) for jaxdiff samples).

    Returns:
      The mean score over the pairs (0-100).
    """
    scorer = model if isinstance(model, ClipScorer) else ClipScorer(model)
    return float(scorer(images, prompts, value_range=value_range).mean())
