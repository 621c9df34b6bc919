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

Files: the matching is passes/hadamard.py, the numpy evaluation of a butterfly chain
passes/chain_eval.py (both numpy only), the epilogue passes/wht_epilogue.py; this one holds the
patterns and the rewrite.

Size: the dense product costs K·M multiply-adds per row, the transform N·log2 N adds plus the
output pass. Measured on this CPU (AMD Zen 3, AVX2, 1 thread, 64 rows; ``benchmarks/wht.py --sizes
2 4 8 16 32``) against reforge's own dense matmul: dense is faster up to N = 8 (1.3 vs 1.7-1.9 µs,
mostly call overhead), they tie at N = 16 (2.0 µs), and the transform wins from N = 32 on (1.5× at
32, 7.8× at 256, 61× at 1024); the pass rewrites products with N >= MIN_N = 16. A butterfly chain is
rewritten at every N: it does the same additions as the transform, in 3·log2 N separate kernels.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from reforge.frontend.relax_types import static_shape
from reforge.topi_ext.wht import emit_wht

from . import chain_eval as ce
from .graph import (cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape,
                    use_counts)
from .hadamard import HadamardMatch, describe, match_hadamard
from .report import PassReport
from .wht_epilogue import fuse_epilogues

MIN_N = 16  # smallest transform rewritten (see the module docstring)


@tvm.transform.module_pass(opt_level=0, name="reforge.fwht")
class FastWHT:
    """Rewrite products with constant (scaled, permuted, padded, block) Hadamard matrices to a FWHT."""

    def __init__(self, min_n: int = MIN_N):
        self.report = PassReport()
        self.min_n = min_n

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = cleanup(mutate_functions(mod, lambda m, f: _Rewrite(m, f, self.report, self.min_n)))
        return fuse_epilogues(mod, self.report)


# ----------------------------------------------------------------------------- rewrite


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
                self.report.note(f"left a product with {describe(matrix)} dense: not a Sylvester Hadamard "
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
            if stack is None or math.prod(w.shape[:-2]) > math.prod(shape[:-2]) or np.any(stack != stack[:1]):
                return None
            w = stack[0]
            if not left:
                if len(shape) < 1 or math.prod(out_shape) != math.prod(shape[:-1]) * w.shape[1]:
                    return None
                return x, w, len(shape) - 1, ""
            # W [M, K] @ x [..., K, Q]: the same product over axis -2 with matrix Wᵀ
            if len(shape) < 2 or math.prod(out_shape) != math.prod(shape[:-1]) // shape[-2] * w.shape[0] * shape[-1]:
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
        lead, q = math.prod(shape[:axis]) * match.blocks, math.prod(shape[axis + 1:])
        xr = self.builder_.emit(relax.op.reshape(x, (lead, match.k, q)))
        y = self.builder_.emit(emit_wht(self.builder_, xr, match.n, match.scale, match.perm,
                                        in_scale=match.in_scale, out_scale=match.out_scale))
        return relax.op.reshape(y, [int(d) for d in out_shape])


# ----------------------------------------------------------------------------- butterfly chains
#
# A FWHT written out as log2 N stages of slices (halves or interleaved pairs, strided_slice / take /
# split), a ± b and concat, with reshapes / transposes between and constant scales anywhere: the
# chain is linear in its one input x, so its matrix W (y = x·W along one axis of x) is read by
# evaluating the chain in numpy on basis vectors (chain_eval.py, on the chain read into its steps),
# and match_hadamard decides whether it is a WHT.

_RESHAPES = ("relax.reshape", "relax.expand_dims", "relax.squeeze")  # row-major: a reshape to the result's shape
# what may follow the last concat: layout, scale, and a gather / crop of the coefficients
_AFTER = (*_RESHAPES, "relax.permute_dims", "relax.negative", "relax.multiply", "relax.divide", "relax.take",
          "relax.strided_slice")


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
            report.note(f"left {where} alone: it is x·W over axis {axis} with W {describe(matrix)}, "
                        "not a Sylvester Hadamard matrix in any column order")
            continue
        found[value[end]] = _Butterfly(x, axis, match)
    return found


def _chain_matrix(order: list, reads: dict, x: relax.Var, out_shape) -> tuple[np.ndarray, int] | str:
    """``(W [K, M], axis)`` of the chain ``order`` (bindings, each reading ``reads[var]``) on ``x``
    (:func:`chain_eval.chain_matrix`); else why not."""
    shape = tensor_shape(x)
    if shape is None or out_shape is None or tensor_dtype(x) not in ("float32", "float64"):
        return "its shapes are not static float tensors"
    steps = [_step(b, tuple(reads[b.var])) for b in order]
    return ce.chain_matrix(steps, x, shape, out_shape)


_STEP_OPS = {**{name: ce.RESHAPE for name in _RESHAPES}, "relax.permute_dims": ce.PERMUTE,
             "relax.negative": ce.NEGATIVE, "relax.add": ce.ADD, "relax.subtract": ce.SUBTRACT,
             "relax.multiply": ce.MULTIPLY, "relax.divide": ce.DIVIDE, "relax.concat": ce.CONCAT,
             "relax.take": ce.TAKE, "relax.strided_slice": ce.SLICE, "relax.split": ce.SPLIT}


def _step(binding: relax.VarBinding, args: tuple) -> ce.Step:
    """A chain operation (:func:`_chain_args` accepted it) as a :class:`chain_eval.Step`: its
    parameters read from the Relax call, its result shape from the graph."""
    value, var = binding.value, binding.var
    if isinstance(value, relax.TupleGetItem):
        return ce.Step(ce.ITEM, var, args, (), index=int(value.index))
    op, attrs = _STEP_OPS[op_name(value)], value.attrs
    if op == ce.SPLIT:
        sections = attrs["indices_or_sections"]
        sections = int(sections) if isinstance(sections, tvm.tirx.IntImm) else tuple(int(i) for i in sections)
        return ce.Step(op, var, args, tuple(static_shape(f) for f in var.ty.fields), axis=int(attrs["axis"]),
                       sections=sections)
    shape, params = tensor_shape(var), {}
    if op == ce.PERMUTE:
        params["axes"] = None if attrs["axes"] is None else tuple(int(a) for a in attrs["axes"])
    elif op in (ce.MULTIPLY, ce.DIVIDE):
        params["const"] = next(const_value(a) for a in value.args if is_const(a))
    elif op == ce.CONCAT:
        params["axis"] = int(attrs["axis"])
    elif op == ce.TAKE:
        params["axis"], params["const"] = int(attrs["axis"]), const_value(value.args[1])
    elif op == ce.SLICE:
        axes, begin, end, *strides = ([int(v) for v in arg] for arg in value.args[1:])
        params["slices"] = tuple(zip(axes, begin, end, strides[0] if strides else [1] * len(axes)))
    return ce.Step(op, var, args, shape, **params)
