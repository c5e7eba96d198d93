"""Scoring generated scenes against the layout their prompt asked for (the digit scenes).

A generated image is correct for its prompt when

1. every requested digit is recognised in its requested box: the box is cropped, brought to
   8x8 (16x16 boxes by 2x2 average pooling, which undoes the 2x upscaling of large digits
   exactly) and classified by a digit classifier trained on real digits, and
2. no other box contains a digit: the stroke ink outside the requested boxes sums to less
   than ``empty_ink`` (the benchmark: a fraction of the median stroke ink of a real digit).
   Ink is the pixel value mapped to [0, 1]; stroke ink counts only pixels of at least
   ``min_ink`` (default 0.25, i.e. value -0.5), so a faint haze over the background (a
   sampler's residual noise, ink ~0.02 per pixel) is not taken for a digit, while a
   digit's strokes are. Every box of the grammar that overlaps no requested box lies in
   that region, and so does the ring around a requested small digit, so a digit drawn at
   the wrong place or size fails this test.

Real scenes have no ink outside their boxes, so on real images the score is the
classifier's accuracy on the digits in them (the ceiling reported next to the samples').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Classifier = Callable[[np.ndarray], np.ndarray]  # [N, 8, 8] in [-1, 1] -> labels [N]


def ink(images: np.ndarray) -> np.ndarray:
    """Pixel values in [-1, 1] as ink in [0, 1] (background 0), same shape."""
    return np.clip((np.asarray(images, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def crop_to_8x8(image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The box (top, left, height, width) of one image [H, W(, 1)] brought to [8, 8]."""
    top, left, height, width = (int(v) for v in box)
    patch = np.asarray(image)[top : top + height, left : left + width].reshape(height, width)
    fy, fx = height // 8, width // 8
    return patch.reshape(8, fy, 8, fx).mean(axis=(1, 3))


MIN_INK = 0.25


def stroke_ink(images: np.ndarray, min_ink: float = MIN_INK) -> np.ndarray:
    """:func:`ink` with pixels fainter than ``min_ink`` set to 0, same shape."""
    amount = ink(images)
    return np.where(amount >= min_ink, amount, 0.0)


def ink_outside(
    image: np.ndarray, boxes: Sequence[Sequence[int]], min_ink: float = MIN_INK
) -> float:
    """Total stroke ink (:func:`stroke_ink`) of one image outside the given boxes."""
    amount = stroke_ink(image, min_ink).reshape(image.shape[0], image.shape[1])
    keep = np.ones(amount.shape, bool)
    for top, left, height, width in boxes:
        keep[top : top + height, left : left + width] = False
    return float(amount[keep].sum())


def train_digit_classifier(
    images: np.ndarray, labels: np.ndarray, *, shifts: int = 1, seed: int = 0
) -> Classifier:
    """An RBF support-vector classifier of 8x8 digits in [-1, 1] (scikit-learn).

    The training digits are used with every shift of up to ``shifts`` pixels (zero-filled),
    so a digit drawn a pixel off its box is still recognised.

    Returns:
      ``classify(crops [N, 8, 8]) -> labels [N]``.
    """
    from sklearn.svm import SVC

    xs, ys = [], []
    for dy in range(-shifts, shifts + 1):
        for dx in range(-shifts, shifts + 1):
            xs.append(_shift(np.asarray(images).reshape(-1, 8, 8), dy, dx))
            ys.append(np.asarray(labels))
    model = SVC(C=10.0, gamma="scale", random_state=seed)
    model.fit(np.concatenate(xs).reshape(-1, 64), np.concatenate(ys))
    return lambda crops: model.predict(np.asarray(crops).reshape(-1, 64))


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.full_like(images, -1.0)
    h, w = images.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def score_layouts(
    images: np.ndarray,
    digits: np.ndarray,
    boxes: np.ndarray,
    classify: Classifier,
    *,
    empty_ink: float,
    min_ink: float = MIN_INK,
) -> np.ndarray:
    """Per image: whether it shows exactly the requested layout (see the module docstring).

    Args:
      images: [N, H, W, 1] in [-1, 1].
      digits: [N, K] requested digits, -1 for no object.
      boxes: [N, K, 4] their boxes (top, left, height, width).
      classify: a digit classifier (:func:`train_digit_classifier`).
      empty_ink: the most stroke ink allowed outside the requested boxes.
      min_ink: the faintest pixel counted as stroke ink.

    Returns:
      bool [N].
    """
    images, digits, boxes = np.asarray(images), np.asarray(digits), np.asarray(boxes)
    crops, owners, wanted = [], [], []
    for i in range(len(images)):
        for k in np.flatnonzero(digits[i] >= 0):
            crops.append(crop_to_8x8(images[i], boxes[i, k]))
            owners.append(i)
            wanted.append(digits[i, k])
    recognised = np.ones(len(images), bool)
    if crops:
        hits = np.asarray(classify(np.stack(crops))) == np.asarray(wanted)
        np.logical_and.at(recognised, np.asarray(owners), hits)
    clean = np.array(
        [
            ink_outside(img, b[d >= 0], min_ink) <= empty_ink
            for img, d, b in zip(images, digits, boxes, strict=True)
        ]
    )
    return recognised & clean


def median_digit_ink(digit_images: np.ndarray, min_ink: float = MIN_INK) -> float:
    """Median total stroke ink of 8x8 digit images in [-1, 1] (the unit of ``empty_ink``)."""
    amount = stroke_ink(digit_images, min_ink).reshape(len(digit_images), -1)
    return float(np.median(amount.sum(axis=1)))
