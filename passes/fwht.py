"""fwht: products with a constant Hadamard matrix become a fast Walsh-Hadamard transform.

    x @ (c·H_N[:K, perm])      =  c · fwht(pad_N(x))[..., perm]      N·log2 N adds, not K·M MACs
    conv1x1(x, W), Wᵀ the same =  the same over the channel axis

Recognized (``relax.matmul`` with a constant second operand, which is what ONNX MatMul / Gemm and a
torch Linear or ``torch.matmul`` by a constant become after fold-constants; and ``relax.nn.conv2d``
1×1, stride 1, unpadded, groups 1, NCHW, whose weight read as a ``[C, O]`` matrix is one):

- ``c·H_N``: the Sylvester matrix, any scale c (±c entries; c < 0 too), natural order;
- ``diag(d)·H_N``: rows scaled by nonzero d_k (a per-input scale folded into the matrix, e.g. by
  fold-batchnorm from the WHT layer's ``v ⊙ z``): the input is scaled by d in the first stage;
- any column order of it, sequency (Walsh) order included: the output is gathered by ``perm``;
- zero-padded: ``K`` rows with N = next power of two >= K (the WHT layer's padding) and M <= N
  columns (the crop);
- block-diagonal with identical Hadamard blocks (block WHT): the transform runs per block.

Entries must be exactly ±c (no tolerance): a matrix that is not provably one of these is left alone.
A following bias ``add`` stays a separate elementwise op. The WHT layer's soft threshold on the
transform's output, ``sign(z)·relu(|z| − T)`` (T a constant: a scalar, or one value per transformed
coefficient), is fused into the transform's epilogue when nothing else reads z.

Size: the dense product costs K·M multiply-adds per row, the transform N·log2 N adds plus the
output pass. Measured on this CPU (AMD Zen 3, AVX2, 1 thread, 64 rows; ``benchmarks/wht.py --sizes
2 4 8 16 32``) against reforge's own dense matmul: dense is faster up to N = 8 (1.3 vs 1.7-1.9 µs,
mostly call overhead), they tie at N = 16 (2.0 µs), and the transform wins from N = 32 on (1.5× at
32, 7.8× at 256, 61× at 1024); the pass rewrites N >= MIN_N = 16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.wht import emit_wht, hadamard_entries, next_pow2, sequency_perm

from .graph import (channel_vector, cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype,
                    tensor_shape, use_counts)
from .report import PassReport

MIN_N = 16  # smallest transform rewritten (see the module docstring)


@tvm.transform.module_pass(opt_level=0, name="reforge.fwht")
class FastWHT:
    """Rewrite products with constant (scaled, permuted, padded, block) Hadamard matrices to a FWHT."""

    def __init__(self, min_n: int = MIN_N):
        self.report = PassReport()
        self.min_n = min_n

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self.min_n)))
        if self.report.total:
            mod = cleanup(mutate_functions(mod, lambda m, f: _FuseThreshold(m, use_counts(f), self.report)))
        return mod


# ----------------------------------------------------------------------------- matrix recognition


@dataclass(frozen=True)
class HadamardMatch:
    """``w = blockdiag(c·H_n[:k, perm], ...)`` (``blocks`` equal blocks)."""

    n: int
    k: int  # input length per block (k < n: zero-padded)
    scale: float
    perm: np.ndarray  # output columns per block, indices into 0..n-1
    blocks: int = 1
    in_scale: np.ndarray | None = None  # per-row factors d (then ``scale`` is 1)

    @property
    def order(self) -> str:
        if self.k < self.n:
            return "zero-padded"
        if len(self.perm) == self.n and np.array_equal(self.perm, np.arange(self.n)):
            return "natural"
        if len(self.perm) == self.n and np.array_equal(self.perm, sequency_perm(self.n)):
            return "sequency"
        return "permuted"

    @property
    def kind(self) -> str:
        scaled = "row-scaled " if self.in_scale is not None else ""
        return f"{scaled}{self.order} {'block ' if self.blocks > 1 else ''}Hadamard"


def _match_single(w: np.ndarray) -> HadamardMatch | None:
    k, m = w.shape
    n = next_pow2(k)
    if k < 2 or m > n:
        return None
    d = w[:, 0]  # row k is d_k·H[k, perm] / H[k, perm[0]], a column permutation of H again
    if not np.all(np.isfinite(d)) or np.any(d == 0) or not np.all(np.abs(w) == np.abs(d)[:, None]):
        return None
    negative = w != d[:, None]  # entries -d_k
    cols = np.zeros(m, np.int64)
    for b in range(n.bit_length() - 1):  # column j of H has -1 in row 2^b iff bit b of j is set
        cols |= negative[1 << b].astype(np.int64) << b
    if not np.array_equal(negative, hadamard_entries(np.arange(k), cols) < 0):
        return None
    # d's signs may themselves be a Hadamard column j (any column order of c·H, read from column 0):
    # move them into the permutation, d·H[:, j] and cols xor j, so that a plain c·H[:, perm] needs no d
    flip = np.sign(d) != np.sign(d[0])
    j = sum(int(flip[1 << b]) << b for b in range(n.bit_length() - 1))
    if np.array_equal(flip, hadamard_entries(np.arange(k), [j])[:, 0] < 0):
        d, cols = np.where(flip, -d, d), cols ^ j
    if np.all(d == d[0]):
        return HadamardMatch(n, k, float(d[0]), cols)
    return HadamardMatch(n, k, 1.0, cols, in_scale=d.astype(np.float64))


def match_hadamard(w: np.ndarray) -> HadamardMatch | None:
    """How ``x @ w`` is a (block) Walsh-Hadamard transform, or None."""
    if w.ndim != 2:
        return None
    found = _match_single(w)
    if found is not None:
        return found
    k, m = w.shape
    b = int(np.count_nonzero(w[0]))
    if k != m or b < 2 or b & (b - 1) or k % b or k == b or np.count_nonzero(w[0, :b]) != b:
        return None
    nb = k // b
    blocks = w.reshape(nb, b, nb, b)
    first = blocks[0, :, 0, :]
    diag = np.zeros((nb, nb), bool)
    np.fill_diagonal(diag, True)
    if np.any(blocks.transpose(0, 2, 1, 3)[~diag]) or not all(
            np.array_equal(blocks[i, :, i, :], first) for i in range(1, nb)):
        return None
    inner = _match_single(first)
    if inner is None or inner.k != inner.n:
        return None
    return replace(inner, blocks=nb)


# ----------------------------------------------------------------------------- rewrite


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, min_n: int):
        super().__init__(mod)
        self.report, self.min_n = report, min_n

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        found = self._linear(call)
        if found is None:
            return call
        x, matrix, axis = found
        match = match_hadamard(matrix)
        if match is None:
            return call
        if match.n < self.min_n:
            self.report.note(f"left a {match.n}-point Hadamard product dense: below the crossover N = {self.min_n}")
            return call
        self.report.count(match.kind)
        return self._emit(x, match, axis, tensor_shape(call))

    def _linear(self, call):
        """``(x, matrix [K, M], axis)`` for ``x @ W`` or a plain 1×1 conv with a constant weight."""
        name = op_name(call)
        if name not in ("relax.matmul", "relax.nn.conv2d") or len(call.args) != 2:
            return None
        x, w = call.args
        if is_const(x) or not is_const(w):
            return None
        shape, dtype = tensor_shape(x), tensor_dtype(x)
        if shape is None or dtype not in ("float32", "float64") or tensor_dtype(call) != dtype \
                or tensor_shape(call) is None:
            return None
        w = const_value(w)
        if name == "relax.matmul":
            if w.ndim != 2 or len(shape) < 1:
                return None
            return x, w, len(shape) - 1
        a = call.attrs
        plain = (a["data_layout"] == "NCHW" and a["kernel_layout"] == "OIHW" and (a["out_layout"] or "NCHW") == "NCHW"
                 and int(a["groups"]) == 1 and all(int(s) == 1 for s in a["strides"])
                 and all(int(d) == 1 for d in a["dilation"]) and all(int(p) == 0 for p in a["padding"]))
        if not plain or w.shape[2:] != (1, 1):
            return None
        return x, w[:, :, 0, 0].T, 1

    def _emit(self, x, match: HadamardMatch, axis: int, out_shape):
        shape = tensor_shape(x)
        lead, q = _prod(shape[:axis]) * match.blocks, _prod(shape[axis + 1:])
        xr = self.builder_.emit(relax.op.reshape(x, (lead, match.k, q)))
        y = self.builder_.emit(emit_wht(self.builder_, xr, match.n, match.scale, match.perm,
                                        in_scale=match.in_scale))
        return relax.op.reshape(y, [int(d) for d in out_shape])


# ----------------------------------------------------------------------------- soft threshold


def _wht_call(mod: tvm.IRModule, expr):
    """``(call_tir, info)`` if ``expr`` is a call_tir of a WHT PrimFunc without a bias or threshold."""
    if op_name(expr) != "relax.call_tir":
        return None
    func = mod[expr.args[0]] if expr.args[0] in mod.get_global_vars() else None
    info = func.attrs.get("reforge.wht") if func is not None and func.attrs is not None else None
    if info is None or bool(info["bias"]) or bool(info["threshold"]):
        return None
    return expr, info


@relax.expr_functor.mutator
class _FuseThreshold(relax.PyExprMutator):
    """``sign(z) · relu(abs(z) − T)`` with ``z = reshape(wht(x))`` → ``reshape(wht(x; threshold=T))``."""

    def __init__(self, mod, uses, report: PassReport):
        super().__init__(mod)
        self.mod, self.uses, self.report = mod, uses, report

    def _bound(self, expr, name: str, uses: int = 1):
        if isinstance(expr, relax.Var) and self.uses.get(expr, 0) == uses:
            value = self.lookup_binding(expr)
            if op_name(value) == name:
                return value
        return None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.multiply":
            return call
        for sgn_var, mag_var in (call.args, call.args[::-1]):
            fused = self._fuse(sgn_var, mag_var, tensor_shape(call))
            if fused is not None:
                self.report.count("soft threshold fused")
                return fused
        return call

    def _fuse(self, sgn_var, mag_var, out_shape):
        sgn = self._bound(sgn_var, "relax.sign")
        relu = self._bound(mag_var, "relax.nn.relu")
        sub = self._bound(relu.args[0], "relax.subtract") if relu is not None else None
        absz = self._bound(sub.args[0], "relax.abs") if sub is not None else None
        if sgn is None or absz is None or not sgn.args[0].same_as(absz.args[0]) or not is_const(sub.args[1]):
            return None
        z = sgn.args[0]
        reshape = self._bound(z, "relax.reshape", uses=2)
        y = reshape.args[0] if reshape is not None else None
        found = _wht_call(self.mod, self.lookup_binding(y)) if isinstance(y, relax.Var) \
            and self.uses.get(y, 0) == 1 else None
        if found is None or tensor_shape(z) != out_shape:
            return None
        wcall, info = found
        p, m, q = tensor_shape(wcall)
        t = const_value(sub.args[1]).astype(np.float64)
        if t.size == 1:
            thr = np.full(m, float(t.reshape(-1)[0]))
        else:  # one value per coefficient: the transformed axis of z must be the only one T varies along
            axes = [a for a in range(len(out_shape)) if out_shape[a] == m and _prod(out_shape[a + 1:]) == q]
            thr = next((v for v in (channel_vector(t, out_shape, a) for a in axes) if v is not None), None)
            if thr is None:
                return None
        x, *rest = wcall.args[1].fields
        in_scale = const_value(rest.pop(0)) if bool(info["in_scale"]) else None
        perm = const_value(rest.pop(0)) if bool(info["perm"]) else None
        new = self.builder_.emit(emit_wht(self.builder_, x, int(info["n"]), float(info["scale"]), perm,
                                          threshold=thr, in_scale=in_scale))
        return relax.op.reshape(new, [int(d) for d in out_shape])
