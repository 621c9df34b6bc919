"""Batch buckets: one artifact that runs every batch from 1 to ``--max-batch B``.

The model is compiled at the static batches 1, 2, 4, ... below B and at B itself, one Relax function
per bucket in one module (reforge's rewrites and schedules are static-shape). A run of batch n is
split greedily into bucket calls (5 = 4 + 1) whose outputs are concatenated along axis 0: no padded
rows are computed, and batch 1 runs the static artifact's own ``main``. Only a leading batch axis shared
by every input and output is batched. Runtime-side: numpy only (no TVM compiler import).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ReforgeError


def check_max_batch(max_batch) -> int:
    """``--max-batch``: an integer of at least 1."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ReforgeError(f"--max-batch {max_batch}: must be an integer of at least 1")
    return int(max_batch)


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The static batches compiled for ``max_batch``: the powers of two below it, and itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


def suffix(batch: int) -> str:
    """What a bucket appends to its functions' names: nothing for batch 1 (its ``main`` is the
    static artifact's, the one the native C host runs), ``_b{batch}`` otherwise."""
    return "" if batch == 1 else f"_b{batch}"


def function_name(batch: int) -> str:
    return "main" + suffix(batch)


def split(n: int, buckets: tuple[int, ...]) -> list[int]:
    """Batch ``n`` as bucket sizes, largest first: the largest bucket not above what is left, again
    and again. With :func:`bucket_sizes`' buckets the parts are distinct and their count is at most
    one more than log2(n)."""
    parts, left = [], n
    for size in sorted(buckets, reverse=True):
        while size <= left:
            parts.append(size)
            left -= size
    return parts


def with_batch(name: str, shape: tuple, batch: int | None) -> tuple[int, ...]:
    """An ``--input-shape`` whose axis 0 may be a name (``N`` in ``image:Nx3x224x224``): the name
    replaced by ``batch``. A name elsewhere, or one without ``--max-batch``, is refused."""
    named = [axis for axis, d in enumerate(shape) if isinstance(d, str)]
    if not named:
        return tuple(shape)
    if named != [0]:
        raise ReforgeError(f"--input-shape for '{name}' names axis {named[-1]} ('{shape[named[-1]]}'); only "
                           "a leading batch axis (axis 0) may be a name")
    if batch is None:
        raise ReforgeError(f"--input-shape for '{name}' names its batch axis '{shape[0]}': give --max-batch B "
                           "to compile batches 1 to B, or a number instead of the name")
    return (batch, *shape[1:])


@dataclass(frozen=True)
class BatchSpec:
    """An artifact's batch buckets, as its manifest records them (``"batch"``)."""

    max_batch: int
    buckets: tuple[int, ...]

    @classmethod
    def of(cls, max_batch: int) -> "BatchSpec":
        return cls(max_batch, bucket_sizes(max_batch))

    def to_json(self) -> dict:
        return {"axis": 0, "max": self.max_batch, "buckets": list(self.buckets),
                "functions": {str(b): function_name(b) for b in self.buckets}}

    @classmethod
    def from_json(cls, d: dict | None) -> "BatchSpec | None":
        return None if d is None else cls(int(d["max"]), tuple(int(b) for b in d["buckets"]))

    @cached_property
    def plans(self) -> dict[int, tuple[tuple[str, int, int], ...]]:
        """For each batch n: (function name, first row, rows) of each bucket call, worked out once."""
        plans = {}
        for n in range(1, self.max_batch + 1):
            starts = np.cumsum([0, *split(n, self.buckets)])
            plans[n] = tuple((function_name(int(b - a)), int(a), int(b - a)) for a, b in zip(starts, starts[1:]))
        return plans

    def describe(self) -> str:
        return f"1 to {self.max_batch} on axis 0, in buckets {', '.join(map(str, self.buckets))}"

    def batch_of(self, names: list[str], arrays: list[np.ndarray]) -> int:
        """The batch of the inputs (their common axis 0), refusing one outside 1..max_batch."""
        n = arrays[0].shape[0]
        for name, a in zip(names, arrays):
            if a.shape[0] != n:
                raise ReforgeError(f"input '{name}' has batch {a.shape[0]} but input '{names[0]}' has batch {n}; "
                                   "every input's axis 0 must be the same batch")
        if not 1 <= n <= self.max_batch:
            raise ReforgeError(f"input '{names[0]}' has batch {n}; the module runs batches 1 to {self.max_batch} "
                               f"(compiled with --max-batch {self.max_batch})")
        return n
