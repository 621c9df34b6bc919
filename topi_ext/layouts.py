"""Layout policy: which convolutions run in the blocked NCHW[x]c layout, and with what blocks."""

from __future__ import annotations

from tvm import relax

MIN_BLOCK = 4  # narrower output blocks do not fill a vector: leave those convs in NCHW
_NCHW = {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # explicit: otherwise a conv follows its input's layout


def channel_block(channels: int, lanes: int) -> int:
    """The largest divisor of ``channels`` that is at most ``lanes``."""
    return max(d for d in range(1, min(channels, lanes) + 1) if channels % d == 0)


def blocked_conv2d_layouts(lanes: int):
    """A ``ConvertLayout`` callback: NCHW conv2d with groups = 1 to NCHW[ib]c / OIHW[ib]i[ob]o / NCHW[ob]c;
    depthwise conv2d (groups = in = out channels) to NCHW[b]c / OIHW1i[b]o / NCHW[b]c.

    TVM's layout propagation then carries the blocked layout through the elementwise ops and
    pooling that follow, and inserts ``layout_transform`` only where a consumer needs NCHW. Relax's
    conv2d accepts the depthwise kernel layout: OIHW1i[b]o is (C/b, 1, kh, kw, 1, b), which reads
    back as OIHW (C, 1, kh, kw), and C = groups · 1 holds.
    """

    def choose(call: relax.Call) -> dict[str, list[str]]:
        if call.op.name != "relax.nn.conv2d":
            return {}
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout or "NCHW") != ("NCHW", "OIHW", "NCHW"):
            return {}
        out_ch, in_ch = (int(d) for d in call.args[1].ty.shape.values[:2])
        groups = int(a.groups)
        if groups == 1 and channel_block(out_ch, lanes) >= MIN_BLOCK:
            ib, ob = channel_block(in_ch, lanes), channel_block(out_ch, lanes)
            return {"relax.nn.conv2d": [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]}
        if groups == out_ch and in_ch == 1 and channel_block(out_ch, lanes) >= MIN_BLOCK:
            b = channel_block(out_ch, lanes)
            return {"relax.nn.conv2d": [f"NCHW{b}c", f"OIHW1i{b}o", f"NCHW{b}c"]}
        return _NCHW

    return choose
