"""TFDS builders for data that ships with a package or is held in memory.

All builders here write array_record files (so `tfds.data_source` can read them without
TensorFlow), keep their records in generation order (`disable_shuffling`; the pipeline does
the shuffling) and store images as PNG-encoded `tfds.features.Image` features.

Images are stored as uint8. The value that means "white" is recorded in the dataset's
metadata as `pixel_max` (255 unless said otherwise; 16 for the digits), and the pipeline maps
`0..pixel_max` linearly onto `[-1, 1]`.

The image-folder builder lives in `jaxdiff.data.folder`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DIGITS_NUM_TRAIN = 1500
"""The digits' train split is scikit-learn's first 1500 images; the test split the last 297."""


def encode_png(image: np.ndarray) -> bytes:
    """Encodes a uint8 image `[H, W]` or `[H, W, C]` (C in 1, 3, 4) as PNG bytes."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_feature(shape: tuple[int | None, int | None, int]) -> tfds.features.Image:
    """A PNG-encoded uint8 image feature of the given `(H, W, C)` shape (None: any size)."""
    return tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png")


def digit_caption(label: int) -> str:
    """The caption stored with a digit image, e.g. "a handwritten digit 7"."""
    return f"a handwritten digit {label}"


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's bundled handwritten digits: 1797 grey 8x8 images of 0-9.

    Features: `image` uint8 `[8, 8, 1]` with values 0..16 (`pixel_max` = 16 in the metadata),
    `label` (10 classes) and `caption` ("a handwritten digit 7"). Splits: `train` is
    scikit-learn's first 1500 images, `test` the remaining 297, both in scikit-learn's order.
    Preparing needs no network: the data ships with scikit-learn.
    """

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 1500 train / 297 test images with captions."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": image_feature((8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                    "caption": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(pixel_max=16),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        n = DIGITS_NUM_TRAIN
        return {
            "train": self._generate_examples(images[:n], labels[:n]),
            "test": self._generate_examples(images[n:], labels[n:]),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield (
                i,
                {
                    "image": encode_png(image),
                    "label": int(label),
                    "caption": digit_caption(int(label)),
                },
            )


def _check_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    captions: Sequence[str] | None,
    pixel_max: int,
) -> np.ndarray:
    """Validates the arrays of `ArrayDataset` and returns the images as `[N, H, W, C]`."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {images.dtype}.")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or images.shape[0] == 0:
        raise ValueError(
            "images must have shape [N, H, W] or [N, H, W, C] with N > 0 and C in (1, 3, 4), "
            f"got {images.shape}."
        )
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise ValueError(
                f"labels must be non-negative integers of shape ({n},), "
                f"got shape {labels.shape} and dtype {labels.dtype}."
            )
    if captions is not None and (
        len(captions) != n or not all(isinstance(c, str) for c in captions)
    ):
        raise ValueError(f"captions must be a sequence of {n} str.")
    if not 1 <= pixel_max <= 255:
        raise ValueError(f"pixel_max must be in 1..255, got {pixel_max}.")
    return images


class ArrayDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A dataset from in-memory numpy arrays, stored as one `train` split.

    Each distinct content is prepared once: the builder config name is `name` plus a hash of
    the arrays, so preparing the same arrays again reuses the files on disk.
    """

    name = "arrays"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(
        self,
        *,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        captions: Sequence[str] | None = None,
        num_classes: int | None = None,
        pixel_max: int = 255,
        name: str = "arrays",
        **kwargs,
    ):
        """Makes the builder.

        Args:
          images: uint8 `[N, H, W]` or `[N, H, W, C]` with C in (1, 3, 4).
          labels: optional non-negative integer class labels `[N]`.
          captions: optional N strings.
          num_classes: number of classes; default `max(labels) + 1`.
          pixel_max: the stored value that means white (the pipeline maps 0..pixel_max to
            [-1, 1]).
          name: a readable prefix of the builder config name (letters, digits, `_`, `-`).
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (e.g. `data_dir`).
        """
        self._images = _check_arrays(images, labels, captions, pixel_max)
        self._labels = None if labels is None else np.asarray(labels).astype(np.int64)
        self._captions = None if captions is None else list(captions)
        self._pixel_max = int(pixel_max)
        if self._labels is not None:
            least = int(self._labels.max()) + 1
            if num_classes is not None and num_classes < least:
                raise ValueError(f"num_classes={num_classes} but labels go up to {least - 1}.")
            num_classes = num_classes or least
        self._num_classes = num_classes
        digest = hashlib.sha256()
        digest.update(repr((self._images.shape, pixel_max, num_classes)).encode())
        digest.update(self._images.tobytes())
        if self._labels is not None:
            digest.update(self._labels.tobytes())
        for caption in self._captions or ():
            digest.update(caption.encode() + b"\0")
        config = tfds.core.BuilderConfig(
            name=f"{name}-{digest.hexdigest()[:16]}", description="In-memory arrays."
        )
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": image_feature(self._images.shape[1:])}
        if self._labels is not None:
            features["label"] = tfds.features.ClassLabel(num_classes=self._num_classes)
        if self._captions is not None:
            features["caption"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="A dataset from in-memory numpy arrays.",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(pixel_max=self._pixel_max),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, image in enumerate(self._images):
            example = {"image": encode_png(image)}
            if self._labels is not None:
                example["label"] = int(self._labels[i])
            if self._captions is not None:
                example["caption"] = self._captions[i]
            yield i, example
