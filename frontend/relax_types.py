"""Reading static tensor signatures off Relax types."""

from __future__ import annotations

import tvm
from tvm import relax

from reforge.errors import ReforgeError

from .tensor_spec import TensorSpec


def static_shape(ty) -> tuple[int, ...] | None:
    """The shape of a Relax tensor type as ints, or None when any dimension is symbolic."""
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d))
    return tuple(dims)


def output_specs(func: relax.Function, names: list[str]) -> list[TensorSpec]:
    """Signatures of ``func``'s outputs (one tensor or a tuple of tensors) under ``names``."""
    ty = func.body.ty
    fields = list(ty.fields) if isinstance(ty, tvm.ir.TupleType) else [ty]
    if len(fields) != len(names):
        raise ReforgeError(f"the model has {len(names)} outputs but imported with {len(fields)}")
    specs = []
    for name, f in zip(names, fields):
        shape = static_shape(f)
        if shape is None:
            raise ReforgeError(f"output '{name}' has a data-dependent or dynamic shape ({f}); "
                               "reforge compiles static shapes only")
        specs.append(TensorSpec(name, shape, str(f.dtype)))
    return specs
