"""Tensor signatures of a model's inputs and outputs, and the ``--input-shape`` syntax."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from reforge.errors import ReforgeError


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"])

    def random(self, rng: np.random.Generator) -> np.ndarray:
        """A random value of this signature: N(0, 1) for floats, small integers otherwise."""
        if np.issubdtype(np.dtype(self.dtype), np.floating):
            return rng.standard_normal(self.shape).astype(self.dtype)
        if self.dtype == "bool":
            return rng.integers(0, 2, self.shape).astype(bool)
        return rng.integers(0, 8, self.shape).astype(self.dtype)


_DIM = r"(\d+|[A-Za-wyz_][A-Za-wyz0-9_]*)"  # a size, or a name (without 'x') for a batch axis
_SHAPE_ITEM = re.compile(rf"^(?P<name>.+):(?P<dims>{_DIM}(x{_DIM})*)$")


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int | str, ...]]:
    """Parse ``["x:1x3x224x224", "y:Nx10"]`` into ``{"x": (1, 3, 224, 224), "y": ("N", 10)}``; a
    name stands for the batch axis of ``--max-batch`` (:func:`reforge.batching.with_batch`)."""
    shapes: dict[str, tuple[int | str, ...]] = {}
    for item in items or []:
        for part in item.split(","):
            m = _SHAPE_ITEM.match(part.strip())
            if not m:
                raise ReforgeError(f"bad --input-shape '{part}': expected NAME:D0xD1x..., e.g. x:1x3x224x224 "
                                   "(or x:Nx3x224x224 with --max-batch)")
            shapes[m["name"]] = tuple(int(d) if d.isdigit() else d for d in m["dims"].split("x"))
    return shapes


def resolve_shape(name: str, declared: list[int | str | None], given: tuple[int, ...] | None,
                  batch: int | None = None) -> tuple[int, ...]:
    """Merge a declared shape (ints for fixed dims, str/None for dynamic) with a user-given one; with
    ``batch`` (a bucket of ``--max-batch``), a dynamic axis 0 not given is that batch."""
    if given is not None:
        if len(given) != len(declared):
            raise ReforgeError(f"--input-shape for '{name}' has rank {len(given)}; the model declares "
                               f"rank {len(declared)} ({format_shape(declared)})")
        for axis, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d != g:
                raise ReforgeError(f"--input-shape for '{name}' sets axis {axis} to {g}; the model fixes it to {d}")
        return given
    if batch is not None and declared and not isinstance(declared[0], int):
        declared = [batch, *declared[1:]]
    dynamic = [axis for axis, d in enumerate(declared) if not isinstance(d, int)]
    if dynamic:
        keep = " (or keep a dynamic axis 0 with --max-batch B)" if dynamic == [0] and batch is None else ""
        raise ReforgeError(f"input '{name}' has dynamic shape {format_shape(declared)}; fix it with --input-shape "
                           f"{name}:{'x'.join(str(d) if isinstance(d, int) else '1' for d in declared)}{keep}")
    return tuple(declared)


def check_shape_names(given: dict[str, tuple[int, ...]], names: list[str]) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ReforgeError(f"--input-shape names unknown input '{unknown[0]}'; the model's inputs are: "
                           f"{', '.join(names)}")


def format_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
