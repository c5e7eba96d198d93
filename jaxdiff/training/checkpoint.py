"""Orbax checkpoints: train state + data-iterator state + config in one step directory.

One :class:`Checkpointer` per run directory wraps an Orbax ``CheckpointManager`` (async
writes by default). Each step directory holds three items:

- ``state``: the :class:`TrainState`, restored into an abstract target carrying the *current*
  shardings, so a checkpoint written on 8 devices restores on 1, or on 2 processes x 4;
- ``data``: every process's data-iterator state (``iterator.get_state()``: JSON-like values
  or bytes), keyed by process index;
- ``config``: the run's configuration as JSON.

Orbax writes into a temporary directory and renames it when complete, so an interrupted
write never looks like a checkpoint. A committed checkpoint that cannot be read (damaged
files) is skipped by :meth:`Checkpointer.restore_latest` with a warning: the previous one is
used and the damaged step directory is moved aside (renamed ``<step>.corrupt``).
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore` returns."""

    step: int
    state: Any
    data_state: Any  # this process's iterator state, or None if the checkpoint has none
    config: dict | None


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with each array's current sharding) for a pytree of arrays."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attach shardings to a ``jax.eval_shape`` result: a restore target for :meth:`restore`."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _encode_data_state(data_state: Any) -> Any:
    if data_state is None:
        return None
    if isinstance(data_state, bytes | bytearray):
        return {"bytes_base64": base64.b64encode(bytes(data_state)).decode("ascii")}
    try:
        json.dumps(data_state)
    except TypeError as e:
        raise TypeError(
            "The data iterator state must be bytes or JSON-serialisable (dict/list/str/"
            f"numbers); got {type(data_state).__name__}: {e}"
        ) from e
    return {"json": data_state}


def _decode_data_state(encoded: Any) -> Any:
    if encoded is None:
        return None
    if "bytes_base64" in encoded:
        return base64.b64decode(encoded["bytes_base64"])
    return encoded["json"]


def _json_default(obj: Any) -> Any:
    """JSON fallback for config values: dtypes by name, numpy scalars as numbers, else str."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    try:
        return np.dtype(obj).name
    except TypeError:
        return str(obj)


def _gather_from_processes(text: str) -> list[str]:
    """Every process's string, in process order (collective: all processes must call)."""
    if jax.process_count() == 1:
        return [text]
    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: data.size] = data
    rows = multihost_utils.process_allgather(padded)
    return [
        bytes(r[: int(n)]).decode("utf-8") for r, n in zip(rows, np.ravel(lengths), strict=True)
    ]


class Checkpointer:
    """Saves and restores train state, data-iterator state and config under one directory.

    Args:
      directory: where step directories are written (created if missing).
      max_to_keep: keep the latest N checkpoints (>= 1).
      keep_best: also keep the one with the best ``best_metric`` (metrics passed to save).
      best_metric: name in the metrics passed to :meth:`save` that ranks checkpoints.
      best_mode: "min" or "max".
      async_save: write in a background thread; :meth:`wait` blocks until written.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        keep_best: bool = False,
        best_metric: str = "loss",
        best_mode: str = "min",
        async_save: bool = True,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1; got {max_to_keep}.")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max'; got {best_mode!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric = best_metric
        policy = policies.LatestN(n=max_to_keep)
        if keep_best:
            best = policies.BestN(
                get_metric_fn=lambda m: float(m[best_metric]),
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            policy = policies.AnyPreservationPolicy([policy, best])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Committed checkpoint steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: Any = None,
        config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Start writing a checkpoint for ``step`` (returns once the arrays are copied).

        Collective in multi-process runs: every process calls it with its own
        ``data_state``.
        """
        texts = _gather_from_processes(json.dumps(_encode_data_state(data_state)))
        data = {str(i): json.loads(t) for i, t in enumerate(texts)}
        config_json = json.loads(json.dumps(dict(config or {}), default=_json_default))
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"process_count": len(texts), "processes": data}),
            config=ocp.args.JsonSave(config_json),
        )
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        self._manager.save(int(step), args=args, metrics=metrics, force=True)

    def restore(self, target: Any, step: int | None = None) -> Restored:
        """Restore ``step`` (default: latest) into ``target``'s shapes, dtypes and shardings.

        Args:
          target: abstract state (see :func:`abstract_like`, :func:`with_shardings`) or a
            concrete state whose layout is reused.
          step: which step; default the latest.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target)),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        out = self._manager.restore(step, args=args)
        return Restored(int(step), out.state, self._own_data_state(out.data, step), out.config)

    @staticmethod
    def _own_data_state(data: Mapping[str, Any] | None, step: int) -> Any:
        if not data:
            return None
        mine = data["processes"].get(str(jax.process_index()))
        if data["process_count"] != jax.process_count():
            warnings.warn(
                f"Checkpoint {step} holds data-iterator states of {data['process_count']} "
                f"processes but {jax.process_count()} are running; not restoring the data "
                "iterator position (it starts from its beginning).",
                stacklevel=3,
            )
            return None
        return _decode_data_state(mine)

    def restore_latest(self, target: Any) -> Restored | None:
        """Restore the newest readable checkpoint, or return None if there is none.

        A checkpoint that fails to restore is reported with a warning, moved aside to
        ``<step>.corrupt`` and the previous one is tried.
        """
        for step in reversed(self.all_steps()):
            try:
                return self.restore(target, step)
            except Exception as e:  # noqa: BLE001 - any read failure means "unusable"
                warnings.warn(
                    f"Checkpoint at step {step} in {self.directory} could not be restored "
                    f"({type(e).__name__}: {e}); moving it to {step}.corrupt and falling back "
                    "to the previous checkpoint.",
                    stacklevel=2,
                )
                self._move_aside(step)
        return None

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst = f"{src}.corrupt"
            suffix = 1
            while os.path.exists(dst):
                dst, suffix = f"{src}.corrupt{suffix}", suffix + 1
            os.rename(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxdiff_checkpoint_move_aside_{step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until pending asynchronous writes are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending writes and release resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
