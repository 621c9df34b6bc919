"""Default GPU schedules (CUDA, and OpenCL, which shares them): reforge's direct conv2d, then
TVM's dlight rules (matmul with shared-memory tiles, GEMV, reductions, a thread-bound fallback).

Direct conv2d (NCHW, groups = 1): one thread block computes ``K_THREADS·K_INNER`` output
channels of a rectangle of about ``PIXELS`` output pixels (whole rows where they fit, so the staged
input patch has a fixed size); each thread accumulates ``K_INNER`` channels of one pixel. Per
``rc_tile`` input channels, the block stages the input patch (zero padding applied while staging)
and the weight slice in shared memory, and every thread reads them ``KH·KW·rc_tile`` times. Bias, activation and residual epilogues are
applied as the registers are written back.
"""

from __future__ import annotations

from collections import Counter

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

from ..operators import schedule_operator
from .helpers import inline_epilogue

K_THREADS, K_INNER = 4, 8  # output channels per block: 32, 8 per thread
PIXELS = 64  # output pixels per block, one per thread
RC_TILES = (8, 4, 2, 1)  # input channels staged in shared memory per step: the largest that fits
SHARED_BYTES = 40 * 1024  # of the 48 KiB a block may use without opting in

DLIGHT_RULES = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())


def schedule_conv2d_direct(func: tirx.PrimFunc) -> s_tir.Schedule | None:
    """The schedule above for a fused PrimFunc around one ``conv2d_nchw`` block; None otherwise."""
    sch = s_tir.Schedule(func)
    convs = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint == "conv2d_nchw"]
    if len(convs) != 1:
        return None
    conv = convs[0]
    tiles = _tiles(sch.get(conv))
    if tiles is None:
        return None
    rows, cols, rc_tile = tiles
    producers = sch.get_producers(conv)
    for p in producers:  # padding (and any elementwise prologue) is computed while staging
        if sch.get(p).name_hint != "pad_temp":
            return None
    n, k, h, w, rc, rh, rw = sch.get_loops(conv)
    ko, kt, ki = sch.split(k, [None, K_THREADS, K_INNER])
    ho, hi = sch.split(h, [None, rows])
    wo, wi = sch.split(w, [None, cols])
    rco, rci = sch.split(rc, [None, rc_tile])
    sch.reorder(n, ko, ho, wo, kt, hi, wi, rco, rh, rw, rci, ki)
    sch.bind(sch.fuse(n, ko), "blockIdx.y")
    sch.bind(sch.fuse(ho, wo), "blockIdx.x")
    sch.bind(kt, "threadIdx.y")
    pixel = sch.fuse(hi, wi)
    sch.bind(pixel, "threadIdx.x")

    out = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(out, pixel, preserve_unit_loops=True)
    inline_epilogue(sch, out)

    pad = producers[0] if producers else None
    data_shared = sch.cache_read(conv, 0, "shared")
    weight_shared = sch.cache_read(conv, 1, "shared")
    for staged in (data_shared, weight_shared):
        sch.compute_at(staged, rco, preserve_unit_loops=True)
    if pad is not None:
        sch.compute_inline(pad)
    for staged in (data_shared, weight_shared):
        loops = sch.get_loops(staged)[-4:]
        fused = sch.fuse(*loops)
        _, ty, tx = sch.split(fused, [None, K_THREADS, rows * cols])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    sch.decompose_reduction(conv, rco)
    sch.annotate(rh, "pragma_auto_unroll_max_step", 256)
    sch.annotate(rh, "pragma_unroll_explicit", 1)
    return sch


def _tiles(block) -> tuple[int, int, int] | None:
    """Output rows × columns per block (about ``PIXELS``, whole rows where they fit) and the
    largest ``RC_TILES`` entry whose staged input patch and weights fit ``SHARED_BYTES``."""
    (_, _, hp, wp), (_, _, kh, kw) = ([int(d) for d in r.source.shape] for r in block.reads[:2])
    _, _, oh, ow = (int(d) for d in block.writes[0].source.shape)
    cols = min(ow, PIXELS)
    rows = max(1, min(oh, PIXELS // cols))
    stride_h, stride_w = max(1, (hp - kh) // max(oh - 1, 1)), max(1, (wp - kw) // max(ow - 1, 1))
    reach_h, reach_w = hp - (oh - 1) * stride_h, wp - (ow - 1) * stride_w  # dilated kernel extent
    patch = min(hp, rows * stride_h + reach_h) * min(wp, cols * stride_w + reach_w)
    for tile in RC_TILES:
        if 4 * tile * (K_THREADS * K_INNER * kh * kw + patch) <= SHARED_BYTES:
            return rows, cols, tile
    return None


def default_gpu_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> tuple[s_tir.Schedule | None, str]:
    """Direct conv2d where it applies, else the first dlight rule that does (a rule that fails on a
    PrimFunc, as Matmul does on the FFT conv's channel mix with its complex combination after the
    GEMM, passes it to the next); the schedule (None if no rule applies) and the rule's name. A reforge
    operator with a registered ``cuda`` schedule gets that."""
    found = schedule_operator(func, None, "cuda")
    if found is not None:
        return found
    sch = schedule_conv2d_direct(func)
    if sch is not None:
        return sch, "conv2d_direct"
    for candidate in DLIGHT_RULES:
        try:
            with target:
                found = candidate.apply(func, target, False)
        except (AssertionError, tvm.error.InternalError, ValueError):  # dlight asserts its preconditions
            continue
        if found is not None:
            return (found[0] if isinstance(found, list) else found), type(candidate).__name__.lower()
    return None, ""


def apply_gpu_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, Counter]:
    """Schedule every PrimFunc not scheduled yet (by tuning records, counted as ``tuned``) with its
    default GPU schedule. Returns the module and the PrimFuncs per rule."""
    used: Counter = Counter()
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs and "tirx.is_scheduled" in func.attrs:
            used["tuned"] += 1
            continue
        sch, rule = default_gpu_schedule(func, target)
        if sch is None:
            continue
        used[rule] += 1
        updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, used
