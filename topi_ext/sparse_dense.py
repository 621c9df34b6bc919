"""``x @ W`` for a constant, mostly-zero ``W`` (K, N): per output column j the nonzeros of ``W[:, j]``
(compressed columns: row indices and values, ``indptr[j] .. indptr[j+1]``), each column's list
padded with zero-valued entries to a multiple of GROUP, so that

    out[m, j] = Σ_{q} Σ_{t < GROUP} values[q·GROUP + t] · x[m, indices[q·GROUP + t]]

is GROUP-wide vector FMAs of the values against gathered activations, summed across the lanes at
the end: the nonzero products of the dense layer (plus products with 0), its weights read once in
``nnz`` (value, index) pairs instead of K·N values. A batch-1 classifier is bound by reading its
weights, so the speedup approaches the density's inverse. Output columns run in parallel.

Emitted scheduled, tagged ``reforge.op = "sparse_dense"`` (see :mod:`.sparse_conv`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .op_kind import tag

OP = "sparse_dense"
GROUP = 16  # nonzeros per vector step: one AVX-512 vector, four NEON


@dataclass(frozen=True)
class SparseColumns:
    indptr: np.ndarray  # int32 [N + 1], multiples of GROUP
    indices: np.ndarray  # int32 [max(padded nnz, GROUP)]
    values: np.ndarray  # float32, alike

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.values))


def columns(weight: np.ndarray, group: int = GROUP) -> SparseColumns:
    """The compressed, padded columns of ``weight`` (K, N)."""
    counts = np.count_nonzero(weight, axis=0)
    padded = -(-counts // group) * group
    indptr = np.concatenate([[0], np.cumsum(padded)]).astype("int32")
    size = max(int(indptr[-1]), group)
    indices, values = np.zeros(size, "int32"), np.zeros(size, "float32")
    for j in np.nonzero(counts)[0]:
        (rows,) = np.nonzero(weight[:, j])
        indices[indptr[j]:indptr[j] + rows.size] = rows
        values[indptr[j]:indptr[j] + rows.size] = weight[rows, j]
    return SparseColumns(indptr, indices, values)


def prim_func(m: int, k: int, n: int, size: int, group: int = GROUP) -> tvm.tirx.PrimFunc:
    """``(x [M, K], indices, values, indptr, out [M, N])``, scheduled, tagged ``reforge.op``."""
    src = f"""
@T.prim_func
def sparse_dense(x: T.Buffer(({m}, {k}), "float32"), indices: T.Buffer(({size},), "int32"),
                 values: T.Buffer(({size},), "float32"), indptr: T.Buffer(({n + 1},), "int32"),
                 out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for j in T.parallel({n}):
        for i in range({m}):
            acc = T.alloc_buffer(({group},), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for t in T.vectorized({group}):
                acc[t] = T.float32(0)
            for q in range(indptr[j] // {group}, indptr[j + 1] // {group}):
                for t in T.vectorized({group}):
                    acc[t] = acc[t] + values[q * {group} + t] * x[i, indices[q * {group} + t]]
            total[0] = T.float32(0)
            for t in T.unroll({group}):
                total[0] = total[0] + acc[t]
            out[i, j] = total[0]
"""
    from tvm.script import tirx

    func = tvm.script.from_source(src, extra_vars={"T": tirx})
    return tag(func, OP)


def sparse_dense_np(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """numpy twin (float64): the padded compressed columns, group by group."""
    s = columns(weight)
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.zeros((x2.shape[0], weight.shape[1]))
    for j in range(weight.shape[1]):
        sl = slice(s.indptr[j], s.indptr[j + 1])
        out[:, j] = x2[:, s.indices[sl]] @ s.values[sl].astype(np.float64)
    return out.reshape(*x.shape[:-1], weight.shape[1])


def emit_sparse_dense(bb, x, weight: np.ndarray):
    """Emit ``x @ weight`` (x float32 ``[..., K]``, weight a constant ``(K, N)``) into ``bb``."""
    from tvm import relax

    shape = [int(d) for d in x.ty.shape]
    k, n = weight.shape
    m = int(np.prod(shape[:-1]))
    s = columns(weight)
    func = prim_func(m, k, n, s.values.size)
    gv = bb.add_func(func, OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    x2 = bb.emit(relax.op.reshape(x, (m, k))) if len(shape) != 2 else x
    y = bb.emit(relax.call_tir(gv, [x2, relax.const(s.indices), relax.const(s.values), relax.const(s.indptr)],
                               relax.TensorType((m, n), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], n))) if len(shape) != 2 else y
