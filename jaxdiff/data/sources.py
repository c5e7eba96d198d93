"""Datasets by name: the local builders and TFDS catalog datasets, prepared on request.

`get_builder` returns a prepared TFDS builder (array_record files on disk). Preparation is
idempotent (a prepared dataset is reused), shows TFDS's progress bars, is serialised between
processes that share a data directory (a file lock), and leaves nothing that looks complete
when it fails (TFDS writes into an `incomplete.*` folder and renames it at the end).

Nothing is downloaded unless `download=True`; the local datasets never download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from jaxdiff.data.builders import ArrayDataset, Digits
from jaxdiff.data.folder import ImageFolder
from jaxdiff.data.scenes import DigitScenes

log = logging.getLogger(__name__)

LOCAL_DATASETS = ("digits", "digit_scenes", "image_folder", "arrays")
"""Names `get_builder` resolves without the TFDS catalog."""

_TF_EXTRA = "pip install 'jaxdiff[tf]'"


class DatasetNotPreparedError(FileNotFoundError):
    """A catalog dataset is not prepared (as array_record) and downloads are disabled."""


def default_data_dir() -> Path:
    """`$JAXDIFF_DATA_DIR` if set, else `~/.cache/jaxdiff/tensorflow_datasets`."""
    env = os.environ.get("JAXDIFF_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "jaxdiff" / "tensorflow_datasets"


@contextlib.contextmanager
def _preparation_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Holds an exclusive lock on `data_dir/.name.lock` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: preparation is not serialised between processes.
        yield
        return
    with open(data_dir / f".{name.replace('/', '_')}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_missing_tensorflow(error: ImportError) -> bool:
    missing = getattr(error, "name", None) or ""
    return missing == "tensorflow" or missing.startswith("tensorflow.")


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # Checking the folder first avoids TFDS's warning about a variant folder it cannot find.
    return builder.data_path.exists() and builder.is_prepared()


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
    """Prepares `builder` as array_record unless it already is."""
    if _is_prepared(builder):
        log.info("Reusing prepared dataset %s at %s.", builder.name, builder.data_dir)
        return
    log.info("Preparing dataset %s in %s.", builder.name, builder.data_dir)
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config, file_format="array_record")
    except ImportError as error:
        if _is_missing_tensorflow(error):
            raise ImportError(
                f"Preparing the dataset '{builder.name}' needs TensorFlow, which is not "
                f"installed. Install the optional extra: {_TF_EXTRA}"
            ) from error
        raise


def _local_builder(name: str, data_dir: Path, kwargs: dict[str, Any]):
    if name == "image_folder" and "path" not in kwargs:
        raise ValueError("The image_folder dataset needs path=<folder of images>.")
    if name == "arrays" and "images" not in kwargs:
        raise ValueError("The arrays dataset needs images=<uint8 array [N, H, W, C]>.")
    cls = {
        "digits": Digits,
        "digit_scenes": DigitScenes,
        "image_folder": ImageFolder,
        "arrays": ArrayDataset,
    }[name]
    # Built under the lock, so that a dataset another process just prepared is read from disk.
    with _preparation_lock(data_dir, name):
        builder = cls(data_dir=os.fspath(data_dir), file_format="array_record", **kwargs)
        _prepare(builder)
    # A read-only builder of the prepared files: light to pickle into grain's workers (the
    # builder above would carry its arrays, and cannot be rebuilt from its pickled state).
    return tfds.builder_from_directory(builder.data_path)


def _catalog_builder(name: str, data_dir: Path, download: bool, kwargs: dict[str, Any]):
    def make():
        path = os.fspath(data_dir)
        return tfds.builder(name, data_dir=path, file_format="array_record", **kwargs)

    try:
        builder = make()
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset '{name}': use one of {LOCAL_DATASETS} or a TFDS catalog name "
            "(tensorflow_datasets.list_builders())."
        ) from None
    if not _is_prepared(builder):
        if not download:
            raise DatasetNotPreparedError(
                f"Dataset '{name}' is not prepared in {data_dir} and downloads are disabled. "
                "Pass download=True (in a training config: --config.data.download=True) to "
                "download and prepare it once; preparing most catalog datasets also needs "
                f"TensorFlow: {_TF_EXTRA}"
            )
        with _preparation_lock(data_dir, name):
            builder = make()
            _prepare(builder)
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        raise DatasetNotPreparedError(
            f"Dataset '{name}' in {builder.data_dir} is stored as "
            f"{sorted(f.value for f in formats)}, but reading needs array_record. Use another "
            "data_dir with download=True to prepare it as array_record."
        )
    return builder


def get_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    **kwargs: Any,
) -> tfds.core.DatasetBuilder:
    """Returns the prepared TFDS builder of a dataset, preparing it first if needed.

    Args:
      name: "digits" (scikit-learn's 8x8 digits, the default dataset), "digit_scenes"
        (captioned 32x32 scenes of digits, `jaxdiff.data.scenes`; option `seed=`), "image_folder"
        (needs `path=`; see `jaxdiff.data.folder`), "arrays" (needs `images=`; see
        `ArrayDataset`), or a TFDS catalog name such as "mnist", "cifar10" or
        "celeb_a:2.1.0".
      data_dir: where prepared datasets live; default `default_data_dir()`.
      download: allow downloading a catalog dataset that is not prepared yet. The local
        datasets never download.
      **kwargs: passed to the builder (`path`, `channels`, `images`, `labels`, ... for the
        local ones; `config`, `version` for catalog ones).

    Returns:
      A builder whose `as_data_source(split)` reads the data; `info` describes it.

    Raises:
      ValueError: unknown name or missing/invalid arguments.
      FileNotFoundError: an image folder does not exist.
      DatasetNotPreparedError: a catalog dataset is not prepared and `download` is False.
      ImportError: preparing needs TensorFlow (the error says how to install it).
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    if name in LOCAL_DATASETS:
        return _local_builder(name, data_dir, kwargs)
    return _catalog_builder(name, data_dir, download, kwargs)


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """What a trainer needs to know about a dataset before reading it.

    Attributes:
      name: the builder's name.
      image_shape: stored `(H, W, C)`; H and W are None when images differ in size.
      num_classes: number of label classes, or None without a `label` feature.
      class_names: the label names, or None.
      has_caption: whether records carry a `caption`.
      split_sizes: split name -> number of records.
      pixel_max: the stored value that the pipeline maps to 1.0 (0 maps to -1.0).
    """

    name: str
    image_shape: tuple[int | None, int | None, int]
    num_classes: int | None
    class_names: tuple[str, ...] | None
    has_caption: bool
    split_sizes: dict[str, int]
    pixel_max: int


def dataset_metadata(source: Any) -> DatasetMetadata:
    """Describes a dataset from its TFDS info, without reading records.

    Args:
      source: a TFDS builder, a TFDS data source (has `dataset_info`), or a
        `tfds.core.DatasetInfo`.
    """
    info = getattr(source, "info", None) or getattr(source, "dataset_info", None) or source
    if not isinstance(info, tfds.core.DatasetInfo):
        raise TypeError(f"Expected a TFDS builder, data source or DatasetInfo, got {source!r}.")
    features = info.features
    if "image" not in features.keys():
        raise ValueError(f"Dataset {info.name} has no 'image' feature: {list(features)}.")
    label = features["label"] if "label" in features.keys() else None
    return DatasetMetadata(
        name=info.name,
        image_shape=tuple(features["image"].shape),
        num_classes=None if label is None else label.num_classes,
        class_names=None if label is None else tuple(label.names),
        has_caption="caption" in features.keys(),
        split_sizes={name: split.num_examples for name, split in info.splits.items()},
        pixel_max=int((info.metadata or {}).get("pixel_max", 255)),
    )
