"""The registry of reforge's own operators: one :func:`register_op` per operator names its compute,
its emitter into Relax, the ``op_pattern`` FuseOps reads, its schedule per backend kind and the
tuner's knob for it. The default schedulers and the tuner look an operator up here by its kind (the
PrimFunc's ``reforge.op``), so a new operator is one registration.

Schedules take ``(sch, machine)`` or, where the operator has a knob, ``(sch, machine, knob)``: the
knob (the tuner's sampler) replaces the default choice of the bit-serial conv's register tile, the
FFT mix's register rows, the WHT's strip width. An operator with no schedule for a backend gets that
backend's generic rules (fplus, which fuses with its neighbours; the channel norm); the sparse
operators are emitted scheduled (their loops over a row's nonzeros have data-dependent bounds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tvm import s_tir, tirx

from reforge.errors import ReforgeError
from reforge.machine import Machine

from . import bitserial, channel_norm, fft_conv, fplus, sparse_dense, sparse_nchwc, wht
from .op_kind import ELEMWISE, OPAQUE, op_kind
from .schedules import bitserial as bitserial_schedules, fft as fft_schedules, wht as wht_schedules

BACKENDS = ("cpu", "cuda", "fpga")


@dataclass(frozen=True)
class Operator:
    """One reforge operator: ``kind`` is its PrimFunc's ``reforge.op``."""

    kind: str
    compute: Callable  # its TE compute (the sparse ones: the scheduled PrimFunc's builder)
    emit: Callable  # emit(bb, ...) adds the PrimFunc and its call_tir to a Relax BlockBuilder
    pattern: int | None  # the op_pattern set on the PrimFunc (None: untagged, FuseOps treats it opaque)
    schedules: Mapping[str, Callable] = field(default_factory=dict)  # backend kind -> schedule
    knob: Callable | None = None  # the tuner's sampler, passed to the cpu schedule
    emitted_scheduled: bool = False  # its PrimFunc comes scheduled for the CPU


_OPERATORS: dict[str, Operator] = {}


def register_op(kind: str, *, compute: Callable, emit: Callable, pattern: int | None = OPAQUE,
                schedules: Mapping[str, Callable] | None = None, knob: Callable | None = None,
                emitted_scheduled: bool = False) -> Operator:
    """Register the operator ``kind``; a kind is registered once, schedules only for BACKENDS."""
    if kind in _OPERATORS:
        raise ReforgeError(f"reforge operator '{kind}' is registered twice")
    unknown = set(schedules or {}) - set(BACKENDS)
    if unknown:
        raise ReforgeError(f"operator '{kind}': schedules for unknown backends {sorted(unknown)} "
                           f"(known: {', '.join(BACKENDS)})")
    op = Operator(kind, compute, emit, pattern, dict(schedules or {}), knob, emitted_scheduled)
    _OPERATORS[kind] = op
    return op


def lookup(kind: str) -> Operator:
    """The registered operator ``kind``."""
    if kind not in _OPERATORS:
        raise ReforgeError(f"unknown reforge operator '{kind}' (registered: {', '.join(sorted(_OPERATORS))})")
    return _OPERATORS[kind]


def registered() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_OPERATORS)


def operator_of(func) -> Operator | None:
    """The registered operator a PrimFunc holds (by its ``reforge.op``); None for other functions."""
    kind = op_kind(func)
    return None if kind is None else lookup(kind)


def schedule_operator_on(sch: s_tir.Schedule, op: Operator, machine: Machine | None, backend: str = "cpu",
                         knob: Callable | None = None) -> None:
    """Apply ``op``'s schedule for ``backend`` to the traced ``sch`` (``machine``: a CPU's), ``knob``
    choosing where it has one; nothing for an operator emitted scheduled."""
    if backend in op.schedules:
        apply = op.schedules[backend]
        apply(sch, machine) if knob is None else apply(sch, machine, knob)


def schedule_operator(func: tirx.PrimFunc, machine: Machine | None,
                      backend: str = "cpu") -> tuple[s_tir.Schedule, str] | None:
    """The operator's schedule for ``backend`` and its kind: on the CPU, the untouched function for an
    operator emitted scheduled; None for other functions and for operators the backend's generic rules
    schedule."""
    op = operator_of(func)
    if op is None or (backend not in op.schedules and not (op.emitted_scheduled and backend == "cpu")):
        return None
    sch = s_tir.Schedule(func)
    schedule_operator_on(sch, op, machine, backend)
    return sch, op.kind


register_op(bitserial.CONV, compute=bitserial.bitserial_conv2d, emit=bitserial.emit_bitserial_conv2d,
            schedules={"cpu": bitserial_schedules.schedule_conv_on}, knob=bitserial_schedules.sampled_conv_tiles)
register_op(bitserial.DENSE, compute=bitserial.bitserial_dense, emit=bitserial.emit_bitserial_dense,
            schedules={"cpu": bitserial_schedules.schedule_dense_on})
register_op(bitserial.PACK, compute=bitserial.bitpack, emit=bitserial.emit_bitpack,
            schedules={"cpu": bitserial_schedules.schedule_pack_on})
register_op(bitserial.POOL, compute=bitserial.bitpool, emit=bitserial.emit_bitpool,
            schedules={"cpu": bitserial_schedules.schedule_pool_on})
register_op(fft_conv.MIX_OP, compute=fft_conv.mix, emit=fft_conv.emit_fft_conv2d,
            schedules={"cpu": fft_schedules.schedule_mix_on}, knob=fft_schedules.sampled_mix_rows)
register_op(wht.OP, compute=wht.wht, emit=wht.emit_wht,
            schedules={"cpu": wht_schedules.schedule_wht_on}, knob=wht_schedules.sampled_strip)
register_op(fplus.OP, compute=fplus.fplus, emit=fplus.emit_fplus, pattern=ELEMWISE)
register_op(channel_norm.OP, compute=channel_norm.channel_layer_norm, emit=channel_norm.emit_channel_layer_norm,
            pattern=None)
register_op(sparse_nchwc.OP, compute=sparse_nchwc.prim_func, emit=sparse_nchwc.emit,
            emitted_scheduled=True)
register_op(sparse_dense.OP, compute=sparse_dense.prim_func, emit=sparse_dense.emit_sparse_dense,
            emitted_scheduled=True)
