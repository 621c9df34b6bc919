"""sparse: convs and dense layers whose constant weights are mostly zero run as sparse operators
(:mod:`reforge.topi_ext.sparse_nchwc`, the direct sparse conv, 1×1 included, with its epilogue;
:mod:`reforge.topi_ext.sparse_dense`, ``x @ W`` over W's columns in blocks of 16 lanes). Exact: the same products,
summed in another order.

Rewritten: ``relax.nn.conv2d`` with a constant float32 weight, NCHW / OIHW, groups 1, dilation 1,
static shapes, and ``relax.matmul`` of a float32 tensor by a constant 2-D float32 weight, where the
weight's sparsity reaches the crossover (``CROSSOVER`` below, from benchmarks/sparse.py: the sparsity
from which the sparse operator beats reforge's dense kernel), measured on x86 (AVX-512) and used for arm
too: no aarch64 board has measured it; there ``reforge tune`` over RPC measures each layer on the device.
Where ``reforge tune`` measured a layer (its records' ``sparse`` choices,
``autotune/sparse_choice.py``), the faster way as measured. The report names each layer with its
sparsity and what was done with it.

A sparse conv takes in the bias add, ReLU and residual add that follow it (each read only by the next),
as the dense conv's fused epilogue does. The pass emits it in NCHW; the x86 / arm build
(:func:`sparse_in_blocked_layout`) re-emits it in the machine's vectors and for the channel blocks of the
layout it chose, so a sparse layer reads and writes its neighbours' NCHW[x]c tensors with no layout transform.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import tvm
from tvm import relax

from reforge.machine import Machine
from reforge.topi_ext import sparse_conv, sparse_dense, sparse_nchwc
from reforge.topi_ext.layouts import MIN_BLOCK, channel_block

from .graph import (bindings, callee_attr, cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype,
                    tensor_shape, use_counts)
from .report import PassReport
from .reserved_copies import copy_rows

# the sparsity (fraction of zero weights) from which the sparse operator beat reforge's dense kernel on
# every layer shape of benchmarks/sparse.py (x86, AVX-512; arm uses them unmeasured: 1 thread, batch 1;
# docs/sparse.md): 1×1 convs, k×k convs, dense (Zen 4, whose dense kernel reads its weight from a fast L3)
CROSSOVER = {"conv 1x1": 0.8, "conv kxk": 0.88, "dense": 0.85}
POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")  # moved into the blocked layout between sparse convs


@dataclass(frozen=True)
class Layer:
    """One layer the pass may rewrite: ``kind`` ("conv 1x1", "conv kxk", "dense"), the activation's
    shape, the constant weight (OIHW or (K, N)), and the conv's strides and padding."""

    kind: str
    x_shape: tuple[int, ...]
    weight: np.ndarray = field(compare=False)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def sparsity(self) -> float:
        return sparse_conv.sparsity(self.weight)

    @property
    def key(self) -> str:
        """How the report and tuning records name the layer: its shapes and its count of nonzeros."""
        nnz = int(np.count_nonzero(self.weight))
        if self.kind == "dense":
            return f"dense {'x'.join(map(str, self.x_shape))} -> {self.weight.shape[1]} nnz {nnz}"
        g = sparse_conv.geometry(self.x_shape, self.weight.shape, self.strides, self.padding)
        return f"conv {g.key} nnz {nnz}"


@tvm.transform.module_pass(opt_level=0, name="reforge.sparse")
class Sparse:
    """Rewrite convs / dense layers with mostly-zero constant weights to sparse operators."""

    def __init__(self, min_sparsity: float | None = None, measured: Mapping[str, bool] | None = None):
        """``min_sparsity`` replaces the measured crossovers (0: every eligible layer). ``measured``
        (from ``reforge tune``'s records): layer key -> sparse measured faster; it decides for the
        layers it names, the crossovers for the others."""
        self.report = PassReport()
        self.min_sparsity, self.measured = min_sparsity, dict(measured or {})

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _without_unused_kernels(cleanup(mutate_functions(mod, lambda m, f: _Rewrite(m, f, self.report,
                                                                                           self._decide))))

    def _decide(self, layer: Layer) -> bool:
        if layer.key in self.measured:
            sparse, why = self.measured[layer.key], ", measured"
        else:
            threshold = CROSSOVER[layer.kind] if self.min_sparsity is None else self.min_sparsity
            sparse, why = layer.sparsity >= threshold, ""
        self.report.note(f"{layer.key}: {layer.sparsity:.1%} zeros -> {'sparse' if sparse else 'dense'}{why}")
        if sparse:
            self.report.count(f"{layer.kind} to sparse{why}")
        return sparse


def eligible_layers(mod: tvm.IRModule) -> list[Layer]:
    """The layers of ``mod`` the pass may rewrite, each once, in graph order."""
    found: dict[str, Layer] = {}

    def collect(layer):
        found.setdefault(layer.key, layer)
        return False

    mutate_functions(mod, lambda m, f: _Rewrite(m, f, PassReport(), collect))
    return list(found.values())


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, func, report: PassReport, decide: Callable[[Layer], bool]):
        super().__init__(mod)
        self.report, self.decide, self.uses = report, decide, use_counts(func)
        self.convs: dict[relax.Var, tuple] = {}  # emitted sparse conv -> (spec, x, taps, bias, residual)

    def visit_call_(self, call):
        original = call
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        fused = self._epilogue(original, call, name)
        if fused is not None:
            return fused
        if name not in ("relax.nn.conv2d", "relax.matmul") or len(call.args) != 2:
            return call
        x, w = call.args
        if not is_const(w) or is_const(x) or tensor_dtype(x) != "float32" or tensor_shape(x) is None \
                or tensor_shape(call) is None or tensor_dtype(call) != "float32":
            return call
        weight = const_value(w)
        if weight.dtype != "float32":
            return call
        layer = self._dense(x, weight) if name == "relax.matmul" else self._conv(call, x, weight)
        if layer is None or not self.decide(layer):
            return call
        if layer.kind == "dense":
            return sparse_dense.emit_sparse_dense(self.builder_, x, weight)
        g = sparse_conv.geometry(layer.x_shape, weight.shape, layer.strides, layer.padding)
        spec = sparse_nchwc.spec(g, int(np.count_nonzero(weight)))
        return self._emit(spec, x, sparse_nchwc.taps(weight, spec), None, None)

    def _emit(self, spec, x, taps, bias, res):
        y = sparse_nchwc.emit(self.builder_, spec, sparse_nchwc.arguments(spec, x, taps, bias, res))
        self.convs[y] = (spec, x, taps, bias, res)
        return y

    def _epilogue(self, original, call, name):
        """A bias add, ReLU or residual add whose operand is an emitted sparse conv read only here: the
        conv again with that step in its epilogue; else None."""
        if name not in ("relax.add", "relax.nn.relu") or tensor_dtype(call) != "float32":
            return None
        for i, arg in enumerate(call.args[:1] if name == "relax.nn.relu" else call.args):
            while isinstance(arg, relax.Var) and arg not in self.convs \
                    and isinstance(self.lookup_binding(arg), relax.Var):  # the binding of an emitted conv
                arg = self.lookup_binding(arg)
            if arg in self.convs and self.uses[original.args[i]] == 1:
                step = self._step(self.convs[arg][0], arg, None if name == "relax.nn.relu" else call.args[1 - i])
                if step is not None:
                    spec, x, taps, bias, res = self.convs[arg]
                    if step == "bias":
                        bias = relax.const(const_value(call.args[1 - i]).reshape(-1))
                    elif step == "add":
                        res = call.args[1 - i]
                    self.report.count(f"{step} fused into a sparse conv")
                    return self._emit(dataclasses.replace(spec, epilogue=spec.epilogue + (step,)), x, taps, bias, res)
        return None

    @staticmethod
    def _step(spec, conv, other) -> str | None:
        """The epilogue step of ReLU (``other`` None) or of adding ``other`` to ``conv``: a per-channel
        constant first of all is the bias, a tensor of the conv's shape the residual (once)."""
        if other is None:
            return "relu"
        vec = const_value(other) if is_const(other) else None
        if vec is not None:
            fits = vec.dtype == "float32" and vec.shape in ((1, spec.o, 1, 1), (spec.o, 1, 1))
            return "bias" if fits and not spec.epilogue else None
        fits = tensor_shape(other) == tensor_shape(conv) and tensor_dtype(other) == "float32"
        return "add" if fits and "add" not in spec.epilogue else None

    @staticmethod
    def _dense(x, weight) -> Layer | None:
        if weight.ndim != 2 or len(tensor_shape(x)) < 2:
            return None
        return Layer("dense", tensor_shape(x), weight)

    @staticmethod
    def _conv(call, x, weight) -> Layer | None:
        a = call.attrs
        if (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW") \
                or int(a["groups"]) != 1 or any(int(d) != 1 for d in a["dilation"]) or copy_rows(weight):
            return None  # copy rows: remove-residual's reserved channels, which the CPU build turns into copies
        g = sparse_conv.geometry(tensor_shape(x), weight.shape, [int(s) for s in a["strides"]],
                                 [int(p) for p in a["padding"]])
        return Layer("conv 1x1" if (g.kh, g.kw) == (1, 1) else "conv kxk", tensor_shape(x), weight, g.strides,
                     g.padding)


def sparse_in_blocked_layout(mod: tvm.IRModule, machine: Machine, blocked: bool = True) -> tvm.IRModule:
    """After the x86 / arm build's blocked conv layouts: each sparse conv, emitted in NCHW, re-emitted in
    ``machine``'s vectors (:func:`reforge.topi_ext.sparse_nchwc.for_machine`: its lanes, and a tile its
    registers hold) and, where the build's convs took the blocked layout (``blocked``), for NCHW[ib]c in,
    NCHW[ob]c out (the blocks a dense conv of its channels takes,
    :func:`reforge.topi_ext.layouts.channel_block`); the layout transforms ConvertLayout put around it
    then meet their inverses and cancel, so it reads its blocked producer and residual directly and its
    blocked consumers read it; its input channels summed in chunks that fit ``machine``'s L1 data cache
    (:func:`reforge.topi_ext.sparse_nchwc.chunked`), and the output blocks of a few tiles split over the machine's
    cores (:func:`reforge.topi_ext.sparse_nchwc.spread`). An input that no transform brings from a blocked tensor (a
    network's RGB image, an NCHW operator's output) is read in NCHW as it is (ib = 1), not transformed for this
    conv alone; an output that no consumer reads blocked is written in NCHW (ob = 1), not transformed back."""
    if not any(f.attrs is not None and f.attrs.get("reforge.op") == sparse_nchwc.OP for _, f in mod.functions_items()):
        return mod
    return _without_unused_kernels(cleanup(mutate_functions(mod, lambda m, f: _Blocked(m, f, machine, blocked))))


def _without_unused_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop the sparse conv kernels no Relax function calls any more (those a fused epilogue or the blocked
    layout replaced; DeadCodeElimination keeps them, as they carry a global symbol)."""
    used = {gv for _, f in mod.functions_items() if isinstance(f, relax.Function)
            for gv in relax.analysis.all_global_vars(f)}
    for gv, f in list(mod.functions_items()):
        if gv not in used and f.attrs is not None and f.attrs.get("reforge.op") == sparse_nchwc.OP:
            del mod[gv]
    return mod


def _blocking(b: int):
    return lambda n, c, h, w: (n, c // b, h, w, c % b)


def _unblocking(b: int):
    return lambda n, cb, h, w, cl: (n, cb * b + cl, h, w)


def _inverse(outer, inner, shape: tuple[int, ...]) -> bool:
    """Whether index map ``outer`` undoes ``inner`` on a tensor of ``shape`` (checked at its corners and
    a middle point; both are NCHW <-> NCHW[b]c maps here)."""
    points = [tuple(0 for _ in shape), tuple(d - 1 for d in shape), tuple(d // 2 for d in shape),
              tuple(min(d - 1, 1 + i) for i, d in enumerate(shape))]
    for p in points:
        back = outer.map_indices(inner.map_indices([tvm.tirx.IntImm("int64", v) for v in p]))
        if tuple(int(v) for v in back) != p:
            return False
    return True


@relax.expr_functor.mutator
class _Blocked(relax.PyExprMutator):
    def __init__(self, mod, func, machine: Machine, blocked_layout: bool):
        super().__init__(mod)
        self.machine, self.lanes, self.blocked_layout = machine, machine.lanes(), blocked_layout
        binds = bindings(func)
        self.bound = {b.value: b.var for b in binds}  # each call -> the variable it is bound to
        # the tensors some consumer will read blocked: transformed for a blocked operator, pooled (:meth:`_pool`)
        # or read by a sparse conv
        self.read_blocked = {b.value.args[0] for b in binds
                             if op_name(b.value) == "relax.layout_transform" or op_name(b.value) in POOLS}
        self.read_blocked |= {a for b in binds if callee_attr(mod, b.value, "reforge.op") == sparse_nchwc.OP
                              for a in b.value.args[1].fields}
        self.blocked: dict[tuple[relax.Expr, int], relax.Expr] = {}  # (NCHW tensor, block) -> blocked once
        self.pools: set[relax.Var] = set()  # poolings moved into the blocked layout

    def _blocked_source(self, x, b: int):
        """The NCHW[b]c tensor that ConvertLayout's transform to ``x`` undoes, or None."""
        index_map = tvm.tirx.IndexMap.from_func(_blocking(b), index_dtype="int64")
        value = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if op_name(value) == "relax.layout_transform" \
                and _inverse(index_map, value.attrs.index_map, tensor_shape(value.args[0])):
            return value.args[0]
        return None

    def _block(self, x, b: int):
        """``x`` in NCHW[b]c: :meth:`_blocked_source`, else a transform (one per tensor: a residual block's
        input is read by its conv and its add)."""
        if (x, b) not in self.blocked:
            index_map = tvm.tirx.IndexMap.from_func(_blocking(b), index_dtype="int64")
            self.blocked[x, b] = self._blocked_source(x, b)
            if self.blocked[x, b] is None:
                self.blocked[x, b] = self.builder_.emit(relax.op.layout_transform(x, index_map))
        return self.blocked[x, b]

    def _pool(self, call):
        """A pooling of a blocked tensor that ConvertLayout left in NCHW (it follows convs, and a sparse conv
        is none to it): pooled in the blocked layout, so the transforms on either side of it cancel."""
        c = tensor_shape(call.args[0])[1]
        for b in sorted({self.lanes, channel_block(c, self.lanes)}, reverse=True):
            src = self._blocked_source(call.args[0], b) if c % b == 0 and b >= MIN_BLOCK else None
            if src is not None:
                a = call.attrs
                pooled = self.builder_.emit(getattr(relax.op.nn, op_name(call).split(".")[-1])(
                    src, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode, a.count_include_pad,
                    layout=f"NCHW{b}c", out_layout=f"NCHW{b}c"))
                self.pools.add(pooled)
                return relax.op.layout_transform(pooled, tvm.tirx.IndexMap.from_func(_unblocking(b), index_dtype="int64"))
        return call

    def visit_call_(self, call):
        var = self.bound.get(call)
        call = self.visit_expr_post_order(call)
        if not self.blocked_layout:
            return self._sparse_conv(call, var)
        if op_name(call) == "relax.layout_transform":  # the consumer's block of a sparse conv's output
            value = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) else None
            if op_name(value) == "relax.layout_transform" \
                    and (value.args[0] in self.pools or callee_attr(self.builder_.get(), self.lookup_binding(
                        value.args[0]), "reforge.op") == sparse_nchwc.OP) \
                    and _inverse(call.attrs.index_map, value.attrs.index_map, tensor_shape(value.args[0])):
                return value.args[0]
            return call
        if op_name(call) in POOLS and str(call.attrs.layout) == "NCHW" and str(call.attrs.out_layout) == "NCHW":
            return self._pool(call)
        return self._sparse_conv(call, var)

    def _sparse_conv(self, call, var):
        """A sparse conv the pass emitted (NCHW; bound to ``var``) re-emitted in the machine's vectors, blocked
        where the layout is and its output channels fill a block; any other call as it is."""
        text = callee_attr(self.builder_.get(), call, sparse_nchwc.SPEC_ATTR)
        spec = None if text is None else sparse_nchwc.Spec.from_json(str(text))
        if spec is None or (spec.ib, spec.ob) != (1, 1):
            return call
        args = list(call.args[1].fields)
        ours = sparse_nchwc.for_machine(spec, self.machine)
        ib, ob = channel_block(spec.c, self.lanes), channel_block(spec.o, self.lanes)
        if not self.blocked_layout or ob < MIN_BLOCK:  # stays NCHW
            ours = sparse_nchwc.spread(ours, self.machine.cores)
            return call if ours == spec else self._emit(spec, ours, args)
        if self._blocked_source(args[0], ib) is None:
            ib = 1  # read NCHW as it comes (staged by vectors) rather than transformed for this conv alone
        if var is not None and var not in self.read_blocked:
            ob = 1  # no consumer reads it blocked: written in NCHW, not transformed back
        args[0] = self._block(args[0], ib) if ib > 1 else args[0]
        if "add" in spec.epilogue and ob > 1:
            args[-1] = self._block(args[-1], ob)
        ours = sparse_nchwc.chunked(dataclasses.replace(ours, ib=ib, ob=ob), self.machine.l1d_bytes)
        y = self._emit(spec, sparse_nchwc.spread(ours, self.machine.cores), args)
        if ob == 1:
            return y
        return relax.op.layout_transform(y, tvm.tirx.IndexMap.from_func(_unblocking(ob), index_dtype="int64"))

    def _emit(self, old, new, args):
        """The kernel of Spec ``new`` on ``args`` (the call's of ``old``'s kernel), its taps moved to ``new``'s."""
        taps = sparse_nchwc.retapped(sparse_nchwc.Taps(*(const_value(a) for a in (args[3], args[1], args[2]))),
                                     old, new)
        args[1:4] = [relax.const(taps.offsets), relax.const(taps.values), relax.const(taps.indptr)]
        return sparse_nchwc.emit(self.builder_, new, args)
