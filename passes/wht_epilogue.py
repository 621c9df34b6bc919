"""The fwht pass's epilogue: elementwise operations on a transform's output fold into its output pass.

One per round (the pass repeats until none is left): a per-coefficient scale (``(x @ H) ⊙ e``) or
bias, then the WHT layer's threshold on ``z``:

  soft    sign(z) · relu(|z| − T)                      (Pan et al., TNNLS 2024)
  smooth  tanh(z) · relu(|z| − T),  z = w ⊙ (x @ H)    (Pan et al., CVPR-W 2021 / ACM TECS 2022,
          written there as ``tanh(w⊙x)·ReLU(|w⊙x| − T)``; w is the per-coefficient scale above)

T a constant: a scalar, or one value per transformed coefficient. The transform's output must be read
by nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.op_kind import op_kind
from reforge.topi_ext.wht import OP, emit_wht

from .graph import (callee_attr, channel_vector, cleanup, const_value, is_const, mutate_functions, op_name,
                    tensor_shape, use_counts)
from .report import PassReport


def fuse_epilogues(mod: tvm.IRModule, report: PassReport) -> tvm.IRModule:
    """Fold the epilogues into the transforms of ``mod`` (after a ``report`` with rewrites), one
    operation per transform and round, and drop the transform functions that were replaced."""
    while report.total:
        fused: list[str] = []
        mod = cleanup(mutate_functions(mod, lambda m, f: _FuseEpilogue(m, use_counts(f), report, fused)))
        if not fused:
            break
    return _drop_unused_transforms(mod)


@dataclass(frozen=True)
class _Wht:
    """An emitted transform call: its input and the parameters :func:`emit_wht` takes."""

    x: relax.Expr
    n: int
    scale: float
    shape: tuple[int, int, int]  # [P, M, Q]
    perm: np.ndarray | None = None
    in_scale: np.ndarray | None = None
    out_scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None
    smooth: bool = False

    @classmethod
    def read(cls, mod: tvm.IRModule, expr) -> _Wht | None:
        info = callee_attr(mod, expr, "reforge.wht")
        if info is None:
            return None
        x, *rest = expr.args[1].fields
        params = {}
        for name in ("in_scale", "perm", "out_scale", "bias", "threshold"):
            if name == "threshold" and str(info["threshold"]) or name != "threshold" and bool(info[name]):
                params[name] = const_value(rest.pop(0))
        return cls(x, int(info["n"]), float(info["scale"]), tensor_shape(expr), smooth=str(info["threshold"]) == "smooth",
                   **params)

    def emit(self, bb) -> relax.Expr:
        return bb.emit(emit_wht(bb, self.x, self.n, self.scale, self.perm, self.bias, self.threshold, self.in_scale,
                                self.out_scale, self.smooth))


def _per_coefficient(c: np.ndarray, out_shape, wht: _Wht) -> np.ndarray | None:
    """Constant ``c`` (broadcast against ``out_shape``, a reshape of the ``[P, M, Q]`` transform) as one
    value per coefficient m, if it varies along the transformed axis only."""
    _, m, q = wht.shape
    if c.size == 1:
        return np.full(m, float(c.reshape(-1)[0]))
    axes = [a for a in range(len(out_shape)) if out_shape[a] == m and math.prod(out_shape[a + 1:]) == q]
    return next((v.astype(np.float64) for v in (channel_vector(c, out_shape, a) for a in axes) if v is not None), None)


@relax.expr_functor.mutator
class _FuseEpilogue(relax.PyExprMutator):
    """``z ⊙ e``, ``z ± b``, ``z / e``, ``sign(z)·relu(|z| − T)``, ``tanh(z)·relu(|z| − T)`` with
    ``z = reshape(wht(x))`` (read by nothing else) → ``reshape(wht(x; …))``."""

    def __init__(self, mod, uses, report: PassReport, fused: list):
        super().__init__(mod)
        self.mod, self.uses, self.report, self.fused = mod, uses, report, fused

    def _bound(self, expr, name: str, uses: int = 1):
        if isinstance(expr, relax.Var) and self.uses.get(expr, 0) == uses:
            value = self.lookup_binding(expr)
            if op_name(value) == name:
                return value
        return None

    def _source(self, z, uses: int) -> _Wht | None:
        """The transform ``z`` is (reshapes of), if the pattern's ``uses`` reads are all there are."""
        while (reshape := self._bound(z, "relax.reshape", uses)) is not None:
            z, uses = reshape.args[0], 1
        if not isinstance(z, relax.Var) or self.uses.get(z, 0) != uses:
            return None
        found = _Wht.read(self.mod, self.lookup_binding(z))
        return found if found is not None and found.threshold is None else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name not in ("relax.multiply", "relax.divide", "relax.add", "relax.subtract"):
            return call
        new = self._threshold(call) if name == "relax.multiply" else None
        if new is None:
            new = self._affine(call, name)
        if new is None:
            return call
        self.fused.append(name)
        return relax.op.reshape(new, [int(d) for d in tensor_shape(call)])

    def _affine(self, call, name: str):
        z, c = call.args
        if name in ("relax.multiply", "relax.add") and is_const(z):
            z, c = c, z
        wht = self._source(z, 1) if is_const(c) and tensor_shape(z) == tensor_shape(call) else None
        vec = _per_coefficient(const_value(c), tensor_shape(z), wht) if wht is not None else None
        if vec is None or (name == "relax.divide" and np.any(vec == 0)):
            return None
        if name in ("relax.multiply", "relax.divide"):
            f = vec if name == "relax.multiply" else 1 / vec
            out = f if wht.out_scale is None else wht.out_scale * f
            return replace(wht, out_scale=out, bias=None if wht.bias is None else wht.bias * f).emit(self.builder_)
        b = vec if name == "relax.add" else -vec
        return replace(wht, bias=b if wht.bias is None else wht.bias + b).emit(self.builder_)

    def _threshold(self, call):
        for gate_var, mag_var in (call.args, call.args[::-1]):
            relu = self._bound(mag_var, "relax.nn.relu")
            sub = self._bound(relu.args[0], "relax.subtract") if relu is not None else None
            absz = self._bound(sub.args[0], "relax.abs") if sub is not None else None
            gate = next((g for g in (self._bound(gate_var, op) for op in ("relax.sign", "relax.tanh")) if g is not None),
                        None)
            if gate is None or absz is None or not gate.args[0].same_as(absz.args[0]) or not is_const(sub.args[1]):
                continue
            z = gate.args[0]
            wht = self._source(z, 2)
            thr = _per_coefficient(const_value(sub.args[1]), tensor_shape(z), wht) if wht is not None else None
            if thr is None or tensor_shape(z) != tensor_shape(call):
                continue
            smooth = op_name(gate) == "relax.tanh"
            self.report.count(f"{'smooth' if smooth else 'soft'} threshold fused")
            return replace(wht, threshold=thr, smooth=smooth).emit(self.builder_)
        return None


def _drop_unused_transforms(mod: tvm.IRModule) -> tvm.IRModule:
    """Remove the transform PrimFuncs a fused epilogue replaced (their global symbol keeps them from DCE)."""
    used = {gv.name_hint for _, f in mod.functions_items() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    keep = {gv: f for gv, f in mod.functions_items()
            if gv.name_hint in used or isinstance(f, relax.Function) or op_kind(f) != OP}
    if len(keep) == len(mod.functions_items()):
        return mod
    return tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)
