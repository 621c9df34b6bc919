"""Layout policy: which convolutions run in the blocked NCHW[x]c layout, and with what blocks."""

from __future__ import annotations

from collections.abc import Mapping

from tvm import relax

from .grouped_nchwc import groups_per_block_group

MIN_BLOCK = 4  # narrower output blocks do not fill a vector: leave those convs in NCHW
_NCHW = {"relax.nn.conv2d": ["NCHW", "OIHW"]}  # explicit: otherwise a conv follows its input's layout


def channel_block(channels: int, lanes: int) -> int:
    """The largest divisor of ``channels`` that is at most ``lanes``."""
    return max(d for d in range(1, min(channels, lanes) + 1) if channels % d == 0)


def grouped_blocks(in_ch: int, out_ch: int, groups: int, lanes: int,
                   ib: int | None = None, ob: int | None = None) -> tuple[int, int, int] | None:
    """(data block x, kernel input block, output block y) of a grouped conv (1 < groups < channels),
    or None (NCHW). The blocks the convs around it take (:func:`channel_block` of its channels), over
    block groups of the fewest k whole groups whose channels are whole blocks (:mod:`.grouped_nchwc`):
    k = 1 (x | I/groups, y | O/groups), kernel OIHW[x]i[y]o; else kernel OIHW[I/groups]i[y]o, made at
    legalization the rotated form's (groups of g in and out, one block a multiple of g) or the block
    groups' with k − 1 zero products in k, taken for groups at least MIN_BLOCK wide and k at most
    lanes / MIN_BLOCK (a vector of one group's width wastes as many lanes).
    Otherwise NCHW: TVM's ConvertLayout cannot move a tensor between two channel blocks (NCHW13c to
    NCHW8c failed for RegNetY's 104 channels in groups of 8), so other blocks would leave the whole
    graph in NCHW. ``ib`` / ``ob``, where given, are the data / output blocks of the tensors around it."""
    group_in, group_out = in_ch // groups, out_ch // groups
    ib = channel_block(in_ch, lanes) if ib is None else ib
    ob = channel_block(out_ch, lanes) if ob is None else ob
    k = groups_per_block_group(group_in, group_out, groups, ib, ob)
    if k is None or ob < MIN_BLOCK:
        return None
    if k == 1:
        return ib, ib, ob
    if min(group_in, group_out) >= MIN_BLOCK and k <= lanes // MIN_BLOCK:
        return ib, group_in, ob
    return None


def blocked_conv2d_layouts(lanes: int, blocks: Mapping[relax.Call, tuple[int, int]] | None = None):
    """A ``ConvertLayout`` callback: NCHW conv2d with groups = 1 to NCHW[ib]c / OIHW[ib]i[ob]o / NCHW[ob]c;
    depthwise conv2d (groups = in = out channels) to NCHW[b]c / OIHW1i[b]o / NCHW[b]c; other grouped
    convs to the blocks of :func:`grouped_blocks`.

    TVM's layout propagation then carries the blocked layout through the elementwise ops and
    pooling that follow, and inserts ``layout_transform`` only where a consumer needs NCHW. Relax's
    conv2d accepts the depthwise kernel layout: OIHW1i[b]o is (C/b, 1, kh, kw, 1, b), which reads
    back as OIHW (C, 1, kh, kw), and C = groups · 1 holds; so does a grouped kernel whose input block
    divides I/groups (its OIHW reading is (O, I/groups, kh, kw) whatever the data's block).

    ``blocks`` maps a conv call to the (input, output) blocks of the tensors around it
    (:func:`reforge.passes.channel_blocks.conv_channel_blocks`), in place of each channel count's own
    :func:`channel_block`; a depthwise conv's two are one.
    """

    def choose(call: relax.Call) -> dict[str, list[str]]:
        if call.op.name != "relax.nn.conv2d":
            return {}
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout or "NCHW") != ("NCHW", "OIHW", "NCHW"):
            return {}
        out_ch, in_ch = (int(d) for d in call.args[1].ty.shape.values[:2])
        groups = int(a.groups)
        ib, ob = (blocks or {}).get(call) or (channel_block(in_ch * groups, lanes), channel_block(out_ch, lanes))
        if groups == 1 and ob >= MIN_BLOCK:
            return {"relax.nn.conv2d": [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]}
        if groups == out_ch and in_ch == 1 and ob >= MIN_BLOCK:
            return {"relax.nn.conv2d": [f"NCHW{ob}c", f"OIHW1i{ob}o", f"NCHW{ob}c"]}
        if 1 < groups < out_ch and in_ch > 1:
            grouped = grouped_blocks(in_ch * groups, out_ch, groups, lanes, ib, ob)
            if grouped is not None:
                ib, ki, ob = grouped
                return {"relax.nn.conv2d": [f"NCHW{ib}c", f"OIHW{ki}i{ob}o", f"NCHW{ob}c"]}
        return _NCHW

    return choose
