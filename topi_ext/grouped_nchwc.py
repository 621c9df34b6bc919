"""Grouped conv2d (1 < groups < channels) in the blocked layout NCHW[x]c, over *block groups*.

A block group is a run of whole groups whose input and output channels are whole blocks: ``G'``
block groups of ``icpg`` input chunks of x lanes and ``ocpg`` output chunks of y lanes. The compute
takes its kernel as ``(O/y, icpg, kh, kw, x, y)`` and is a dense blocked conv inside each block group:

    out[n, o/y, h, w, o%y] = Σ_{j < icpg, ky, kx, c} pad(data)[n, ⌊(o/y) / ocpg⌋·icpg + j, h·sh + ky·dh,
                                                                w·sw + kx·dw, c]
                                                      · kernel[o/y, j, ky, kx, c, o%y]

The layout policy (:func:`.layouts.grouped_blocks`) keeps the blocks of the convs around it and
takes the fewest whole groups k (:func:`groups_per_block_group`) whose channels are whole blocks:
- k = 1, blocks inside a group (x | I/groups, y | O/groups): the kernel is the conv's kernel in
  OIHW[x]i[y]o as it is;
- k > 1 with groups of g input and g output channels and one block x = y a multiple of g (RegNet's
  group width 8 on 16 lanes, ResNeXt's 4 on 8 or 16 lanes): a block holds x/g whole groups, and the
  conv runs on *rotated* kernels with no zero products (:func:`rotated_grouped_conv2d_nchwc`): lane
  p = q·g + r of the input vector (group q, its channel r) meets, for each shift s < g, the weight of
  output channel q·g + (r + s) mod g, so a vector FMA of the input as it is loaded with the shift-s
  kernel vector makes g useful products a group into accumulator s, and a rotation within each
  group of g lanes per shift moves each partial sum to its output lane once per output vector;
- other k > 1 (width 24 on 16 lanes; 8 in, 16 out a group): the conv's kernel, in
  OIHW[I/groups]i[y]o, becomes the block group's, zero between different groups
  (:func:`block_diagonal_kernel`), so a full vector of y output channels is one FMA per input
  value at the price of k − 1 zero products in k.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from .conv2d_nchwc import BLOCKED_DATA, BLOCKED_KERNEL, blocked_conv, window

BLOCK = "grouped_conv2d_nchwc"
ROTATED = "rotated_grouped_conv2d_nchwc"  # the shift-s partial sums of the rotated form
ROTATED_SUM = "rotated_grouped_sum"  # their rotations summed into the output lanes


def groups_per_block_group(group_in: int, group_out: int, groups: int, in_block: int, out_block: int) -> int | None:
    """The fewest whole groups k (dividing ``groups``) whose k·``group_in`` input and k·``group_out``
    output channels are whole blocks; None if there is none."""
    return next((k for k in range(1, groups + 1)
                 if groups % k == 0 and k * group_in % in_block == 0 and k * group_out % out_block == 0), None)


def is_blocked_grouped(call: relax.Call) -> bool:
    """Whether the blocked ``relax.nn.conv2d`` ``call`` (groups > 1) has a block grouping of the module
    docstring: data NCHW[x]c, output NCHW[y]c, kernel OIHW[x]i[y]o with x | I/groups and y | O/groups,
    or OIHW[I/groups]i[y]o with blocks that whole groups fill."""
    a = call.attrs
    data, kernel = BLOCKED_DATA.match(a.data_layout), BLOCKED_KERNEL.match(a.kernel_layout)
    groups = int(a.groups)
    if data is None or kernel is None or a.out_layout != f"NCHW{kernel[2]}c" or groups == 1:
        return False
    ib, ki, ob = int(data[1]), int(kernel[1]), int(kernel[2])
    oc_chunks, k_chunks = (int(d) for d in call.args[1].ty.shape.values[:2])
    group_in, group_out = k_chunks * ki, oc_chunks * ob // groups
    if oc_chunks * ob % groups:
        return False
    if ki == ib:
        return group_in % ib == 0 and group_out % ob == 0
    return ki == group_in and groups_per_block_group(group_in, group_out, groups, ib, ob) is not None


def block_diagonal_kernel(kernel: te.Tensor, groups: int, in_block: int) -> te.Tensor:
    """The kernel of ``groups`` groups in OIHW[g]i[y]o, ``(O/y, 1, kh, kw, g, y)`` with g = I/groups and
    h = O/groups, as the kernel of block groups of k groups (:func:`groups_per_block_group`), with
    icpg = k·g / ``in_block`` input chunks and ocpg = k·h / y output chunks:
    ``(O/y, icpg, kh, kw, in_block, y)``, where for block-group channels i = j·in_block + c (input)
    and p = (o/y mod ocpg)·y + o%y (output)

        out[o/y, j, ky, kx, c, o%y] = kernel[o/y, 0, ky, kx, i mod g, o%y]  if ⌊i / g⌋ = ⌊p / h⌋ (one group),
                                      0                                     otherwise."""
    oc_chunks, _, kh, kw, group_in, ob = (int(d) for d in kernel.shape)
    group_out = oc_chunks * ob // groups
    k = groups_per_block_group(group_in, group_out, groups, in_block, ob)
    in_chunks, out_chunks = k * group_in // in_block, k * group_out // ob

    def weight(o, j, y, x, c, lane):
        i, p = j * in_block + c, o % out_chunks * ob + lane
        return tirx.Select(i // group_in == p // group_out, kernel[o, 0, y, x, i % group_in, lane],
                           tirx.const(0, kernel.dtype))

    return te.compute((oc_chunks, in_chunks, kh, kw, in_block, ob), weight, name="block_diagonal_kernel")


def grouped_conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, out_dtype: str) -> te.Tensor:
    """``data`` (N, C/x, H, W, x), ``kernel`` (O/y, icpg, kh, kw, x, y) → (N, O/y, out_h, out_w, y)."""
    ic_chunks, ib = int(data.shape[1]), int(data.shape[4])
    oc_chunks, group_chunks, _, _, kib, _ = (int(d) for d in kernel.shape)
    assert kib == ib and ic_chunks % group_chunks == 0, "kernel lanes and block groups must match the data"
    block_groups = ic_chunks // group_chunks
    assert oc_chunks % block_groups == 0, "output chunks must split into the block groups"
    out_per_group = oc_chunks // block_groups
    return blocked_conv(data, kernel, lambda oco, ico: oco // out_per_group * group_chunks + ico, strides, padding,
                        dilation, out_dtype, BLOCK)


def rotated_group_width(call: relax.Call) -> int | None:
    """The group width g where :func:`is_blocked_grouped` ``call`` takes the rotated form: g input and
    g output channels a group, data and output in one block x a multiple of g above it; else None."""
    a = call.attrs
    ib, ki = int(BLOCKED_DATA.match(a.data_layout)[1]), int(BLOCKED_KERNEL.match(a.kernel_layout)[1])
    ob = int(BLOCKED_KERNEL.match(a.kernel_layout)[2])
    oc_chunks = int(call.args[1].ty.shape.values[0])
    group_out = oc_chunks * ob // int(a.groups)
    return ki if ki < ib == ob and ki == group_out and ib % ki == 0 else None


def rotated_kernel(kernel: te.Tensor) -> te.Tensor:
    """The kernel of g-wide groups in OIHW[g]i[y]o, ``(O/y, 1, kh, kw, g, y)``, as the rotated form's
    ``(O/y, kh, kw, g, y)``: shift s, lane p = q·g + r (group q's input channel r) holds the weight
    of output channel q·g + (r + s) mod g and input channel r

        out[o/y, ky, kx, s, p] = kernel[o/y, 0, ky, kx, r, q·g + (r + s) mod g]."""
    oc_chunks, _, kh, kw, g, ob = (int(d) for d in kernel.shape)
    return te.compute((oc_chunks, kh, kw, g, ob),
                      lambda o, y, x, s, p: kernel[o, 0, y, x, p % g, p // g * g + (p % g + s) % g],
                      name="rotated_kernel")


def rotated_grouped_conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation,
                                 out_dtype: str) -> te.Tensor:
    """``data`` (N, C/x, H, W, x), ``kernel`` (:func:`rotated_kernel`, C/x, kh, kw, g, x) → (N, C/x, out_h,
    out_w, x): partial sums per shift s, each lane's input times its shift-s weight

        part[n, c, h, w, s, p] = Σ_{ky, kx} pad(data)[n, c, h·sh + ky·dh, w·sw + kx·dw, p] · kernel[c, ky, kx, s, p]

    then out[.., q·g + t] = Σ_s part[.., s, q·g + (t − s) mod g] (the product of input r and output
    (r + s) mod g lies in lane q·g + r = q·g + (t − s) mod g)."""
    n, _, _, _, lanes = (int(d) for d in data.shape)
    oc_chunks, kh, kw, g, ob = (int(d) for d in kernel.shape)
    assert ob == lanes and lanes % g == 0, "the rotated form needs one block in and out, whole groups in it"
    out_h, out_w, ry, rx, read = window(data, (kh, kw), strides, padding, dilation)
    part = te.compute(
        (n, oc_chunks, out_h, out_w, g, ob),
        lambda b, c, y, x, s, p: te.sum(read(b, c, y, x, p).astype(out_dtype) * kernel[c, ry, rx, s, p].astype(out_dtype),
                                        axis=[ry, rx]),
        name=ROTATED)
    return te.compute((n, oc_chunks, out_h, out_w, ob),
                      lambda b, c, y, x, p: sum(part[b, c, y, x, s, p // g * g + (p + g - s) % g] for s in range(g)),
                      name=ROTATED_SUM)


def grouped_compute(bb: relax.BlockBuilder, call: relax.Call):
    """The compute and kernel for ``call`` (:func:`is_blocked_grouped`): the rotated form
    (:func:`rotated_grouped_conv2d_nchwc`, :func:`rotated_group_width`), or :func:`grouped_conv2d_nchwc`
    with the call's own kernel or its block-diagonal form; a kernel made from the call's is a function
    of the kernel alone, folded at compile time when the kernel is a constant."""
    a = call.attrs
    ib, ki = int(BLOCKED_DATA.match(a.data_layout)[1]), int(BLOCKED_KERNEL.match(a.kernel_layout)[1])
    if ki == ib:
        return grouped_conv2d_nchwc, call.args[1]
    if rotated_group_width(call) is not None:
        return rotated_grouped_conv2d_nchwc, bb.emit_te(rotated_kernel, call.args[1],
                                                        primfunc_name_hint="rotated_kernel")
    return grouped_conv2d_nchwc, bb.emit_te(block_diagonal_kernel, call.args[1], int(a.groups), ib,
                                            primfunc_name_hint="block_diagonal_kernel")
