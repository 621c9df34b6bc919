"""A numpy interpreter of chains of data movement, ± and constant scales, and the matrix of a linear one.

A chain is a list of :class:`Step`; each defines one value (``out``) from values defined before it or
given as inputs (``args``), with the operator's parameters as plain numbers and arrays, so that
evaluating and testing it needs no TVM (passes/fwht.py reads a Relax butterfly into steps). Every
value carries a leading probe axis, one evaluation per entry, so a batch of basis vectors runs in one
pass; axes in a step count without it, negative ones from the end, as in Relax.

:func:`chain_matrix` reads ``W`` of a chain that computes ``y = x·W`` along one axis of ``x``: it
evaluates the chain on basis vectors (one per row of the ``[P, K, Q]`` view around the axis), then
checks on a random input that the chain is exactly that product.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

PROBE_ELEMENTS = 1 << 22  # probe vectors evaluated per numpy batch (elements of the chain's input)

# the operators (the 13 Relax operators of a butterfly: reshape, expand_dims and squeeze are RESHAPE)
RESHAPE, PERMUTE, NEGATIVE, ADD, SUBTRACT, MULTIPLY, DIVIDE = ("reshape", "permute_dims", "negative", "add",
                                                               "subtract", "multiply", "divide")
CONCAT, TAKE, SLICE, SPLIT, ITEM = "concat", "take", "strided_slice", "split", "item"


class Unsupported(Exception):
    """A step numpy cannot evaluate as the graph does (its message says why)."""


@dataclass(frozen=True, eq=False)
class Step:
    """``out = op(args)``; ``shape`` is the result's shape without the probe axis, a tuple (for SPLIT,
    one per piece). Parameters by operator: PERMUTE ``axes`` (None: reversed); CONCAT, TAKE, SPLIT
    ``axis``; MULTIPLY, DIVIDE ``const`` the factor (the divisor); TAKE ``const`` the indices; SLICE
    ``slices`` ``(axis, begin, end, stride)`` per axis; SPLIT ``sections`` (a count, or the indices
    it cuts at); ITEM ``index`` (a piece of a SPLIT)."""

    op: str
    out: Hashable
    args: tuple
    shape: tuple
    axis: int | None = None
    axes: tuple | None = None
    const: np.ndarray | None = None
    slices: tuple = ()
    sections: int | tuple = 1
    index: int = 0


def apply(step: Step, args: list):
    """``step`` on numpy operands with a leading probe axis (a list of pieces for SPLIT)."""
    op, data = step.op, args[0]
    if op == ITEM:
        return data[step.index]
    rank = data.ndim - 1

    def axis(a) -> int:
        return int(a) % rank + 1

    if op == RESHAPE:
        out = data.reshape(data.shape[0], *step.shape)
    elif op == PERMUTE:
        out = data.transpose(0, *(axis(a) for a in (reversed(range(rank)) if step.axes is None else step.axes)))
    elif op == NEGATIVE:
        out = -data
    elif op in (ADD, SUBTRACT):
        out = data + args[1] if op == ADD else data - args[1]
    elif op in (MULTIPLY, DIVIDE):
        c = np.asarray(step.const, np.float64)
        if c.ndim > rank:
            raise Unsupported(f"a constant of rank {c.ndim} broadcasts a rank-{rank} stage up")
        out = data * c if op == MULTIPLY else data / c
    elif op == CONCAT:
        out = np.concatenate(args, axis=axis(step.axis))
    elif op == TAKE:
        out = np.take(data, np.asarray(step.const).astype(np.int64), axis=axis(step.axis))
    elif op == SLICE:
        index = [slice(None)] * data.ndim
        for a, b, e, st in step.slices:
            if st < 1:
                raise Unsupported("a slice with a negative stride")
            index[axis(a)] = slice(b, e, st)
        out = data[tuple(index)]
    elif op == SPLIT:
        pieces = np.split(data, step.sections if isinstance(step.sections, int) else list(step.sections),
                          axis(step.axis))
        if [p.shape[1:] for p in pieces] != list(step.shape):
            raise Unsupported("a split whose pieces numpy cuts differently")
        return pieces
    else:
        raise Unsupported(f"no numpy evaluation of {op}")
    if out.shape[1:] != step.shape:
        raise Unsupported(f"relax.{op} gives {out.shape[1:]} in numpy, {step.shape} in the graph")
    return out


def evaluate(steps: list[Step], inputs: dict) -> np.ndarray:
    """The last step's value, ``inputs`` mapping each input's name to its probes."""
    env = dict(inputs)
    for s in steps:
        env[s.out] = apply(s, [env[a] for a in s.args])
    return env[steps[-1].out]


def chain_matrix(steps: list[Step], x: Hashable, shape: tuple, out_shape: tuple,
                 probe_elements: int = PROBE_ELEMENTS) -> tuple[np.ndarray, int] | str:
    """``(W [K, M], axis)`` with ``chain(x) = reshape(x3 @ W)``, ``x3 = x`` (of ``shape``) viewed
    ``[P, K, Q]`` around ``axis``; else why not. Every row (p, q) of the ``[P, K, Q]`` view gets a
    different basis vector, so one evaluation reads P·Q rows of W; a random input then checks that the
    chain is exactly that product (a chain that mixes rows fails it). Axes are tried last first."""
    def run(probes: np.ndarray) -> np.ndarray:
        return evaluate(steps, {x: probes})

    size, total = math.prod(shape), math.prod(out_shape)
    rng = np.random.default_rng(0)
    try:
        check = rng.standard_normal((1, *shape))
        got = run(check)
        for axis in reversed(range(len(shape))):
            p, k, q = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
            if k < 2 or total % (p * q):
                continue
            m, rows = total // (p * q), p * q
            w = np.zeros((k, m))
            for first in range(0, k, rows * max(1, probe_elements // size)):
                count = min(-(-(k - first) // rows), max(1, probe_elements // size))
                i, t = np.divmod(np.arange(count * rows), rows)
                j = first + i * rows + t
                keep = j < k
                i, t, j = i[keep], t[keep], j[keep]
                probes = np.zeros((count, p, k, q))
                probes[i, t // q, j, t % q] = 1
                y = run(probes.reshape(count, *shape)).reshape(count, p, m, q)
                w[j] = y[i, t // q, :, t % q]
            want = np.einsum("pkq,km->pmq", check.reshape(p, k, q), w).reshape(got.shape)
            if np.abs(got - want).max() <= 1e-9 * max(np.abs(want).max(), 1e-30):
                return w, axis
    except Unsupported as err:
        return str(err)
    return "it is not one linear transform along an axis of its input"
