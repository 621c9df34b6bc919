"""fft-conv by measurement: ``reforge tune`` times each conv the pass may rewrite, direct and as FFT
convolutions at the cost model's best FFT sizes, alone and on the tuning device, and records the
fastest. ``compile --tuning-records`` then follows the record for every conv it names, the cost
model for the rest.

Measured: convs whose two estimates lie within CLOSE of each other, where the cost model's error
(run-to-run noise and its 1.3x margin, see topi_ext/fft_conv.py) can pick the slower way;
farther apart, the estimate decides.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax

from reforge.build import build
from reforge.passes.fft_conv import FFTConv
from reforge.topi_ext import fft_conv

CLOSE = 4.0  # convs whose direct and FFT estimates differ by more than this factor are not measured
SIZES = 2  # FFT sizes measured per conv: the cost model's best ones


def candidates(g: fft_conv.FFTConvGeometry) -> list[fft_conv.Tiling]:
    """The FFT tilings worth measuring for ``g`` (cheapest estimate first); none when the cost model is sure."""
    fits = fft_conv.tilings(g)
    if not fits:
        return []
    ratio = fft_conv.direct_ns(g) / fft_conv.fft_ns(fits[0])
    return fits[:SIZES] if 1 / CLOSE <= ratio <= CLOSE else []


def conv_alone(g: fft_conv.FFTConvGeometry) -> tvm.IRModule:
    """A Relax module computing just the conv ``g`` (random constant weight)."""
    weight = np.random.default_rng(0).standard_normal((g.o, g.c, g.kh, g.kw)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((g.n, g.c, g.h, g.w), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), padding=list(g.padding)))
        bb.emit_func_output(out)
    return bb.get()


def measure(g: fft_conv.FFTConvGeometry, tgt, timer: Callable) -> dict | None:
    """Time the conv direct and at each candidate FFT size with ``timer(executable, arrays)`` (seconds);
    the record ``{"fft_size": fastest size or None for direct, "ms": {way: median ms}}``, None when
    the cost model is sure."""
    tilings = candidates(g)
    if not tilings:
        return None
    mod = conv_alone(g)
    arrays = [np.random.default_rng(1).standard_normal((g.n, g.c, g.h, g.w)).astype("float32")]
    ways = {"direct": mod, **{f"fft L={t.l}": FFTConv("always", t.l)(mod) for t in tilings}}
    ms = {way: round(timer(build(m, tgt)[0], arrays) * 1e3, 4) for way, m in ways.items()}
    fastest = min(ms, key=ms.get)
    return {"fft_size": None if fastest == "direct" else int(fastest.split("=")[1]), "ms": ms}
