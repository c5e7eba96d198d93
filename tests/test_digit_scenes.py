"""The digit-scenes builder: grammar, rendering, splits, held-out pairs, layout records, seed."""

import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdiff import data
from jaxdiff.data import scenes

WORDS = "zero one two three four five six seven eight nine".split()
DIGIT = r"([0-9]|" + "|".join(WORDS) + ")"
ONE = re.compile(rf"a (small|large) {DIGIT} in the (top|bottom) (left|right)")
TWO = re.compile(rf"a {DIGIT} (to the left of|above) a {DIGIT}")


def parse(caption):
    """(digits, boxes) the issue's grammar assigns to a caption (written from its text)."""
    value = lambda d: int(d) if d.isdigit() else WORDS.index(d)  # noqa: E731
    if m := ONE.fullmatch(caption):
        size, digit, row, col = m.groups()
        top, left = (0 if row == "top" else 16), (0 if col == "left" else 16)
        box = (top, left, 16, 16) if size == "large" else (top + 4, left + 4, 8, 8)
        return (value(digit),), (box,)
    m = TWO.fullmatch(caption)
    assert m, caption
    a, relation, b = m.groups()
    if relation == "above":
        return (value(a), value(b)), ((0, 8, 16, 16), (16, 8, 16, 16))
    return (value(a), value(b)), ((8, 0, 16, 16), (8, 16, 16, 16))


def _pools():
    d = load_digits()
    images = d.images.astype(np.uint8)
    return {"train": (images[:1500], d.target[:1500]), "test": (images[1500:], d.target[1500:])}


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_scenes_follow_the_grammar_and_draw_from_their_split_digits(split):
    pools = _pools()
    images, labels = pools["train" if split == "train" else "test"]
    pool = scenes.digit_pools()[split]
    forms = set()
    for i in range(300):
        image, caption, layout = scenes.make_scene(0, split, i, pool)
        digits, boxes = parse(caption)
        assert layout.digits[: len(digits)] == digits and layout.boxes[: len(boxes)] == boxes
        assert image.shape == (32, 32, 1) and image.dtype == np.uint8
        canvas = image[..., 0].astype(int)
        for digit, (top, left, h, w) in zip(digits, boxes, strict=True):
            crop = canvas[top : top + h, left : left + w]
            if h == 16:  # upscaled 2x by repetition: every 2x2 block is one pixel
                assert (crop == np.kron(crop[::2, ::2], np.ones((2, 2), int))).all()
                crop = crop[::2, ::2]
            same = (images == crop).all(axis=(1, 2)) & (labels == digit)
            assert same.any(), (caption, i)  # one of this split's images of that digit
            canvas[top : top + h, left : left + w] = 0
        assert not canvas.any()  # nothing outside the boxes; background 0
        pair = tuple(digits) if len(digits) == 2 else None
        if pair is not None:
            assert scenes.is_heldout_pair(*pair) == (split == "heldout")
            assert ((pair[0] + 2 * pair[1]) % 10 == 0) == (split == "heldout")
        forms.update("word" if w in WORDS else "numeral" for w in caption.split() if w in WORDS
                     or w.isdigit())  # fmt: skip
    assert forms == {"word", "numeral"}


def test_heldout_pairs_are_those_of_the_issue():
    want = {(a, b) for a in range(10) for b in range(10) if (a + 2 * b) % 10 == 0}
    assert set(scenes.HELDOUT_PAIRS) == want and len(want) == 10
    pool = scenes.digit_pools()["heldout"]
    seen = {(lay.template, lay.digits) for _, _, lay in (scenes.make_scene(0, "heldout", i, pool)
                                                          for i in range(400))}  # fmt: skip
    assert seen == {(t, p) for t in (1, 2) for p in want}  # every pair in both relations


def test_builder_stores_layouts_deterministically_from_the_seed(tmp_path):
    sizes = {"train": 40, "test": 12, "heldout": 8}
    builder = data.get_builder("digit_scenes", data_dir=tmp_path, split_sizes=sizes)
    meta = data.dataset_metadata(builder)
    assert meta.split_sizes == sizes and meta.image_shape == (32, 32, 1) and meta.pixel_max == 16
    pool = scenes.digit_pools()["test"]
    source = builder.as_data_source("test")
    for i in range(len(source)):
        record = source[i]
        image, caption, layout = scenes.make_scene(0, "test", i, pool)
        assert record["caption"].decode() == caption and record["template"] == layout.template
        np.testing.assert_array_equal(record["image"], image)
        np.testing.assert_array_equal(record["digits"], layout.digits)
        np.testing.assert_array_equal(record["boxes"], layout.boxes)
    other = data.get_builder("digit_scenes", data_dir=tmp_path, seed=1, split_sizes=sizes)
    captions = lambda b: [b.as_data_source("train")[i]["caption"] for i in range(40)]  # noqa: E731
    assert captions(other) != captions(builder)
    with pytest.raises(ValueError, match="split_sizes .*'validation'"):
        data.get_builder("digit_scenes", data_dir=tmp_path, split_sizes={"validation": 3})
