"""The sparse dense operator (topi_ext/sparse_dense.py; the sparse conv's tests are test_sparse_nchwc.py),
emitted into Relax and built for x86, against a float64 numpy matmul. Sparsities 0 %, 50 %, 90 %, 99 % and
100 % (an all-zero layer), sizes not multiples of the vector, batched leading axes. Tolerance:
max|out − ref| / max|ref| <= 1e-5 (float32 sums of the same products); an all-zero layer must give exactly 0.
The numpy twin to 1e-12."""

import numpy as np
import pytest
import tvm
from tvm import relax

from reforge import backends
from reforge.topi_ext import sparse_dense
from tests.helpers import pruned_weight

RTOL = 1e-5
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def run(x, emit):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, xv))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=backends.get("x86").tvm_target)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def check(out, ref):
    assert out.shape == ref.shape
    if not ref.any():
        assert not out.any()
    else:
        assert np.abs(out - ref).max() / np.abs(ref).max() <= RTOL


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", [(1, 100, 37), (3, 64, 48), ((2, 1), 33, 1000)])
def test_sparse_dense(shape, sparsity):
    m, k, n = shape
    lead = m if isinstance(m, tuple) else (m,)
    rng = np.random.default_rng(k + n + int(sparsity * 100))
    x = rng.standard_normal((*lead, k)).astype("float32")
    wt = pruned_weight(rng, (k, n), sparsity)
    ref = x.astype(np.float64) @ wt.astype(np.float64)
    assert np.abs(sparse_dense.sparse_dense_np(x, wt) - ref).max() <= 1e-12 * max(1, np.abs(ref).max())
    check(run(x, lambda bb, xv: sparse_dense.emit_sparse_dense(bb, xv, wt)), ref)


def test_blocks_sorted_by_nonzeros_and_padded_to_the_longest_column():
    lanes = sparse_dense.LANES
    w = np.zeros((40, lanes + 2), "float32")
    w[np.arange(17), 0] = 1  # the longest column: first lane of the first block
    w[5, 2] = 2
    w[[3, 9], lanes + 1] = 3  # second longest: second lane
    s = sparse_dense.blocks(w)
    assert list(s.cols[:3]) == [0, lanes + 1, 2] and list(s.cols[lanes + 2:]) == [-1] * (lanes - 2)
    assert list(s.bptr) == [0, 17, 17] and s.nnz == 20  # the second block's columns are all zero: no steps
    steps = s.values[:17 * lanes].reshape(17, lanes)
    assert (steps[:, 0] == 1).all() and list(steps[:2, 1]) == [3, 3] and not steps[2:, 1].any()
    assert list(s.indices[:2 * lanes].reshape(2, lanes)[:, 1]) == [3, 9] and steps[0, 2] == 2
