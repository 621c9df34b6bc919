"""Reserved channels as copies: a CPU lowering for convs that carry channels through unchanged.

remove-residual (RMNet) widens convs with reserved channels: Dirac rows that copy the block input,
Dirac or centre-only (1×1) columns that merge it back. As dense multiplications they cost what a
full conv row costs; on a CPU that is ~1.8x ResNet-18's multiply-adds. This rewrite reads the
structure from the weights alone (exact zeros and ones) and runs it as data movement:

    rows      conv(x, [D; W])      = concat(x[:, :R, ::s, ::s], conv(x, W))    D: R Dirac rows
    columns   conv(concat(a, b), [C | W]) = conv(b, W) + a        C Dirac, stride 1
                                          = conv(b, W) + conv(a, C₁ₓ₁, stride s)   C centre-only
                                          = conv(b, W)            C = 0

Per-channel bias adds and activations (ReLU, ELU, ...: passes/activations.py) between a concat and
the next conv are split along the concat, so the reserved part reaches the column rule. Only convs whose padding is k//2 on every side (the
Dirac tap reads x[i·s]) and groups = 1 are touched. The graph it leaves is the residual form again;
it is a lowering for CPU targets, not a registered pass.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .activations import read_activation
from .graph import channel_const, channel_vector, cleanup, const, const_value, is_const, mutate_functions, op_name, \
    tensor_dtype, tensor_shape

_MAX_DEPTH = 8


def reserved_channels_as_copies(mod: tvm.IRModule) -> tvm.IRModule:
    return cleanup(mutate_functions(mod, lambda m, f: _Split(m)))


def _centre_aligned(call: relax.Call, w: np.ndarray) -> bool:
    a = call.attrs
    kh, kw = w.shape[2:]
    return (kh % 2 == 1 and kw % 2 == 1 and int(a["groups"]) == 1
            and tuple(int(p) for p in a["padding"]) == (kh // 2, kw // 2, kh // 2, kw // 2)
            and (tuple(int(d) for d in a["dilation"]) == (1, 1) or (kh, kw) == (1, 1))
            and (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") == ("NCHW", "OIHW", "NCHW"))


def copy_rows(w: np.ndarray) -> int:
    """How many leading output channels ``o`` copy input channel ``o`` (one 1 at the centre, zeros elsewhere)."""
    kh, kw = w.shape[2:]
    rows = 0
    for o in range(min(w.shape[0], w.shape[1])):
        if w[o, o, kh // 2, kw // 2] != 1 or np.count_nonzero(w[o]) != 1:
            break
        rows += 1
    return rows


def _centre_only(w: np.ndarray) -> np.ndarray | None:
    """The 1×1 kernel if every tap but the centre is zero."""
    kh, kw = w.shape[2:]
    centre = w[:, :, kh // 2, kw // 2]
    return centre[:, :, None, None] if np.count_nonzero(w) == np.count_nonzero(centre) else None


@relax.expr_functor.mutator
class _Split(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.reserved: set = set()  # the copied parts of the concats this rewrite made

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.conv2d" or not is_const(call.args[1]):
            return call
        w = const_value(call.args[1])
        if w.ndim != 4 or not _centre_aligned(call, w) or not (tensor_dtype(call) or "").startswith("float"):
            return call
        new = self._split(call, w)
        return call if new is None else new

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _relu_output(self, expr, depth: int = 0) -> bool:
        """``expr`` is a ReLU output, or a slice / max pooling of one: a ReLU on it changes nothing."""
        value = expr if isinstance(expr, relax.Call) else self._bound(expr)
        name = op_name(value)
        if name == "relax.nn.relu":
            return True
        return name in ("relax.strided_slice", "relax.nn.max_pool2d") and depth < _MAX_DEPTH \
            and self._relu_output(value.args[0], depth + 1)

    def _parts(self, expr, depth: int = 0) -> tuple[list[relax.Expr], bool] | None:
        """``([a, b, …], reserved)`` if ``expr`` is ``concat((a, b, …), axis=1)``, possibly under per-channel
        bias adds and ReLUs, which are split along with it; ``reserved``: a concat this rewrite made."""
        value = self._bound(expr)
        name = op_name(value)
        if depth > _MAX_DEPTH or name is None:
            return None
        if name == "relax.concat" and isinstance(value.args[0], relax.Tuple) and int(value.attrs["axis"]) in (1, -3) \
                and len(tensor_shape(expr) or ()) == 4:
            fields = list(value.args[0].fields)
            return fields, any(f.same_as(r) for f in fields[:1] for r in self.reserved)
        act = read_activation(expr, self._bound, self.builder_.get())
        if act is not None:  # an elementwise activation (ReLU, ELU, ...): applied to each part
            found = self._parts(act.data, depth + 1)
            if found is None:
                return None
            return [p if act.act.name == "relu" and self._relu_output(p) else self.builder_.normalize(act.act.apply(self.builder_, p))
                    for p in found[0]], found[1]
        if name == "relax.add" and is_const(value.args[1]) and not is_const(value.args[0]):
            bias = channel_vector(const_value(value.args[1]), tensor_shape(expr), 1)
            found = self._parts(value.args[0], depth + 1) if bias is not None else None
            if found is None:
                return None
            out, start = [], 0
            for p in found[0]:
                n = tensor_shape(p)[1]
                piece = bias[start:start + n]
                out.append(self.builder_.normalize(relax.op.add(p, channel_const(piece, 4, 1, tensor_dtype(expr))))
                           if np.any(piece) else p)
                start += n
            return out, found[1]
        return None

    def _split(self, call: relax.Call, w: np.ndarray) -> relax.Expr | None:
        x, a = call.args[0], call.attrs
        strides = tuple(int(s) for s in a["strides"])
        out_shape = tensor_shape(call)
        if tensor_dtype(x) != tensor_dtype(call):
            return None
        rows = copy_rows(w)
        if rows == w.shape[0]:
            rows = 0  # a pure copy conv: leave it
        parts, reserved = self._parts(x) or (None, False)
        if rows == 0 and parts is None:
            return None
        rest = w[rows:]
        # the conv over the remaining output rows, its input split along the concat
        terms, start, saves = [], 0, rows > 0 or reserved
        for part in parts or [x]:
            n = tensor_shape(part)[1] if parts else w.shape[1]
            block = rest[:, start:start + n]
            start += n
            centre = _centre_only(block)
            if not np.any(block):
                saves = True  # zero columns: the part is not read
                continue
            if centre is not None and block.shape[0] == block.shape[1] and strides == (1, 1) \
                    and np.array_equal(centre[:, :, 0, 0], np.eye(n)):
                saves = True
                terms.append(part)  # Dirac columns: the part itself
            elif centre is not None and block.shape[2:] != (1, 1):
                saves = True
                terms.append(relax.op.nn.conv2d(part, const(centre, str(const_value(call.args[1]).dtype)),
                                                strides=strides, padding=(0, 0, 0, 0)))
            else:
                terms.append(relax.op.nn.conv2d(part, const(block, str(const_value(call.args[1]).dtype)),
                                                strides=strides, padding=a["padding"], dilation=a["dilation"]))
        if not terms or not saves:
            return None  # nothing reserved here: a conv of a concat stays one conv
        body = terms[0]
        for t in terms[1:]:
            body = relax.op.add(body, t)
        if rows == 0:
            return body
        source = parts[0] if parts and tensor_shape(parts[0])[1] == rows else x
        if strides == (1, 1) and tensor_shape(source)[1] == rows:
            copied = source
        else:
            h, wd = out_shape[2], out_shape[3]
            copied = relax.op.strided_slice(source, axes=[1, 2, 3], begin=[0, 0, 0],
                                            end=[rows, h * strides[0], wd * strides[1]], strides=[1, *strides])
        copied = self.builder_.emit(copied) if not isinstance(copied, relax.Var) else copied
        self.reserved.add(copied)
        return relax.op.concat([copied, body], axis=1)
