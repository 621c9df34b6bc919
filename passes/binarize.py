"""binarize: binarized conv2d / dense layers to reforge's bit-packed XNOR-popcount operators.

A layer is binary when its weight is ±1 (times a positive per-output-channel scale α, which is what
BatchNorm / XNOR-Net scales folded into the weight by fold-batchnorm look like; ``sign(W)`` on a
constant is folded by fold-constants, and the pass reads a left-over ``sign(const)`` itself) and its
input is a ±1 activation, in any of the spellings exporters emit:

    sign(x)                                  torch.sign, ONNX Sign
    where(x >= 0, 1, -1)                     torch.where; QONNX BipolarQuant (frontend/qonnx.py)
    x + (s - x),  s one of the above         straight-through estimator (detach trick)
    max_pool2d / reshape of a ±1 tensor      (a ±1 tensor is packed as it is)

Rewrite: ``conv(sign(x), α·S) -> bitserial_conv2d(bitpack(x >= 0), S)·α`` (NHWC result transposed
back to NCHW), the same for dense; the bias and everything after stay as they were (float epilogue).
Where the input of the next binary conv is ``sign(α·d + b)`` of a rewritten conv's dot product d,
the float epilogue and the pack become the conv's integer threshold (``bit = d >= thr[o]``): the
thresholds come from evaluating the graph's own float expression ``fl(fl(α·d) + b)`` at every
integer candidate d (kernel_algebra.binary_thresholds), so they are exact by construction.

Exactness rules:
- weights: checked at compile time. A weight with an exact 0 (``Sign(0) = 0``) is not ±1: the layer
  stays float and the report says so. Zero padding is exact (the operators' border correction).
- activations: bits are ``x >= 0`` (+1) / ``x < 0`` (-1). ``where(x >= 0, 1, -1)`` is reproduced
  exactly for every input (NaN included). ONNX / torch ``Sign(0) = 0`` is not a ±1 value: for the
  ``sign`` spelling the rewritten layer equals the original on every input without exact zeros in
  the tensor fed to sign, and where that tensor holds an exact 0 the layer computes as if it were
  +1 (the BNN convention of Courbariaux et al., larq, TVM's binarize_pack). Whether a float input
  can be exactly 0 is not provable in general; for a fused threshold the pass checks every integer
  candidate and notes in the report if the affine expression can be exactly 0 (a tie).
- the STE spelling ``x + (sign(x) - x)`` equals sign(x) in float32 for |x| < 2^24; it is read as
  sign(x).
- float epilogue: ``α·d`` is computed in float32 from the exact integer d; the float conv with
  ±α weights it replaces rounds its partial sums, so outputs agree to float rounding, and exactly
  when α = 1.

Max pooling between a thresholded conv and the next binary conv runs on the packed bits (an OR:
``max(y) >= 0`` iff some ``y >= 0``); any other pool stays float and its output is packed. A binary
dense after the NCHW flattening of such packed bits (channels a multiple of 64) reads the NHWC bits
as they are: its weight's input features are permuted at compile time instead.

Targets: the operators are scheduled at build for the CPU targets (x86, arm: the target's vector
width) and as single work-item OpenCL kernels for opencl-fpga (``popcount`` on 64-bit words), so
the registry runs the pass there; CUDA keeps binarized layers in float until the operators have a
GPU schedule that has run on a GPU.

Not (yet) covered: k-bit activations (QONNX ``Quant``), grouped / dilated convs, a ternary kernel
that would make ``Sign(0) = 0`` exact, max pooling on packed bits of a float-packed tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from reforge.topi_ext import bitserial as bs

from . import kernel_algebra as ka
from .graph import (channel_const, channel_vector, cleanup, const_value, is_const, mutate_functions, op_name,
                    tensor_shape)
from .report import BlockReport

WORD = "uint64"


@dataclass
class BinarizeReport(BlockReport):
    """Layers rewritten / refused (BlockReport) and the BatchNorm + sign pairs fused into thresholds."""

    thresholds: int = 0
    ties: int = 0
    pools: int = 0
    flattens: int = 0

    def to_json(self) -> dict:
        out = super().to_json()
        out["thresholds"] = self.thresholds
        out["packed_pools"] = self.pools
        out["packed_flattens"] = self.flattens
        return out


@tvm.transform.module_pass(opt_level=0, name="reforge.binarize")
class Binarize:
    """Rewrite binarized conv2d / dense layers to bit-serial operators, fusing BN + sign into thresholds."""

    def __init__(self):
        self.report = BinarizeReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod = mutate_functions(mod, lambda m, f: _Binarize(m, self.report))
        return cleanup(mod)


@dataclass
class _Layer:
    """A rewritten binary conv: what a following threshold needs to emit it again."""

    packed: relax.Expr  # packed ±1 input [N, H, W, 1, CW]
    signs: np.ndarray  # ±1 OIHW
    alpha: np.ndarray
    strides: tuple
    padding: tuple
    taps: int  # C·KH·KW: the dot products lie in [-taps, taps]


def _sign_input(value) -> tuple[relax.Expr, str] | None:
    """``(x, spelling)`` if ``value`` is ``sign(x)`` or ``where(x >= 0, 1, -1)``."""
    name = op_name(value)
    if name == "relax.sign":
        return value.args[0], "sign"
    if name == "relax.where":
        cond, a, b = value.args
        if not (is_const(a) and is_const(b)):
            return None
        va, vb = const_value(a), const_value(b)
        if va.size != 1 or vb.size != 1 or float(va.reshape(-1)[0]) != 1.0 or float(vb.reshape(-1)[0]) != -1.0:
            return None
        return cond, "where"  # cond is resolved by the caller
    return None


@relax.expr_functor.mutator
class _Binarize(relax.PyExprMutator):
    def __init__(self, mod, report: BinarizeReport):
        super().__init__(mod)
        self.report = report
        self.layers: dict[relax.Var, _Layer] = {}  # float outputs (dot·α, NCHW) of rewritten convs

    # ------------------------------------------------------------------ reading the graph

    def _value(self, expr):
        """The value bound to ``expr``, through aliases; ``expr`` itself if it is not a bound var."""
        seen = 0
        while isinstance(expr, relax.Var) and seen < 64:
            bound = self.lookup_binding(expr)
            if bound is None:
                return expr
            expr, seen = bound, seen + 1
        return expr

    def _var(self, expr):
        """The last variable on an alias chain (the key of ``self.layers``)."""
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if not isinstance(bound, relax.Var):
                return expr
            expr = bound
        return expr

    def _sign_of(self, expr) -> tuple[relax.Expr, str] | None:
        """``(x, spelling)`` when ``expr`` is a ±1 activation computed from float ``x`` (bits ``x >= 0``)."""
        value = self._value(expr)
        found = _sign_input(value)
        if found is not None and found[1] == "where":
            cond = self._value(found[0])
            if op_name(cond) != "relax.greater_equal" or not is_const(cond.args[1]):
                return None
            zero = const_value(cond.args[1])
            if zero.size != 1 or float(zero.reshape(-1)[0]) != 0.0:
                return None
            return cond.args[0], "where"
        if found is not None:
            return found
        # straight-through estimator: x + (s - x) with s = sign(x) / where(x >= 0, 1, -1)
        if op_name(value) == "relax.add":
            for x, diff in (value.args, value.args[::-1]):
                d = self._value(diff)
                if op_name(d) == "relax.subtract" and d.args[1].same_as(x):
                    inner = self._sign_of(d.args[0])
                    if inner is not None and inner[0].same_as(x):
                        return x, inner[1] + "-ste"
        return None

    def _is_pm1(self, expr, depth: int = 0) -> bool:
        """Whether ``expr`` holds ±1 values (a sign output, max pooling / reshape of one)."""
        if depth > 16:
            return False
        if self._sign_of(expr) is not None:
            return True
        value = self._value(expr)
        if op_name(value) in ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten"):
            return self._is_pm1(value.args[0], depth + 1)
        return False

    def _weight(self, expr) -> np.ndarray | None:
        if is_const(expr):
            return const_value(expr)
        value = self._value(expr)
        if op_name(value) == "relax.sign" and is_const(value.args[0]):
            return np.sign(const_value(value.args[0]))
        return None

    # ------------------------------------------------------------------ rewriting

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = op_name(call)
        new = None
        if name == "relax.nn.conv2d":
            new = self._conv(call)
        elif name == "relax.matmul":
            new = self._dense(call)
        return call if new is None else new

    def _binary_layer(self, call, kind: str, w: np.ndarray | None, out_axis: int):
        """``(α, (x, spelling))`` for a binary layer, else None. Refusals are reported only for layers
        that look binarized: ±1 weights with a non-±1 input (not for a 1-tap layer, whose weights are
        trivially of constant magnitude), or a ±1 input with a weight holding exact zeros."""
        if w is None or w.dtype != np.float32:
            return None
        alpha, has_zero = ka.binary_scales(w, out_axis)
        if alpha is None and not has_zero:
            return None
        found = self._sign_of(call.args[0])
        if found is None and self._is_pm1(call.args[0]):
            found = (call.args[0], "±1")
        if has_zero:
            if found is not None:
                self.report.refuse(f"{kind} left in float: its ±1 weight has an exact 0 (Sign(0) = 0 is not ±1)")
            return None
        if found is None:
            if w.size // w.shape[out_axis] > 1:
                self.report.refuse(f"{kind} with ±1 weights left in float: its input is not a ±1 activation")
            return None
        return alpha, found

    def _conv(self, call):
        a = call.attrs
        w = self._weight(call.args[1])
        if (w is None or w.ndim != 4 or int(a["groups"]) != 1 or any(int(d) != 1 for d in a["dilation"])
                or (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW")
                or tensor_shape(call.args[0]) is None):
            return None
        layer = self._binary_layer(call, "conv", w, 0)
        if layer is None:
            return None
        alpha, (x, spelling) = layer
        packed = self._packed(x)
        signs = np.where(w >= 0, 1.0, -1.0).astype("float32")
        strides = tuple(int(s) for s in a["strides"])
        padding = tuple(int(p) for p in a["padding"])
        bb = self.builder_
        out = bs.emit_bitserial_conv2d(bb, packed, signs, strides, padding, "float32")
        y = bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, channel_const(alpha, 4, 1, "float32")))
        self.layers[y] = _Layer(packed, signs, alpha, strides, padding, int(np.prod(w.shape[1:])))
        self.report.count(f"conv -> bitserial_conv2d ({spelling})")
        return y

    def _dense(self, call):
        w = self._weight(call.args[1])
        shape = tensor_shape(call.args[0])
        if w is None or w.ndim != 2 or shape is None or len(shape) != 2:
            return None
        layer = self._binary_layer(call, "dense", w, 1)
        if layer is None:
            return None
        alpha, (x, spelling) = layer
        bb = self.builder_
        signs = np.where(w.T >= 0, 1.0, -1.0).astype("float32")  # [M, K]
        flat = self._flat_fused(x)
        if flat is not None:  # packed NHWC bits of a thresholded conv: permute the weight's K instead
            packed, perm = flat
            signs = signs[:, perm]
        else:
            packed = bs.emit_bitpack(bb, self._peel(x), 1, WORD, "NC")
        y = bs.emit_bitserial_dense(bb, packed, signs, "float32")
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, relax.const(alpha.reshape(1, -1).astype("float32"))))
        self.report.count(f"dense -> bitserial_dense ({spelling})")
        return y

    def _packed(self, x):
        """Packed ±1 bits of ``x >= 0`` ``[N, H, W, 1, CW]``: a rewritten conv's thresholded output
        when ``x`` is ``dot·α [+ b]`` of one, else a bitpack of ``x``. A sign of a sign packs the
        same bits (``sign(z) >= 0`` iff ``z >= 0``, NaN included), so nested signs are looked through."""
        fused = self._fused(x)
        if fused is not None:
            return fused
        return bs.emit_bitpack(self.builder_, self._peel(x), 1, WORD, "NCHW")

    def _peel(self, x):
        """``z`` for ``sign(sign(... z))``: the same bits (``sign(z) >= 0`` iff ``z >= 0``), so packing
        ``z`` leaves the float signs dead."""
        for _ in range(16):
            inner = self._sign_of(x)
            if inner is None:
                break
            x = inner[0]
        return x

    def _fused(self, x, depth: int = 0):
        """The packed bits of ``x >= 0`` computed without unpacking, or None: ``x`` is (a sign of)
        a rewritten conv's ``dot·α [+ b]`` (threshold), or a max pooling of such a tensor
        (``max(y) >= 0`` iff some ``y >= 0``: an OR of the bits)."""
        x = self._peel(x)
        fused = self._threshold(x)
        if fused is not None or depth > 8:
            return fused
        value = self._value(x)
        if op_name(value) == "relax.nn.max_pool2d":
            a = value.attrs
            if (a["layout"] == "NCHW" and (a["out_layout"] or "NCHW") == "NCHW" and not a["ceil_mode"]
                    and all(int(p) == 0 for p in a["padding"]) and all(int(d) == 1 for d in a["dilation"])):
                inner = self._fused(value.args[0], depth + 1)
                if inner is not None:
                    self.report.pools += 1
                    return bs.emit_bitpool(self.builder_, inner, [int(p) for p in a["pool_size"]],
                                           [int(p) for p in a["strides"]])
        return None

    def _flat_fused(self, x):
        """``(packed [N, 1, H·W·CW], perm)`` when ``x`` is (a sign of) the NCHW flattening of a tensor
        :meth:`_fused` keeps packed (NHWC bits, C a multiple of the word): the dense reads those words
        directly, with its weight's input features permuted from ``c·H·W + y·W + x`` to
        ``(y·W + x)·C + c``."""
        x = self._peel(x)
        value = self._value(x)
        if op_name(value) not in ("relax.reshape", "relax.flatten"):
            return None
        src, out = tensor_shape(value.args[0]), tensor_shape(x)
        if (src is None or out is None or len(src) != 4 or out != (src[0], src[1] * src[2] * src[3])
                or src[1] % bs.word_bits(WORD)):
            return None
        packed = self._fused(value.args[0])
        if packed is None:
            return None
        n, c, h, w = src
        flat = self.builder_.emit(relax.op.reshape(packed, [n, 1, h * w * bs.num_words(c, WORD)]))
        self.report.flattens += 1
        return flat, np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)

    def _threshold(self, x):
        value, bias = self._value(x), None
        src = x
        if op_name(value) == "relax.add" and is_const(value.args[1]):
            src, bias = value.args[0], const_value(value.args[1])
        layer = self.layers.get(self._var(src))
        shape = tensor_shape(x)
        if layer is None or shape is None:
            return None
        channels = len(layer.alpha)
        b = np.zeros(channels, "float32")
        if bias is not None:
            b = channel_vector(bias, shape, 1)
            if b is None or bias.dtype != np.float32:
                return None
        thr, flip = ka.binary_thresholds(layer.alpha, b, layer.taps)
        ties = ka.threshold_ties(layer.alpha, b, layer.taps)
        if ties:
            self.report.ties += ties
            self.report.note("a fused BatchNorm + sign can see an exact 0 at some integer dot product: packed as +1 "
                             "where ONNX Sign gives 0")
        self.report.thresholds += 1
        return bs.emit_bitserial_conv2d(self.builder_, layer.packed, layer.signs, layer.strides, layer.padding,
                                        threshold=thr, flip=flip if flip.any() else None)
