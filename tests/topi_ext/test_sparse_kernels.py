"""The sparse operators (topi_ext/sparse_conv.py, topi_ext/sparse_dense.py), emitted into Relax and
built for x86, against float64 references: torch.nn.functional.conv2d for the conv, numpy matmul for
dense. Sparsities 0 %, 50 %, 90 %, 99 % and 100 % (an all-zero layer), channels and maps not
multiples of the vector, 1×1 / 3×3 / 5×1 kernels, strides 1 and 2, symmetric and asymmetric zero
padding, batch 2. Tolerance: max|out − ref| / max|ref| <= 1e-5 (float32 sums of the same products);
an all-zero layer must give exactly 0. The numpy twins to 1e-12."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from reforge.targets import get_target
from reforge.topi_ext import sparse_conv, sparse_dense

RTOL = 1e-5
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def pruned(rng, shape, sparsity):
    w = rng.standard_normal(shape).astype("float32")
    w[rng.random(shape) < sparsity] = 0
    if sparsity == 1.0:
        assert not w.any()
    return w


def run(x, emit):
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit(bb, xv))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=get_target("x86").tvm_target)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def check(out, ref):
    assert out.shape == ref.shape
    if not ref.any():
        assert not out.any()
    else:
        assert np.abs(out - ref).max() / np.abs(ref).max() <= RTOL


def torch_conv(x, w, strides, pad):
    t, l, b, r = pad
    xp = torch.nn.functional.pad(torch.from_numpy(x).double(), (l, r, t, b))
    return torch.nn.functional.conv2d(xp, torch.from_numpy(w).double(), stride=strides).numpy()


CONVS = [  # n, c, h, w, o, kh, kw, strides, padding
    (1, 37, 9, 13, 21, 1, 1, (1, 1), (0, 0, 0, 0)),
    (2, 5, 11, 10, 7, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 6, 13, 10, 9, 3, 3, (2, 2), (1, 0, 2, 1)),
    (1, 8, 17, 9, 3, 5, 1, (1, 2), (2, 0, 2, 0)),
    (1, 16, 8, 8, 12, 1, 1, (2, 2), (0, 0, 0, 0)),
    (1, 24, 30, 30, 10, 1, 1, (1, 1), (0, 0, 0, 0)),  # 900 pixels: full tiles and a remainder
]


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("case", CONVS)
def test_sparse_conv(case, sparsity):
    n, c, h, w, o, kh, kw, strides, pad = case
    rng = np.random.default_rng(c * 31 + h + int(sparsity * 100))
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    wt = pruned(rng, (o, c, kh, kw), sparsity)
    ref = torch_conv(x, wt, strides, pad)
    assert np.abs(sparse_conv.sparse_conv2d_np(x, wt, strides, pad) - ref).max() <= 1e-12 * max(1, np.abs(ref).max())
    check(run(x, lambda bb, xv: sparse_conv.emit_sparse_conv2d(bb, xv, wt, strides, pad)), ref)


def test_taps_layout():
    """Offsets name (c, ky, kx) in the padded map; rows in output-channel order."""
    w = np.zeros((2, 3, 3, 3), "float32")
    w[1, 2, 0, 1], w[1, 0, 2, 2] = 5, 7
    g = sparse_conv.geometry((1, 3, 4, 4), w.shape, (2, 2), (1, 1, 1, 1))
    s = sparse_conv.taps(w, g)
    assert list(s.indptr) == [0, 0, 2] and list(s.values) == [7, 5]
    assert list(s.offsets) == [2 * 6 + 2, 2 * 36 + 1]


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", [(1, 100, 37), (3, 64, 48), ((2, 1), 33, 1000)])
def test_sparse_dense(shape, sparsity):
    m, k, n = shape
    lead = m if isinstance(m, tuple) else (m,)
    rng = np.random.default_rng(k + n + int(sparsity * 100))
    x = rng.standard_normal((*lead, k)).astype("float32")
    wt = pruned(rng, (k, n), sparsity)
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
