"""Read a PyTorch ``torch.save`` state dict into numpy without torch.

Both formats ``torch.save`` has written are read: the zip archive (the default since PyTorch 1.6)
and the older "legacy" stream (a pickle of the state dict followed by the raw storages, each an
int64 element count and the bytes), which is what files published before 2020 use, e.g.
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.

The pickles inside are unpickled with a whitelist: only ordered dicts, tensor rebuilding and
storage types are resolved, so a file cannot run code on load. Anything else (the pre-2018 tar
format, an unknown global) is refused with an error naming it.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.itemsize = 2 if _STORAGES[name] == "bfloat16" else np.dtype(_STORAGES[name]).itemsize

    def decode(self, raw: bytes) -> np.ndarray:
        dtype = _STORAGES[self.name]
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32)
        return np.frombuffer(raw, dtype)


class _Tensor:
    """A tensor whose storage may not be read yet (legacy files store data after the pickle)."""

    def __init__(self, storages: dict, key: str, offset: int, size: tuple, stride: tuple):
        self.storages, self.key, self.offset = storages, key, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        flat = self.storages[self.key][self.offset :]
        if not self.size:
            return np.array(flat[0])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat, shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.array(view)


class _Unpickler(pickle.Unpickler):
    """Whitelisting unpickler; ``storage_id(pid) -> key`` registers each storage it meets."""

    def __init__(self, file: BinaryIO, name: str, storage_id):
        super().__init__(file)
        self._name, self._storage_id = name, storage_id
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *_unused: data
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._name}: refusing to load {module}.{name} (only tensors and dicts are read)."
        )

    def _rebuild_tensor(self, key, offset, size, stride, *_unused):
        return _Tensor(self.storages, key, offset, size, stride)

    def persistent_load(self, pid):
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage" or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"{self._name}: unsupported persistent id {pid[:2]}.")
        return self._storage_id(pid)


def _materialise(state: Any, name: str) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise ValueError(f"{name}: holds a {type(state).__name__}, not a state dict.")
    out = {}
    for key, value in state.items():
        if not isinstance(value, _Tensor):
            raise ValueError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        out[key] = value.materialise()
    return out


def _load_zip(path: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}.")
        prefix = pkl[0][: -len("data.pkl")]

        def storage_id(pid):
            stype, key = pid[1], str(pid[2])
            if key not in unpickler.storages:
                unpickler.storages[key] = stype.decode(archive.read(f"{prefix}data/{key}"))
            return key

        with archive.open(pkl[0]) as f:
            unpickler = _Unpickler(f, path, storage_id)
            return _materialise(unpickler.load(), path)


def _load_legacy(path: str, f: BinaryIO) -> dict[str, np.ndarray]:
    def header(what: str):
        try:
            return _Unpickler(f, path, None).load()
        except Exception as e:
            raise ValueError(
                f"{path}: not a torch.save file (zip or legacy format); reading its {what} "
                f"failed ({type(e).__name__}: {e})."
            ) from None

    if header("magic number") != _LEGACY_MAGIC:
        raise ValueError(f"{path}: not a torch.save file (no zip archive, no legacy magic number).")
    if (version := header("protocol version")) != _LEGACY_PROTOCOL:
        raise ValueError(f"{path}: legacy torch format version {version} is not supported.")
    sys_info = header("system info")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: written on a big-endian machine; not supported.")
    types: dict[str, _StorageType] = {}

    def storage_id(pid):
        stype, key, view = pid[1], str(pid[2]), pid[5] if len(pid) > 5 else None
        if view is not None:
            raise ValueError(f"{path}: storage views (torch < 0.4 files) are not supported.")
        types[key] = stype
        return key

    unpickler = _Unpickler(f, path, storage_id)
    state = unpickler.load()
    keys = _Unpickler(f, path, None).load()
    for key in keys:
        key = str(key)
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * types[key].itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{path}: truncated (storage {key} needs {nbytes} bytes).")
        unpickler.storages[key] = types[key].decode(raw)
    return _materialise(state, path)


def load(path: str) -> dict[str, np.ndarray]:
    """State dict (name -> numpy array; bfloat16 widened to float32) of a torch.save file.

    Raises:
      ValueError: when the file is not a torch.save state dict (zip or legacy format).
      pickle.UnpicklingError: when it references anything but tensors and dicts.
    """
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(path, f)
