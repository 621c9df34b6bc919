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


def test_columns_padded_to_groups():
    w = np.zeros((40, 3), "float32")
    w[np.arange(17), 0] = 1
    w[5, 2] = 2
    s = sparse_dense.columns(w)
    assert list(s.indptr) == [0, 32, 32, 48] and s.nnz == 18
    assert s.indices[32] == 5 and s.values[32] == 2 and not s.values[33:48].any()
