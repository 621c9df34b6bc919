"""The fast Walsh-Hadamard transform operator under its x86 schedule, against scipy / numpy.

Reference: ``x @ scipy.linalg.hadamard(N)`` in float64 (then scale, gather, bias, soft threshold).
Tolerance: max|out − ref| / max|ref| <= 1e-5 (float32 butterflies vs the float64 product)."""

import numpy as np
import pytest
import scipy.linalg
import tvm

from reforge import backends
from reforge.passes import hadamard
from reforge.topi_ext import wht
from reforge.topi_ext.schedules.wht import schedule_wht

TARGET = backends.get("x86")
RTOL = 1e-5


def rel_err(out, ref):
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("n", [2, 8, 64, 1024])
def test_numpy_helpers_match_scipy(n):
    h = scipy.linalg.hadamard(n)
    np.testing.assert_array_equal(hadamard.hadamard(n), h)
    x = np.random.default_rng(n).standard_normal((3, n))
    np.testing.assert_allclose(hadamard.fwht_np(x), x @ h, rtol=1e-12, atol=1e-10)
    w = hadamard.walsh(n)
    changes = (np.diff(w, axis=1) != 0).sum(axis=1)
    np.testing.assert_array_equal(changes, np.arange(n))  # sequency order: row k has k sign changes


def run_op(x, n, scale=1.0, perm=None, bias=None, threshold=None, scheduled=True):
    func, out = wht.wht_prim_func(x.shape, str(x.dtype), n, scale, perm, bias is not None, threshold is not None)
    if scheduled:
        func = schedule_wht(func, TARGET.machine)
        assert func.attrs["tirx.is_scheduled"]
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET.tvm_target)
    args = [tvm.runtime.tensor(x)]
    for extra, dtype in ((perm, "int32"), (bias, x.dtype), (threshold, x.dtype)):
        if extra is not None:
            args.append(tvm.runtime.tensor(np.asarray(extra, dtype)))
    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    lib["main"](*args, res)
    return res.numpy()


def reference(x, n, scale=1.0, perm=None, bias=None, threshold=None):
    """x [P, K, Q]: transform over axis 1 (zero-padded to n) with scipy's matrix."""
    h = scipy.linalg.hadamard(n)[: x.shape[1]]
    z = np.einsum("pkq,km->pmq", x.astype(np.float64), h) * scale
    if perm is not None:
        z = z[:, perm]
    if bias is not None:
        z = z + np.asarray(bias, np.float64)[None, :, None]
    if threshold is not None:
        t = np.asarray(threshold, np.float64)[None, :, None]
        z = np.sign(z) * np.maximum(np.abs(z) - t, 0)
    return z


@pytest.mark.parametrize("p,k,q", [(5, 8, 1), (64, 256, 1), (3, 1024, 1), (2, 4096, 1),
                                   (2, 16, 49), (1, 64, 24), (2, 256, 7)])
def test_natural_order(p, k, q):
    x = np.random.default_rng(k + q).standard_normal((p, k, q)).astype("float32")
    assert rel_err(run_op(x, k), reference(x, k)) <= RTOL


@pytest.mark.parametrize("q", [1, 16])
def test_sequency_scale_bias_threshold(q):
    n = 128
    rng = np.random.default_rng(q)
    x = rng.standard_normal((4, n, q)).astype("float32")
    perm = hadamard.sequency_perm(n)
    bias = rng.standard_normal(n).astype("float32")
    thr = rng.uniform(0, 2, n).astype("float32")
    s = 1 / np.sqrt(n)
    assert rel_err(run_op(x, n, s, perm), reference(x, n, s, perm)) <= RTOL
    assert rel_err(run_op(x, n, -0.5, perm, bias), reference(x, n, -0.5, perm, bias)) <= RTOL
    out, ref = run_op(x, n, s, perm, bias, thr), reference(x, n, s, perm, bias, thr)
    assert rel_err(out, ref) <= RTOL
    assert (out == 0).sum() > 0  # the threshold zeroes some coefficients


@pytest.mark.parametrize("k,m,q", [(100, 100, 1), (100, 70, 3), (5, 8, 1)])
def test_zero_padded_and_cropped(k, m, q):
    n = hadamard.next_pow2(k)
    x = np.random.default_rng(k).standard_normal((3, k, q)).astype("float32")
    perm = np.random.default_rng(m).permutation(n)[:m]
    assert rel_err(run_op(x, n, 0.25, perm), reference(x, n, 0.25, perm)) <= RTOL


@pytest.mark.parametrize("k,q", [(64, 1), (50, 5)])
def test_input_scale(k, q):
    n = hadamard.next_pow2(k)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, k, q)).astype("float32")
    d = rng.uniform(-2, 2, k).astype("float32")
    func, out = wht.wht_prim_func(x.shape, "float32", n, 0.5, in_scale=True)
    lib = tvm.compile(tvm.IRModule({"main": schedule_wht(func, TARGET.machine)}), target=TARGET.tvm_target)
    res = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], "float32"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(d), res)
    assert rel_err(res.numpy(), reference(x * d[None, :, None], n, 0.5)) <= RTOL


@pytest.mark.parametrize("q", [1, 6])
def test_output_scale_bias_smooth_threshold(q):
    """Scaled columns ``H·diag(e)``, a bias, then the smooth threshold ``tanh(z)·max(|z| − T, 0)``."""
    n = 64
    rng = np.random.default_rng(q)
    x = rng.standard_normal((3, n, q)).astype("float32")
    perm = hadamard.sequency_perm(n)
    e, bias, thr = (rng.uniform(-2, 2, n), rng.standard_normal(n), rng.uniform(0, 3, n))
    func, out = wht.wht_prim_func(x.shape, "float32", n, 0.125, perm, bias=True, threshold=True, out_scale=True,
                                  smooth=True)
    assert func.attrs["reforge.wht"]["threshold"] == "smooth"
    lib = tvm.compile(tvm.IRModule({"main": schedule_wht(func, TARGET.machine)}), target=TARGET.tvm_target)
    res = tvm.runtime.tensor(np.zeros([int(v) for v in out.shape], "float32"))
    lib["main"](*(tvm.runtime.tensor(np.asarray(a, d)) for a, d in
                  ((x, "float32"), (perm, "int32"), (e, "float32"), (bias, "float32"), (thr, "float32"))), res)
    z = reference(x, n, 0.125, perm) * e[None, :, None] + bias[None, :, None]
    ref = np.tanh(z) * np.maximum(np.abs(z) - thr[None, :, None], 0)
    assert (res.numpy() == 0).sum() > 0 and rel_err(res.numpy(), ref) <= RTOL


def test_unscheduled_func_is_correct_too():
    """The plain loop nest (what --verify and non-x86 targets start from) computes the same."""
    x = np.random.default_rng(0).standard_normal((2, 32, 3)).astype("float32")
    assert rel_err(run_op(x, 32, scheduled=False), reference(x, 32)) <= RTOL
