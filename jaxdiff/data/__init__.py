"""Datasets (TFDS builders, prepared as array_record) and the grain input pipeline.

Typical use::

    builder = get_builder("digits")          # prepared once, then reused
    meta = dataset_metadata(builder)         # image shape, classes, split sizes
    it = make_pipeline(builder, split="train", global_batch_size=64, seed=0)
    batch = next(it)                         # {"image": [b, 8, 8, 1] in [-1, 1], "label", ...}
    state = it.get_state()                   # JSON-serialisable; set_state(state) resumes
    arrays = global_batch(batch, mesh)       # jax.Arrays sharded over the mesh axis "data"
"""

from jaxdiff.data.builders import DIGITS_NUM_TRAIN, ArrayDataset, Digits
from jaxdiff.data.folder import ImageFolder, scan_image_folder
from jaxdiff.data.pipeline import AUTO_CACHE_BYTES, global_batch, make_pipeline
from jaxdiff.data.reader import resize_center_crop
from jaxdiff.data.scenes import DigitScenes
from jaxdiff.data.sources import (
    LOCAL_DATASETS,
    DatasetMetadata,
    DatasetNotPreparedError,
    dataset_metadata,
    default_data_dir,
    get_builder,
)

__all__ = [
    "AUTO_CACHE_BYTES",
    "DIGITS_NUM_TRAIN",
    "LOCAL_DATASETS",
    "ArrayDataset",
    "DatasetMetadata",
    "DatasetNotPreparedError",
    "DigitScenes",
    "Digits",
    "ImageFolder",
    "dataset_metadata",
    "default_data_dir",
    "get_builder",
    "global_batch",
    "make_pipeline",
    "resize_center_crop",
    "scan_image_folder",
]
