"""Apply the target's default schedules to every PrimFunc of a lowered module."""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import tirx

from .schedule_x86 import schedule_func


def apply_default_schedules(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, Counter]:
    """Schedule each PrimFunc for a CPU with ``lanes`` fp32 vector lanes; count the rules used.

    A function already scheduled (by tuning records) is kept and counted as ``tuned``; reforge's
    own operators get their schedules (``operator_schedules``), counted by operator.
    """
    used: Counter = Counter()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
            used["tuned"] += 1
        elif isinstance(func, tirx.PrimFunc):
            new, rule = schedule_func(func, lanes)
            mod.update_func(gv, new)
            used[rule] += 1
    return mod, used
