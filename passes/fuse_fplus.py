"""fuse-fplus: the elementwise spellings of FPlus / PFPlus become one fused operator.

    λ·((1 + μ|x|)^sign(x) − 1)              power form (torch.pow / ONNX Pow of the definition)
    λ·where(t >= 0, t, t / (1 − t)), t = μx  where form (written piecewise; also t > 0, t < 0, t <= 0, and
                                             the condition on x, the same sign for μ > 0)

both become ``fplus(x; λ, μ)`` (:mod:`reforge.topi_ext.fplus`), an elementwise PrimFunc that FuseOps
puts into the epilogue of the conv before it. Constants must be scalars: the 1s exactly 1, μ > 0
and finite (the base stays positive); λ is a finite scalar multiply that alone reads the − 1. A
candidate (``power(·, sign(x)) − c``, or a ``where`` on the sign of t or x whose branches are t and a
quotient of t) that differs from the definition stays, and the report says how.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.fplus import OP, emit_fplus

from .analysis import graph_stats
from .graph import callee_attr, cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape, use_counts
from .report import BlockReport

_FLOATS = ("float32", "float64")
_LAMBDA_READS = ("relax.subtract", "relax.where")  # the calls a PFPlus λ multiplies
_FLIP = {"relax.greater_equal": "relax.less_equal", "relax.greater": "relax.less",
         "relax.less_equal": "relax.greater_equal", "relax.less": "relax.greater"}


@tvm.transform.module_pass(opt_level=0, name="reforge.fuse-fplus")
class FuseFPlus:
    """Rewrite FPlus / PFPlus written with pow / abs / sign or where into one elementwise operator."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        mod = cleanup(mutate_functions(mod, lambda m, f: _Fuse(m, _scaled_candidates(f), self.report)))
        self.report.after = graph_stats(mod)
        return mod


# ----------------------------------------------------------------------------- pattern


def _scalar(expr, dtype: str) -> float | None:
    """The value of a one-element float constant of ``dtype``, else None."""
    v = const_value(expr)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 and str(v.dtype) == dtype else None


def _scaled(expr, dtype: str) -> tuple[relax.Expr, float]:
    """``(e, s)`` for ``s·e`` / ``e·s`` with a scalar constant s, else ``(expr, 1)``."""
    if op_name(expr) == "relax.multiply":
        for e, c in (expr.args, expr.args[::-1]):
            s = _scalar(c, dtype)
            if s is not None and not is_const(e):
                return e, s
    return expr, 1.0


def _scaled_candidates(func: relax.Function) -> list[relax.Call]:
    """Subtractions and wheres read only by a scalar multiply (a PFPlus λ): matched at the multiply instead."""
    uses = use_counts(func)
    values = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    found = []
    for value in values.values():
        inner, _ = _scaled(value, tensor_dtype(value)) if op_name(value) == "relax.multiply" else (None, 1.0)
        if isinstance(inner, relax.Var) and uses.get(inner, 0) == 1 and op_name(values.get(inner)) in _LAMBDA_READS:
            found.append(values[inner])
    return found


@relax.expr_functor.mutator
class _Fuse(relax.PyExprMutator):
    def __init__(self, mod, scaled: list[relax.Call], report: BlockReport):
        super().__init__(mod)
        self.scaled, self.report = scaled, report

    def _value(self, expr):
        """The call bound to ``expr`` (a variable), or ``expr`` itself."""
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else expr

    def visit_call_(self, call):
        deferred = any(call.same_as(c) for c in self.scaled)
        call = self.visit_expr_post_order(call)
        dtype = tensor_dtype(call)
        if deferred or dtype not in _FLOATS or tensor_shape(call) is None:
            return call
        found = {"relax.subtract": self._power_form, "relax.where": self._where_form,
                 "relax.multiply": self._outer_scale}.get(op_name(call), lambda *_: None)(call, dtype)
        if found is None:
            return call
        if isinstance(found, str):
            self.report.refuse(found)
            return call
        kind, x, lam, mu = found
        self.report.count(kind)
        return emit_fplus(self.builder_, x, lam, mu)

    def _power_form(self, call, dtype: str):
        """``(1 + μ|x|)^sign(x) − 1``: ``("power form", x, 1, μ)``, a reason, or None."""
        power, one = call.args
        power = self._value(power)
        sgn = self._value(power.args[1]) if op_name(power) == "relax.power" else None
        if op_name(sgn) != "relax.sign":
            return None
        x = sgn.args[0]
        if _scalar(one, dtype) != 1.0:
            return "(1 + μ|x|)^sign(x) − c with c ≠ 1: not PFPlus"
        base = self._value(power.args[0])
        pair = base.args if op_name(base) == "relax.add" else ()
        for unit, term in (pair, pair[::-1]):
            absx, mu = _scaled(self._value(term), dtype)
            absx = self._value(absx)
            if _scalar(unit, dtype) == 1.0 and op_name(absx) == "relax.abs" and absx.args[0].same_as(x):
                if not (np.isfinite(mu) and mu > 0):
                    return f"(1 + μ|x|)^sign(x) − 1 with μ = {mu:g}: the base may reach 0 (needs μ > 0)"
                if tensor_shape(call) != tensor_shape(x):
                    return "(1 + μ|x|)^sign(x) − 1 broadcast to a larger shape than x"
                return "power form", x, 1.0, mu
        return "x^sign(·) − 1 whose base is not 1 + μ|x| of the sign's input: not PFPlus"

    def _where_form(self, call, dtype: str):
        """``where(t >= 0, t, t / (1 − t))``, t = μx: ``("where form", x, 1, μ)``, a reason, or None."""
        cond, a, b = call.args
        cond = self._value(cond)
        name = op_name(cond)
        if name not in _FLIP:
            return None
        c, zero = cond.args
        if is_const(c):
            c, zero, name = zero, c, _FLIP[name]
        if _scalar(zero, dtype) != 0.0:
            return None
        t, neg = (a, b) if name in ("relax.greater_equal", "relax.greater") else (b, a)
        quot = self._value(neg)
        if op_name(quot) != "relax.divide" or not quot.args[0].same_as(t):
            return None
        inner, mu = _scaled(self._value(t), dtype)
        x = t if mu == 1.0 else inner
        if not (c.same_as(t) or c.same_as(x)):
            return None
        if x is not t and not (np.isfinite(mu) and mu > 0):
            if not c.same_as(t):
                return f"where(x >= 0, μx, μx / (1 − μx)) with μ = {mu:g}: μx and x differ in sign"
            x, mu = t, 1.0  # FPlus of t itself
        den = self._value(quot.args[1])
        if op_name(den) != "relax.subtract" or _scalar(den.args[0], dtype) != 1.0 or not den.args[1].same_as(t):
            return "where(t >= 0, t, t / d) with d ≠ 1 − t: not FPlus"
        if tensor_shape(call) != tensor_shape(x):
            return "where(t >= 0, t, t / (1 − t)) broadcast to a larger shape than x"
        return "where form", x, 1.0, mu

    def _outer_scale(self, call, dtype: str):
        """``λ·f`` with f a power or where form: ``(form, x, λ, μ)``, a reason, or None."""
        inner, lam = _scaled(call, dtype)
        f = self._value(inner)
        form = {"relax.subtract": self._power_form, "relax.where": self._where_form}.get(op_name(f))
        found = form(f, dtype) if form is not None else None
        if found is None or isinstance(found, str):
            return found
        if not np.isfinite(lam):
            return f"λ·FPlus(μx) with λ = {lam:g}"
        kind, x, _, mu = found
        return kind, x, lam, mu


# ----------------------------------------------------------------------------- blocked layouts


def fplus_in_blocked_layout(mod: tvm.IRModule) -> tvm.IRModule:
    """After the x86 build's blocked conv layouts: ``fplus(layout_transform(y))`` becomes
    ``layout_transform(fplus(y))`` (elementwise, so exact for any layout, padded lanes included), and a
    ``layout_transform`` back to y's layout after it cancels; fplus then reads the conv directly and
    FuseOps puts it in the conv's epilogue."""
    if not any(f.attrs is not None and f.attrs.get("reforge.op") == OP for _, f in mod.functions_items()):
        return mod
    return cleanup(mutate_functions(mod, lambda m, _f: _Commute(m)))


def _fplus_params(mod: tvm.IRModule, call) -> tuple[float, float] | None:
    """``(λ, μ)`` if ``call`` is a call_tir of an fplus PrimFunc."""
    info = callee_attr(mod, call, "reforge.fplus") if callee_attr(mod, call, "reforge.op") == OP else None
    return None if info is None else (float(info["lam"]), float(info["mu"]))


@relax.expr_functor.mutator
class _Commute(relax.PyExprMutator):
    def _bound(self, expr, name: str):
        value = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        return value if op_name(value) == name else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        mod = self.builder_.get()
        params = _fplus_params(mod, call)
        if params is not None:  # fplus(layout_transform(y)) -> layout_transform(fplus(y))
            lt = self._bound(call.args[1].fields[0], "relax.layout_transform")
            if lt is None:
                return call
            y = self.builder_.emit(emit_fplus(self.builder_, lt.args[0], *params))
            return relax.Call(lt.op, [y], lt.attrs)
        lt = self._bound(call.args[0], "relax.layout_transform") if op_name(call) == "relax.layout_transform" else None
        if lt is not None and _fplus_params(mod, self._bound(lt.args[0], "relax.call_tir")) is not None \
                and tensor_shape(lt.args[0]) == tensor_shape(call):  # and back again, as TVM's
            return lt.args[0]  # OptimizeLayoutTransform cancels a pair
        return call
