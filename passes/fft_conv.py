"""fft-conv: large-kernel convolutions through tiled 2-D real DFTs (:mod:`reforge.topi_ext.fft_conv`).

    conv2d(x, W) on each L×L window = IDFT2(Σ_c DFT2(window) · conj(DFT2(W)))   (overlap-save)

Rewritten: ``relax.nn.conv2d`` with a constant weight, NCHW / OIHW, stride 1, dilation 1, groups 1,
any zero padding, static float32 shapes, where the cost model (:func:`fft_conv.prefer_fft`: measured
costs per multiply-add of the direct conv, the channel-mix GEMM and the DFT products; the weight
spectra, ``L·(L/2+1)·C·O`` complex values, at most ``MAX_SPECTRUM_BYTES``) estimates FFT faster, with
the FFT size it picks; where ``reforge tune`` measured the conv (its records' ``fft-conv`` choices), the
faster of direct and FFT as measured; or every such conv with ``FFTConv(policy="always")``. A following bias ``add``
stays as it is. On at -O2: it leaves 3×3 convs alone everywhere.
"""

from __future__ import annotations

from typing import Callable, Mapping

import tvm
from tvm import relax

from reforge.topi_ext import fft_conv

from .graph import cleanup, const_value, is_const, mutate_functions, op_name, tensor_dtype, tensor_shape
from .report import PassReport


@tvm.transform.module_pass(opt_level=0, name="reforge.fft-conv")
class FFTConv:
    """Rewrite large-kernel stride-1 convs to FFT convolutions with precomputed weight spectra."""

    def __init__(self, policy: str = "cost", size: int | None = None, measured: Mapping[str, int | None] = None):
        """``policy="always"`` rewrites every eligible conv, with FFT size ``size`` if given (> the kernel).
        ``measured`` (from ``reforge tune``'s records): conv key -> the FFT size measured fastest, or None
        where the direct conv was; it decides for the convs it names, the cost model for the others."""
        assert policy in ("cost", "always")
        self.report = PassReport()
        self.policy, self.size, self.measured = policy, size, dict(measured or {})

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return cleanup(mutate_functions(mod, lambda m, _f: _Rewrite(m, self.report, self._decide)))

    def _decide(self, g: fft_conv.FFTConvGeometry) -> tuple[fft_conv.Tiling | None, str]:
        """The tiling to rewrite ``g`` with (None: stay direct), and what decided it."""
        if self.policy == "always":
            return (fft_conv.plan_any(g) if self.size is None else fft_conv.Tiling(g, self.size)), ""
        if g.key in self.measured:
            size = self.measured[g.key]
            return (fft_conv.Tiling(g, size) if size else None), "measured"
        return fft_conv.prefer_fft(g), "cost model"


def eligible_convs(mod: tvm.IRModule) -> list[fft_conv.FFTConvGeometry]:
    """The convs of ``mod`` that fft-conv may rewrite, each geometry once, in graph order."""
    found: dict[str, fft_conv.FFTConvGeometry] = {}

    def collect(g):
        found.setdefault(g.key, g)
        return None, "collected"

    mutate_functions(mod, lambda m, _f: _Rewrite(m, PassReport(), collect))
    return list(found.values())


@relax.expr_functor.mutator
class _Rewrite(relax.PyExprMutator):
    def __init__(self, mod, report: PassReport, decide: Callable):
        super().__init__(mod)
        self.report, self.decide = report, decide

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
        tiling, why = self.decide(g)
        if tiling is None:
            self.report.note("left convs direct where tuning measured direct faster" if why == "measured"
                             else "left convs direct where the cost model estimates direct faster")
            return call
        self.report.count(f"conv {g.kh}x{g.kw} to FFT (L = {tiling.l}{', measured' if why == 'measured' else ''})")
        return fft_conv.emit_fft_conv2d(self.builder_, x, weight, g.padding, tiling=tiling)
