"""prune-channels: channel liveness over the whole graph; dead and constant channels are removed.

A *channel* here is an equivalence class of (tensor, channel index) pairs that carry the same
feature map: a per-channel op (activation, constant per-channel affine, pooling, a global mean, a
depthwise conv) keeps channel c as channel c, a residual add or subtract joins channel c of both
operands and of the sum, a concat along channels offsets each operand's channels. Convs (groups 1)
and dense layers are where classes begin (their output channels) and end (they *read* their input
channels through a weight slice). A class is

    dead       when every conv / dense reading any of its tensors has an all-zero weight slice for it:
               removed from every tensor of the class (producer filters, per-channel constants,
               depthwise filters) and from the readers' weights, which only lose zeros;
    constant   when every producer's filter is all zero (its output is 0 at every pixel, zero padding
               or not), so that each tensor of the class holds one value v per channel: the biases,
               affines, activations (ReLU, ReLU6 / clip, LeakyReLU), pooling and adds after it applied
               to 0. It is removed likewise, and v enters each reader as a constant:
                   conv, no padding     bias b[o] += Σ_k W[o, c, k]·v
                   conv, zero padding   the exact bias map B[o, y, x] (kernel_algebra; the border
                                        taps that read padding see 0, not v)
                   dense (after a global mean or a flatten)   b[n] += Σ_rows(c) W[row, n]·v

A class with a tensor the pass cannot follow (a function input or output, a grouped conv, an op
outside the list above) is kept whole: a channel that looks dead but is added to a live operand
stays, since the sum's class holds the live producer too. Removing channels can leave new dead
slices behind (a producer's inputs read only by removed filters), so the analysis repeats until
nothing changes. Float reassociation in folded constants is the only deviation (rtol 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from . import kernel_algebra as ka
from .analysis import call_macs, graph_stats
from .graph import (bindings, channel_const, channel_vector, cleanup, const, const_value, is_const, mutate_functions,
                    op_name, tensor_dtype, tensor_shape)
from .report import BlockReport

DEAD, CONSTANT = "channels removed (unread)", "channels removed (constant, folded into their readers)"
_MAX_ROUNDS = 16
_UNARY = ("relax.nn.relu", "relax.nn.relu6", "relax.clip", "relax.nn.leakyrelu", "relax.nn.silu", "relax.nn.gelu",
          "relax.nn.gelu_tanh", "relax.sigmoid", "relax.tanh", "relax.nn.max_pool2d", "relax.nn.avg_pool2d",
          "relax.nn.adaptive_avg_pool2d", "relax.mean")
_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


@tvm.transform.module_pass(opt_level=0, name="reforge.prune-channels")
class PruneChannels:
    """Remove output channels nothing reads and constant channels (all-zero filters), across the graph."""

    def __init__(self):
        self.report = BlockReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report.before = graph_stats(mod)
        func = mod["main"]
        layers = _conv_layers(func)
        for _ in range(_MAX_ROUNDS):
            plan = _Liveness(func).plan()
            if plan is None:
                break
            for kind, n in ((DEAD, plan.dead), (CONSTANT, plan.constant)):
                if n:
                    self.report.count(kind, n)
            mod = cleanup(mutate_functions(mod, lambda m, _f, p=plan: _Rewrite(m, p)))
            func = mod["main"]
        for i, ((o0, i0, m0), (o1, i1, m1)) in enumerate(zip(layers, _conv_layers(func))):
            if (o0, i0) != (o1, i1):
                self.report.layers.append({"layer": f"conv2d {i + 1}", "out_channels": f"{o0} -> {o1}",
                                           "in_channels": f"{i0} -> {i1}", "macs": f"{m0} -> {m1}"})
        for note in _Liveness(func).kept_notes():
            self.report.refuse(note)
        self.report.after = graph_stats(mod)
        return mod


def conv_channels(func: relax.Function) -> list[tuple[int, int]]:
    """(output, input) channels of every conv2d weight, in program order (the pass never adds or drops a conv)."""
    return [(o, i) for o, i, _ in _conv_layers(func)]


def _conv_layers(func: relax.Function) -> list[tuple[int, int, int]]:
    """(output channels, input channels per group, multiply-adds) of every conv2d, in program order."""
    return [(*tensor_shape(b.value.args[1])[:2], call_macs(b.value, tensor_shape(b.var))) for b in bindings(func)
            if op_name(b.value) == "relax.nn.conv2d"]


# ----------------------------------------------------------------------------- analysis


def _nchw_conv(call) -> bool:
    a = call.attrs
    return is_const(call.args[1]) and (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") == \
        ("NCHW", "OIHW", "NCHW")


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Plan:
    """What one round removes: channel indices kept per tensor, constant values of removed channels."""

    keep: dict = field(default_factory=dict)  # var -> kept channel indices
    values: dict = field(default_factory=dict)  # var -> per-channel value (NaN: not a removed constant)
    flatten: dict = field(default_factory=dict)  # reshape var -> the 4-D tensor it flattens
    dead: int = 0
    constant: int = 0


class _Liveness:
    """Channel classes of one function and what can be removed from them."""

    def __init__(self, func: relax.Function):
        self.func, self.uf = func, _UnionFind()
        self.offset: dict = {}  # var -> first id of its channels
        self.pinned: set[int] = set()
        self.reads: list[tuple[int, bool]] = []  # (channel id, weight slice is nonzero)
        self.values: dict = {}  # var -> per-channel constant value (NaN unknown)
        self.flatten: dict = {}
        self.why: dict[int, str] = {}
        self.conv_outputs: set = set()  # tensors produced by a conv of groups 1 (zero filter: value 0)
        self.splits: dict = {}  # split tuple var -> (its input, the first channel of each item)
        self.extracted: set = set()  # (split tuple var, item index) read through TupleGetItem
        for p in func.params:
            self._pin(p, "a function input")
        for b in bindings(func):
            self._binding(b.var, b.value)
        for v in _outputs(func.body.body):
            self._pin(v, "a function output")
        for tup, (data, starts) in self.splits.items():  # an item never read: its channels have no tensor
            if any((tup, k) not in self.extracted for k in range(len(starts))):
                self._pin(data, "split into an item nothing reads")

    # -- tensors and their channels

    def _channels(self, var) -> int | None:
        shape, dtype = tensor_shape(var), tensor_dtype(var)
        if shape is None or len(shape) not in (2, 4) or not (dtype or "").startswith("float"):
            return None
        return shape[1]

    def _ids(self, var) -> range | None:
        if var not in self.offset:
            n = self._channels(var)
            if n is None:
                return None
            self.offset[var] = self.uf.add(n)
            self.values[var] = np.full(n, np.nan)
        start = self.offset[var]
        return range(start, start + len(self.values[var]))

    def _pin(self, var, why: str) -> None:
        if var in self.splits:  # a split's tuple read as a whole: the split input keeps its channels
            var = self.splits[var][0]
        ids = self._ids(var) if isinstance(var, relax.Var) else None
        for i in ids or ():
            self.pinned.add(i)
            self.why.setdefault(i, why)

    def _join(self, a, b, offset: int = 0) -> bool:
        ia, ib = self._ids(a), self._ids(b)
        if ia is None or ib is None or len(ib) + offset > len(ia):
            return False
        for k, i in enumerate(ib):
            self.uf.union(ia[offset + k], i)
        return True

    # -- one binding

    def _binding(self, var, value) -> None:
        name = op_name(value)
        handled = False
        if name == "relax.nn.conv2d" and _nchw_conv(value):
            handled = self._conv(var, value)
        elif name in _UNARY:
            handled = self._unary(var, value)
        elif name in _AFFINE:
            handled = self._affine(var, value)
        elif name == "relax.concat" and isinstance(value.args[0], relax.Tuple):
            handled = self._concat(var, value)
        elif name == "relax.reshape":
            handled = self._flatten(var, value)
        elif name == "relax.matmul" and is_const(value.args[1]):
            handled = self._dense(var, value)
        elif name == "relax.split":
            handled = self._split(var, value)
        elif isinstance(value, relax.TupleGetItem) and value.tuple_value in self.splits:
            handled = self._split_item(var, value)
        if not handled:
            what = name.removeprefix("relax.") if name else type(value).__name__
            for a in relax.analysis.free_vars(value):
                self._pin(a, f"read by {what}")
            self._pin(var, f"produced by {what}")

    def _split(self, var, call) -> bool:
        """``split(x, …, axis=1)``: item k holds x's channels from ``starts[k]`` (joined where it is read)."""
        data, shape = call.args[0], tensor_shape(call.args[0])
        if shape is None or len(shape) != 4 or int(call.attrs["axis"]) % 4 != 1 or self._ids(data) is None:
            return False
        self.splits[var] = (data, [0, *_split_cuts(call)])
        return True

    def _split_item(self, var, item) -> bool:
        data, starts = self.splits[item.tuple_value]
        if self._ids(var) is None:
            return False
        self._join(data, var, starts[item.index])
        self.extracted.add((item.tuple_value, item.index))
        n = len(self.values[var])
        self.values[var] = self.values[data][starts[item.index]:starts[item.index] + n]
        return True

    def _conv(self, var, call) -> bool:
        w, data = const_value(call.args[1]), call.args[0]
        groups, ids_in, ids_out = int(call.attrs["groups"]), self._ids(data), self._ids(var)
        if ids_in is None or ids_out is None:
            return False
        filters = w.reshape(w.shape[0], -1).any(axis=1)
        if groups == 1:
            for c, i in enumerate(ids_in):
                self.reads.append((i, bool(w[:, c].any())))
            self.values[var] = np.where(filters, np.nan, 0.0)
            self.conv_outputs.add(var)
            return True
        if groups == len(ids_in) == len(ids_out):  # depthwise: channel c is channel c
            self._join(var, data)
            v_in = self.values[data]
            unpadded = not any(int(p) for p in call.attrs["padding"])
            # a constant input gives a constant output unpadded; zero (or a zero filter) gives 0 padded or not
            out = np.where(v_in == 0, 0.0, v_in * w.reshape(w.shape[0], -1).sum(axis=1) if unpadded else np.nan)
            self.values[var] = np.where(filters, out, 0.0)
            return True
        return False

    def _unary(self, var, call) -> bool:
        data, name = call.args[0], op_name(call)
        if not isinstance(data, relax.Var) or self._ids(data) is None or self._ids(var) is None:
            return False
        if name == "relax.mean" and sorted(int(a) % 4 for a in call.attrs["axis"] or []) != [2, 3]:
            return False
        if name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d") \
                and call.attrs["layout"] != "NCHW":
            return False
        if name == "relax.clip" and not all(is_const(a) for a in call.args[1:]):
            return False
        if len(self.values[data]) != len(self.values[var]):
            return False
        self._join(var, data)
        self.values[var] = _apply_unary(call, self.values[data])
        return True

    def _affine(self, var, call) -> bool:
        a, b = call.args
        shape = tensor_shape(var)
        if self._ids(var) is None:
            return False
        if isinstance(a, relax.Var) and isinstance(b, relax.Var):  # a residual add / subtract
            if op_name(call) not in ("relax.add", "relax.subtract") or tensor_shape(a) != shape \
                    or tensor_shape(b) != shape or not self._join(var, a) or not self._join(var, b):
                return False
            op = np.add if op_name(call) == "relax.add" else np.subtract
            self.values[var] = op(self.values[a], self.values[b])
            return True
        data, c = (a, b) if is_const(b) else (b, a)
        if not isinstance(data, relax.Var) or not is_const(c) or tensor_shape(data) != shape:
            return False
        vec = channel_vector(const_value(c), shape, 1)
        if vec is None:
            return False
        self._join(var, data)
        x, k = self.values[data], vec.astype(np.float64)
        ops = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
               "relax.divide": np.divide}
        with np.errstate(all="ignore"):
            self.values[var] = ops[op_name(call)](*((x, k) if data is a else (k, x)))
        return True

    def _concat(self, var, call) -> bool:
        fields = call.args[0].fields
        if int(call.attrs["axis"]) % 4 != 1 or len(tensor_shape(var) or ()) != 4 \
                or not all(isinstance(f, relax.Var) and self._ids(f) is not None for f in fields):
            return False
        offset = 0
        for f in fields:
            self._join(var, f, offset)
            offset += len(self.values[f])
        self.values[var] = np.concatenate([self.values[f] for f in fields])
        return True

    def _flatten(self, var, call) -> bool:
        """``reshape(x, (N, C·H·W))`` of a 4-D tensor: read by dense layers only (checked there)."""
        data, shape = call.args[0], tensor_shape(var)
        src = tensor_shape(data)
        if src is None or len(src) != 4 or shape != (src[0], int(np.prod(src[1:]))) or self._ids(data) is None:
            return False
        self.flatten[var] = data
        return True

    def _dense(self, var, call) -> bool:
        x, w = call.args[0], const_value(call.args[1])
        if w.ndim != 2 or not isinstance(x, relax.Var):
            return False
        self._pin(var, "produced by a dense layer")
        if x in self.flatten:
            data = self.flatten[x]
            ids = self._ids(data)
            rows = w.reshape(len(ids), -1, w.shape[1])
        else:
            ids = self._ids(x)
            if ids is None or len(ids) != w.shape[0] or len(tensor_shape(x)) != 2:
                return False
            rows = w[:, None, :]
        for c, i in enumerate(ids):
            self.reads.append((i, bool(rows[c].any())))
        return True

    # -- decisions

    def _classes(self) -> tuple[set[int], set[int], set[int]]:
        """(pinned, read, non-constant) classes."""
        find = self.uf.find
        pinned = {find(i) for i in self.pinned}
        read = {find(i) for i, nonzero in self.reads if nonzero}
        varying = set()
        for var, start in self.offset.items():
            for c, v in enumerate(self.values[var]):
                if not np.isfinite(v):
                    varying.add(find(start + c))
        return pinned, read, varying

    def plan(self) -> _Plan | None:
        pinned, read, varying = self._classes()
        self._pin_stray_flattens(pinned)
        find = self.uf.find
        roots = {find(i) for i in range(len(self.uf.parent))}
        dead = {r for r in roots if r not in pinned and r not in read}
        constant = {r for r in roots if r not in pinned and r in read and r not in varying}
        removed = dead | constant
        while True:  # a tensor keeps at least one channel: an emptied tensor keeps its classes
            emptied = {find(i) for var, start in self.offset.items()
                       if all(find(start + c) in removed for c in range(len(self.values[var])))
                       for i in range(start, start + len(self.values[var]))}
            if not emptied & removed:
                break
            removed -= emptied
        if not removed:
            return None
        plan = _Plan(flatten=self.flatten)
        plan.dead, plan.constant = len(dead & removed), len(constant & removed)
        for var, start in self.offset.items():
            ids = [find(start + c) for c in range(len(self.values[var]))]
            keep = [c for c, r in enumerate(ids) if r not in removed]
            if len(keep) < len(ids):
                plan.keep[var] = np.asarray(keep)
            gone = np.array([r in constant and r in removed for r in ids])
            if gone.any():
                plan.values[var] = np.where(gone, self.values[var], np.nan)
        return plan

    def _pin_stray_flattens(self, pinned: set[int]) -> None:
        """A flatten read by anything but a dense layer was pinned when read; pin its source too."""
        uses: dict = {}
        for b in bindings(self.func):
            for a in (b.value.args if isinstance(b.value, relax.Call) else ()):
                if isinstance(a, relax.Var) and a in self.flatten:
                    uses.setdefault(a, []).append(b.value)
        for var, data in self.flatten.items():
            readers = uses.get(var, [])
            if not readers or any(op_name(r) != "relax.matmul" or not r.args[0].same_as(var) for r in readers):
                pinned.update(self.uf.find(i) for i in self._ids(data))

    def kept_notes(self) -> list[str]:
        """Why channels with all-zero weights stayed: a reader's zero slice on a class the pass cannot follow
        (the reason it was pinned), or a zero filter whose class also holds a live producer."""
        find = self.uf.find
        pinned, _, varying = self._classes()
        zero_read = {find(i) for i, nonzero in self.reads if not nonzero}
        notes = {f"kept channels read by all-zero weights: their tensor is {why}" for i, why in self.why.items()
                 if find(i) in zero_read}
        for var, start in self.offset.items():
            for c, v in enumerate(self.values[var]):
                r = find(start + c)
                if v == 0 and r in varying and r not in pinned and var in self.conv_outputs:
                    notes.add("kept all-zero filters whose channel is added to a live one (a residual add) or "
                              "read through a zero-padding depthwise conv")
        return sorted(notes)


def _outputs(expr) -> list:
    if isinstance(expr, relax.Tuple):
        return [v for f in expr.fields for v in _outputs(f)]
    return [expr] if isinstance(expr, relax.Var) else []


def _split_cuts(call) -> list[int]:
    """The channels where ``split(x, indices_or_sections, axis=1)`` cuts x."""
    sections, channels = call.attrs["indices_or_sections"], tensor_shape(call.args[0])[1]
    if isinstance(sections, (int, tvm.tirx.IntImm)):
        return [channels // int(sections) * k for k in range(1, int(sections))]
    return [int(i) for i in sections]


def _apply_unary(call, v: np.ndarray) -> np.ndarray:
    """The op on a per-channel constant (NaN where the op is not followed here)."""
    name = op_name(call)
    if name == "relax.nn.relu":
        return np.maximum(v, 0.0)
    if name == "relax.nn.relu6":
        return np.clip(v, 0.0, 6.0)
    if name == "relax.clip":
        return np.clip(v, float(const_value(call.args[1])), float(const_value(call.args[2])))
    if name == "relax.nn.leakyrelu":
        return np.where(v < 0, float(call.attrs["alpha"]) * v, v)
    if name in ("relax.nn.max_pool2d", "relax.nn.adaptive_avg_pool2d", "relax.mean"):
        return v  # a max or mean of equal values (max pooling pads with -inf)
    if name == "relax.nn.avg_pool2d" and (not call.attrs["count_include_pad"]
                                          or not any(int(p) for p in call.attrs["padding"])):
        return v
    return np.full_like(v, np.nan)


# ----------------------------------------------------------------------------- rewrite


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    """Slice every tensor of the plan to its kept channels; fold removed constants into their readers."""

    def __init__(self, mod, plan: _Plan):
        super().__init__(mod)
        self.plan, self.current = plan, None

    def visit_var_binding_(self, binding):
        self.current = binding.var  # the plan speaks of the original vars, as visit_call_ receives them
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        """The rewritten call; its arguments are visited one by one (their shapes change with the
        constants sliced here, so the call is only normalized once complete)."""
        name, out = op_name(call), self.current
        keep_out = self.plan.keep.get(out)
        if name == "relax.nn.conv2d" and _nchw_conv(call):
            return self._conv(call, self.visit_expr(call.args[0]), keep_out)
        if name == "relax.matmul" and is_const(call.args[1]):
            return self._dense(call, self.visit_expr(call.args[0]))
        if name == "relax.reshape" and out in self.plan.flatten and call.args[0] in self.plan.keep:
            n, _, h, w = tensor_shape(call.args[0])
            return relax.op.reshape(self.visit_expr(call.args[0]), (n, len(self.plan.keep[call.args[0]]) * h * w))
        if name == "relax.split" and call.args[0] in self.plan.keep:
            keep = self.plan.keep[call.args[0]]
            return relax.op.split(self.visit_expr(call.args[0]), [int(np.sum(keep < c)) for c in _split_cuts(call)],
                                  axis=1)
        if name in _AFFINE and keep_out is not None:
            shape, args = tensor_shape(call), [self.visit_expr(a) for a in call.args]
            for k, a in enumerate(call.args):
                if is_const(a) and const_value(a).size > 1:
                    vec = channel_vector(const_value(a), shape, 1)
                    args[k] = channel_const(vec[keep_out], len(shape), 1, tensor_dtype(a))
            return relax.Call(call.op, args, call.attrs)
        return self.visit_expr_post_order(call)

    def _conv(self, call, data, keep_out):
        w = const_value(call.args[1])
        groups = int(call.attrs["groups"])
        keep_in = self.plan.keep.get(call.args[0])
        values = self.plan.values.get(call.args[0])
        if groups != 1:  # depthwise: its input and output channels are one class
            if keep_out is None:
                return relax.Call(call.op, [data, call.args[1]], call.attrs)
            a = call.attrs
            return relax.op.nn.conv2d(data, const(w[keep_out], str(w.dtype)), strides=a["strides"],
                                      padding=a["padding"], dilation=a["dilation"], groups=len(keep_out),
                                      out_dtype=a["out_dtype"])
        w_out = w if keep_out is None else w[keep_out]
        w_new = w_out if keep_in is None else w_out[:, keep_in]
        out = relax.Call(call.op, [data, const(w_new, str(w.dtype))], call.attrs)
        if values is None:
            return out
        t = np.nan_to_num(values, nan=0.0)
        if not np.any(t):
            return out
        w64 = w_out.astype(np.float64)
        padding = tuple(int(p) for p in call.attrs["padding"])
        if not any(padding):
            return relax.op.add(out, channel_const(ka.conv_bias_of_input_shift(w64, t, 1), 4, 1, tensor_dtype(call)))
        in_hw = tensor_shape(call.args[0])[2:]
        bias = ka.conv_bias_map_of_input_shift(w64, t, in_hw, tuple(int(s) for s in call.attrs["strides"]), padding,
                                               tuple(int(d) for d in call.attrs["dilation"]))
        return relax.op.add(out, const(bias[None], tensor_dtype(call)))

    def _dense(self, call, x_new):
        x, w = call.args[0], const_value(call.args[1])
        data = self.plan.flatten.get(x, x)
        keep = self.plan.keep.get(data)
        if keep is None:
            return relax.Call(call.op, [x_new, call.args[1]], call.attrs)
        channels = tensor_shape(data)[1]
        rows = w.reshape(channels, -1, w.shape[1])
        out = relax.Call(call.op, [x_new, const(rows[keep].reshape(-1, w.shape[1]), str(w.dtype))], call.attrs)
        values = self.plan.values.get(data)
        if values is None or not np.any(np.nan_to_num(values, nan=0.0)):
            return out
        t = np.repeat(np.nan_to_num(values, nan=0.0), rows.shape[1])
        return relax.op.add(out, const(ka.dense_bias_of_input_shift(w.astype(np.float64), t)[None], tensor_dtype(call)))
