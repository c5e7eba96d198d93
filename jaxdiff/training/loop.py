"""A small training loop over typed arguments: resume, steps, metrics, checkpoints, signals.

``train_loop`` drives an already wrapped step (``jit_train_step`` / plain ``jax.jit``) over a
data iterator:

- resume: restores the newest readable checkpoint (state into the current shardings, and the
  data iterator via ``set_state``); with RNG from ``fold_in(key, step)`` the continued run is
  the same as an uninterrupted one;
- metrics: kept on device and fetched only every ``log_every`` steps (and before every save);
  callbacks get the window's means and the state;
- a non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError` naming the
  first bad step; no state after it is ever saved, so the last checkpoint stays good;
- SIGTERM (preemption) or a first Ctrl-C: the loop saves a checkpoint at the next step
  boundary and returns ``preempted=True``. With several processes the decision is taken
  through JAX's preemption sync point (SIGTERM), so all processes stop at the same step.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdiff.training.checkpoint import Checkpointer, abstract_like
from jaxdiff.training.state import TrainState

Callback = Callable[[int, Mapping[str, float], TrainState], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient norm."""


class LoopResult(NamedTuple):
    """What :func:`train_loop` returns."""

    state: TrainState
    step: int  # steps done (== state.step)
    preempted: bool  # stopped early by SIGTERM / Ctrl-C after saving a checkpoint


def _to_host(x: jax.Array) -> np.ndarray:
    """A replicated (possibly multi-process) scalar as a numpy value."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


class _Preemption:
    """SIGTERM / first Ctrl-C flag (one process) or JAX's cross-process preemption sync point.

    In one process, SIGTERM and the first SIGINT (Ctrl-C) both ask the loop to save and stop at
    the next step boundary; a second Ctrl-C raises KeyboardInterrupt as usual.
    """

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._flag = False
        self._previous: dict[int, Any] = {}
        self._use_jax_sync = jax.process_count() > 1

    def __enter__(self) -> _Preemption:
        in_main = threading.current_thread() is threading.main_thread()
        if self.enabled and not self._use_jax_sync and in_main:
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self._flag:
                raise KeyboardInterrupt
            print(
                "\nInterrupted: saving a checkpoint after this step (Ctrl-C again to abort).",
                file=sys.stderr,
                flush=True,
            )
        self._flag = True

    def reached(self, step: int) -> bool:
        if not self.enabled:
            return False
        if self._use_jax_sync:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service disabled
                return False
        return self._flag

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _fetch_and_check(
    pending: list[tuple[int, Mapping[str, jax.Array]]], checkpointer: Checkpointer | None
) -> list[tuple[int, dict[str, float]]]:
    """Fetch device metrics to the host; stop on the first non-finite loss or grad norm."""
    host = [(step, {k: float(_to_host(v)) for k, v in m.items()}) for step, m in pending]
    for step, m in host:
        bad = {k: m[k] for k in ("loss", "grad_norm") if k in m and not math.isfinite(m[k])}
        if bad:
            last = None
            if checkpointer is not None:
                checkpointer.wait()
                last = checkpointer.latest_step()
            where = f"step {last}" if last is not None else "none written"
            raise NonFiniteLossError(
                f"Non-finite {bad} at step {step}; training stopped. Last good checkpoint: "
                f"{where} (nothing after the last finite step was saved)."
            )
    return host


def _means(pending: list[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    names = pending[-1][1].keys() if pending else ()
    return {k: float(np.mean([m[k] for _, m in pending])) for k in names}


def _restore(checkpointer, state, data) -> tuple[TrainState, int]:
    restored = checkpointer.restore_latest(abstract_like(state))
    if restored is None:
        return state, int(_to_host(state.step))
    if restored.data_state is not None and hasattr(data, "set_state"):
        data.set_state(restored.data_state)
    elif hasattr(data, "set_state") or restored.data_state is not None:
        warnings.warn(
            f"Resuming from step {restored.step} without restoring the data iterator's position "
            f"(checkpoint has a data state: {restored.data_state is not None}; iterator has "
            f"set_state: {hasattr(data, 'set_state')}); the run will see different batches.",
            stacklevel=3,
        )
    return restored.state, restored.step


def train_loop(
    train_step: Callable[[TrainState, Any, jax.Array], tuple[TrainState, Mapping[str, Any]]],
    state: TrainState,
    data: Iterator[Any],
    *,
    num_steps: int,
    key: jax.Array,
    checkpointer: Checkpointer | None = None,
    save_every: int = 1000,
    log_every: int = 100,
    put_batch: Callable[[Any], Any] | None = None,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[int], None] | None = None,
    config: Mapping[str, Any] | None = None,
    handle_sigterm: bool = True,
    resume: bool = True,
    max_ahead: int = 2,
) -> LoopResult:
    """Train until ``num_steps`` steps are done (resuming from the latest checkpoint).

    Args:
      train_step: the wrapped step ``(state, batch, key) -> (state, metrics)``.
      state: the freshly initialised state; also the layout that checkpoints restore into.
      data: iterator of host batches; ``get_state`` / ``set_state`` (if present) put its
        position into checkpoints.
      num_steps: total number of steps of the run (not of this call).
      key: the run's PRNG key (the step folds in the step number).
      checkpointer: where to save and resume from; None disables both.
      save_every: save every this many steps (and at the end).
      log_every: fetch metrics, check them and call ``callbacks`` every this many steps.
      put_batch: host batch -> device batch (e.g. ``lambda b: global_batch(b, mesh)``).
      callbacks: ``callback(step, mean_metrics, state)`` every ``log_every`` steps and at the
        end; ``mean_metrics`` averages the steps since the previous call. The state is
        donated to the next step: use it inside the callback, copy what must outlive it.
      on_step: ``on_step(step)`` with the number of steps known to be complete on the device,
        each time it grows (progress bars that count finished work, not dispatched work).
      config: JSON-able run configuration stored in each checkpoint.
      handle_sigterm: save and stop on SIGTERM (and on a first Ctrl-C, in one process).
      resume: restore the latest checkpoint first (if any).
      max_ahead: how many steps the host may dispatch beyond the last one known complete
        (it waits on that step's metrics first): keeps the device fed while a progress bar
        stays within a few steps of the truth instead of running ``log_every`` steps ahead
        and then stalling at each log.

    Returns:
      :class:`LoopResult`. Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    if num_steps < 0 or save_every < 1 or log_every < 1 or max_ahead < 0:
        raise ValueError(
            f"Need num_steps >= 0, save_every >= 1, log_every >= 1, max_ahead >= 0; got "
            f"{num_steps}, {save_every}, {log_every}, {max_ahead}."
        )
    step = int(_to_host(state.step))
    if checkpointer is not None and resume:
        state, step = _restore(checkpointer, state, data)
    pending: list[tuple[int, Mapping[str, jax.Array]]] = []  # on device, not yet checked
    window: list[tuple[int, dict[str, float]]] = []  # checked, since the last log
    with _Preemption(handle_sigterm) as preemption:
        while step < num_steps:
            try:
                batch = next(data)
            except StopIteration:
                raise ValueError(f"Data iterator ran out at step {step} of {num_steps}.") from None
            if put_batch is not None:
                batch = put_batch(batch)
            state, metrics = train_step(state, batch, key)
            step += 1
            pending.append((step, metrics))
            if len(pending) > max_ahead:  # bound the run-ahead: wait for an older step
                done, older = pending[-1 - max_ahead]
                jax.block_until_ready(older)
                if on_step is not None:
                    on_step(done)
            log = step % log_every == 0 or step == num_steps
            save = checkpointer is not None and (step % save_every == 0 or step == num_steps)
            preempted = preemption.reached(step)
            if log or save or preempted:
                window += _fetch_and_check(pending, checkpointer)
                pending = []
                if on_step is not None:
                    on_step(step)
                means = _means(window)
                if checkpointer is not None and (save or preempted):
                    _save(checkpointer, step, state, data, config, means)
                if log:
                    for callback in callbacks:
                        callback(step, means, state)
                    window = []
            if preempted:
                break
    if checkpointer is not None:
        checkpointer.wait()
    return LoopResult(state, step, step < num_steps)


def _save(checkpointer, step, state, data, config, means) -> None:
    data_state = data.get_state() if hasattr(data, "get_state") else None
    metrics = {"loss": means["loss"]} if "loss" in means else None
    checkpointer.save(step, state, data_state=data_state, config=config, metrics=metrics)
