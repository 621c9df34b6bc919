"""remove-residual: RMNet's reserve-and-merge (Meng et al., RM Operation, 2021).

A residual block ``y = convₙ(σ(… σ(conv₁(x) + b₁) …)) + bₙ + s(x)``, with the shortcut ``s`` the
identity or a 1×1 projection ``conv(x, P) + bₚ`` (stride = the block's), becomes a plain chain when
every inner activation σ is the identity on [0, ∞) (ReLU, LeakyReLU, ELU, FPlus: the table in
activations.py) and the block input is provably bounded below, ``x ≥ −c`` (c = 0 after a ReLU,
α after an ELU(α), 1 after an FPlus, the same after pooling one). It reserves ``x + c ≥ 0``:

    conv₁'   C_in reserved output channels carry x through a Dirac kernel, with conv₁'s stride,
             and bias +c; σ leaves them unchanged since x + c ≥ 0
    convᵢ'   (middle convs, bottlenecks) a Dirac block on the reserved channels, zeros across
    convₙ'   the reserved channels enter as extra inputs through M, a Dirac kernel (identity
             shortcut) or P at the kernel centre (projection); bias bₙ + bₚ − c·Σ_{i,taps} M[o]

Only centre taps read reserved channels and every conv pads k//2, so padding never reaches them.
Blocks whose inner activations are all LeakyReLU(a) need no bound: they reserve ``+x`` and ``-x``
(2·C_in channels), since after m activations ``σᵐ(x) − σᵐ(−x) = (1 + aᵐ)·x``, and merge them
with ``±1/(1 + aᵐ)``.

Reserved channels are dense: the block's multiply-adds grow (ResNet-18 about ×1.8, bottlenecks far
more), which the report states; the x86 / arm build runs them as copies again (reserved_copies.py).
The rewrite is exact; a block whose input has no provable lower bound (unless all its inner
activations are LeakyReLU), whose inner activation is not the identity on [0, ∞) (ReLU6, SiLU …),
or whose convs would misalign the reserved channels (padding other than k//2 each side, dilation)
stays as written, and the report says why.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .activations import ACTIVATION_OPS, Activation, lower_bound, read_activation
from .analysis import graph_stats
from .graph import (Conv, cleanup, const_value, emit_conv, is_const, mutate_functions, op_name, read_linear,
                    tensor_dtype, tensor_shape, use_counts)
from .report import BlockReport

IDENTITY, PROJECTION = "residual blocks removed (identity shortcut)", "residual blocks removed (projection shortcut)"
PAIR = " with a reserved +x / -x pair"  # LeakyReLU blocks whose input may be negative
OFFSET = " with reserved x + c"  # input bounded below by -c < 0 (an ELU / FPlus output)
_MAX_CONVS = 8


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

    def _producer(self, expr, ops, uses: int = 1) -> relax.Call | None:
        if isinstance(expr, relax.Var) and self.uses.get(expr, 1) == uses:
            value = self.lookup_binding(expr)
            if op_name(value) in ops:
                return value
        return None

    def _conv(self, expr, uses: int = 1) -> Conv | None:
        """A ``conv2d(x, W) [+ b]`` (constant W and b) bound to ``expr``, used ``uses`` times."""
        add, bias = self._producer(expr, ("relax.add",), uses), None
        if add is not None:
            if not is_const(add.args[1]):
                return None
            bias = const_value(add.args[1]).astype(np.float64)
            if bias.size != tensor_shape(add)[1] and bias.size != 1:
                return None
            expr = add.args[0]
        conv = read_linear(self._producer(expr, ("relax.nn.conv2d",), uses if add is None else 1))
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
        signs, scale, offset = (1.0,), 1.0, 0.0
        bound = lower_bound(x, self.lookup, self.builder_.get())
        if not reason and isinstance(bound, str):
            slopes = {a.slope for a in acts}
            leak = slopes.pop() if len(slopes) == 1 else None
            # LeakyReLU(a) on every inner activation: reserve +x and -x; after m of them
            # σᵐ(x) - σᵐ(-x) = (1 + aᵐ)·x for either sign of x
            if leak is None or leak == 0.0 or 1.0 + leak ** len(acts) == 0.0:
                reason = f"kept a residual block: its input has no provable lower bound (it comes from {bound})"
            else:
                signs, scale = (1.0, -1.0), 1.0 / (1.0 + leak ** len(acts))
        elif not reason:
            offset = -bound  # reserve x + c, c = -bound >= 0
        if reason:
            self.report.refuse(reason)
            return None
        kind = (PROJECTION if projection is not None else IDENTITY) + (PAIR if len(signs) > 1 else "")
        self.report.count(kind + (OFFSET if offset else ""))
        return _reserve_and_merge(self.builder_, x, convs, projection, acts, signs, scale, offset)

    def _block(self, main, short):
        """``(x, [conv₁ … convₙ], projection or None, [σ₁ … σₙ₋₁])`` if ``main`` is a chain of at least
        two convs with activations the identity on [0, ∞) between them, fed by the shortcut's input;
        a reason if it is a block this pass must keep; None if it is no residual block."""
        projection = self._conv(short)
        if projection is not None and not projection.is_conv:
            projection = None
        convs, acts, other_act, expr, uses = [], [], None, main, 1
        for _ in range(_MAX_CONVS):
            conv = self._conv(expr, uses)
            if conv is None or not conv.is_conv:
                return None
            convs.insert(0, conv)
            reaches_projection = projection is not None and conv.data.same_as(projection.data)
            if (reaches_projection or conv.data.same_as(short)) and len(convs) > 1:
                if other_act:
                    return f"kept a residual block: {other_act} between its convs would change the reserved channels"
                return conv.data, convs, projection if reaches_projection else None, acts
            found = read_activation(conv.data, self.lookup, self.builder_.get()) \
                if self.uses.get(conv.data, 1) == 1 else None
            if found is None:
                act = self._producer(conv.data, ACTIVATION_OPS)
                if act is None:
                    return None
                other_act, expr, uses = op_name(act).removeprefix("relax."), act.args[0], 1
                continue
            if not found.act.identity_from_zero:
                other_act = found.act.name
            acts.insert(0, found.act)
            expr, uses = found.data, found.uses
        return None

    def lookup(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None


def _misaligned(convs: list[Conv], projection: Conv | None, in_shape, out_shape) -> str | None:
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


def _reserve_and_merge(bb: relax.BlockBuilder, x: relax.Expr, convs: list[Conv], projection: Conv | None,
                       acts: list[Activation], signs: tuple[float, ...], scale: float, offset: float) -> relax.Expr:
    """The block as a chain: every conv widened by reserved channels that carry ``s·x + offset`` for each
    sign s (``C_in`` each), merged back into the last conv with weight ``s·scale``."""
    cin = tensor_shape(x)[1]
    r = cin * len(signs)
    out = x
    for i, c in enumerate(convs):
        w = ka.regroup_conv(c.weight, c.groups, 1)
        o, inner = w.shape[:2]
        if i == len(convs) - 1:
            reserved = dirac(cin, c.size) if projection is None else ka.embed_centre(
                ka.regroup_conv(projection.weight, projection.groups, 1), c.size)
            merge = [s * scale * reserved for s in signs]
            weight = np.concatenate(merge + [w], axis=1)
            bias = c.bias + (projection.bias if projection is not None else 0) \
                - offset * sum(m.sum(axis=(1, 2, 3)) for m in merge)
        elif i == 0:
            weight = np.concatenate([s * dirac(cin, c.size) for s in signs] + [w], axis=0)
            bias = np.concatenate([np.full(r, offset), c.bias])
        else:
            weight = np.zeros((r + o, r + inner) + c.size)
            weight[:r, :r] = dirac(r, c.size)
            weight[r:, r:] = w
            bias = np.concatenate([np.zeros(r), c.bias])
        out = emit_conv(replace(c, data=out, weight=weight, groups=1, bias=bias))
        if i < len(convs) - 1:
            out = acts[i].apply(bb, out)
    return out
