"""reforge's own operators (PrimFuncs tagged ``reforge.op``) and their CPU schedules, applied on a
traced ``Schedule`` so that tuning records can replay them."""

from __future__ import annotations

from tvm import s_tir, tirx

from .bitserial import CONV, DENSE, PACK, POOL
from .fft_conv import MIX_OP
from .op_kind import op_kind
from .schedule_bitserial import schedule_op
from .schedule_fft import default_mix_rows, schedule_mix_on
from .schedule_wht import default_strip, schedule_wht_on
from .sparse_nchwc import OP as SPARSE_CONV
from .sparse_dense import OP as SPARSE_DENSE
from .wht import OP as WHT

# kind -> schedule(sch, lanes, knob=None); a knob (the tuner's sampler) replaces the default choice of
# the bit-serial conv's register tile, the FFT mix's register rows, the WHT's strip width; the sparse
# operators are emitted scheduled (their loops over a row's nonzeros have data-dependent bounds)
OPERATOR_SCHEDULES = {**{kind: schedule_op for kind in (CONV, DENSE, PACK, POOL)},
                      WHT: lambda sch, lanes, knob=None: schedule_wht_on(sch, lanes, knob or default_strip),
                      MIX_OP: lambda sch, lanes, knob=None: schedule_mix_on(sch, lanes, knob or default_mix_rows),
                      **{kind: lambda sch, lanes, knob=None: None for kind in (SPARSE_CONV, SPARSE_DENSE)}}


def schedule_operator(func: tirx.PrimFunc, lanes: int) -> tuple[s_tir.Schedule, str] | None:
    """The operator's schedule for ``lanes`` fp32 lanes and its kind; None for other functions."""
    kind = op_kind(func)
    if kind not in OPERATOR_SCHEDULES:
        return None
    sch = s_tir.Schedule(func)
    OPERATOR_SCHEDULES[kind](sch, lanes)
    return sch, kind
