"""remove-residual: RMNet's reserve-and-merge (Meng et al., RM Operation, 2021).

A residual block ``y = convₙ(relu(… relu(conv₁(x) + b₁) …)) + bₙ + s(x)``, with the shortcut
``s`` the identity or a 1×1 projection ``conv(x, P) + bₚ`` (stride = the block's), becomes a
plain chain once its input is known to be non-negative (x ≥ 0):

    conv₁'   C_in reserved output channels carry x through a Dirac kernel, with conv₁'s stride;
             relu leaves them unchanged since x ≥ 0
    convᵢ'   (middle convs, bottlenecks) a Dirac block on the reserved channels, zeros across
    convₙ'   the reserved channels enter as extra inputs, merged with a Dirac kernel (identity
             shortcut) or with P at the kernel centre (projection); bias bₙ + bₚ

Blocks whose inner activations are all LeakyReLU(a) need no sign proof: they reserve ``+x`` and
``-x`` (2·C_in channels), since after m activations ``σᵐ(x) − σᵐ(−x) = (1 + aᵐ)·x``, and merge them
with ``±1/(1 + aᵐ)``.

Reserved channels are dense: the block's multiply-adds grow (ResNet-18 about ×1.8, bottlenecks far
more), which the report states; the x86 / arm build runs them as copies again (reserved_copies.py).
The rewrite is exact; a block whose input is not provably non-negative (a ReLU / ReLU6 output, or a
pooling of one) unless all its inner activations are LeakyReLU, whose inner activation is neither
ReLU nor LeakyReLU, or whose convs would misalign the reserved channels (padding other than k//2
each side, dilation) stays as written, and the report says why.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .analysis import graph_stats
from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape, use_counts
from .merge_branches import _ACTIVATIONS, _Conv, _emit, _read_linear
from .report import BlockReport

IDENTITY, PROJECTION = "residual blocks removed (identity shortcut)", "residual blocks removed (projection shortcut)"
PAIR = " with a reserved +x / -x pair"  # LeakyReLU blocks whose input may be negative
_MAX_CONVS = 8
# operators whose output is non-negative when their input is (max / average pooling, ...)
_KEEPS_SIGN = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")


@tvm.transform.module_pass(opt_level=0, name="reforge.remove-residual")
class RemoveResidual:
    """Turn residual blocks whose input is non-negative into a plain chain of convs."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        mod = cleanup(mutate_functions(mod, lambda m, f: _Remove(m, f, self.report)))
        self.report.after = graph_stats(mod)
        return mod


def dirac(channels: int, size: tuple[int, int]) -> np.ndarray:
    """The identity as a dense ``channels × channels`` kernel of ``size`` (tap at the centre)."""
    return ka.embed_centre(ka.regroup_conv(ka.channel_kernel(np.ones(channels)), channels, 1), size)


@relax.expr_functor.mutator
class _Remove(relax.PyExprMutator):
    def __init__(self, mod, func: relax.Function, report: BlockReport):
        super().__init__(mod)
        self.uses, self.report = use_counts(func), report

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        new = self._remove(call) if op_name(call) == "relax.add" else None
        return call if new is None else new

    def _producer(self, expr, ops) -> relax.Call | None:
        if isinstance(expr, relax.Var) and self.uses.get(expr, 1) == 1:
            value = self.lookup_binding(expr)
            if op_name(value) in ops:
                return value
        return None

    def _conv(self, expr) -> _Conv | None:
        """A once-used ``conv2d(x, W) [+ b]`` (constant W and b) bound to ``expr``."""
        add, bias = self._producer(expr, ("relax.add",)), None
        if add is not None:
            if not is_const(add.args[1]):
                return None
            bias = const_value(add.args[1]).astype(np.float64)
            if bias.size != tensor_shape(add)[1] and bias.size != 1:
                return None
            expr = add.args[0]
        conv = _read_linear(self._producer(expr, ("relax.nn.conv2d",)))
        if conv is None or bias is None:
            return conv
        return replace(conv, bias=conv.bias + np.broadcast_to(bias.reshape(-1), conv.bias.shape))

    # -- pattern

    def _remove(self, add: relax.Call) -> relax.Expr | None:
        shape, dtype = tensor_shape(add), tensor_dtype(add)
        a, b = add.args
        if shape is None or len(shape) != 4 or not (dtype or "").startswith("float") or is_const(a) or is_const(b) \
                or tensor_shape(a) != shape or tensor_shape(b) != shape:
            return None
        block = self._block(a, b) or self._block(b, a)
        if block is None:
            return None  # not a residual block
        if isinstance(block, str):
            self.report.refuse(block)
            return None
        x, convs, projection, acts = block
        reason = _misaligned(convs, projection, tensor_shape(x), shape)
        signs, scale = (1.0,), 1.0  # x ≥ 0: ReLU and LeakyReLU both pass it unchanged
        negative = _not_nonnegative(x, self)
        if negative and not reason:
            alphas = {alpha for alpha in acts}
            leak = alphas.pop() if len(alphas) == 1 else None
            # LeakyReLU(a) on every inner activation: reserve +x and -x; after m of them
            # σᵐ(x) - σᵐ(-x) = (1 + aᵐ)·x for either sign of x
            if leak is None or leak == 0.0 or 1.0 + leak ** len(acts) == 0.0:
                reason = negative
            else:
                signs, scale = (1.0, -1.0), 1.0 / (1.0 + leak ** len(acts))
        if reason:
            self.report.refuse(reason)
            return None
        self.report.count((PROJECTION if projection is not None else IDENTITY) + (PAIR if len(signs) > 1 else ""))
        return _reserve_and_merge(x, convs, projection, acts, signs, scale)

    def _block(self, main, short):
        """``(x, [conv₁ … convₙ], projection or None, [a₁ … aₙ₋₁])`` if ``main`` is a chain of at least
        two convs with ReLUs / LeakyReLUs (slopes aᵢ; 0 for ReLU) between them, fed by the shortcut's input;
        a reason if it is a block this pass must keep; None if it is no residual block."""
        projection = self._conv(short)
        if projection is not None and not projection.is_conv:
            projection = None
        convs, acts, other_act, expr = [], [], None, main
        for _ in range(_MAX_CONVS):
            conv = self._conv(expr)
            if conv is None or not conv.is_conv:
                return None
            convs.insert(0, conv)
            reaches_projection = projection is not None and conv.data.same_as(projection.data)
            if (reaches_projection or conv.data.same_as(short)) and len(convs) > 1:
                if other_act:
                    return f"kept a residual block: {other_act} between its convs would change the reserved channels"
                return conv.data, convs, projection if reaches_projection else None, acts
            act = self._producer(conv.data, _ACTIVATIONS)
            if act is None:
                return None
            if op_name(act) == "relax.nn.relu":
                acts.insert(0, 0.0)
            elif op_name(act) == "relax.nn.leakyrelu":
                acts.insert(0, float(act.attrs["alpha"]))
            else:
                other_act = op_name(act).removeprefix("relax.")
            expr = act.args[0]
        return None

    def lookup(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None


def _not_nonnegative(x: relax.Expr, mutator: _Remove, depth: int = 0) -> str | None:
    """None if ``x ≥ 0`` is proven by its producer, else the reason it is not."""
    value = mutator.lookup(x)
    name = op_name(value)
    if name in ("relax.nn.relu", "relax.nn.relu6"):
        return None
    if name == "relax.clip" and is_const(value.args[1]) and float(const_value(value.args[1])) >= 0:
        return None
    if name in _KEEPS_SIGN and depth < 8:
        return _not_nonnegative(value.args[0], mutator, depth + 1)
    what = name.removeprefix("relax.") if name else ("a function parameter" if value is None else "an unknown producer")
    return f"kept a residual block: its input is not provably non-negative (it comes from {what})"


def _misaligned(convs: list[_Conv], projection: _Conv | None, in_shape, out_shape) -> str | None:
    """Why the reserved channels would not line up with the shortcut, or None."""
    for c in [*convs, *([projection] if projection is not None else [])]:
        kh, kw = c.size
        if c.dilation != (1, 1) and c.size != (1, 1):
            return "kept a residual block with a dilated conv"
        if kh % 2 == 0 or kw % 2 == 0 or c.padding != (kh // 2, kw // 2, kh // 2, kw // 2):
            return ("kept a residual block: a conv's padding is not k//2 on every side, "
                    "the reserved channels would shift")
    stride = (int(np.prod([c.strides[0] for c in convs])), int(np.prod([c.strides[1] for c in convs])))
    if projection is None:
        if stride != (1, 1) or in_shape != out_shape:
            return "kept a residual block: an identity shortcut around a strided or channel-changing chain"
    elif projection.size != (1, 1) or projection.strides != stride:
        return "kept a residual block: its shortcut is not a 1x1 conv with the block's stride"
    return None


def _reserve_and_merge(x: relax.Expr, convs: list[_Conv], projection: _Conv | None, acts: list[float],
                       signs: tuple[float, ...], scale: float) -> relax.Expr:
    """The block as a chain: every conv widened by reserved channels that carry ``s·x`` for each sign s
    (``C_in`` each), merged back into the last conv with weight ``s·scale``."""
    cin = tensor_shape(x)[1]
    r = cin * len(signs)
    out = x
    for i, c in enumerate(convs):
        w = ka.regroup_conv(c.weight, c.groups, 1)
        o, inner = w.shape[:2]
        if i == len(convs) - 1:
            reserved = dirac(cin, c.size) if projection is None else ka.embed_centre(
                ka.regroup_conv(projection.weight, projection.groups, 1), c.size)
            weight = np.concatenate([s * scale * reserved for s in signs] + [w], axis=1)
            bias = c.bias + (projection.bias if projection is not None else 0)
        elif i == 0:
            weight = np.concatenate([s * dirac(cin, c.size) for s in signs] + [w], axis=0)
            bias = np.concatenate([np.zeros(r), c.bias])
        else:
            weight = np.zeros((r + o, r + inner) + c.size)
            weight[:r, :r] = dirac(r, c.size)
            weight[r:, r:] = w
            bias = np.concatenate([np.zeros(r), c.bias])
        out = _emit(replace(c, data=out, weight=weight, groups=1, bias=bias))
        if i < len(convs) - 1:
            out = relax.op.nn.relu(out) if acts[i] == 0.0 else relax.op.nn.leakyrelu(out, acts[i])
    return out
