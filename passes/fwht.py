"""fwht: products with a constant Hadamard matrix become a fast Walsh-Hadamard transform.

    x @ (c·H_N[:K, perm])      =  c · fwht(pad_N(x))[..., perm]      N·log2 N adds, not K·M MACs
    conv1x1(x, W), Wᵀ the same =  the same over the channel axis
    H @ X (H·X·Hᵀ, 2-D WHT)    =  the same over axis -2, then over -1 for the ·Hᵀ

Recognized (``relax.matmul`` with a constant second operand, which is what ONNX MatMul / Gemm and a
torch Linear or ``torch.matmul`` by a constant become after fold-constants, or a constant first
operand, the left factor of a 2-D transform; and ``relax.nn.conv2d`` 1×1, stride 1, unpadded,
groups 1, NCHW, whose weight read as a ``[C, O]`` matrix is one):

- ``c·H_N``: the Sylvester matrix, any scale c (±c entries; c < 0 too), natural order;
- ``diag(d)·H_N``: rows scaled by nonzero d_k (a per-input scale folded into the matrix, e.g. by
  fold-batchnorm from the WHT layer's ``v ⊙ z``): the input is scaled by d in the first stage;
- ``H_N·diag(e)``: columns scaled (fold-batchnorm's fold of ``(x @ H) ⊙ e``, the smooth threshold's
  w): coefficient m is scaled by e_m in the output pass;
- any column order of it, sequency (Walsh) order included: the output is gathered by ``perm``;
- zero-padded: ``K`` rows with N = next power of two >= K (the WHT layer's padding) and M <= N
  columns (the crop);
- block-diagonal with identical Hadamard blocks (block WHT): the transform runs per block;
- the butterfly spelling: log2 N stages of slices (halves or interleaved pairs), a + b, a − b and
  concat, with reshapes / transposes / constant scales between (a PyTorch ``fwht`` through either
  exporter). The chain's matrix is read by evaluating it on basis vectors in numpy, then checked on a
  random input and matched like a constant one; a chain that is not one is reported and left whole.

Entries must be exactly ±c (no tolerance): a matrix that is not provably one of these is left alone.
Then the elementwise operations on the transform's output that nothing else reads fold into its
output pass: a per-coefficient scale or bias, and the WHT layer's soft threshold
``sign(z)·relu(|z| − T)`` or smooth threshold ``tanh(z)·relu(|z| − T)`` (T a constant: a scalar, or
one value per transformed coefficient).

Size: the dense product costs K·M multiply-adds per row, the transform N·log2 N adds plus the
output pass. Measured on this CPU (AMD Zen 3, AVX2, 1 thread, 64 rows; ``benchmarks/wht.py --sizes
2 4 8 16 32``) against reforge's own dense matmul: dense is faster up to N = 8 (1.3 vs 1.7-1.9 µs,
mostly call overhead), they tie at N = 16 (2.0 µs), and the transform wins from N = 32 on (1.5× at
32, 7.8× at 256, 61× at 1024); the pass rewrites products with N >= MIN_N = 16. A butterfly chain is
rewritten at every N: it does the same additions as the transform, in 3·log2 N separate kernels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from reforge.frontend.relax_types import static_shape
from reforge.topi_ext.wht import OP, emit_wht, hadamard_entries, next_pow2, sequency_perm

from .graph import (callee_attr, channel_vector, cleanup, const_value, is_const, mutate_functions, op_name,
                    tensor_dtype, tensor_shape, use_counts)
from .report import PassReport

MIN_N = 16  # smallest transform rewritten (see the module docstring)


@tvm.transform.module_pass(opt_level=0, name="reforge.fwht")
class FastWHT:
    """Rewrite products with constant (scaled, permuted, padded, block) Hadamard matrices to a FWHT."""

    def __init__(self, min_n: int = MIN_N):
        self.report = PassReport()
        self.min_n = min_n

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = cleanup(mutate_functions(mod, lambda m, f: _Rewrite(m, f, self.report, self.min_n)))
        while self.report.total:  # one epilogue operation per transform and round
            fused: list[str] = []
            mod = cleanup(mutate_functions(mod, lambda m, f: _FuseEpilogue(m, use_counts(f), self.report, fused)))
            if not fused:
                break
        return _drop_unused_transforms(mod)


def _drop_unused_transforms(mod: tvm.IRModule) -> tvm.IRModule:
    """Remove the transform PrimFuncs a fused epilogue replaced (their global symbol keeps them from DCE)."""
    used = {gv.name_hint for _, f in mod.functions_items() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    keep = {gv: f for gv, f in mod.functions_items()
            if gv.name_hint in used or isinstance(f, relax.Function) or f.attrs is None or f.attrs.get("reforge.op") != OP}
    if len(keep) == len(mod.functions_items()):
        return mod
    return tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)


# ----------------------------------------------------------------------------- matrix recognition


@dataclass(frozen=True)
class HadamardMatch:
    """``w = blockdiag(c·H_n[:k, perm], ...)`` (``blocks`` equal blocks), rows scaled by ``in_scale``
    or columns by ``out_scale`` (then ``scale`` is 1)."""

    n: int
    k: int  # input length per block (k < n: zero-padded)
    scale: float
    perm: np.ndarray  # output columns per block, indices into 0..n-1
    blocks: int = 1
    in_scale: np.ndarray | None = None  # per-row factors d
    out_scale: np.ndarray | None = None  # per-column factors e

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
        scaled = ("row-scaled " if self.in_scale is not None else "") + \
            ("column-scaled " if self.out_scale is not None else "")
        return f"{scaled}{self.order} {'block ' if self.blocks > 1 else ''}Hadamard"


def _match_single(w: np.ndarray) -> HadamardMatch | None:
    k, m = w.shape
    n = next_pow2(k)
    if k < 2 or m > n:
        return None
    d = w[:, 0]  # row k is d_k·H[k, perm] / H[k, perm[0]], a column permutation of H again
    if not np.all(np.isfinite(d)) or np.any(d == 0) or not np.all(np.abs(w) == np.abs(d)[:, None]):
        return None
    negative = w != d[:, None]  # entries -d_k
    cols = np.zeros(m, np.int64)
    for b in range(n.bit_length() - 1):  # column j of H has -1 in row 2^b iff bit b of j is set
        cols |= negative[1 << b].astype(np.int64) << b
    if len(np.unique(cols)) != m or not np.array_equal(negative, hadamard_entries(np.arange(k), cols) < 0):
        return None  # (repeated columns: a singular matrix, x·H·S for a selection S, is not a column order)
    # d's signs may themselves be a Hadamard column j (any column order of c·H, read from column 0):
    # move them into the permutation, d·H[:, j] and cols xor j, so that a plain c·H[:, perm] needs no d
    flip = np.sign(d) != np.sign(d[0])
    j = sum(int(flip[1 << b]) << b for b in range(n.bit_length() - 1))
    if np.array_equal(flip, hadamard_entries(np.arange(k), [j])[:, 0] < 0):
        d, cols = np.where(flip, -d, d), cols ^ j
    if np.all(d == d[0]):
        return HadamardMatch(n, k, float(d[0]), cols)
    return HadamardMatch(n, k, 1.0, cols, in_scale=d.astype(np.float64))


def _match_columns(w: np.ndarray) -> HadamardMatch | None:
    """``c·H[:k, perm]·diag(e)``: columns scaled (what fold-batchnorm leaves of ``(x @ H) ⊙ e``, e.g.
    the smooth threshold's w). Row 0 of H is all ones, so row 0 of w is c·e and ``w / w[0]`` must be
    a Hadamard matrix (exactly ±1: every row has the magnitudes of row 0)."""
    e = w[0].astype(np.float64)
    if not np.all(np.isfinite(e)) or np.any(e == 0) or not np.all(np.abs(w) == np.abs(w[0])):
        return None
    signs = _match_single(w / e)
    return None if signs is None else replace(signs, scale=1.0, out_scale=e * signs.scale)


def match_hadamard(w: np.ndarray) -> HadamardMatch | None:
    """How ``x @ w`` is a (block) Walsh-Hadamard transform, or None."""
    if w.ndim != 2:
        return None
    found = _match_single(w)
    if found is None and w.shape[1] > 1:
        found = _match_columns(w)
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
    def __init__(self, mod, func: relax.Function, report: PassReport, min_n: int):
        super().__init__(mod)
        self.report, self.min_n = report, min_n
        self.chains = _butterflies(func, report)

    def visit_call_(self, call):
        chain = self.chains.get(call)
        call = self.visit_expr_post_order(call)
        if chain is not None:
            self.report.count(f"butterfly {chain.match.kind}")
            return self._emit(self.visit_expr(chain.x), chain.match, chain.axis, tensor_shape(call))
        found = self._linear(call)
        if found is None:
            return call
        x, matrix, axis, spelling = found
        match = match_hadamard(matrix)
        if match is None:
            if matrix.size > 1 and matrix[0, 0] != 0 and np.all(np.abs(matrix) == np.abs(matrix[0, 0])):
                self.report.note(f"left a product with {_describe(matrix)} dense: not a Sylvester Hadamard "
                                 "matrix in any column order")
            return call
        if match.n < self.min_n:
            self.report.note(f"left a {match.n}-point Hadamard product dense: below the crossover N = {self.min_n}")
            return call
        self.report.count(f"{spelling}{match.kind}")
        return self._emit(x, match, axis, tensor_shape(call))

    def _linear(self, call):
        """``(x, matrix [K, M], axis, spelling)``: ``x @ W`` over the last axis, ``W @ x`` over the
        second-to-last (``matrix`` = Wᵀ; the left factor of a 2-D transform ``H·X·Hᵀ``), or a plain 1×1
        conv with a constant weight over the channels."""
        name = op_name(call)
        if name not in ("relax.matmul", "relax.nn.conv2d") or len(call.args) != 2:
            return None
        x, w = call.args
        left = name == "relax.matmul" and is_const(x) and not is_const(w)
        if left:
            x, w = w, x
        if is_const(x) or not is_const(w):
            return None
        shape, dtype, out_shape = tensor_shape(x), tensor_dtype(x), tensor_shape(call)
        if shape is None or dtype not in ("float32", "float64") or tensor_dtype(call) != dtype or out_shape is None:
            return None
        w = const_value(w)
        if name == "relax.matmul":
            # a batched constant whose matrices are all one (torch.export's expand + bmm of H @ x)
            stack = w.reshape(-1, *w.shape[-2:]) if w.ndim >= 2 else None
            if stack is None or _prod(w.shape[:-2]) > _prod(shape[:-2]) or np.any(stack != stack[:1]):
                return None
            w = stack[0]
            if not left:
                if len(shape) < 1 or _prod(out_shape) != _prod(shape[:-1]) * w.shape[1]:
                    return None
                return x, w, len(shape) - 1, ""
            # W [M, K] @ x [..., K, Q]: the same product over axis -2 with matrix Wᵀ
            if len(shape) < 2 or _prod(out_shape) != _prod(shape[:-1]) // shape[-2] * w.shape[0] * shape[-1]:
                return None
            return x, w.T, len(shape) - 2, "left-product "
        a = call.attrs
        plain = (a["data_layout"] == "NCHW" and a["kernel_layout"] == "OIHW" and (a["out_layout"] or "NCHW") == "NCHW"
                 and int(a["groups"]) == 1 and all(int(s) == 1 for s in a["strides"])
                 and all(int(d) == 1 for d in a["dilation"]) and all(int(p) == 0 for p in a["padding"]))
        if not plain or w.shape[2:] != (1, 1):
            return None
        return x, w[:, :, 0, 0].T, 1, ""

    def _emit(self, x, match: HadamardMatch, axis: int, out_shape):
        shape = tensor_shape(x)
        lead, q = _prod(shape[:axis]) * match.blocks, _prod(shape[axis + 1:])
        xr = self.builder_.emit(relax.op.reshape(x, (lead, match.k, q)))
        y = self.builder_.emit(emit_wht(self.builder_, xr, match.n, match.scale, match.perm,
                                        in_scale=match.in_scale, out_scale=match.out_scale))
        return relax.op.reshape(y, [int(d) for d in out_shape])


# ----------------------------------------------------------------------------- butterfly chains
#
# A FWHT written out as log2 N stages of slices (halves or interleaved pairs, strided_slice / take /
# split), a ± b and concat, with reshapes / transposes between and constant scales anywhere: the
# chain is linear in its one input x, so its matrix W (y = x·W along one axis of x) is read by
# evaluating the chain in numpy on basis vectors, and match_hadamard decides whether it is a WHT.

_RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze")  # row-major: a reshape to the result's shape
# what may follow the last concat: layout, scale, and a gather / crop of the coefficients
_AFTER = (*_RESHAPES, "relax.permute_dims", "relax.negative", "relax.multiply", "relax.divide", "relax.take",
          "relax.strided_slice")
PROBE_ELEMENTS = 1 << 22  # probe vectors evaluated per numpy batch (elements of the chain's input)


@dataclass(frozen=True)
class _Butterfly:
    x: relax.Var  # the chain's input
    axis: int  # the axis of x it transforms
    match: HadamardMatch


def _chain_args(value) -> list | None:
    """The variables a binding reads if it is a chain operation (data movement, a ± b, a constant
    scale), else None."""
    if isinstance(value, relax.TupleGetItem):
        args = [value.tuple_value]
    elif op_name(value) in ("relax.add", "relax.subtract"):
        args = list(value.args)
    elif op_name(value) in ("relax.multiply", "relax.divide"):
        consts = [is_const(a) for a in value.args]
        if consts not in ([False, True], [True, False]) or (op_name(value) == "relax.divide" and not consts[1]):
            return None
        args = [a for a in value.args if not is_const(a)]
    elif op_name(value) == "relax.concat":
        args = list(value.args[0].fields) if isinstance(value.args[0], relax.Tuple) else [None]
    elif op_name(value) == "relax.take":
        args = [value.args[0]] if is_const(value.args[1]) else [None]
    elif op_name(value) in (*_RESHAPES, "relax.permute_dims", "relax.negative", "relax.strided_slice", "relax.split"):
        args = [value.args[0]]
    else:
        return None
    return args if all(isinstance(a, relax.Var) for a in args) else None


def _butterflies(func: relax.Function, report: PassReport) -> dict:
    """``{end call: _Butterfly}`` for every butterfly chain in ``func`` that is a Hadamard transform.

    Candidates end at a concat (extended through single-use reshapes / transposes / scales / gathers
    after it),
    latest first; the chain is everything before it reached through chain operations. It must read one
    input, contain both a + b and a − b, and no stage may be read outside it; a candidate that passes
    these checks but is not a WHT is reported and left whole (no partial rewrite of its stages)."""
    bindings = [b for block in func.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    reads = {b.var: _chain_args(b.value) for b in bindings}
    value = {b.var: b.value for b in bindings}
    uses = use_counts(func)
    readers: dict = {}
    for b in bindings:
        for v in reads[b.var] or ():
            readers.setdefault(v, []).append(b.var)
    found, taken = {}, set()
    for b in reversed(bindings):
        if op_name(b.value) != "relax.concat" or b.var in taken or reads[b.var] is None:
            continue
        end = b.var
        while uses[end] == 1 and len(readers.get(end, ())) == 1 and op_name(value[readers[end][0]]) in _AFTER:
            end = readers[end][0]
        chain, leaves, stack = set(), set(), [end]
        while stack:
            v = stack.pop()
            if v in chain or v in leaves:
                continue
            if reads.get(v) is None:
                leaves.add(v)
            else:
                chain.add(v)
                stack.extend(reads[v])
        ops = {op_name(value[v]) for v in chain}
        if len(leaves) != 1 or not {"relax.add", "relax.subtract"} <= ops:
            continue
        (x,) = leaves
        order = [c for c in bindings if c.var in chain]
        stages = sum(op_name(c.value) == "relax.concat" for c in order)
        where = f"a {stages}-stage butterfly chain (slices, a ± b, concat) on {tensor_shape(x)}"
        taken |= chain
        inner = Counter(a for c in order for a in reads[c.var])
        if any(uses[c.var] != inner[c.var] for c in order if not c.var.same_as(end)):
            report.note(f"left {where} alone: a stage is also read outside the chain")
            continue
        derived = _chain_matrix(order, reads, x, tensor_shape(end))
        if isinstance(derived, str):
            report.note(f"left {where} alone: {derived}")
            continue
        matrix, axis = derived
        match = match_hadamard(matrix)
        if match is None:
            report.note(f"left {where} alone: it is x·W over axis {axis} with W {_describe(matrix)}, "
                        "not a Sylvester Hadamard matrix in any column order")
            continue
        found[value[end]] = _Butterfly(x, axis, match)
    return found


def _chain_matrix(order: list, reads: dict, x: relax.Var, out_shape) -> tuple[np.ndarray, int] | str:
    """``(W [K, M], axis)`` with ``chain(x) = reshape(x3 @ W)``, ``x3 = x`` viewed ``[P, K, Q]`` around
    ``axis``; else why not. Every row (p, q) of the ``[P, K, Q]`` view gets a different basis vector,
    so one evaluation reads P·Q rows of W; a random input then checks that the chain is exactly that
    product (a chain that mixes rows fails it)."""
    shape = tensor_shape(x)
    if shape is None or out_shape is None or tensor_dtype(x) not in ("float32", "float64"):
        return "its shapes are not static float tensors"

    def run(probes: np.ndarray) -> np.ndarray:
        env = {x: probes}
        for b in order:
            env[b.var] = _evaluate(b, [env[a] for a in reads[b.var]])
        return env[order[-1].var]

    size, total = _prod(shape), _prod(out_shape)
    rng = np.random.default_rng(0)
    try:
        check = rng.standard_normal((1, *shape))
        got = run(check)
        for axis in reversed(range(len(shape))):
            p, k, q = _prod(shape[:axis]), shape[axis], _prod(shape[axis + 1:])
            if k < 2 or total % (p * q):
                continue
            m, rows = total // (p * q), p * q
            w = np.zeros((k, m))
            for first in range(0, k, rows * max(1, PROBE_ELEMENTS // size)):
                count = min(-(-(k - first) // rows), max(1, PROBE_ELEMENTS // size))
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
    except _Unsupported as err:
        return str(err)
    return "it is not one linear transform along an axis of its input"


class _Unsupported(Exception):
    pass


def _evaluate(binding: relax.VarBinding, args: list):
    """``binding``'s value on numpy operands that carry a leading batch axis (one probe per entry)."""
    value, shape = binding.value, tensor_shape(binding.var)
    if isinstance(value, relax.TupleGetItem):
        return args[0][value.index]
    name, attrs, data = op_name(value), value.attrs, args[0]
    rank = data.ndim - 1

    def axis(a) -> int:
        return int(a) % rank + 1

    if name in _RESHAPES:
        out = data.reshape(data.shape[0], *shape)
    elif name == "relax.permute_dims":
        axes = attrs["axes"]
        out = data.transpose(0, *(axis(a) for a in (reversed(range(rank)) if axes is None else axes)))
    elif name == "relax.negative":
        out = -data
    elif name in ("relax.add", "relax.subtract"):
        out = data + args[1] if name == "relax.add" else data - args[1]
    elif name in ("relax.multiply", "relax.divide"):
        c = next(const_value(a) for a in value.args if is_const(a)).astype(np.float64)
        if c.ndim > rank:
            raise _Unsupported(f"a constant of rank {c.ndim} broadcasts a rank-{rank} stage up")
        out = data * c if name == "relax.multiply" else data / c
    elif name == "relax.concat":
        out = np.concatenate(args, axis=axis(attrs["axis"]))
    elif name == "relax.take":
        out = np.take(data, const_value(value.args[1]).astype(np.int64), axis=axis(attrs["axis"]))
    elif name == "relax.strided_slice":
        index = [slice(None)] * data.ndim
        axes, begin, end, *strides = ([int(v) for v in arg] for arg in value.args[1:])
        for a, b, e, st in zip(axes, begin, end, strides[0] if strides else [1] * len(axes)):
            if st < 1:
                raise _Unsupported("a slice with a negative stride")
            index[axis(a)] = slice(b, e, st)
        out = data[tuple(index)]
    else:  # relax.split
        sections = attrs["indices_or_sections"]
        pieces = np.split(data, int(sections) if isinstance(sections, tvm.tirx.IntImm) else [int(i) for i in sections],
                          axis(attrs["axis"]))
        if [p.shape[1:] for p in pieces] != [static_shape(f) for f in binding.var.ty.fields]:
            raise _Unsupported("a split whose pieces numpy cuts differently")
        return pieces
    if out.shape[1:] != shape:
        raise _Unsupported(f"{name} gives {out.shape[1:]} in numpy, {shape} in the graph")
    return out


def _describe(w: np.ndarray) -> str:
    """What ``w`` is, for a refusal: its entries' magnitudes, or for ±c entries its non-orthogonal
    column pairs (a Hadamard matrix has none)."""
    k, m = w.shape
    mags = np.unique(np.abs(w))
    if len(mags) > 1:
        return f"a {k}×{m} matrix with entries of {len(mags)} magnitudes"
    signs = np.sign(w).astype(np.int64)
    gram = signs.T @ signs
    bad = int(np.count_nonzero(gram - np.diag(np.diag(gram))) // 2)
    return f"a {k}×{m} ±{float(mags[0]):.4g} matrix with {bad} non-orthogonal column pairs"


# ----------------------------------------------------------------------------- epilogue
#
# Elementwise operations on a transform's output fold into its output pass, one per round: a per-
# coefficient scale (``(x @ H) ⊙ e``) or bias, then the WHT layer's threshold on ``z``:
#   soft    sign(z) · relu(|z| − T)                      (Pan et al., TNNLS 2024)
#   smooth  tanh(z) · relu(|z| − T),  z = w ⊙ (x @ H)    (Pan et al., CVPR-W 2021 / ACM TECS 2022,
#           written there as ``tanh(w⊙x)·ReLU(|w⊙x| − T)``; w is the per-coefficient scale above)


@dataclass(frozen=True)
class _Wht:
    """An emitted transform call: its input and the parameters :func:`emit_wht` takes."""

    x: relax.Expr
    n: int
    scale: float
    shape: tuple[int, int, int]  # [P, M, Q]
    perm: np.ndarray | None = None
    in_scale: np.ndarray | None = None
    out_scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None
    smooth: bool = False

    @classmethod
    def read(cls, mod: tvm.IRModule, expr) -> _Wht | None:
        info = callee_attr(mod, expr, "reforge.wht")
        if info is None:
            return None
        x, *rest = expr.args[1].fields
        params = {}
        for name in ("in_scale", "perm", "out_scale", "bias", "threshold"):
            if name == "threshold" and str(info["threshold"]) or name != "threshold" and bool(info[name]):
                params[name] = const_value(rest.pop(0))
        return cls(x, int(info["n"]), float(info["scale"]), tensor_shape(expr), smooth=str(info["threshold"]) == "smooth",
                   **params)

    def emit(self, bb) -> relax.Expr:
        return bb.emit(emit_wht(bb, self.x, self.n, self.scale, self.perm, self.bias, self.threshold, self.in_scale,
                                self.out_scale, self.smooth))


def _per_coefficient(c: np.ndarray, out_shape, wht: _Wht) -> np.ndarray | None:
    """Constant ``c`` (broadcast against ``out_shape``, a reshape of the ``[P, M, Q]`` transform) as one
    value per coefficient m, if it varies along the transformed axis only."""
    _, m, q = wht.shape
    if c.size == 1:
        return np.full(m, float(c.reshape(-1)[0]))
    axes = [a for a in range(len(out_shape)) if out_shape[a] == m and _prod(out_shape[a + 1:]) == q]
    return next((v.astype(np.float64) for v in (channel_vector(c, out_shape, a) for a in axes) if v is not None), None)


@relax.expr_functor.mutator
class _FuseEpilogue(relax.PyExprMutator):
    """``z ⊙ e``, ``z ± b``, ``z / e``, ``sign(z)·relu(|z| − T)``, ``tanh(z)·relu(|z| − T)`` with
    ``z = reshape(wht(x))`` (read by nothing else) → ``reshape(wht(x; …))``."""

    def __init__(self, mod, uses, report: PassReport, fused: list):
        super().__init__(mod)
        self.mod, self.uses, self.report, self.fused = mod, uses, report, fused

    def _bound(self, expr, name: str, uses: int = 1):
        if isinstance(expr, relax.Var) and self.uses.get(expr, 0) == uses:
            value = self.lookup_binding(expr)
            if op_name(value) == name:
                return value
        return None

    def _source(self, z, uses: int) -> _Wht | None:
        """The transform ``z`` is (reshapes of), if the pattern's ``uses`` reads are all there are."""
        while (reshape := self._bound(z, "relax.reshape", uses)) is not None:
            z, uses = reshape.args[0], 1
        if not isinstance(z, relax.Var) or self.uses.get(z, 0) != uses:
            return None
        found = _Wht.read(self.mod, self.lookup_binding(z))
        return found if found is not None and found.threshold is None else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        if name not in ("relax.multiply", "relax.divide", "relax.add", "relax.subtract"):
            return call
        new = self._threshold(call) if name == "relax.multiply" else None
        if new is None:
            new = self._affine(call, name)
        if new is None:
            return call
        self.fused.append(name)
        return relax.op.reshape(new, [int(d) for d in tensor_shape(call)])

    def _affine(self, call, name: str):
        z, c = call.args
        if name in ("relax.multiply", "relax.add") and is_const(z):
            z, c = c, z
        wht = self._source(z, 1) if is_const(c) and tensor_shape(z) == tensor_shape(call) else None
        vec = _per_coefficient(const_value(c), tensor_shape(z), wht) if wht is not None else None
        if vec is None or (name == "relax.divide" and np.any(vec == 0)):
            return None
        if name in ("relax.multiply", "relax.divide"):
            f = vec if name == "relax.multiply" else 1 / vec
            out = f if wht.out_scale is None else wht.out_scale * f
            return replace(wht, out_scale=out, bias=None if wht.bias is None else wht.bias * f).emit(self.builder_)
        b = vec if name == "relax.add" else -vec
        return replace(wht, bias=b if wht.bias is None else wht.bias + b).emit(self.builder_)

    def _threshold(self, call):
        for gate_var, mag_var in (call.args, call.args[::-1]):
            relu = self._bound(mag_var, "relax.nn.relu")
            sub = self._bound(relu.args[0], "relax.subtract") if relu is not None else None
            absz = self._bound(sub.args[0], "relax.abs") if sub is not None else None
            gate = next((g for g in (self._bound(gate_var, op) for op in ("relax.sign", "relax.tanh")) if g is not None),
                        None)
            if gate is None or absz is None or not gate.args[0].same_as(absz.args[0]) or not is_const(sub.args[1]):
                continue
            z = gate.args[0]
            wht = self._source(z, 2)
            thr = _per_coefficient(const_value(sub.args[1]), tensor_shape(z), wht) if wht is not None else None
            if thr is None or tensor_shape(z) != tensor_shape(call):
                continue
            smooth = op_name(gate) == "relax.tanh"
            self.report.count(f"{'smooth' if smooth else 'soft'} threshold fused")
            return replace(wht, threshold=thr, smooth=smooth).emit(self.builder_)
        return None
