"""fft-conv: large-kernel convolutions through the 2-D real DFT (:mod:`reforge.topi_ext.fft_conv`).

    conv2d(x, W) = IDFT2(Σ_c DFT2(x_pad) · conj(DFT2(W)))      weight spectra computed here, once

Rewritten: ``relax.nn.conv2d`` with a constant weight, NCHW / OIHW, stride 1, dilation 1, groups 1,
any zero padding, static float32 shapes, where the cost model (:func:`fft_conv.prefer_fft`: the kernel
at least 5×5 and several times fewer weighted multiply-adds than the direct conv) picks FFT, or every
such conv with ``FFTConv(policy="always")``. A following bias ``add`` stays as it is.

Off by default (on request: ``--enable-pass fft-conv``): the transforms and the per-frequency channel
mix are plain matmuls under the default schedules, not a tuned FFT kernel; the cost model is fitted
to ten layer shapes on one CPU; and the weight spectra, ``L_h·(L_w/2+1)·C·O`` complex values, are not
yet capped in size (92 MB for 64 channels at 64², k = 11; gigabytes for wide layers on large maps).
"""

from __future__ import annotations

import tvm
from tvm import relax

from reforge.topi_ext import fft_conv

from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport


@tvm.transform.module_pass(opt_level=0, name="reforge.fft-conv")
class FFTConv:
    """Rewrite large-kernel stride-1 convs to FFT convolutions with precomputed weight spectra."""

    def __init__(self, policy: str = "cost"):
        assert policy in ("cost", "always")
        self.report = PassReport()
        self.policy = policy

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self.policy)))


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, policy: str):
        super().__init__(mod)
        self.report, self.policy = report, policy

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.nn.conv2d" or not is_const(call.args[1]) or is_const(call.args[0]):
            return call
        x, a = call.args[0], call.attrs
        shape = tensor_shape(x)
        if shape is None or tensor_dtype(x) != "float32" or tensor_shape(call) is None:
            return call
        if (a["data_layout"], a["kernel_layout"], a["out_layout"] or "NCHW") != ("NCHW", "OIHW", "NCHW") \
                or int(a["groups"]) != 1:
            return call
        if any(int(s) != 1 for s in a["strides"]) or any(int(d) != 1 for d in a["dilation"]):
            self.report.note("left a strided or dilated conv direct: the FFT path is stride 1, dilation 1 only")
            return call
        weight = const_value(call.args[1])
        g = fft_conv.geometry(shape, weight.shape, [int(p) for p in a["padding"]])
        if self.policy == "cost" and not fft_conv.prefer_fft(g):
            self.report.note("left convs direct where the cost model prefers it (every kernel below 5x5)"
                             if min(g.kh, g.kw) < fft_conv.MIN_KERNEL else
                             "left a large-kernel conv direct: the cost model prefers it at this size")
            return call
        self.report.count(f"conv {g.kh}x{g.kw} to FFT")
        return fft_conv.emit_fft_conv2d(self.builder_, x, weight, g.padding)
