"""Digit scenes: captioned 32x32 compositions of scikit-learn's digits, for text-to-image.

Each scene places one or two 8x8 digits on a 32x32 canvas (background 0, i.e. -1 after the
pipeline's scaling; the digits' own values 0..16, ``pixel_max`` 16) and describes it with a
caption from this grammar:

- one digit: "a {small|large} {digit} in the {top left|top right|bottom left|bottom right}";
  a large digit is the 8x8 digit upscaled (nearest, 2x) to 16x16 filling that quadrant, a
  small one is 8x8 at the quadrant's centre;
- two digits: "a {digit} to the left of a {digit}" (two 16x16 digits in the left and right
  halves, vertically centred) and "a {digit} above a {digit}" (top and bottom halves,
  horizontally centred);
- each {digit} is written as a numeral ("7") or a word ("seven"), a fair coin per mention.

Splits: ``train`` scenes draw their digit images from the digits' first 1500 images, ``test``
and ``heldout`` from the last 297. ``heldout`` holds exactly the two-digit combinations never
seen in training - every ordered pair (a, b) (a the left / upper digit) with
(a + 2 b) mod 10 == 0, in both relations - and ``train`` / ``test`` exclude them. Templates
are drawn uniformly (one digit, left of, above), then their slots uniformly.

Every example stores its layout as fixed-length records, so evaluation never parses text:
``digits`` int32 [2] (-1 for no object) and ``boxes`` int32 [2, 4] (top, left, height,
width; zeros for no object), plus ``template`` (0 one digit, 1 left of, 2 above). Example i
of a split depends only on (seed, split, i).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxdiff.data.builders import DIGITS_NUM_TRAIN, encode_png, image_feature

CANVAS = 32
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
TEMPLATES = ("one_digit", "left_of", "above")
SPLITS = ("train", "test", "heldout")
SPLIT_SIZES = {"train": 20_000, "test": 1_000, "heldout": 400}
MAX_OBJECTS = 2


def is_heldout_pair(first: int, second: int) -> bool:
    """Whether a two-digit combination is held out of training: (a + 2 b) mod 10 == 0."""
    return (first + 2 * second) % 10 == 0


HELDOUT_PAIRS = tuple((a, b) for a in range(10) for b in range(10) if is_heldout_pair(a, b))
SEEN_PAIRS = tuple((a, b) for a in range(10) for b in range(10) if not is_heldout_pair(a, b))


class Layout(NamedTuple):
    """A scene's content: template index, digits [2] (-1: none), boxes [2, 4] (t, l, h, w)."""

    template: int
    digits: tuple[int, int]
    boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


_NO_BOX = (0, 0, 0, 0)


def quadrant_box(position: int, size: str) -> tuple[int, int, int, int]:
    """The box of a one-digit scene: the quadrant (large) or its centre 8x8 (small)."""
    top, left = 16 * (position // 2), 16 * (position % 2)
    return (top, left, 16, 16) if size == "large" else (top + 4, left + 4, 8, 8)


def pair_boxes(template: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The two 16x16 boxes of a two-digit scene: (left, right) or (top, bottom) half."""
    if template == "left_of":
        return (8, 0, 16, 16), (8, 16, 16, 16)
    return (0, 8, 16, 16), (16, 8, 16, 16)


def digit_text(digit: int, as_word: bool) -> str:
    """A digit as its numeral ("7") or its word ("seven")."""
    return NUMBER_WORDS[digit] if as_word else str(digit)


def caption_of(layout: Layout, words: tuple[bool, bool]) -> str:
    """The caption of a layout; ``words`` says which digit mentions are spelled out."""
    first, second = (digit_text(d, w) for d, w in zip(layout.digits, words, strict=True))
    template = TEMPLATES[layout.template]
    if template == "one_digit":
        top, left, height, _ = layout.boxes[0]
        size = "large" if height == 16 else "small"
        position = POSITIONS[2 * (top // 16) + left // 16]
        return f"a {size} {first} in the {position}"
    if template == "left_of":
        return f"a {first} to the left of a {second}"
    return f"a {first} above a {second}"


def draw_layout(rng: np.random.Generator, heldout: bool) -> Layout:
    """A random layout: a template uniformly, then its slots (held-out pairs or the others)."""
    template = int(rng.integers(3)) if not heldout else 1 + int(rng.integers(2))
    if TEMPLATES[template] == "one_digit":
        box = quadrant_box(int(rng.integers(4)), SIZES[int(rng.integers(2))])
        return Layout(template, (int(rng.integers(10)), -1), (box, _NO_BOX))
    pairs = HELDOUT_PAIRS if heldout else SEEN_PAIRS
    pair = pairs[int(rng.integers(len(pairs)))]
    return Layout(template, (int(pair[0]), int(pair[1])), pair_boxes(TEMPLATES[template]))


def render(layout: Layout, digit_images: list[np.ndarray]) -> np.ndarray:
    """The uint8 canvas [32, 32, 1] of a layout, given one 8x8 uint8 image per object."""
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    for digit, box, image in zip(layout.digits, layout.boxes, digit_images, strict=False):
        if digit < 0:
            continue
        top, left, height, width = box
        scale = height // image.shape[0]
        patch = image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image
        region = canvas[top : top + height, left : left + width]
        np.maximum(region, patch, out=region)
    return canvas[..., None]


class DigitPool:
    """The digit images a split may use, grouped by label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.by_label = [images[labels == d] for d in range(10)]

    def pick(self, rng: np.random.Generator, digit: int) -> np.ndarray:
        """A uniformly chosen image of ``digit``."""
        options = self.by_label[digit]
        return options[int(rng.integers(len(options)))]


def make_scene(
    seed: int, split: str, index: int, pool: DigitPool
) -> tuple[np.ndarray, str, Layout]:
    """Example ``index`` of ``split``: (uint8 image [32, 32, 1], caption, layout)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    layout = draw_layout(rng, heldout=split == "heldout")
    objects = [pool.pick(rng, d) for d in layout.digits if d >= 0]
    words = (bool(rng.integers(2)), bool(rng.integers(2)))
    return render(layout, objects), caption_of(layout, words), layout


def digit_pools() -> dict[str, DigitPool]:
    """Split name -> the digits it draws from (train: first 1500; test, heldout: last 297)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target
    n = DIGITS_NUM_TRAIN
    test = DigitPool(images[n:], labels[n:])
    return {"train": DigitPool(images[:n], labels[:n]), "test": test, "heldout": test}


class DigitScenes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Captioned 32x32 scenes of one or two digits (see `jaxdiff.data.scenes`).

    Features: ``image`` uint8 [32, 32, 1] (0..16, ``pixel_max`` 16), ``caption``, ``template``
    (one_digit / left_of / above), ``digits`` int32 [2] and ``boxes`` int32 [2, 4]. Splits
    ``train`` (20,000), ``test`` (1,000) and ``heldout`` (400) unless ``split_sizes`` says
    otherwise. Deterministic from ``seed``: example i of a split is the same whatever the
    split sizes. Needs no network (the digits ship with scikit-learn).

    Args:
      seed: the scenes' seed (>= 0).
      split_sizes: examples per split, e.g. ``{"train": 512}`` (others keep their default).
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (e.g. ``data_dir``).
    """

    name = "digit_scenes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, seed: int = 0, split_sizes: dict[str, int] | None = None, **kwargs):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"digit_scenes: seed must be an int >= 0, got {seed!r}.")
        sizes = {**SPLIT_SIZES, **dict(split_sizes or {})}
        bad = {k: v for k, v in sizes.items() if k not in SPLITS or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(
                f"digit_scenes: split_sizes {bad} are invalid; allowed: splits {SPLITS}, each "
                "an int >= 1."
            )
        self._seed, self._sizes = seed, sizes
        name = f"seed{seed}"
        if sizes != SPLIT_SIZES:
            name += "-" + "-".join(str(sizes[s]) for s in SPLITS)
        config = tfds.core.BuilderConfig(name=name, description=f"Scenes of seed {seed}, {sizes}.")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": image_feature((CANVAS, CANVAS, 1)),
                    "caption": tfds.features.Text(),
                    "template": tfds.features.ClassLabel(names=TEMPLATES),
                    "digits": tfds.features.Tensor(shape=(MAX_OBJECTS,), dtype=np.int32),
                    "boxes": tfds.features.Tensor(shape=(MAX_OBJECTS, 4), dtype=np.int32),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(pixel_max=16, seed=self._seed),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        pools = digit_pools()
        return {s: self._generate_examples(s, pools[s]) for s in SPLITS}

    def _generate_examples(self, split: str, pool: DigitPool):
        for i in range(self._sizes[split]):
            image, caption, layout = make_scene(self._seed, split, i, pool)
            yield (
                i,
                {
                    "image": encode_png(image),
                    "caption": caption,
                    "template": layout.template,
                    "digits": np.asarray(layout.digits, np.int32),
                    "boxes": np.asarray(layout.boxes, np.int32),
                },
            )
