"""merge-branches: structural re-parameterization (RepVGG, ACNet, DBB, MobileOne, RepGhost).

Every linear operator of an NCHW tensor is read as a 2-D convolution ``conv(x, W)``: a conv2d
with a constant kernel, ``x·s[c]`` (a lone BatchNorm after fold-batchnorm; the identity is
s = 1) as the depthwise 1×1 kernel ``s``, and k×k average pooling (zero padding counted) as the
depthwise k×k kernel ``1/k²``. Two rules, applied to a fixpoint:

    parallel    Σ_b conv(x, W_b) + b_b  =  conv(x, Σ_b centre(W_b)) + Σ_b b_b
                (same input and stride; each kernel embedded at the centre of the largest one,
                which needs pad_b + d·(K − k_b)/2 equal for every branch; g = gcd of the groups)
    sequential  conv(conv(x, W1) + b1, W2)  =  conv(x, W2 ⊛ W1) + Σ W2·b1
                (exact when the second conv does not pad; when it zero-pads, only for an
                unpadded stride-1 1×1 first conv with b1 = 0, since its border sees 0, not b1)

A block the rules cannot prove exact, or whose merged kernel would cost more multiply-adds than
its branches, stays as it is and the report says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .analysis import graph_stats
from .activations import ACTIVATION_OPS
from .graph import (Conv, channel_const, channel_vector, cleanup, const_value, conv_cost, emit_conv, identity_conv,
                    is_const, mutate_functions, op_name, read_linear, tensor_dtype, tensor_shape, use_counts)
from .report import BlockReport

_MAX_ROUNDS = 16
_LINEAR = ("relax.nn.conv2d", "relax.nn.avg_pool2d", "relax.multiply")
PARALLEL, SEQUENTIAL = "parallel branches merged", "sequential convs merged"


@tvm.transform.module_pass(opt_level=0, name="reforge.merge-branches")
class MergeBranches:
    """Merge parallel linear branches on one input and chains of linear convs into one conv."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        for _ in range(_MAX_ROUNDS):
            found = _Round()
            mod = cleanup(mutate_functions(mod, lambda m, f: _Merge(m, f, found)))
            for kind, n in found.merged.items():
                self.report.count(kind, n)
            if not found.merged:  # the last round sees the final graph: its refusals stand
                for reason, n in found.refused.items():
                    self.report.refuse(reason, n)
                break
        self.report.after = graph_stats(mod)
        return mod


# ----------------------------------------------------------------------------- pattern


# ----------------------------------------------------------------------------- rewrite


@dataclass
class _Round:
    """What one sweep over the module merged and refused."""

    merged: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)


@relax.expr_functor.mutator
class _Merge(relax.PyExprMutator):
    def __init__(self, mod, func: relax.Function, found: _Round):
        super().__init__(mod)
        self.uses, self.found = use_counts(func), found
        self.inner_adds = _inner_adds(func, self.uses)

    def visit_call_(self, call):
        inner = call in self.inner_adds  # only the root of an add tree is rewritten
        call = self.visit_expr_post_order(call)
        new = None
        if op_name(call) == "relax.add" and not inner:
            new = self._merge_sum(call)
        elif op_name(call) == "relax.nn.conv2d":
            new = self._merge_chain(call)
        return call if new is None else new

    def _producer(self, expr, ops: tuple[str, ...]) -> relax.Call | None:
        """The call bound to ``expr`` if it is a once-used variable bound to one of ``ops``."""
        if isinstance(expr, relax.Var) and self.uses.get(expr, 1) == 1:
            value = self.lookup_binding(expr)
            if op_name(value) in ops:
                return value
        return None

    # -- sequential

    def _read(self, expr: relax.Expr) -> Conv | None:
        """A once-used ``linear(x) [+ b]`` bound to ``expr``, read with b as its bias."""
        add = self._producer(expr, ("relax.add",))
        bias = None
        if add is not None:
            bias = channel_vector(const_value(add.args[1]), tensor_shape(add), 1) if is_const(add.args[1]) else None
            if bias is None:
                return None
            expr = add.args[0]
        linear = read_linear(self._producer(expr, _LINEAR))
        return linear if linear is None or bias is None else replace(linear, bias=linear.bias + bias)

    def _chain(self, last: Conv) -> tuple[Conv, int]:
        """``last`` composed with the linear operators that feed it, as far as that is exact,
        and how many pairs were composed."""
        first = self._read(last.data)
        if first is None:
            return last, 0
        first, pairs = self._chain(first)
        composed = _compose(first, last)
        return (last, 0) if isinstance(composed, str) else (composed, pairs + 1)

    def _merge_chain(self, call: relax.Call) -> relax.Expr | None:
        """A conv fed by a conv (through linear operators only), composed into one."""
        second, shape = read_linear(call), tensor_shape(call)
        first = self._read(second.data) if second is not None else None
        if first is None or not first.is_conv:
            act = self._producer(second.data, ACTIVATION_OPS) if second is not None else None
            if act is not None and getattr(self._read(act.args[0]), "is_conv", False):
                self.found.refused[f"kept conv -> {op_name(act).removeprefix('relax.')} -> conv: "
                                   "a nonlinearity sits between them"] += 1
            return None
        first, pairs = self._chain(first)
        composed = _compose(first, second)
        if isinstance(composed, Conv) and conv_cost(composed.weight.shape, shape) > composed.cost:
            composed = "kept a conv pair: the composed kernel costs more multiply-adds than the pair"
        if isinstance(composed, str):
            self.found.refused[composed] += 1
            return None
        self.found.merged[SEQUENTIAL] += pairs + 1
        return emit_conv(composed)

    # -- parallel

    def _flatten(self, call: relax.Call, leaves: list, consts: list) -> None:
        """The summands of an add tree, through once-used adds: tensors and constants."""
        for arg in call.args:
            inner = self._producer(arg, ("relax.add",))
            if inner is not None:
                self._flatten(inner, leaves, consts)
            else:
                (consts if is_const(arg) else leaves).append(arg)

    def _branch(self, leaf: relax.Expr, shape: tuple[int, ...]) -> tuple[Conv, int] | None:
        """A summand read as a linear operator of some tensor, composed through the linear
        operators feeding it (and how many pairs that composed)."""
        if tensor_shape(leaf) != shape:
            return None
        op = self._producer(leaf, _LINEAR)
        linear = read_linear(op)
        if linear is None and op_name(op) == "relax.nn.avg_pool2d":
            self.found.refused["kept an average pooling that leaves its padding out of the count (or rounds its "
                               "output size up): it is no convolution at the border"] += 1
        return (identity_conv(leaf, shape, tensor_dtype(leaf)), 0) if linear is None else self._chain(linear)

    def _merge_sum(self, call: relax.Call) -> relax.Expr | None:
        shape = tensor_shape(call)
        if shape is None or len(shape) != 4 or not tensor_dtype(call).startswith("float"):
            return None
        leaves, consts = [], []
        self._flatten(call, leaves, consts)
        vectors = [channel_vector(const_value(c), shape, 1) for c in consts]
        biases = [v.astype(np.float64) for v in vectors if v is not None]
        bias = sum(biases, np.zeros(shape[1]))
        rest = [c for c, v in zip(consts, vectors) if v is None]
        groups: dict[relax.Expr, list[tuple[relax.Expr, Conv, int]]] = {}
        for leaf in leaves:
            read = self._branch(leaf, shape)
            if read is None:
                rest.append(leaf)
            else:
                groups.setdefault(read[0].data, []).append((leaf, *read))
        terms, merged_any = [], False
        for members in groups.values():
            convs = [c for _, c, _ in members]
            merged = _merge_parallel(convs, shape) if len(convs) > 1 and any(c.is_conv for c in convs) else None
            if isinstance(merged, Conv):
                merged_any = True
                self.found.merged[PARALLEL] += 1
                chains = sum(pairs for *_, pairs in members)
                if chains:
                    self.found.merged[SEQUENTIAL] += chains
                terms.insert(0, emit_conv(replace(merged, bias=np.zeros(shape[1]))))
                bias = bias + merged.bias
            else:
                if isinstance(merged, str):
                    self.found.refused[merged] += 1
                terms.extend(leaf for leaf, _, _ in members)
        if not merged_any:
            return None  # nothing merged: the sum stays as written
        out = terms[0]
        if biases or np.any(bias):
            out = relax.op.add(out, channel_const(bias, 4, 1, tensor_dtype(call)))
        for term in terms[1:] + rest:
            out = relax.op.add(out, term)
        return out


def _inner_adds(func: relax.Function, uses: Counter) -> set:
    """Add calls whose result is used once, by another add: inside an add tree, not its root."""
    bound: dict[relax.Var, relax.Expr] = {}

    @relax.expr_functor.visitor
    class _Bindings(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            bound[binding.var] = binding.value

    _Bindings().visit_expr(func)
    inner = set()
    for value in bound.values():
        if op_name(value) == "relax.add":
            for arg in value.args:
                if uses.get(arg, 0) == 1 and op_name(bound.get(arg)) == "relax.add":
                    inner.add(bound[arg])
    return inner


# ----------------------------------------------------------------------------- numeric helpers


def _out_size(size: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


def _out_shape(conv: Conv, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    (pt, pl, pb, pr), (kh, kw) = conv.padding, conv.size
    return (in_shape[0], conv.weight.shape[0],
            _out_size(in_shape[2], kh, pt + pb, conv.strides[0], conv.dilation[0]),
            _out_size(in_shape[3], kw, pl + pr, conv.strides[1], conv.dilation[1]))


def _merge_parallel(branches: list[Conv], out_shape: tuple[int, ...]) -> Conv | str:
    """One conv for the sum of ``branches`` (same input), or why the block stays."""
    if len({b.strides for b in branches}) > 1:
        return "kept parallel branches with different strides"
    size = (max(b.size[0] for b in branches), max(b.size[1] for b in branches))
    dilation = []
    for axis in (0, 1):  # a kernel of size 1 along an axis does not care about its dilation
        found = {b.dilation[axis] for b in branches if b.size[axis] > 1}
        if len(found) > 1:
            return "kept parallel branches with different dilations"
        dilation.append(found.pop() if found else 1)
    starts, ends = set(), []
    for b in branches:
        (dh, dw) = (size[0] - b.size[0], size[1] - b.size[1])
        if dh % 2 or dw % 2:
            return "kept parallel branches whose kernel sizes differ by an odd amount: no common centre"
        oh, ow = dilation[0] * dh // 2, dilation[1] * dw // 2
        starts.add((b.padding[0] + oh, b.padding[1] + ow))
        ends.append((b.padding[2] + oh, b.padding[3] + ow))
    merged_in = tensor_shape(branches[0].data)
    if len(starts) > 1:
        return "kept parallel branches whose padding does not align with the merged kernel's centre"
    (top, left), bottom, right = starts.pop(), max(e[0] for e in ends), max(e[1] for e in ends)
    weight, groups = ka.merge_parallel_convs([(b.weight, b.groups) for b in branches], size)
    merged = Conv(branches[0].data, weight, groups, branches[0].strides, (top, left, bottom, right),
                   tuple(dilation), sum(b.bias for b in branches), branches[0].dtype,
                   sum(b.cost for b in branches), True)
    if _out_shape(merged, merged_in) != out_shape:
        return "kept parallel branches whose padding does not align with the merged kernel's centre"
    if conv_cost(weight.shape, out_shape) > merged.cost:
        return "kept parallel branches: the merged kernel costs more multiply-adds (their groups differ)"
    return merged


def _compose(first: Conv, second: Conv) -> Conv | str:
    """``second(first(x) + b1)`` as one conv of x, or why the pair stays."""
    if (first.dilation != (1, 1) and not first.unit_kernel) or (second.dilation != (1, 1) and not second.unit_kernel):
        return "kept a dilated conv pair"
    second_is_pointwise = second.unit_kernel and second.strides == (1, 1) and not any(second.padding)
    if first.strides != (1, 1) and not second_is_pointwise:
        return "kept a conv pair whose first conv is strided"
    padding = first.padding
    if any(second.padding):
        if not first.unit_kernel or any(first.padding) or first.strides != (1, 1):
            return "kept a conv pair: the second conv zero-pads the output of a spatial (or padded) conv"
        if np.any(first.bias):
            return ("kept a conv pair: the first conv's bias is nonzero and the second conv zero-pads, "
                    "so its border sees 0, not the bias")
        padding = second.padding
    weight, groups = ka.compose_convs(first.weight, first.groups, second.weight, second.groups)
    bias = second.bias + ka.conv_bias_of_input_shift(second.weight, first.bias, second.groups)
    strides = (first.strides[0] * second.strides[0], first.strides[1] * second.strides[1])
    merged = Conv(first.data, weight, groups, strides, padding, (1, 1), bias, second.dtype,
                   first.cost + second.cost, first.is_conv or second.is_conv)
    if _out_shape(merged, tensor_shape(first.data)) != _out_shape(second, tensor_shape(second.data)):
        return "kept a conv pair whose composed padding gives another output shape"
    return merged
