"""Hadamard matching on numpy matrices alone (passes/hadamard.py, no Relax graph).

Every accepted matrix is rebuilt from the match (block diagonal of ``diag(d)·c·H_n[:k, perm]·diag(e)``,
H from scipy) and must equal it exactly; every refused one is a near miss that no column order, scale
or padding of a Sylvester matrix gives. The matching and the chain evaluator import without TVM.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

from reforge.passes import chain_eval, hadamard
from reforge.passes.hadamard import describe, match_hadamard
from tests.helpers import seed_of


def rebuilt(m: hadamard.HadamardMatch) -> np.ndarray:
    """The matrix ``m`` describes, from scipy's Sylvester matrix."""
    block = scipy.linalg.hadamard(m.n)[:m.k, m.perm] * m.scale
    if m.in_scale is not None:
        block = m.in_scale[:, None] * block
    if m.out_scale is not None:
        block = block * m.out_scale
    return np.kron(np.eye(m.blocks), block)


@pytest.mark.parametrize("n", [2, 4, 16, 128])
@pytest.mark.parametrize("order", ["natural", "sequency", "permuted"])
def test_column_orders_and_scales_are_matched_exactly(n, order):
    rng = np.random.default_rng(seed_of(f"{order}{n}"))
    permuted = rng.permutation(n) if n > 4 else np.arange(n)[::-1]  # (neither natural nor sequency order)
    perm = {"natural": np.arange(n), "sequency": hadamard.sequency_perm(n), "permuted": permuted}[order]
    c = np.float32(rng.choice([-1, 1]) * rng.uniform(0.1, 3))
    w = (scipy.linalg.hadamard(n)[:, perm] * c).astype(np.float32)
    m = match_hadamard(w)
    assert (m.n, m.k, m.blocks, m.scale) == (n, n, 1, c)
    expected = "natural" if order == "sequency" and n == 2 else order  # H_2 is its own Walsh matrix
    assert m.order == expected and m.kind == f"{expected} Hadamard"
    np.testing.assert_array_equal(rebuilt(m), w)
    np.testing.assert_array_equal(hadamard.walsh(n), scipy.linalg.hadamard(n)[hadamard.sequency_perm(n)])


@pytest.mark.parametrize("n", [8, 64])
def test_scaled_rows_or_columns_are_matched_exactly(n):
    rng = np.random.default_rng(seed_of(f"scaled{n}"))
    h = scipy.linalg.hadamard(n)[:, rng.permutation(n)]
    d = rng.uniform(-2, 2, n).astype(np.float32)
    rows = (d[:, None] * h).astype(np.float32)
    m = match_hadamard(rows)
    assert m.in_scale is not None and m.out_scale is None and m.kind.startswith("row-scaled")
    np.testing.assert_array_equal(rebuilt(m), rows)
    cols = (h * d).astype(np.float32)
    m = match_hadamard(cols)
    assert m.out_scale is not None and m.in_scale is None and m.kind.startswith("column-scaled")
    np.testing.assert_array_equal(rebuilt(m).astype(np.float32), cols)


def test_padded_cropped_and_block_matrices_are_matched():
    w = scipy.linalg.hadamard(32)[:20, :27].astype(np.float32)  # 20 inputs zero-padded to 32, 27 outputs
    m = match_hadamard(w)
    assert (m.n, m.k, len(m.perm), m.order) == (32, 20, 27, "zero-padded")
    np.testing.assert_array_equal(rebuilt(m), w)
    w = np.kron(np.eye(3), scipy.linalg.hadamard(8)[:, ::-1] * 0.5).astype(np.float32)
    m = match_hadamard(w)
    assert (m.n, m.blocks, m.scale, m.kind) == (8, 3, 0.5, "permuted block Hadamard")
    np.testing.assert_array_equal(rebuilt(m), w)


def paley12() -> np.ndarray:
    """A Hadamard matrix of order 12 (Paley I, q = 11): orthogonal ±1, but no Sylvester matrix."""
    q = 11
    residues = {i * i % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)])
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.block([[np.zeros((1, 1)), np.ones((1, q))], [-np.ones((q, 1)), jac]])
    return np.eye(q + 1) + s


@pytest.mark.parametrize("case", ["random signs", "flipped entry", "rows permuted", "repeated column", "paley",
                                  "zero row", "infinite scale", "unequal blocks"])
def test_non_hadamard_matrices_are_refused(case):
    rng = np.random.default_rng(seed_of(case))
    w = scipy.linalg.hadamard(16).astype(np.float32)
    if case == "random signs":
        w = np.where(rng.random((16, 16)) < 0.5, -1, 1).astype(np.float32)
    elif case == "flipped entry":
        w[9, 6] *= -1
    elif case == "rows permuted":  # not a column order: x is read in another order
        w = w[rng.permutation(16)]
    elif case == "repeated column":  # x·H·S for a selection S: singular, not a transform
        w[:, 3] = w[:, 5]
    elif case == "paley":
        w = paley12()
        np.testing.assert_array_equal(w @ w.T, 12 * np.eye(12))  # a Hadamard matrix all the same
    elif case == "zero row":
        w[4] = 0
    elif case == "infinite scale":
        w[0] *= np.inf
    else:
        w = np.kron(np.eye(2), w).astype(np.float32)
        w[16:, 16:] *= -1
    assert match_hadamard(w) is None


def test_refusals_are_described():
    w = scipy.linalg.hadamard(32).astype(np.float32)
    w[5, 7] *= -1  # column 7 is no longer orthogonal to any other
    assert describe(w) == "a 32×32 ±1 matrix with 31 non-orthogonal column pairs"
    assert describe(paley12()) == "a 12×12 ±1 matrix with 0 non-orthogonal column pairs"
    w[3, 3] = 2
    assert describe(w) == "a 32×32 matrix with entries of 2 magnitudes"


def test_fwht_np_is_the_product_with_the_matrix():
    x = np.random.default_rng(0).standard_normal((3, 64, 5))
    np.testing.assert_allclose(hadamard.fwht_np(x, axis=1), np.einsum("akc,kj->ajc", x, scipy.linalg.hadamard(64)),
                               rtol=1e-12, atol=1e-12)
    assert [hadamard.next_pow2(k) for k in (1, 2, 3, 16, 17)] == [1, 2, 4, 16, 32]


def test_matching_and_chain_evaluation_import_without_tvm():
    """Both modules load in an interpreter where importing TVM fails."""
    code = ("import importlib.util, sys\n"
            "sys.modules['tvm'] = None\n"
            "for path in sys.argv[1:]:\n"
            "    spec = importlib.util.spec_from_file_location(path, path)\n"
            "    module = sys.modules[path] = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(module)\n"
            "print('tvm' in sys.modules and sys.modules['tvm'] is None)\n")
    out = subprocess.run([sys.executable, "-c", code, hadamard.__file__, chain_eval.__file__], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
