"""A TFDS builder for a folder of images on disk.

Layouts (the first level decides):
  root/img.png ...                    flat: no labels
  root/<class>/img.png ...            class sub-folders: labels, classes sorted by name
  root/<split>/...                    splits (`train`, `test`, `validation`), each flat or
                                      with class sub-folders
Images are found recursively below a class (or flat) folder, by extension (png, jpg, jpeg,
bmp, gif, webp), in sorted path order. A `.txt` file with the same stem beside an image is
its caption; if any image has one, the dataset gets a `caption` feature (empty for images
without one). Images are converted to `channels` channels and stored as PNG at their own
size; the pipeline resizes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdiff.data.builders import encode_png, image_feature

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLIT_NAMES = ("train", "test", "validation")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """What a scan of an image folder found.

    Attributes:
      root: the folder.
      splits: split name -> list of (image path, class name or None), sorted by path.
      class_names: sorted class names, or None for a flat folder.
      has_captions: whether any image has a caption `.txt` beside it.
    """

    root: Path
    splits: dict[str, list[tuple[Path, str | None]]]
    class_names: tuple[str, ...] | None
    has_captions: bool


def _images_below(folder: Path) -> list[Path]:
    files = (Path(d) / f for d, _, names in os.walk(folder) for f in names)
    return sorted(f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_split(folder: Path) -> tuple[list[tuple[Path, str | None]], tuple[str, ...] | None]:
    """Scans one split folder: flat, or one sub-folder per class."""
    top_images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    classes = _subfolders(folder)
    if top_images and classes:
        raise ValueError(
            f"{folder} holds both images ({top_images[0].name}, ...) and sub-folders "
            f"({classes[0].name}, ...): use either a flat folder or one sub-folder per class."
        )
    if not classes:
        return [(p, None) for p in _images_below(folder)], None
    items = [(p, c.name) for c in classes for p in _images_below(c)]
    return items, tuple(c.name for c in classes)


def scan_image_folder(path: str | os.PathLike) -> FolderLayout:
    """Finds the images, classes, splits and captions of an image folder.

    Raises:
      FileNotFoundError: the folder does not exist.
      ValueError: it holds no images, or mixes images and sub-folders, or its splits have
        different classes.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist (or is not a folder).")
    subs = _subfolders(root)
    if subs and all(s.name in SPLIT_NAMES for s in subs):
        stray = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        if stray:
            raise ValueError(f"{root} holds split folders and also images ({stray[0]}, ...).")
        scans = {s.name: _scan_split(s) for s in subs}
    else:
        scans = {"train": _scan_split(root)}
    class_sets = {names for _, names in scans.values()}
    if len(class_sets) > 1:
        raise ValueError(f"The splits of {root} have different class sub-folders: {class_sets}.")
    splits = {name: items for name, (items, _) in scans.items()}
    empty = [name for name, items in splits.items() if not items]
    if empty:
        raise ValueError(
            f"Found no images for split(s) {empty} in {root} "
            f"(looked for files ending in {', '.join(IMAGE_EXTENSIONS)})."
        )
    has_captions = any(
        p.with_suffix(".txt").is_file() for items in splits.values() for p, _ in items
    )
    return FolderLayout(root, splits, class_sets.pop(), has_captions)


def _fingerprint(layout: FolderLayout, channels: int) -> str:
    """A hash of the folder's file names, sizes and modification times (not contents)."""
    digest = hashlib.sha256(f"{layout.root}\0{channels}".encode())
    for split, items in sorted(layout.splits.items()):
        for image, label in items:
            for f in (image, image.with_suffix(".txt")):
                if f.is_file():
                    stat = f.stat()
                    entry = f"{split}\0{label}\0{f}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
                    digest.update(entry.encode())
    return digest.hexdigest()[:16]


def read_image(path: Path, channels: int) -> np.ndarray:
    """Reads an image file as uint8 `[H, W, channels]`; the error names the file."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(_MODES[channels]))
    except Exception as error:  # PIL raises several types for a bad file.
        raise ValueError(f"Cannot read image file {path}: {error}") from error
    return array.reshape(array.shape[0], array.shape[1], channels)


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images (and optional labels and captions) from a folder on disk.

    The builder config name is the folder's name plus a hash of its file listing (names,
    sizes, modification times) and `channels`: an unchanged folder is prepared once and
    reused; a changed one is prepared anew under a new name.
    """

    name = "image_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, path: str | os.PathLike, channels: int = 3, **kwargs):
        """Scans the folder and makes the builder.

        Args:
          path: the image folder (see the module docstring for the layouts).
          channels: 1 (grey), 3 (RGB) or 4 (RGBA); every image is converted to this.
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (e.g. `data_dir`).
        """
        if channels not in _MODES:
            raise ValueError(f"channels must be 1, 3 or 4, got {channels}.")
        self._channels = channels
        self._layout = scan_image_folder(path)
        slug = re.sub(r"[^A-Za-z0-9_]+", "_", self._layout.root.name) or "root"
        config = tfds.core.BuilderConfig(
            name=f"{slug}-{_fingerprint(self._layout, channels)}",
            description=f"Images from {self._layout.root}.",
        )
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": image_feature((None, None, self._channels))}
        if self._layout.class_names is not None:
            features["label"] = tfds.features.ClassLabel(names=self._layout.class_names)
        if self._layout.has_captions:
            features["caption"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images from the folder {self._layout.root}.",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(pixel_max=255, root=str(self._layout.root)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(items) for name, items in self._layout.splits.items()}

    def _generate_examples(self, items: list[tuple[Path, str | None]]):
        missing = 0
        for i, (path, label) in enumerate(items):
            example = {"image": encode_png(read_image(path, self._channels))}
            if label is not None:
                example["label"] = label
            if self._layout.has_captions:
                caption_file = path.with_suffix(".txt")
                if caption_file.is_file():
                    example["caption"] = caption_file.read_text("utf-8").strip()
                else:
                    example["caption"] = ""
                    missing += 1
            yield i, example
        if missing:
            log.warning("%d images under %s have no caption .txt.", missing, self._layout.root)
