"""The prompt-accuracy scoring of the digit scenes (jaxdiff.evaluation.layout)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdiff.data import scenes
from jaxdiff.evaluation import layout as scoring


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = d.images.astype(np.float32) / 8.0 - 1.0  # [-1, 1], as the scenes' pipeline
    classify = scoring.train_digit_classifier(images[:1500], d.target[:1500], shifts=0)
    return d, classify, 0.2 * scoring.median_digit_ink(images[:1500])


def _scene(layout, d, index=1500):
    objects = [d.images[index + k].astype(np.uint8) for k in range(2) if layout.digits[k] >= 0]
    return scenes.render(layout, objects).astype(np.float32) / 8.0 - 1.0


def _score(images, layouts, classify, empty_ink):
    digits = np.array([lay.digits for lay in layouts])
    boxes = np.array([lay.boxes for lay in layouts])
    return scoring.score_layouts(np.stack(images), digits, boxes, classify, empty_ink=empty_ink)


def test_real_scenes_pass_and_wrong_layouts_fail(digits):
    d, classify, empty_ink = digits
    a, b = int(d.target[1500]), int(d.target[1501])
    left_of = scenes.Layout(1, (a, b), scenes.pair_boxes("left_of"))
    small = scenes.Layout(0, (a, -1), (scenes.quadrant_box(1, "small"), (0, 0, 0, 0)))
    large = scenes.Layout(0, (a, -1), (scenes.quadrant_box(1, "large"), (0, 0, 0, 0)))
    other_corner = scenes.Layout(0, (a, -1), (scenes.quadrant_box(2, "small"), (0, 0, 0, 0)))
    images = [_scene(left_of, d), _scene(small, d)]
    assert _score(images, [left_of, small], classify, empty_ink).tolist() == [True, True]
    swapped = scenes.Layout(1, (b, a), left_of.boxes)  # the two digits in the wrong order
    wrong = [
        (_scene(left_of, d), swapped),
        (_scene(large, d), small),  # drawn large where a small one was asked
        (_scene(other_corner, d), small),  # drawn in another corner
    ]
    imgs, lays = zip(*wrong, strict=True)
    assert not _score(list(imgs), list(lays), classify, empty_ink).any()


def test_a_faint_haze_is_not_a_digit_but_an_extra_digit_is(digits):
    d, classify, empty_ink = digits
    a = int(d.target[1500])
    small = scenes.Layout(0, (a, -1), (scenes.quadrant_box(0, "small"), (0, 0, 0, 0)))
    image = _scene(small, d)
    background = image == -1.0
    haze = np.where(background, -1.0 + 0.05 * np.random.default_rng(0).random(image.shape), image)
    extra = scenes.Layout(0, (a, -1), (scenes.quadrant_box(3, "small"), (0, 0, 0, 0)))
    stray = np.maximum(image, _scene(extra, d))  # the same digit again, bottom right
    ok = _score([haze, stray], [small, small], classify, empty_ink)
    assert ok.tolist() == [True, False]
    # Counting every pixel's ink, the haze alone (mean ink 0.0125 on ~1000 pixels) would fail.
    assert scoring.ink_outside(haze, [small.boxes[0]], min_ink=0.0) > empty_ink
