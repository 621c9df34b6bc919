"""What the rewrites know of an activation σ: one table, one entry per activation.

    identity_from_zero   σ(t) = t for every t ≥ 0 (ReLU, LeakyReLU, ELU, FPlus; not ReLU6)
    lower                σ(t) ≥ lower for every t (−inf: no bound), so a tensor σ(·) is ≥ lower
    slope                σ(t) = slope·t for t < 0 (ReLU 0, LeakyReLU a), None if not linear there
    apply                σ on another tensor (a widened one), emitted through a block builder

An entry is keyed by the Relax operator, or by the ``reforge.op`` tag of a ``call_tir`` PrimFunc (how
reforge's fused operators appear: PFPlus(t; λ, μ) from fuse-fplus is λμ·t for t ≥ 0 and
λ·μt/(1 − μt) > −λ for t < 0). Importers spell ELU(α) as ``−α·relu(1 − exp(t)) + relu(t)``;
:func:`read_activation` reads that spelling as the entry ``elu``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.fplus import OP as FPLUS_OP
from reforge.topi_ext.fplus import emit_fplus
from reforge.topi_ext.op_kind import op_kind

from .graph import const_value, op_name


# every activation operator a rewrite must not move a linear operator across, known to the table or not
ACTIVATION_OPS = ("relax.nn.relu", "relax.nn.relu6", "relax.clip", "relax.nn.leakyrelu", "relax.nn.prelu",
                  "relax.nn.silu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.sigmoid", "relax.tanh")


@dataclass(frozen=True)
class Activation:
    name: str
    identity_from_zero: bool
    lower: float
    slope: float | None
    apply: Callable[[relax.BlockBuilder, relax.Expr], relax.Expr]


def _scalar(expr) -> float | None:
    value = const_value(expr)
    return float(value) if value is not None and value.size == 1 else None


def relu() -> Activation:
    return Activation("relu", True, 0.0, 0.0, lambda _bb, x: relax.op.nn.relu(x))


def leaky_relu(alpha: float) -> Activation:
    return Activation("leakyrelu", True, 0.0 if alpha <= 0 else -np.inf, alpha,
                      lambda _bb, x: relax.op.nn.leakyrelu(x, alpha))


def elu(alpha: float, dtype: str) -> Activation:
    """ELU(α): t for t ≥ 0, α(eᵗ − 1) > −α for t < 0; emitted in the importers' spelling."""
    def apply(_bb, x):
        return relax.op.add(relax.op.multiply(relax.const(-alpha, dtype), relax.op.nn.relu(
            relax.op.subtract(relax.const(1.0, dtype), relax.op.exp(x)))), relax.op.nn.relu(x))
    return Activation("elu", True, min(0.0, -alpha), None, apply)


def _clip(call: relax.Call) -> Activation:
    lo, hi = _scalar(call.args[1]), _scalar(call.args[2])
    lower = -np.inf if lo is None else lo
    return Activation("clip", lower == 0.0 and hi == np.inf, lower, None,
                      lambda _bb, x: relax.op.clip(x, call.args[1], call.args[2]))


ACTIVATIONS: dict[str, Callable[[relax.Call], Activation]] = {
    "relax.nn.relu": lambda call: relu(),
    "relax.nn.leakyrelu": lambda call: leaky_relu(float(call.attrs["alpha"])),
    "relax.nn.relu6": lambda call: Activation("relu6", False, 0.0, None, lambda _bb, x: relax.op.nn.relu6(x)),
    "relax.clip": _clip,
}


def pfplus(lam: float, mu: float) -> Activation:
    """PFPlus(t; λ, μ) = λ·(μt ≥ 0 ? μt : μt/(1 − μt)), μ > 0: the identity on [0, ∞) when λμ = 1,
    bounded below by −λ when λ > 0 (FPlus: λ = μ = 1, ≥ −1)."""
    return Activation("fplus", lam * mu == 1.0, -lam if lam > 0 else -np.inf, None,
                      lambda bb, x: emit_fplus(bb, bb.normalize(x), lam, mu))


# reforge's operators, by the ``reforge.op`` tag of their PrimFunc
TAGGED: dict[str, Callable[[tvm.tirx.PrimFunc], Activation]] = {
    FPLUS_OP: lambda func: pfplus(*(float(func.attrs["reforge.fplus"][k]) for k in ("lam", "mu"))),
}


@dataclass(frozen=True)
class Matched:
    """An activation found in the graph: ``act`` applied to ``data``, which its spelling reads ``uses`` times."""

    data: relax.Expr
    act: Activation
    uses: int = 1


def read_activation(expr, lookup: Callable, mod: tvm.IRModule | None = None) -> Matched | None:
    """The activation bound to ``expr`` (``lookup``: var → bound value, or None), if the table knows it."""
    value = lookup(expr)
    name = op_name(value)
    if name in ACTIVATIONS:
        return Matched(value.args[0], ACTIVATIONS[name](value))
    if name == "relax.call_tir" and mod is not None and isinstance(value.args[0], tvm.ir.GlobalVar):
        func = mod[value.args[0]] if value.args[0] in mod.functions else None
        tag = op_kind(func) if func is not None else None
        if tag in TAGGED and len(value.args[1].fields) == 1:
            return Matched(value.args[1].fields[0], TAGGED[tag](func))
    return _read_elu(value, lookup)


def _read_elu(value, lookup: Callable) -> Matched | None:
    """``−α·relu(1 − exp(t)) + relu(t)`` (either operand order) as ELU(α) of t."""
    if op_name(value) != "relax.add":
        return None
    for scaled, positive in (value.args, value.args[::-1]):
        mul, pos = lookup(scaled), lookup(positive)
        if op_name(mul) != "relax.multiply" or op_name(pos) != "relax.nn.relu":
            continue
        for c, inner in (mul.args, mul.args[::-1]):
            neg_alpha, neg = _scalar(c), lookup(inner)
            sub = lookup(neg.args[0]) if op_name(neg) == "relax.nn.relu" else None
            exp = lookup(sub.args[1]) if op_name(sub) == "relax.subtract" and _scalar(sub.args[0]) == 1.0 else None
            if neg_alpha is not None and op_name(exp) == "relax.exp" and exp.args[0].same_as(pos.args[0]):
                return Matched(pos.args[0], elu(-neg_alpha, str(value.ty.dtype)), uses=2)
    return None


# operators that keep a lower bound of their input (max / average pooling)
_KEEPS_BOUND = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")


def lower_bound(expr, lookup: Callable, mod: tvm.IRModule | None = None, depth: int = 0) -> float | str:
    """A proven ``l`` with ``expr ≥ l`` everywhere, or what the tensor comes from when there is none
    (pooling keeps a bound: a max or a mean of values ≥ l, zero padding counted, is ≥ min(l, 0))."""
    found = read_activation(expr, lookup, mod)
    if found is not None and found.act.lower > -np.inf:
        return found.act.lower
    value = lookup(expr)
    name = op_name(value)
    if name in _KEEPS_BOUND and depth < 8:
        inner = lower_bound(value.args[0], lookup, mod, depth + 1)
        return inner if isinstance(inner, str) else min(inner, 0.0)
    if found is not None:
        return found.act.name
    return name.removeprefix("relax.") if name else ("a function parameter" if value is None else "an unknown producer")

