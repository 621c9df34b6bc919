"""How reforge's own operators are tagged: a PrimFunc's ``reforge.op`` attribute names the operator
(its kind in :mod:`.operators`), ``op_pattern`` tells FuseOps how it fuses."""

from __future__ import annotations

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps keeps the operator one function, with its own schedule
ELEMWISE = 0  # relax OpPatternKind.kElemWise: FuseOps fuses it with its neighbours


def op_kind(func) -> str | None:
    """The reforge operator a PrimFunc holds (its ``reforge.op`` attribute), if any."""
    return str(func.attrs["reforge.op"]) if func.attrs is not None and "reforge.op" in func.attrs else None


def tag(func, kind: str, pattern: int = OPAQUE):
    """``func`` tagged as the reforge operator ``kind`` that FuseOps fuses as ``pattern``."""
    return func.with_attr("op_pattern", pattern).with_attr("reforge.op", kind)
