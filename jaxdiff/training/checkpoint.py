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
used and the damaged step directory is moved aside (renamed ``<step>.corrupt``). Readers
that must not change the directory (sampling) open it with ``read_only=True`` and use
:meth:`Checkpointer.newest_readable` / :meth:`Checkpointer.read_step`, which skip or name a
damaged step without moving it; :meth:`Checkpointer.restore_partial` reads only some entries
of the saved state (e.g. the EMA parameters, without the optimizer state).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

T = TypeVar("T")


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


def _reason(error: BaseException) -> str:
    """The root cause of a failed read in one line (TensorStore appends a long JSON spec)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines() or [""]
    text = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
    return f"{type(error).__name__}: {text}"


def _drop_reads_finishing_after_a_failure() -> None:
    """Silence the noise that follows a failed read (installed once per process).

    When one array of a restore fails, Orbax closes its event loop while TensorStore is still
    finishing the restore's other reads; each of them then reports RuntimeError('Event loop
    is closed') as an unraisable exception, i.e. dozens of tracebacks printed after (and
    interleaved with) the real error. Exactly those are dropped; every other unraisable
    exception reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_jaxdiff_drops_closed_loop_reads", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._jaxdiff_drops_closed_loop_reads = True
    sys.unraisablehook = hook


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
      read_only: open an existing directory for reading only (sampling, evaluation): it is
        not created, unfinished writes of a training run that is writing to it are left
        alone, and :meth:`save` is refused.
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
        read_only: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1; got {max_to_keep}.")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max'; got {best_mode!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"No checkpoint directory {self.directory}.")
        self.read_only = read_only
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
        # Not Orbax's own read_only option: it logs a warning on every open.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
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
        if self.read_only:
            raise ValueError(f"Checkpointer for {self.directory} is read-only; cannot save.")
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
        _drop_reads_finishing_after_a_failure()
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target)),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        out = self._manager.restore(step, args=args)
        return Restored(int(step), out.state, self._own_data_state(out.data, step), out.config)

    def read_config(self, step: int) -> dict:
        """The config saved with ``step`` (reads no array)."""
        out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(out.config or {})

    def restore_partial(self, target: Mapping[str, Any], step: int) -> dict[str, Any]:
        """Only the top-level entries of the saved state that ``target`` names (Orbax partial
        restore), e.g. ``{"ema_params": abstract_params}`` of a :class:`TrainState`.

        Args:
          target: entry name -> abstract pytree (shapes, dtypes, shardings) of that entry.
          step: which step.

        Returns:
          A dict with the same keys as ``target``; nothing else is read.
        """
        _drop_reads_finishing_after_a_failure()
        item = {name: abstract_like(tree) for name, tree in target.items()}
        state = ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        )
        return dict(self._manager.restore(step, args=ocp.args.Composite(state=state)).state)

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
        return self.newest_readable(lambda step: self.restore(target, step), move_aside=True)

    def newest_readable(self, read: Callable[[int], T], *, move_aside: bool = False) -> T | None:
        """``read(step)`` for the newest step where it succeeds, or None if none does.

        Each step where ``read`` raises is reported with a warning naming it (and, with
        ``move_aside``, renamed ``<step>.corrupt``; not allowed when read-only).

        Args:
          read: reads what the caller needs from one step (e.g. :meth:`restore_partial`).
          move_aside: move unreadable steps out of the way (a training run that resumes).

        Returns:
          What ``read`` returned for the newest readable step, or None.
        """
        if move_aside and self.read_only:
            raise ValueError(f"Checkpointer for {self.directory} is read-only; cannot move.")
        for step in reversed(self.all_steps()):
            try:
                return read(step)
            except Exception as e:  # noqa: BLE001 - any read failure means "unusable"
                action = f"moving it to {step}.corrupt and falling" if move_aside else "falling"
                warnings.warn(
                    f"Checkpoint at step {step} in {self.directory} could not be restored "
                    f"({_reason(e)}); {action} back to the previous checkpoint.",
                    stacklevel=3,
                )
                if move_aside:
                    self._move_aside(step)
        return None

    def read_step(self, step: int, read: Callable[[int], T]) -> T:
        """``read(step)``; a missing or unreadable step raises one ValueError that names it."""
        steps = self.all_steps()
        if step not in steps:
            raise ValueError(
                f"No checkpoint at step {step} in {self.directory}; steps: "
                f"{', '.join(map(str, steps)) or 'none'}."
            )
        try:
            return read(step)
        except Exception as e:  # noqa: BLE001 - reported as one line
            others = [s for s in steps if s != step]
            raise ValueError(
                f"Checkpoint at step {step} in {self.directory} could not be read "
                f"({_reason(e)}); other steps: {', '.join(map(str, others)) or 'none'}."
            ) from None

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
