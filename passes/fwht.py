"""fwht: products with a constant Hadamard matrix become a fast Walsh-Hadamard transform.

    x @ (c·H_N[:K, perm])      =  c · fwht(pad_N(x))[..., perm]      N·log2 N adds, not K·M MACs
    conv1x1(x, W), Wᵀ the same =  the same over the channel axis

Recognized (``relax.matmul`` with a constant second operand, which is what ONNX MatMul / Gemm and a
torch Linear or ``torch.matmul`` by a constant become after fold-constants; and ``relax.nn.conv2d``
1×1, stride 1, unpadded, groups 1, NCHW, whose weight read as a ``[C, O]`` matrix is one):

- ``c·H_N``: the Sylvester matrix, any scale c (±c entries; c < 0 too), natural order;
- any column order of it, sequency (Walsh) order included: the output is gathered by ``perm``;
- zero-padded: ``K`` rows with N = next power of two >= K (the WHT layer's padding) and M <= N
  columns (the crop);
- block-diagonal with identical Hadamard blocks (block WHT): the transform runs per block.

Entries must be exactly ±c (no tolerance): a matrix that is not provably one of these is left alone.
A following bias ``add`` stays a separate elementwise op.

Size: the dense product costs K·M multiply-adds per row, the transform N·log2 N adds plus the
output pass. Measured on this CPU (AMD Zen 3, AVX2, 1 thread; ``benchmarks/wht.py --sizes ...``)
against reforge's own dense matmul schedule, the transform is faster from N = 8 on (the crossover
is below N = 8, where both take well under a microsecond per row), so the pass rewrites N >= MIN_N
= 8 and leaves H_2 / H_4 to the dense code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext.wht import emit_wht, hadamard_entries, next_pow2, sequency_perm

from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport

MIN_N = 8  # smallest transform rewritten (see the module docstring)


@tvm.transform.module_pass(opt_level=0, name="reforge.fwht")
class FastWHT:
    """Rewrite products with constant (scaled, permuted, padded, block) Hadamard matrices to a FWHT."""

    def __init__(self, min_n: int = MIN_N):
        self.report = PassReport()
        self.min_n = min_n

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self.min_n)))


# ----------------------------------------------------------------------------- matrix recognition


@dataclass(frozen=True)
class HadamardMatch:
    """``w = blockdiag(c·H_n[:k, perm], ...)`` (``blocks`` equal blocks)."""

    n: int
    k: int  # input length per block (k < n: zero-padded)
    scale: float
    perm: np.ndarray  # output columns per block, indices into 0..n-1
    blocks: int = 1

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
        return f"{self.order} {'block ' if self.blocks > 1 else ''}Hadamard"


def _match_single(w: np.ndarray) -> HadamardMatch | None:
    k, m = w.shape
    n = next_pow2(k)
    if k < 2 or m > n:
        return None
    c = w[0, 0]
    if c == 0 or not np.isfinite(c) or not np.all(w[0] == c) or not np.all(np.abs(w) == abs(c)):
        return None
    negative = w != c  # entries -c
    cols = np.zeros(m, np.int64)
    for b in range(n.bit_length() - 1):  # column j of H has -1 in row 2^b iff bit b of j is set
        cols |= negative[1 << b].astype(np.int64) << b
    if not np.array_equal(negative, hadamard_entries(np.arange(k), cols) < 0):
        return None
    return HadamardMatch(n, k, float(c), cols)


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
        y = self.builder_.emit(emit_wht(self.builder_, xr, match.n, match.scale, match.perm))
        return relax.op.reshape(y, [int(d) for d in out_shape])
