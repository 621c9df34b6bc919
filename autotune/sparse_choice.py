"""sparse by measurement: ``reforge tune`` times each layer the sparse pass may rewrite whose
sparsity reaches MEASURED_FROM, alone on the tuning device, as reforge's dense kernel and as the
sparse operator, and records the faster. ``compile --tuning-records`` then follows the record for
every layer it names (by shapes and count of nonzeros), the measured crossovers for the rest.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax

from reforge.build import build
from reforge.passes.sparse import Layer, Sparse

MEASURED_FROM = 0.5  # layers with fewer zeros are not measured: the sparse operators lost at 50 % on every shape


def layer_alone(layer: Layer) -> tvm.IRModule:
    """A Relax module computing just ``layer`` with its own weight."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(layer.x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(layer.weight)
            y = (relax.op.matmul(x, w) if layer.kind == "dense" else
                 relax.op.nn.conv2d(x, w, strides=list(layer.strides), padding=list(layer.padding)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def measure(layer: Layer, tgt, timer: Callable) -> dict | None:
    """Time ``layer`` dense and sparse with ``timer(executable, arrays)`` (seconds); the record
    ``{"sparse": sparse faster, "ms": {way: ms}}``, None below MEASURED_FROM."""
    if layer.sparsity < MEASURED_FROM:
        return None
    mod = layer_alone(layer)
    arrays = [np.random.default_rng(1).standard_normal(layer.x_shape).astype("float32")]
    ways = {"dense": mod, "sparse": Sparse(min_sparsity=0)(mod)}
    ms = {way: round(timer(build(m, tgt)[0], arrays) * 1e3, 4) for way, m in ways.items()}
    return {"sparse": ms["sparse"] < ms["dense"], "ms": ms}
