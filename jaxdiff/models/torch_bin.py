"""Read a PyTorch ``torch.save`` state dict (zip format) into numpy without torch.

The pickle inside is unpickled with a whitelist: only ordered dicts, tensor rebuilding and
storage types are resolved, so a file cannot run code on load. Anything else (an old non-zip
file, an unknown global) is refused with an error naming it.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}  # fmt: skip


class _Storage:
    def __init__(self, name: str):
        self.name = name


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
    bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    itemsize = storage.dtype.itemsize
    flat = storage[offset:]
    if not size:
        return np.array(flat[0]) if flat.size else np.zeros((), storage.dtype)
    view = np.lib.stride_tricks.as_strided(
        flat, shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *_unused):
    return data


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, name: str):
        super().__init__(file)
        self._archive, self._prefix, self._name = archive, prefix, name

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(name)
        raise pickle.UnpicklingError(
            f"{self._name}: refusing to load {module}.{name} (only tensors and dicts are read)."
        )

    def persistent_load(self, pid):
        kind, storage, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"{self._name}: unsupported persistent id {pid[:2]}.")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = _STORAGES[storage.name]
        if dtype == "bfloat16":
            return _bfloat16_to_float32(raw)
        return np.frombuffer(raw, dtype)


def load(path: str) -> dict[str, np.ndarray]:
    """State dict (name -> numpy array; bfloat16 widened to float32) of a torch.save file.

    Raises:
      ValueError: when the file is not a zip-format torch checkpoint.
      pickle.UnpicklingError: when it references anything but tensors and dicts.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a zip-format torch checkpoint; convert it to safetensors.")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}.")
        prefix = pkl[0][: -len("data.pkl")]
        with archive.open(pkl[0]) as f:
            state = _SafeUnpickler(f, archive, prefix, path).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict.")
    return dict(state)
