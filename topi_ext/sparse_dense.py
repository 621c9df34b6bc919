"""``x @ W`` for a constant, mostly-zero ``W`` (K, N), LANES output columns at a time: the columns sorted by
their count of nonzeros (most first) and cut into blocks of LANES; lane l of block b is column ``cols[b·LANES + l]``,
its nonzeros (row index, value) stored one per step, step after step (ELLPACK across the block's lanes), the block
as long as its longest column (the shorter ones padded with zero values; sorting keeps that padding small), so

    out[m, cols[b·LANES + l]] = Σ_{q in bptr[b] .. bptr[b+1]} values[q·LANES + l] · x[m, indices[q·LANES + l]]

is one vector FMA per step against the activations gathered for the block's lanes: the products of the dense
layer with W's zeros skipped, each column summed in its rows' order, its weights read once as (value, index)
pairs instead of K·N values, and no sum across lanes (a lane is an output). A batch-1 classifier is bound by
reading its weights; per column sums with a horizontal add at the end spent more on that add than on the
products at 90 % zeros. Blocks run in parallel.

Emitted scheduled, tagged ``reforge.op = "sparse_dense"`` (see :mod:`.sparse_conv`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .op_kind import tag

OP = "sparse_dense"
LANES = 16  # output columns per block: one AVX-512 vector, two AVX2, four NEON


@dataclass(frozen=True)
class SparseBlocks:
    bptr: np.ndarray  # int32 [blocks + 1]: each block's first step
    cols: np.ndarray  # int32 [blocks · LANES]: the output column of each lane, -1 past the last column
    indices: np.ndarray  # int32 [max(steps, 1) · LANES]: row index of each (step, lane)
    values: np.ndarray  # float32, alike (0 where a lane's column has no more nonzeros)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.values))


def blocks(weight: np.ndarray, lanes: int = LANES) -> SparseBlocks:
    """The sorted, blocked columns of ``weight`` (K, N)."""
    n = weight.shape[1]
    counts = np.count_nonzero(weight, axis=0)
    order = np.argsort(-counts, kind="stable")
    nb = -(-n // lanes)
    cols = np.full(nb * lanes, -1, "int32")
    cols[:n] = order
    steps = [int(counts[order[b * lanes:(b + 1) * lanes]].max()) for b in range(nb)]
    bptr = np.concatenate([[0], np.cumsum(steps)]).astype("int32")
    size = max(int(bptr[-1]), 1) * lanes
    indices, values = np.zeros(size, "int32"), np.zeros(size, "float32")
    for lane, j in enumerate(order):
        (rows,) = np.nonzero(weight[:, j])
        at = (bptr[lane // lanes] + np.arange(rows.size)) * lanes + lane % lanes
        indices[at], values[at] = rows, weight[rows, j]
    return SparseBlocks(bptr, cols, indices, values)


def prim_func(m: int, k: int, n: int, size: int, lanes: int = LANES) -> tvm.tirx.PrimFunc:
    """``(x [M, K], indices, values, bptr, cols, out [M, N])``, scheduled, tagged ``reforge.op``."""
    nb = -(-n // lanes)
    src = f"""
@T.prim_func
def sparse_dense(x: T.Buffer(({m}, {k}), "float32"), indices: T.Buffer(({size},), "int32"),
                 values: T.Buffer(({size},), "float32"), bptr: T.Buffer(({nb + 1},), "int32"),
                 cols: T.Buffer(({nb * lanes},), "int32"), out: T.Buffer(({m}, {n}), "float32")):
    T.func_attr({{"tirx.noalias": True}})
    for b in T.parallel({nb}):
        for i in range({m}):
            acc = T.alloc_buffer(({lanes},), "float32", scope="local")
            for t in T.vectorized({lanes}):
                acc[t] = T.float32(0)
            for q in range(bptr[b], bptr[b + 1]):
                for t in T.vectorized({lanes}):
                    acc[t] = acc[t] + values[q * {lanes} + t] * x[i, indices[q * {lanes} + t]]
            for t in T.unroll({lanes}):
                if cols[b * {lanes} + t] >= 0:
                    out[i, cols[b * {lanes} + t]] = acc[t]
"""
    from tvm.script import tirx

    func = tvm.script.from_source(src, extra_vars={"T": tirx})
    return tag(func, OP)


def sparse_dense_np(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """numpy twin (float64): the blocks' steps, each lane's sum into its column."""
    s = blocks(weight)
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.zeros((x2.shape[0], weight.shape[1]))
    for b in range(s.bptr.size - 1):
        at = slice(s.bptr[b] * LANES, s.bptr[b + 1] * LANES)
        idx, val = s.indices[at].reshape(-1, LANES), s.values[at].reshape(-1, LANES).astype(np.float64)
        sums = (x2[:, idx] * val).sum(axis=1)  # [M, LANES]
        for lane, j in enumerate(s.cols[b * LANES:(b + 1) * LANES]):
            if j >= 0:
                out[:, j] = sums[:, lane]
    return out.reshape(*x.shape[:-1], weight.shape[1])


def emit_sparse_dense(bb, x, weight: np.ndarray):
    """Emit ``x @ weight`` (x float32 ``[..., K]``, weight a constant ``(K, N)``) into ``bb``."""
    from tvm import relax

    shape = [int(d) for d in x.ty.shape]
    k, n = weight.shape
    m = int(np.prod(shape[:-1]))
    s = blocks(weight)
    func = prim_func(m, k, n, s.values.size)
    gv = bb.add_func(func, OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    x2 = bb.emit(relax.op.reshape(x, (m, k))) if len(shape) != 2 else x
    consts = [relax.const(a) for a in (s.indices, s.values, s.bptr, s.cols)]
    y = bb.emit(relax.call_tir(gv, [x2, *consts], relax.TensorType((m, n), "float32")))
    return bb.emit(relax.op.reshape(y, (*shape[:-1], n))) if len(shape) != 2 else y
