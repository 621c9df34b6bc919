"""One channel block per set of tensors that meet, chosen before ``ConvertLayout`` (a step of the blocked
layout, :func:`reforge.build.blocked_layout`).

TVM 0.27's ``ConvertLayout`` can move a tensor from NCHW to NCHW[x]c and back, but not from one block to
another: NCHW8c to NCHW16c fails ("Invalid layout axis 16b") and leaves the whole graph in NCHW. Each
conv choosing the blocks of its own channels (the largest divisor of C at most the lanes) meets that
wherever tensors of different widths join: GhostNet's ``concat`` of two 8-channel halves (NCHW8c)
read by a 16-channel conv (NCHW16c), a residual ``add`` of that concat and a 16-channel conv.

Here tensors that an operator joins in one layout fall into one class (union-find): the operands and
result of an elementwise operator, pooling or a mean (same channel count), a channel concat's parts and
result, a slice and its input, a depthwise conv's input and output. A channel slice then falls on block
boundaries (MixNet's split of 120 channels in 40s: blocks of 10, not 15), where
:func:`.blocked_forms.channel_moves_in_blocked_layout` does it on the blocked tensor. A class's block is the largest divisor
of the gcd of its members' channel counts at most the lanes, so every blocked tensor of a class has
that block, unless a grouped conv reads or writes the class: then the largest such divisor whose blocks whole
groups fill (:meth:`_Classes.block`). A conv reads its input in the input's class block (its kernel is packed
to match) and writes its output's. Tensors outside any class of a conv output (the image, a ``take``'s result) are
in NCHW, which moves to any block. Joining more than TVM would is safe: it only narrows blocks.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from reforge.topi_ext.layouts import MIN_BLOCK, channel_block

from .graph import bindings, op_name, tensor_shape

# operators whose result does not keep its input's channel layout (channels moved, or no layout inference)
_NEW_LAYOUT = ("relax.nn.conv2d", "relax.take", "relax.reshape", "relax.permute_dims", "relax.split",
               "relax.layout_transform", "relax.call_tir", "relax.matmul", "relax.flatten")


def conv_channel_blocks(mod: tvm.IRModule, lanes: int) -> dict[relax.Call, tuple[int, int]]:
    """Each 4-D conv2d call of ``mod`` -> (input block, output block): the blocks of its input's and output's
    classes (the input's own :func:`channel_block` where the input is in no blocked class)."""
    blocks: dict[relax.Call, tuple[int, int]] = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            blocks.update(_function_blocks(func, lanes))
    return blocks


def _function_blocks(func: relax.Function, lanes: int) -> dict[relax.Call, tuple[int, int]]:
    classes = _Classes()
    convs = []
    for binding in bindings(func):
        value, out = binding.value, binding.var
        if not isinstance(value, relax.Call) or _channels(out) is None:
            continue
        name = op_name(value)
        classes.add(out)
        if name == "relax.nn.conv2d":
            convs.append((value, out))
            w, groups = tensor_shape(value.args[1]), int(value.attrs.groups)
            if w is not None and groups == w[0] and w[1] == 1:  # depthwise: in and out one block
                classes.join(value.args[0], out)
            elif w is not None and groups > 1:  # grouped: its groups should fill whole blocks
                classes.group_widths.append((value.args[0], int(w[1])))
                classes.group_widths.append((out, int(w[0]) // groups))
            continue
        if name == "relax.concat":
            parts = value.args[0].fields if isinstance(value.args[0], relax.Tuple) else []
            for part in parts:
                classes.join(part, out)
            continue
        if name in _NEW_LAYOUT:
            continue
        for arg in value.args:
            if _channels(arg) == _channels(out) or name == "relax.strided_slice":
                classes.join(arg, out)
    result = {}
    for conv, out in convs:
        x = conv.args[0]
        if _channels(x) is not None:
            in_block = classes.block(x, lanes)
            result[conv] = (channel_block(_channels(x), lanes) if in_block is None else in_block,
                            classes.block(out, lanes))
    return result


class _Classes:
    """Union-find over Relax variables, each class with the gcd of its members' channel counts."""

    def __init__(self):
        self.parent: dict = {}
        self.gcd: dict = {}
        self.group_widths: list = []  # (var, channels per group of a grouped conv reading or writing it)

    def add(self, var) -> None:
        if var not in self.parent:
            self.parent[var] = var
            self.gcd[var] = _channels(var)

    def find(self, var):
        root = var
        while not self.parent[root].same_as(root):
            root = self.parent[root]
        self.parent[var] = root
        return root

    def join(self, a, b) -> None:
        if not isinstance(a, relax.Var) or _channels(a) is None:
            return
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if not ra.same_as(rb):
            self.parent[ra] = rb
            self.gcd[rb] = math.gcd(self.gcd[rb], self.gcd[ra])

    def block(self, var, lanes: int) -> int | None:
        """The block of ``var``'s class; None if ``var`` is in no class. Where grouped convs read or write
        the class, the largest divisor of the gcd at most the lanes that divides each group width or is a
        multiple of it (so whole groups fill whole blocks: RegNetY's 104 channels in groups of 8 take
        blocks of 8, not 13), if one is at least MIN_BLOCK wide."""
        if not isinstance(var, relax.Var) or var not in self.parent:
            return None
        root = self.find(var)
        widths = {w for v, w in self.group_widths if isinstance(v, relax.Var) and v in self.parent
                  and self.find(v).same_as(root)}
        gcd = self.gcd[root]
        fitting = [d for d in range(MIN_BLOCK, min(gcd, lanes) + 1)
                   if gcd % d == 0 and all(w % d == 0 or d % w == 0 for w in widths)]
        return max(fitting) if widths and fitting else channel_block(gcd, lanes)


def _channels(expr) -> int | None:
    """The channel count of a 4-D tensor expression, else None."""
    shape = tensor_shape(expr) if isinstance(expr, relax.Expr) else None
    return int(shape[1]) if shape is not None and len(shape) == 4 else None
