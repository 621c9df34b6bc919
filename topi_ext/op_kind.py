"""How reforge's own operators are tagged: a PrimFunc's ``reforge.op`` attribute names the operator
(bit-serial conv / dense / pack / pool, FFT mix, WHT, fplus), and ``op_pattern`` tells FuseOps how it
fuses; the schedulers and the tuner find an operator by its kind."""

from __future__ import annotations

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps keeps the operator one function, with its own schedule


def op_kind(func) -> str | None:
    """The reforge operator a PrimFunc holds (its ``reforge.op`` attribute), if any."""
    return str(func.attrs["reforge.op"]) if func.attrs is not None and "reforge.op" in func.attrs else None
