"""binarize: binarized conv2d / dense layers to reforge's bit-packed XNOR-popcount operators.

A layer is binary when its weight is ±1 (times a positive per-output-channel scale α, which is what
BatchNorm / XNOR-Net scales folded into the weight by fold-batchnorm look like; ``sign(W)`` on a
constant is folded by fold-constants, and the pass reads a left-over ``sign(const)`` itself) and its
input is one of:

    sign(x)                                  torch.sign, ONNX Sign: {-1, 0, +1}
    where(x >= 0, 1, -1)                     torch.where; QONNX BipolarQuant (frontend/qonnx.py)
    x + (s - x),  s one of the above         straight-through estimator (detach trick)
    max_pool2d / reshape of such a tensor
    q·s, q = rnd(clamp(v, lo, hi))           QONNX Quant (frontend/qonnx.py): unsigned (lo = 0, k = bits
                                             of hi) or signed ([lo, hi] = [-2^(k-1) (+1 narrow), 2^(k-1) - 1]),
                                             2 <= k <= 8, s a positive scalar (or folded into W)

Packing (``x`` the float tensor behind the spelling):
- ±1: bits ``x >= 0``, when the input provably holds no 0 (:meth:`_Binarize._nonzero`: a ``where``
  spelling, a sign of such a tensor, a fused threshold whose float expression is nonzero at every
  integer dot product); ``where(x >= 0, 1, -1)`` is reproduced exactly for every input (NaN included);
- ternary: ``sign(x)`` anywhere else (ONNX / torch ``Sign(0) = 0``): planes ``x > 0`` (sign), ``x != 0``
  (mask) and the ternary kernel, ``dot = Σ_{a>0} w - Σ_{a<0} w``, exact on inputs with exact zeros (NaN aside: a
  NaN input packs as 0 where the float conv gives NaN);
- k-bit: the bit planes of the integers q (of their two's complement when signed), ``dot = Σ_b s_b·Σ_c q_bc·w_c``
  with s_b = 2^b, the top plane's -2^(k-1) when signed; the scale s joins α in the float epilogue.

Rewrite: ``conv(act(x), α·S) -> bitserial_conv2d(pack(x), S)·α·s`` (NHWC result transposed back to
NCHW), the same for dense; the bias and everything after stay as they were (float epilogue). Where
the input of the next binary conv / dense is a ±1 ``sign(α·d + b)`` of a rewritten layer's dot product
d, the float epilogue and the pack become that layer's integer threshold (``bit = d >= thr[o]``): the
thresholds come from evaluating the graph's own float expression ``fl(fl(α·d) + b)`` at every integer
candidate d (kernel_algebra.binary_thresholds), so they are exact by construction. A ``sign`` whose
expression is exactly 0 at some integer d (a tie) is not ±1: it stays a float epilogue packed ternary
(reported); a ``where`` maps the tie to +1, as the threshold does.

Left in float, with the reason in the report: a ±1 weight with an exact 0, a k-bit Quant that has
a zero point, more than 8 bits, a per-channel scale or a range that is not a k-bit one (ONNX node names do not survive
TVM's importer: the reason names the setting), grouped / dilated convs.

Other exactness rules:
- the STE spelling ``x + (sign(x) - x)`` equals sign(x) in float32 for |x| < 2^24; it is read as
  sign(x) (and packed ternary: the STE of Sign maps 0 to 0).
- float epilogue: ``α·d`` is computed in float32 from the exact integer d; the float conv with
  ±α weights it replaces rounds its partial sums, so outputs agree to float rounding, and exactly
  when α (and s) are powers of two.

Max pooling between a thresholded conv and the next binary conv runs on the packed bits (an OR:
``max(y) >= 0`` iff some ``y >= 0``); any other pool stays float and its output is packed. A binary
dense after the NCHW flattening of such packed bits (channels a multiple of 64) reads the NHWC bits
as they are: its weight's input features are permuted at compile time instead.

Targets: the operators are scheduled at build for the CPU targets (x86, arm: the target's vector
width) and as single work-item OpenCL kernels for opencl-fpga (``popcount`` on 64-bit words), so
the registry runs the pass there; CUDA keeps binarized layers in float until the operators have a
GPU schedule that has run on a GPU.

Not (yet) covered: grouped / dilated convs, ternary weights, max pooling on
packed bits of a float-packed tensor.
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
    """A rewritten binary conv / dense: what a following threshold needs to emit it again."""

    packed: relax.Expr  # packed input [N, H, W, B, CW] (conv) or [N, B, KW] (dense)
    signs: np.ndarray  # ±1 OIHW (conv) or [M, K] (dense)
    alpha: np.ndarray  # the float epilogue's scale per output channel
    bound: int  # the dot products lie in [-bound, bound]
    ternary: bool
    strides: tuple = ()  # conv only
    padding: tuple = ()
    signed: bool = False  # k-bit planes of a two's complement


@dataclass
class _Act:
    """A binary layer's input: ``x`` is packed as ±1 (bits ``x >= 0``), ternary (``x > 0``, ``x != 0``)
    or as the k-bit integers it holds; ``scale`` is a scalar the layer's output is multiplied by."""

    x: relax.Expr
    spelling: str
    mode: str  # "pm1" | "ternary" | "kbit"
    bits: int = 1
    scale: float = 1.0
    signed: bool = False  # k-bit: the integers q are signed (two's complement planes)

    @property
    def max_abs(self) -> int:
        """The largest |value| the packed input holds."""
        if self.mode != "kbit":
            return 1
        return 2 ** (self.bits - 1) if self.signed else 2 ** self.bits - 1


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

    def _binary_layer(self, call, kind: str, w: np.ndarray | None, out_axis: int) -> tuple[np.ndarray, _Act] | None:
        """``(α, activation)`` for a binary layer, else None. Refusals are reported only for layers
        that look binarized: ±1 weights with an unsupported input (not for a 1-tap layer, whose weights
        are trivially of constant magnitude), a ±1 / k-bit input with a weight holding exact zeros, or
        a k-bit input whose per-channel scale was folded into a ±1 weight."""
        if w is None or w.dtype != np.float32:
            return None
        alpha, has_zero = ka.binary_scales(w, out_axis)
        act = self._activation(call.args[0])
        if alpha is None and not has_zero:
            if isinstance(act, _Act) and act.mode == "kbit" and _separable(w, out_axis):
                self.report.refuse(f"{kind} left in float: its k-bit input has a per-channel scale (folded into "
                                   f"the ±1 weight)")
            return None
        if has_zero:
            if isinstance(act, _Act):
                self.report.refuse(f"{kind} left in float: its ±1 weight has an exact 0 (Sign(0) = 0 is not ±1)")
            return None
        if not isinstance(act, _Act):
            if w.size // w.shape[out_axis] > 1:
                reason = act or "its input is not a ±1, ternary or k-bit activation"
                self.report.refuse(f"{kind} with ±1 weights left in float: {reason}")
            return None
        return alpha, act

    def _activation(self, expr) -> _Act | str | None:
        """How ``expr`` is packed: ±1 when it provably holds no 0 (:meth:`_nonzero`), ternary for a
        sign that may see an exact 0 (``Sign(0) = 0``), k-bit for a QONNX Quant; a string
        says why a k-bit input is not supported."""
        found = self._sign_of(expr)
        if found is None and self._is_pm1(expr):
            found = (expr, "±1")
        if found is not None:
            if self._nonzero(expr):
                return _Act(found[0], found[1], "pm1")
            return _Act(found[0] if found[1] in ("sign", "sign-ste") else expr, found[1] + ", ternary", "ternary")
        return self._kbit_of(expr)

    def _nonzero(self, expr, depth: int = 0) -> bool:
        """Whether ``expr`` provably holds no exact 0: a ``where(x >= 0, 1, -1)`` (STE or not), a sign of
        such a tensor, a max pool / reshape of one, or a rewritten layer's ``dot·α + b`` whose float
        expression is nonzero at every integer dot product (then its sign is a threshold)."""
        if depth > 16:
            return False
        found = self._sign_of(expr)
        if found is not None:
            return found[1].startswith("where") or self._nonzero(found[0], depth + 1)
        value = self._value(expr)
        if op_name(value) in ("relax.nn.max_pool2d", "relax.reshape", "relax.flatten"):
            return self._nonzero(value.args[0], depth + 1)
        fused = self._threshold_of(expr)
        if fused is None:
            return False
        layer, b = fused
        if ka.threshold_ties(layer.alpha, b, layer.bound):
            self.report.note("a BatchNorm + sign whose float expression is exactly 0 at some integer dot product "
                             "stays a float epilogue with a ternary pack (Sign(0) = 0)")
            return False
        return True

    def _kbit_of(self, expr) -> _Act | str | None:
        """``expr = q·s`` (s a positive scalar constant, 1 when absent; a per-tensor scale may also have
        been folded into the next layer's weight) with ``q = rnd(clamp(v, lo, hi))`` a k-bit integer,
        unsigned (lo = 0, ``2^k > hi``) or signed (``[-2^(k-1)`` or, narrow, ``-2^(k-1) + 1, 2^(k-1) - 1]``),
        as QONNX ``Quant`` lowers (frontend/qonnx.py); a string says why such a Quant is not supported
        (zero point, k > 8, per-channel scale, another range)."""
        value, scale = self._value(expr), None
        if op_name(value) in ("relax.reshape", "relax.flatten") and tensor_shape(expr) is not None:
            inner = self._kbit_of(value.args[0])  # flattened before a dense: reshape the integers instead
            if not isinstance(inner, _Act):
                return inner
            x = self.builder_.emit(relax.op.reshape(inner.x, tensor_shape(expr)))
            return _Act(x, inner.spelling, "kbit", inner.bits, inner.scale, inner.signed)
        if op_name(value) == "relax.multiply" and any(is_const(a) for a in value.args):
            q, s = value.args if is_const(value.args[1]) else value.args[::-1]
            expr, value, scale = q, self._value(q), const_value(s)
        if op_name(value) == "relax.subtract" and self._rounded_clamp(self._value(value.args[0])) is not None:
            return "its k-bit input has a non-zero zero point"
        bounds = self._rounded_clamp(value)
        if bounds is None:
            return None
        if scale is not None and (scale.size != 1 or not float(scale.reshape(-1)[0]) > 0):
            return "its k-bit input has a per-channel (or non-positive) scale"
        lo, hi = int(bounds[0]), int(bounds[1])
        scale = 1.0 if scale is None else float(scale.reshape(-1)[0])
        if lo == 0:
            bits = max(2, hi.bit_length())
            if bits > 8:
                return f"its k-bit input has {bits} > 8 bits"
            return _Act(expr, f"{bits}-bit", "kbit", bits, scale)
        bits = (hi + 1).bit_length()
        if hi < 1 or hi + 1 != 2 ** (bits - 1) or lo not in (-hi - 1, -hi):
            return f"its k-bit input's range [{lo}, {hi}] is neither unsigned nor a signed k-bit one"
        if bits > 8:
            return f"its k-bit input has {bits} > 8 bits"
        return _Act(expr, f"{bits}-bit signed", "kbit", bits, scale, signed=True)

    def _rounded_clamp(self, value) -> tuple[float, float] | None:
        """``(lo, hi)`` when ``value`` is a rounding (QONNX's modes: round, floor, ceil, or
        ``sign(c)·floor|ceil(|c| [± 0.5])``) of ``c = clamp(v, lo, hi)`` with integer bounds."""
        name = op_name(value)
        if name in ("relax.round", "relax.floor", "relax.ceil"):
            return self._clamp(value.args[0])
        if name != "relax.multiply":
            return None
        sgn, mag = (self._value(a) for a in value.args)
        if op_name(sgn) != "relax.sign" or op_name(mag) not in ("relax.floor", "relax.ceil"):
            return None
        inner = self._value(mag.args[0])
        if op_name(inner) in ("relax.add", "relax.subtract") and is_const(inner.args[1]):
            half = const_value(inner.args[1])
            inner = self._value(inner.args[0]) if half.size == 1 and abs(float(half.reshape(-1)[0])) == 0.5 else None
        if op_name(inner) != "relax.abs" or not self._var(inner.args[0]).same_as(self._var(sgn.args[0])):
            return None
        return self._clamp(sgn.args[0])

    def _clamp(self, expr) -> tuple[float, float] | None:
        """``(lo, hi)`` for ``where(v < lo, lo, where(v > hi, hi, v))`` (either order; QONNX's clamp)."""
        lo = hi = None
        value = self._value(expr)
        for _ in range(2):
            if op_name(value) != "relax.where":
                break
            cond, bound, rest = (self._value(a) for a in value.args)
            if (op_name(cond) not in ("relax.less", "relax.greater") or not is_const(bound)
                    or not is_const(cond.args[1]) or not self._var(cond.args[0]).same_as(self._var(value.args[2]))):
                return None
            b = const_value(bound)
            if (b.size != 1 or not float(b.reshape(-1)[0]).is_integer()
                    or not np.array_equal(const_value(cond.args[1]).reshape(-1), b.reshape(-1))):
                return None
            if op_name(cond) == "relax.less":
                lo = float(b.reshape(-1)[0])
            else:
                hi = float(b.reshape(-1)[0])
            value = rest
        return None if lo is None or hi is None else (lo, hi)

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
        alpha, act = layer
        packed = self._packed(act, "NCHW")
        signs = np.where(w >= 0, 1.0, -1.0).astype("float32")
        strides = tuple(int(s) for s in a["strides"])
        padding = tuple(int(p) for p in a["padding"])
        bb = self.builder_
        ternary = act.mode == "ternary"
        out = bs.emit_bitserial_conv2d(bb, packed, signs, strides, padding, "float32", ternary=ternary,
                                       signed=act.signed)
        y = bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
        alpha = _scaled(alpha, act.scale)
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, channel_const(alpha, 4, 1, "float32")))
        bound = int(np.prod(w.shape[1:])) * act.max_abs
        self.layers[y] = _Layer(packed, signs, alpha, bound, ternary, strides, padding, act.signed)
        self.report.count(f"conv -> bitserial_conv2d ({act.spelling})")
        return y

    def _dense(self, call):
        w = self._weight(call.args[1])
        shape = tensor_shape(call.args[0])
        if w is None or w.ndim != 2 or shape is None or len(shape) != 2:
            return None
        layer = self._binary_layer(call, "dense", w, 1)
        if layer is None:
            return None
        alpha, act = layer
        bb = self.builder_
        signs = np.where(w.T >= 0, 1.0, -1.0).astype("float32")  # [M, K]
        flat = self._flat_fused(act.x) if act.mode == "pm1" else None
        if flat is not None:  # packed NHWC bits of a thresholded conv: permute the weight's K instead
            packed, perm = flat
            signs = signs[:, perm]
        else:
            packed = self._packed(act, "NC")
        ternary = act.mode == "ternary"
        y = bs.emit_bitserial_dense(bb, packed, signs, "float32", ternary, signed=act.signed)
        alpha = _scaled(alpha, act.scale)
        if not np.all(alpha == 1):
            y = bb.emit(relax.op.multiply(y, relax.const(alpha.reshape(1, -1).astype("float32"))))
        bound = w.shape[0] * act.max_abs
        self.layers[y] = _Layer(packed, signs, alpha, bound, ternary, signed=act.signed)
        self.report.count(f"dense -> bitserial_dense ({act.spelling})")
        return y

    def _packed(self, act: _Act, layout: str):
        """The packed input of a binary layer (``[N, H, W, B, CW]``, ``[N, B, KW]`` for layout ``NC``).
        ±1: a rewritten layer's thresholded output when ``x`` is ``dot·α [+ b]`` of one, else a bitpack
        of ``x >= 0`` (a sign of a sign packs the same bits, ``sign(z) >= 0`` iff ``z >= 0``, NaN
        included, so nested signs are looked through); ternary: the planes ``x > 0``, ``x != 0``
        (those of ``sign(x)``); k-bit: the bit planes of the integers ``q``."""
        bb = self.builder_
        if act.mode == "ternary":
            return bs.emit_bitpack(bb, act.x, 1, WORD, layout, ternary=True)
        if act.mode == "kbit":
            return bs.emit_bitpack(bb, act.x, act.bits, WORD, layout)
        fused = self._fused(act.x, layout)
        if fused is not None:
            return fused
        return bs.emit_bitpack(bb, self._peel(act.x), 1, WORD, layout)

    def _peel(self, x):
        """``z`` for ``sign(sign(... z))``: the same bits (``sign(z) >= 0`` iff ``z >= 0``), so packing
        ``z`` leaves the float signs dead."""
        for _ in range(16):
            inner = self._sign_of(x)
            if inner is None:
                break
            x = inner[0]
        return x

    def _fused(self, x, layout: str = "NCHW", depth: int = 0):
        """The packed bits of ``x >= 0`` computed without unpacking, or None: ``x`` is (a sign of)
        a rewritten conv's (layout NCHW) or dense's (NC) ``dot·α [+ b]`` (threshold), or a max pooling
        of such a conv output (``max(y) >= 0`` iff some ``y >= 0``: an OR of the bits)."""
        x = self._peel(x)
        fused = self._threshold(x, layout)
        if fused is not None or depth > 8 or layout != "NCHW":
            return fused
        value = self._value(x)
        if op_name(value) == "relax.nn.max_pool2d":
            a = value.attrs
            if (a["layout"] == "NCHW" and (a["out_layout"] or "NCHW") == "NCHW" and not a["ceil_mode"]
                    and all(int(p) == 0 for p in a["padding"]) and all(int(d) == 1 for d in a["dilation"])):
                inner = self._fused(value.args[0], layout, depth + 1)
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

    def _threshold_of(self, x) -> tuple[_Layer, np.ndarray] | None:
        """``(layer, b)`` when ``x`` is a rewritten layer's ``dot·α [+ b]`` (b per output channel)."""
        value, bias = self._value(x), None
        src = x
        if op_name(value) == "relax.add" and is_const(value.args[1]):
            src, bias = value.args[0], const_value(value.args[1])
        layer = self.layers.get(self._var(src))
        shape = tensor_shape(x)
        if layer is None or shape is None:
            return None
        b = np.zeros(len(layer.alpha), "float32")
        if bias is not None:
            b = channel_vector(bias, shape, 1)
            if b is None or bias.dtype != np.float32:
                return None
        return layer, b

    def _threshold(self, x, layout: str):
        """The layer behind ``x`` emitted again with the integer threshold of ``sign(dot·α + b)`` as its
        epilogue (``bit = d >= thr``, found by evaluating the float expression at every integer d);
        a tie (exactly 0) counts as +1, which is right for the spellings that reach here (a ``where``,
        or a sign :meth:`_nonzero` proved tie-free)."""
        fused = self._threshold_of(x)
        if fused is None or (layout == "NC") != (not fused[0].strides):
            return None
        layer, b = fused
        thr, flip = ka.binary_thresholds(layer.alpha, b, layer.bound)
        self.report.thresholds += 1
        flip = flip if flip.any() else None
        if layout == "NC":
            return bs.emit_bitserial_dense(self.builder_, layer.packed, layer.signs, ternary=layer.ternary,
                                           threshold=thr, flip=flip, signed=layer.signed)
        return bs.emit_bitserial_conv2d(self.builder_, layer.packed, layer.signs, layer.strides, layer.padding,
                                        threshold=thr, flip=flip, ternary=layer.ternary, signed=layer.signed)


def _scaled(alpha: np.ndarray, scale: float) -> np.ndarray:
    """The epilogue's per-channel scale ``α·s`` (float32, as the graph would multiply)."""
    return alpha if scale == 1.0 else (alpha * np.float32(scale)).astype("float32")


def _separable(w: np.ndarray, out_axis: int) -> bool:
    """Whether ``|W| = α[o]·β[c]`` (equal over each (o, c) kernel, rank one): a ±1 weight with a
    per-input-channel scale folded into it."""
    mag = np.abs(np.moveaxis(w, out_axis, 0))
    mag = mag.reshape(mag.shape[0], mag.shape[1], -1)  # [O, C, taps]
    if not np.all(mag > 0) or not np.all(mag == mag[:, :, :1]):
        return False
    m = mag[:, :, 0]
    return bool(np.allclose(m, np.outer(m[:, 0], m[0, :] / m[0, 0]), rtol=1e-5))
