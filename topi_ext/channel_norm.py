"""Layer normalization over the channels of an image tensor (ConvNeXt's LayerNorm), in NCHW and in the
blocked layout NCHW[L]c:

    y[n, c, h, w] = (x[n, c, h, w] − μ[n, h, w]) / √(σ²[n, h, w] + ε) · γ[c] + β[c]
    μ = mean_c x,   σ² = mean_c (x − μ)²

Relax's ``layer_norm`` over axis 1, and the same statistics spelled with ``mean`` over axis 1, have
no layout inference for blocked channels in TVM 0.27 (``ConvertLayout`` fails and leaves the whole
model in NCHW). Relax: :func:`emit_channel_layer_norm` adds a PrimFunc (attribute
``reforge.op = "channel_layer_norm"``, its ε kept to emit it again) and a ``call_tir``, which
``ConvertLayout`` leaves in NCHW and the build then re-emits on the blocked tensor
(:func:`reforge.passes.blocked_forms.channel_moves_in_blocked_layout`).
"""

from __future__ import annotations

from tvm import relax, te, tirx

OP = "channel_layer_norm"  # the PrimFunc's ``reforge.op`` attribute


def channel_layer_norm(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float) -> te.Tensor:
    """The normalization of ``x`` over its channels: axis 1 of NCHW, or axes 1 and 4 of NCHW[L]c
    (``gamma`` and ``beta`` of shape ``(C,)``)."""
    blocked = len(x.shape) == 5
    n, blocks_or_c, h, w = x.shape[:4]
    lanes = x.shape[4] if blocked else 1
    channels = blocks_or_c * lanes
    dtype = x.dtype
    kb = te.reduce_axis((0, blocks_or_c), "kb")
    kl = te.reduce_axis((0, lanes), "kl")

    def at(i, b, r, c, lane):
        return x[i, b, r, c, lane] if blocked else x[i, b, r, c]

    inv = tirx.const(1.0, dtype) / tirx.Cast(dtype, channels)
    mean = te.compute((n, h, w), lambda i, r, c: te.sum(at(i, kb, r, c, kl) * inv, axis=[kb, kl]), name="mean")
    vb = te.reduce_axis((0, blocks_or_c), "vb")
    vl = te.reduce_axis((0, lanes), "vl")
    var = te.compute((n, h, w), lambda i, r, c: te.sum(
        (at(i, vb, r, c, vl) - mean[i, r, c]) * (at(i, vb, r, c, vl) - mean[i, r, c]) * inv, axis=[vb, vl]),
        name="variance")

    def normalized(i, b, r, c, lane):
        ch = b * lanes + lane
        scale = tirx.rsqrt(var[i, r, c] + tirx.const(eps, dtype)) * gamma[ch]
        return (at(i, b, r, c, lane) - mean[i, r, c]) * scale + beta[ch]

    if blocked:
        return te.compute(x.shape, normalized, name=OP)
    return te.compute(x.shape, lambda i, b, r, c: normalized(i, b, r, c, 0), name=OP)


def emit_channel_layer_norm(bb: relax.BlockBuilder, x: relax.Expr, gamma: relax.Expr, beta: relax.Expr,
                            eps: float) -> relax.Expr:
    """Emit the normalization of the Relax tensor ``x`` (NCHW or NCHW[L]c) into ``bb``; returns its var."""
    tensors = [te.placeholder([tirx.IntImm("int64", int(d)) for d in v.ty.shape], str(v.ty.dtype), name)
               for v, name in ((x, "x"), (gamma, "gamma"), (beta, "beta"))]
    out = channel_layer_norm(*tensors, eps)
    func = te.create_prim_func([*tensors, out]).with_attr("reforge.op", OP).with_attr("reforge.eps", float(eps))
    gv = bb.add_func(func.without_attr("global_symbol"), OP)
    return bb.emit(relax.call_tir(gv, [x, gamma, beta], relax.TensorType([int(d) for d in x.ty.shape],
                                                                         str(x.ty.dtype))))
