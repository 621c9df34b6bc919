"""The default schedule of every PrimFunc of a lowered CPU module: a reforge operator's own (from
the operator registry), else the first CPU rule that fits (:mod:`.cpu`)."""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import s_tir, tirx

from reforge.machine import Machine

from ..operators import schedule_operator
from .cpu import cpu_rule_schedule


def default_schedule(func: tirx.PrimFunc, machine: Machine) -> tuple[s_tir.Schedule | None, str]:
    """The schedule (with its trace) of the operator or of the first rule that fits, and its name."""
    found = schedule_operator(func, machine)
    return found if found is not None else cpu_rule_schedule(func, machine)


def schedule_func(func: tirx.PrimFunc, machine: Machine) -> tuple[tirx.PrimFunc, str]:
    """Schedule one PrimFunc; returns it and the rule that applied (``"none"`` if none did)."""
    sch, rule = default_schedule(func, machine)
    return (func if sch is None else sch.mod["main"]), rule


def apply_default_schedules(mod: tvm.IRModule, machine: Machine) -> tuple[tvm.IRModule, Counter]:
    """Schedule each PrimFunc for ``machine``; count the rules used.

    A function already scheduled (by tuning records) is kept and counted as ``tuned``; reforge's
    own operators get their registered schedules, counted by operator.
    """
    used: Counter = Counter()
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
            used["tuned"] += 1
        elif isinstance(func, tirx.PrimFunc):
            new, rule = schedule_func(func, machine)
            mod.update_func(gv, new)
            used[rule] += 1
    return mod, used
