"""reforge's own operators (PrimFuncs tagged ``reforge.op``) and their CPU schedules, applied on a
traced ``Schedule`` so that tuning records can replay them."""

from __future__ import annotations

from tvm import s_tir, tirx

from .bitserial import CONV, DENSE, PACK, POOL, op_kind
from .fft_conv import MIX_OP
from .schedule_bitserial import schedule_op
from .schedule_fft import schedule_mix_on
from .schedule_wht import schedule_wht_on
from .wht import OP as WHT

OPERATOR_SCHEDULES = {**{kind: schedule_op for kind in (CONV, DENSE, PACK, POOL)},
                      WHT: lambda sch, lanes, _tiles=None: schedule_wht_on(sch, lanes),
                      MIX_OP: lambda sch, lanes, _tiles=None: schedule_mix_on(sch, lanes)}


def schedule_operator(func: tirx.PrimFunc, lanes: int) -> tuple[s_tir.Schedule, str] | None:
    """The operator's schedule for ``lanes`` fp32 lanes and its kind; None for other functions."""
    kind = op_kind(func)
    if kind not in OPERATOR_SCHEDULES:
        return None
    sch = s_tir.Schedule(func)
    OPERATOR_SCHEDULES[kind](sch, lanes)
    return sch, kind
