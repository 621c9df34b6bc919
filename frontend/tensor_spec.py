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


_SHAPE_ITEM = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``["x:1x3x224x224", "y:1x10"]`` into ``{"x": (1, 3, 224, 224), "y": (1, 10)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        for part in item.split(","):
            m = _SHAPE_ITEM.match(part.strip())
            if not m:
                raise ReforgeError(f"bad --input-shape '{part}': expected NAME:D0xD1x..., e.g. x:1x3x224x224")
            shapes[m["name"]] = tuple(int(d) for d in m["dims"].split("x"))
    return shapes


def resolve_shape(name: str, declared: list[int | str | None], given: tuple[int, ...] | None) -> tuple[int, ...]:
    """Merge a declared shape (ints for fixed dims, str/None for dynamic) with a user-given one."""
    if given is not None:
        if len(given) != len(declared):
            raise ReforgeError(f"--input-shape for '{name}' has rank {len(given)}; the model declares "
                               f"rank {len(declared)} ({format_shape(declared)})")
        for axis, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d != g:
                raise ReforgeError(f"--input-shape for '{name}' sets axis {axis} to {g}; the model fixes it to {d}")
        return given
    dynamic = [axis for axis, d in enumerate(declared) if not isinstance(d, int)]
    if dynamic:
        raise ReforgeError(f"input '{name}' has dynamic shape {format_shape(declared)}; fix it with "
                           f"--input-shape {name}:{'x'.join(str(d) if isinstance(d, int) else '1' for d in declared)}")
    return tuple(declared)


def check_shape_names(given: dict[str, tuple[int, ...]], names: list[str]) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ReforgeError(f"--input-shape names unknown input '{unknown[0]}'; the model's inputs are: "
                           f"{', '.join(names)}")


def format_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
