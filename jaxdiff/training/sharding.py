"""Execution of the pure train step: ``jax.jit`` with NamedSharding (data + FSDP), and pmap.

The mesh has two axes, ``data`` and ``fsdp``. The batch is split over both (every device
sees different examples). Parameters and optimizer state are replicated over ``data`` and,
with ``fsdp > 1``, each large array is split along its largest dimension divisible by the
``fsdp`` size (fully sharded data parallelism): per-device parameter memory drops by that
factor, and XLA inserts the all-gathers and reduce-scatters. The numbers do not change:
the step is the same function, only its placement differs.

Multi-host: call ``jax.distributed.initialize`` first; ``make_mesh`` then spans all
processes' devices and each process feeds its own rows of the global batch through
:func:`global_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff.training.state import TrainState

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
"""The mesh axes that split the batch (the default ``data_axis`` of :func:`global_batch`)."""
PMAP_AXIS = "batch"
MIN_FSDP_SIZE = 2**14
"""Arrays with fewer elements stay replicated under FSDP (gathering them costs more than it
saves)."""


def make_mesh(*, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices (of all processes) or the given ones.

    Args:
      fsdp: size of the parameter-sharding axis; must divide the number of devices.
        Consecutive devices (on one host, for multi-host) form an FSDP group.
      devices: devices to use; default ``jax.devices()``.

    Returns:
      ``Mesh`` with axes ("data", "fsdp") of shape (n // fsdp, fsdp).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must be >= 1 and divide the number of devices ({n}).")
    return Mesh(np.asarray(devices, dtype=object).reshape(n // fsdp, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, *, min_size: int = MIN_FSDP_SIZE) -> P:
    """PartitionSpec splitting the largest dimension divisible by ``fsdp_size``.

    Arrays with fewer than ``min_size`` elements, or no divisible dimension, are replicated.
    """
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, *, min_fsdp_size: int = MIN_FSDP_SIZE) -> Any:
    """NamedShardings for every leaf of a (train) state, by shape (see :func:`fsdp_spec`).

    Adam's moments have the parameters' shapes, so they are split like the parameters.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size=min_fsdp_size)),
        abstract_state,
    )


def init_sharded_state(
    init_fn: Callable[[jax.Array], TrainState],
    key: jax.Array,
    mesh: Mesh,
    *,
    min_fsdp_size: int = MIN_FSDP_SIZE,
    compiler_options: Mapping[str, Any] | None = None,
) -> tuple[TrainState, Any]:
    """Create the state directly in its sharded layout (no full copy on one device).

    The shapes come from ``jax.eval_shape(init_fn, key)``; the state is then produced by
    ``jax.jit(init_fn, out_shardings=...)``.

    Args:
      init_fn: ``key -> TrainState`` (see :func:`jaxdiff.training.make_init_fn`).
      key: PRNG key of the initialisation.
      mesh: the mesh from :func:`make_mesh`.
      min_fsdp_size: arrays with fewer elements stay replicated.
      compiler_options: XLA options for this compilation (``jax.jit(compiler_options=)``).

    Returns:
      (state, shardings): the state and the pytree of its NamedShardings.
    """
    abstract = jax.eval_shape(init_fn, key)
    shardings = state_shardings(abstract, mesh, min_fsdp_size=min_fsdp_size)
    init = jax.jit(
        init_fn,
        in_shardings=replicated(mesh),
        out_shardings=shardings,
        compiler_options=compiler_options,
    )
    return init(key), shardings


def jit_train_step(
    step_fn: Callable,
    mesh: Mesh,
    shardings: Any,
    *,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable:
    """``jax.jit`` of the pure step with explicit shardings and the state donated.

    Args:
      step_fn: ``(state, batch, key) -> (state, metrics)`` from :func:`make_train_step`
        (built without ``axis_name``).
      mesh: the mesh from :func:`make_mesh`.
      shardings: the state's shardings from :func:`init_sharded_state`.
      compiler_options: XLA options for the step's compilation, e.g.
        ``{"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}``.

    Returns:
      The compiled-on-first-call step; batches should be global arrays (:func:`global_batch`)
      or, in a single process, host arrays.
    """
    repl = replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh), repl),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )


def global_batch(
    local_batch: Any,
    mesh: Mesh,
    *,
    data_axis: str | Sequence[str] = BATCH_AXES,
    keep_strings: bool = False,
) -> Any:
    """Assemble each process's rows into one global array per leaf, split over ``data_axis``.

    The one place where host batches become device arrays (``jaxdiff.data.global_batch`` is
    this function with the data pipeline's defaults). Each process passes its own rows; the
    global batch is their concatenation in process order (the layout of
    ``jaxdiff.data.make_pipeline``), split along axis 0 over the mesh axes ``data_axis`` and
    replicated over the others. In a single process this is a sharded ``device_put``.

    Args:
      local_batch: a pytree of numpy arrays with this process's rows on axis 0.
      mesh: the device mesh (e.g. from :func:`make_mesh`).
      data_axis: the mesh axis name(s) that split the batch; default ("data", "fsdp"), the
        split the train step of :func:`jit_train_step` expects.
      keep_strings: return string arrays (captions) unchanged on the host instead of refusing
        them (the train step takes numeric arrays only).

    Returns:
      The same pytree with ``jax.Array`` leaves (string arrays kept as numpy if allowed).
    """
    axes = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"Mesh axes {mesh.axis_names} do not include {missing}; data_axis must name mesh axes."
        )
    sharding = NamedSharding(mesh, P(axes))
    slices = _local_batch_slices(mesh, axes)

    def put(path, x):
        x = np.asarray(x)
        where = f"batch{jax.tree_util.keystr(path)}"
        if x.dtype.kind in "USO":
            if keep_strings:
                return x
            raise ValueError(
                f"{where} holds {x.dtype} values (e.g. captions); the train step takes numeric "
                "arrays only: drop or encode it before global_batch."
            )
        if x.ndim == 0 or x.shape[0] % slices:
            raise ValueError(
                f"{where} has shape {x.shape}: its leading (batch) axis must be divisible by "
                f"the {slices} slices of mesh axes {axes} on this process."
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, local_batch)


def _local_batch_slices(mesh: Mesh, axes: tuple[str, ...]) -> int:
    """How many distinct slices of the batch axis this process's devices hold."""
    dims = [mesh.axis_names.index(a) for a in axes]
    here = jax.process_index()
    coords = {
        tuple(idx[d] for d in dims)
        for idx, device in np.ndenumerate(mesh.devices)
        if device.process_index == here
    }
    return len(coords)


def pmap_train_step(step_fn: Callable, *, axis_name: str = PMAP_AXIS) -> Callable:
    """The same pure step under ``jax.pmap`` (state replicated, batch split, key shared).

    ``step_fn`` must be built with ``make_train_step(..., axis_name=axis_name)`` so that
    gradients are averaged over devices. Use :func:`replicate` for the state and
    :func:`split_for_pmap` for the batch.
    """
    return jax.pmap(step_fn, axis_name=axis_name, in_axes=(0, 0, None), donate_argnums=(0,))


def _pmap_sharding(devices: Sequence[jax.Device]) -> NamedSharding:
    mesh = Mesh(np.asarray(devices, dtype=object), (PMAP_AXIS,))
    return NamedSharding(mesh, P(PMAP_AXIS))


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """One copy per local device, stacked on a new leading axis (pmap layout)."""
    devices = list(jax.local_devices() if devices is None else devices)
    sharding = _pmap_sharding(devices)

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.device_put(np.broadcast_to(x[None], (len(devices), *x.shape)), sharding)

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """The first copy of a replicated (pmap-layout) pytree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: Any, num_devices: int | None = None) -> Any:
    """[B, ...] -> [num_devices, B // num_devices, ...] (device d gets rows d*B/n ...)."""
    n = jax.local_device_count() if num_devices is None else num_devices

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"Batch size {x.shape[0]} is not divisible by {n} devices.")
        return jnp.reshape(x, (n, x.shape[0] // n, *x.shape[1:]))

    return jax.tree.map(split, batch)
