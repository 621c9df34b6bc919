"""What a frontend hands to the rest of reforge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm

from .tensor_spec import TensorSpec

Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class ImportedModel:
    """A Relax module whose ``main`` takes ``inputs`` in order and returns ``outputs``.

    ``reference`` runs the original model in its own framework (onnxruntime, PyTorch) on
    inputs keyed by their original names: the independent oracle for ``--verify``.
    """

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str
    name: str
    reference: Reference

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {s.name: s.random(rng) for s in self.inputs}
