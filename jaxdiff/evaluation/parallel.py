"""Data-parallel evaluation over the local devices: a batch is padded to a fixed size divisible
by the device count and split along its first axis; parameters and reference arrays are
replicated. Fixed batch sizes mean one compilation per program, whatever the data size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class DataParallel:
    """Run a jitted function on batches split over ``devices`` (default: the local devices).

    Args:
      fn: ``fn(replicated, batch) -> per-row outputs`` (every output leaf has the batch's
        leading axis).
      batch_size: rows per call; rounded up to a multiple of the device count.
      devices: the devices to use.
    """

    def __init__(
        self,
        fn: Callable[[Any, jax.Array], Any],
        *,
        batch_size: int,
        devices: Sequence[jax.Device] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        devices = list(devices or jax.local_devices())
        self.mesh = Mesh(np.array(devices), ("data",))
        self.rows = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        self._fn = jax.jit(fn, out_shardings=self.rows)

    def replicate(self, tree: Any) -> Any:
        """Put ``tree`` on every device (e.g. parameters, a reference feature set)."""
        return jax.device_put(tree, self.replicated)

    def __call__(self, replicated: Any, batch: Any) -> Any:
        """fn on up to ``batch_size`` rows (a pytree of arrays with one leading axis), padded
        with copies of row 0, which are dropped from the outputs again."""
        leaves = jax.tree.leaves(batch)
        n = len(leaves[0])
        if not 0 < n <= self.batch_size or any(len(leaf) != n for leaf in leaves):
            raise ValueError(
                f"a batch has 1 to {self.batch_size} rows in every array; got "
                f"{[len(leaf) for leaf in leaves]}."
            )
        pad = self.batch_size - n

        def padded(x):
            x = np.asarray(x)
            return np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x

        out = self._fn(replicated, jax.device_put(jax.tree.map(padded, batch), self.rows))
        return jax.tree.map(lambda o: np.asarray(o)[:n], out)

    def map(self, replicated: Any, data: np.ndarray) -> list[Any]:
        """fn over ``data`` in consecutive batches (outputs per batch)."""
        return [
            self(replicated, data[i : i + self.batch_size])
            for i in range(0, len(data), self.batch_size)
        ]
