"""Load pytorch-fid's FID Inception weights (``pt_inception-2015-12-05-*.pth``) into
`jaxdiff.models.inception.FIDInceptionV3`.

The file is the one pytorch-fid downloads on first use (its ``FID_WEIGHTS_URL``); jaxdiff never
downloads it. It is read with jaxdiff's pickle-free ``torch.save`` reader (zip or legacy
format); a ``.safetensors`` file with the same keys is accepted too. Keys that the pool3
features do not use (the ``fc`` classifier, ``num_batches_tracked``) are ignored. A file name
that carries a hash, as the published ``pt_inception-2015-12-05-6726825d.pth`` does, is checked
against the first hex digits of the file's SHA-256, as ``torch.hub`` checks it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdiff.models import torch_bin
from jaxdiff.models.inception import FIDInceptionV3

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
)
ENV_VAR = "JAXDIFF_INCEPTION"
_PATTERN = "pt_inception-2015-12-05-*.pth"
_HASHED = re.compile(r"^pt_inception-2015-12-05-([0-9a-f]{8,})\.pth$")
_IGNORED = re.compile(r"^fc\.(weight|bias)$|\.num_batches_tracked$")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}  # fmt: skip
_HOW = (
    f"pytorch-fid's FID Inception weights {WEIGHTS_NAME} (from {WEIGHTS_URL}; pytorch-fid keeps "
    "a copy in ~/.cache/torch/hub/checkpoints/): pass its path (path=..., or --inception on the "
    f"command line) or set ${ENV_VAR} to the file or to the directory holding it"
)


def torch_key(path: tuple[str, ...]) -> str:
    """PyTorch state-dict key of a `FIDInceptionV3` parameter path."""
    *modules, leaf = path
    return ".".join([*modules, _LEAF[leaf]])


def find_weights(path: str | os.PathLike | None = None) -> str:
    """The Inception weight file: ``path``, else ``$JAXDIFF_INCEPTION`` (a file or a directory
    holding ``pt_inception-2015-12-05-*.pth``).

    Raises:
      FileNotFoundError: naming the expected file, where to get it and how to point jaxdiff at
        it.
    """
    source = "path" if path is not None else f"${ENV_VAR}"
    path = os.fspath(path) if path is not None else os.environ.get(ENV_VAR)
    if not path:
        raise FileNotFoundError(
            f"No Inception weights given. FID / KID / precision-recall need {_HOW}."
        )
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, _PATTERN)))
        if not found:
            raise FileNotFoundError(f"{path} ({source}) holds no {_PATTERN}. Expected {_HOW}.")
        return found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} ({source}): no such file. Expected {_HOW}.")
    return path


def _check_hash(file: str) -> None:
    match = _HASHED.match(os.path.basename(file))
    if not match:
        return
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ValueError(
            f"{file}: its SHA-256 {digest.hexdigest()[:12]}... does not start with the "
            f"{match.group(1)} in its name (a corrupt or partial download?). Expected {_HOW}."
        )


def read_state_dict(file: str) -> dict[str, np.ndarray]:
    """The state dict of an Inception weight file (.pth, or .safetensors with the same keys).

    Raises:
      ValueError: when the file is not a state dict (names the expected file).
    """
    _check_hash(file)
    try:
        if file.endswith(".safetensors"):
            from safetensors.numpy import load_file

            return load_file(file)
        return torch_bin.load(file)
    except Exception as e:
        raise ValueError(
            f"{file}: cannot be read as Inception weights ({e}). Expected {_HOW}."
        ) from None


def param_shapes(module: FIDInceptionV3) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter paths and shapes of the network (no compute)."""
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    shapes = jax.eval_shape(lambda i: module.init(jax.random.key(0), i), x)
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]))
    return {p: tuple(s.shape) for p, s in flat.items()}


def params_from_state_dict(
    state_dict: dict[str, np.ndarray], source: str = "state dict"
) -> dict[str, Any]:
    """`FIDInceptionV3` parameters (nested dict, float32) of a pytorch-fid state dict.

    Raises:
      ValueError: naming missing / unexpected keys and shape mismatches, and the expected file.
    """
    shapes = param_shapes(FIDInceptionV3())
    wanted = {torch_key(p): p for p in shapes}
    state = {k: v for k, v in state_dict.items() if not _IGNORED.search(k)}
    problems = []
    if missing := sorted(set(wanted) - set(state)):
        problems.append(f"{len(missing)} missing parameters {missing[:6]}")
    if unexpected := sorted(set(state) - set(wanted)):
        problems.append(f"{len(unexpected)} unexpected parameters {unexpected[:6]}")
    flat = {}
    for key in sorted(set(wanted) & set(state)):
        path, value = wanted[key], np.asarray(state[key], np.float32)
        need = shapes[path]
        if path[-1] == "kernel":  # HWIO here, OIHW in PyTorch
            need = (need[3], need[2], need[0], need[1])
        if value.shape != need:
            problems.append(f"{key} has shape {value.shape}, the network needs {need}")
            continue
        flat[path] = jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
    if problems:
        raise ValueError(
            f"{source} is not the FID Inception: " + "; ".join(problems) + f". Expected {_HOW}."
        )
    return traverse_util.unflatten_dict(flat)


def load_inception(
    path: str | os.PathLike | None = None, **module_fields: Any
) -> tuple[FIDInceptionV3, dict]:
    """pytorch-fid's FID Inception-v3 with its weights.

    Args:
      path: the weight file or a directory holding it; default ``$JAXDIFF_INCEPTION``.
      **module_fields: `FIDInceptionV3` fields, e.g. ``resize_input=False``.

    Returns:
      (module, params): ``module.apply({"params": params}, images)`` maps NHWC images in [0, 1]
      to pool3 features [B, 2048].

    Raises:
      FileNotFoundError: no file given or found (names the file and how to point jaxdiff at it).
      ValueError: the file is not the FID Inception's state dict (names what is wrong).
    """
    file = find_weights(path)
    params = params_from_state_dict(read_state_dict(file), file)
    return FIDInceptionV3(**module_fields), params
