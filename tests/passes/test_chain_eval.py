"""The numpy chain evaluator (passes/chain_eval.py) on hand-written chains, no Relax graph.

Each chain is checked against numpy written directly (the operations on arrays, or the product with
scipy's Hadamard matrix): ``evaluate`` to 1e-12 relative (float64, additions only), and
``chain_matrix`` must return the exact matrix (entries ±c) and the transformed axis.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from reforge.passes import chain_eval as ce
from reforge.passes.chain_eval import Step


def butterfly(n: int, rows: int, split: bool = False, scale: float = 1.0) -> list[Step]:
    """log2 n stages on ``x [rows, n]``: view ``[rows, n / 2h, 2h]``, halves a and b (two slices,
    or a split and its items), a + b and a − b, concat, view back; then ``· scale``."""
    steps, x, h = [], "x", n // 2
    while h >= 1:
        v, blocks = f"v{h}", (rows, n // (2 * h), 2 * h)
        steps.append(Step(ce.RESHAPE, v, (x,), blocks))
        half = (rows, n // (2 * h), h)
        if split:
            steps += [Step(ce.SPLIT, f"s{h}", (v,), (half, half), axis=-1, sections=2),
                      Step(ce.ITEM, f"a{h}", (f"s{h}",), (), index=0), Step(ce.ITEM, f"b{h}", (f"s{h}",), (), index=1)]
        else:
            steps += [Step(ce.SLICE, f"a{h}", (v,), half, slices=((2, 0, h, 1),)),
                      Step(ce.SLICE, f"b{h}", (v,), half, slices=((2, h, 2 * h, 1),))]
        steps += [Step(ce.ADD, f"p{h}", (f"a{h}", f"b{h}"), half), Step(ce.SUBTRACT, f"m{h}", (f"a{h}", f"b{h}"), half),
                  Step(ce.CONCAT, f"c{h}", (f"p{h}", f"m{h}"), blocks, axis=2),
                  Step(ce.RESHAPE, f"y{h}", (f"c{h}",), (rows, n))]
        x, h = f"y{h}", h // 2
    return [*steps, Step(ce.MULTIPLY, "out", (x,), (rows, n), const=np.float32(scale))]


@pytest.mark.parametrize("n", [2, 16, 128])
@pytest.mark.parametrize("split", [False, True])
def test_butterfly_chain_is_the_hadamard_product(n, split):
    x = np.random.default_rng(n).standard_normal((3, 5, n))  # 3 probes of a [5, n] input
    steps = butterfly(n, 5, split, scale=0.5)
    h = scipy.linalg.hadamard(n)
    got = ce.evaluate(steps, {"x": x})
    np.testing.assert_allclose(got, 0.5 * x @ h, rtol=1e-12, atol=1e-12)
    w, axis = ce.chain_matrix(steps, "x", (5, n), (5, n))
    assert axis == 1
    np.testing.assert_array_equal(w, 0.5 * h)
    w1, _ = ce.chain_matrix(steps, "x", (5, n), (5, n), probe_elements=1)  # one probe per evaluation
    np.testing.assert_array_equal(w1, w)


def test_data_movement_steps_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6))
    idx = np.array([5, 0, 3])
    c = rng.uniform(1, 2, 6)
    steps = [Step(ce.PERMUTE, "t", ("x",), (6, 4)),
             Step(ce.TAKE, "g", ("t",), (3, 4), axis=0, const=idx),
             Step(ce.NEGATIVE, "n", ("g",), (3, 4)),
             Step(ce.PERMUTE, "u", ("n",), (4, 3), axes=(-1, 0)),
             Step(ce.DIVIDE, "d", ("u",), (4, 3), const=c[idx]),
             Step(ce.SLICE, "s", ("d",), (2, 3), slices=((0, 1, 4, 2),)),
             Step(ce.RESHAPE, "r", ("s",), (1, 6))]
    want = (-x.transpose(0, 2, 1)[:, idx, :]).transpose(0, 2, 1) / c[idx]
    np.testing.assert_allclose(ce.evaluate(steps, {"x": x}), want[:, 1:4:2, :].reshape(2, 1, 6), rtol=1e-12)
    # a product along the last axis of x: a gather of scaled, negated columns
    w, axis = ce.chain_matrix(steps[:5], "x", (4, 6), (4, 3))
    assert axis == 1
    np.testing.assert_allclose(w, -np.eye(6)[:, idx] / c[idx], rtol=1e-15)


@pytest.mark.parametrize("case,reason", [
    ("negative stride", "a slice with a negative stride"),
    ("broadcast up", "a constant of rank 3 broadcasts a rank-2 stage up"),
    ("uneven split", "a split whose pieces numpy cuts differently"),
    ("shape", "relax.permute_dims gives (6, 4) in numpy, (4, 6) in the graph"),
    ("transpose", "it is not one linear transform along an axis of its input"),
])
def test_chains_numpy_cannot_read_say_why(case, reason):
    shape = (4, 6)
    if case == "negative stride":
        steps = [Step(ce.SLICE, "y", ("x",), (4, 3), slices=((1, 5, 0, -2),))]
    elif case == "broadcast up":
        steps = [Step(ce.MULTIPLY, "y", ("x",), (1, 4, 6), const=np.ones((1, 4, 6)))]
    elif case == "uneven split":  # numpy cuts 6 at [3]; the graph says pieces of 2 and 4
        steps = [Step(ce.SPLIT, "s", ("x",), ((4, 2), (4, 4)), axis=1, sections=2),
                 Step(ce.ITEM, "y", ("s",), (), index=0)]
    elif case == "shape":
        steps = [Step(ce.PERMUTE, "y", ("x",), (4, 6))]
    else:  # a transpose: linear, but it moves entries across both axes, so no one axis carries it
        steps = [Step(ce.PERMUTE, "y", ("x",), (6, 4))]
    out_shape = (4, 2) if case == "uneven split" else steps[-1].shape
    assert ce.chain_matrix(steps, "x", shape, out_shape) == reason
