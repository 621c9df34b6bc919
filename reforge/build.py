"""Relax module to executable: the build driver (fuse, schedule, generate code, each step the
target's backend's) and the lowering stages the backends choose from (blocked or NCHW fusion)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.backend.cuda import pipeline as cuda_pipeline

from reforge.passes.blocked_forms import in_blocked_forms, channel_moves_in_blocked_layout
from reforge.passes.blocked_pack import pack_in_blocked_layout
from reforge.passes.channel_blocks import conv_channel_blocks
from reforge.passes.constant_moves import fold_constants
from reforge.passes.fuse_fplus import fplus_in_blocked_layout
from reforge.passes.graph import mutate_functions, op_name, ops_histogram
from reforge.passes.pad_channels import pad_channels
from reforge.passes.reserved_copies import reserved_channels_as_copies
from reforge.passes.sparse import sparse_in_blocked_layout
from reforge.topi_ext.conv2d_nchwc import legalize_conv2d
from reforge.topi_ext.dense_packed import legalize_matmul
from reforge.topi_ext.fast_math import vectorizable_math_module
from reforge.topi_ext.layouts import blocked_conv2d_layouts
from reforge.topi_ext.resize import legalize_resize2d

from .errors import one_line
from .native_log import quiet_stderr

if TYPE_CHECKING:
    from .backends import Backend


@dataclass
class BuildReport:
    layout: str = "NCHW"
    layout_transforms: int = 0  # activation layout_transform calls the blocked layout left in main
    schedules: Counter = field(default_factory=Counter)  # default-schedule rule -> PrimFuncs
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"layout": self.layout, "layout_transforms": self.layout_transforms,
                "schedules": dict(self.schedules), "seconds": round(self.seconds, 3)}


def layout_forms(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` as the blocked layout reads it (still NCHW): operators in forms with layout inference
    (:func:`in_blocked_forms`), BatchNorm as elementwise operators, no dead bindings."""
    return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),  # batch_norm -> elementwise
                                     relax.transform.CanonicalizeBindings(),  # (y, mean, var)[0] -> y
                                     relax.transform.DeadCodeElimination()])(in_blocked_forms(mod))


def blocked_layout(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, str]:
    """Convert eligible convs to NCHW[x]c; a graph TVM's layout propagation cannot handle stays NCHW."""
    mod = layout_forms(mod)
    padded = pad_channels(mod, lanes)  # channel counts with no good block get zero channels
    try:
        with quiet_stderr():  # TVM logs a BlockBuilder warning while unwinding a refusal
            policy = blocked_conv2d_layouts(lanes, conv_channel_blocks(padded, lanes))  # one block where tensors meet
            converted = relax.transform.ConvertLayout({}, policy)(padded)
    except (tvm.error.InternalError, ValueError, TypeError) as err:  # TVM reports unsupported graphs so
        return mod, f"NCHW (blocked layout not applied: {one_line(err)})"  # unpadded: in NCHW they only cost
    converted = mutate_functions(converted, lambda m, _f: _BoolLayouts(m))
    # one transform of a tensor read blocked twice (a residual block's input: its conv and its add)
    converted = channel_moves_in_blocked_layout(relax.transform.EliminateCommonSubexpr()(converted))
    # pre-pack the weights into their blocked layout
    return _quiet(fold_constants, converted), f"NCHW{lanes}c where channels allow"


@relax.expr_functor.mutator
class _BoolLayouts(relax.PyExprMutator):
    """A comparison after a blocked conv leaves a bool tensor in NCHW[x]c, and TVM 0.27 legalizes its
    ``layout_transform`` with a float pad value, which its schedule rejects for bool (the build
    failed on ``where(conv(x) >= 0, 1, -1)``): move bool tensors as uint8."""

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if op_name(call) != "relax.layout_transform" or call.args[0].ty.dtype != "bool":
            return call
        moved = self.builder_.emit(relax.op.layout_transform(
            self.builder_.emit(relax.op.astype(call.args[0], "uint8")), call.attrs.index_map))
        return relax.op.astype(moved, "bool")


def _fusion() -> list[tvm.transform.Pass]:
    """After legalization: mark operator patterns, fold what became constant, fuse."""
    return [relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps(),
            relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]


def _quiet(transform: Callable[[tvm.IRModule], tvm.IRModule], mod: tvm.IRModule) -> tvm.IRModule:
    """Run a pass that legalizes operators (LegalizeOps, FoldConstant) without TVM's log lines: it
    warns for every ``take`` in its default "fast" mode (no bounds checks), and reforge's takes
    (fft-conv's windows) index with in-bound constants, so on a user's terminal that is noise.
    Errors still raise."""
    with quiet_stderr():
        return transform(mod)


def fuse_blocked(mod: tvm.IRModule, target: Backend, report: BuildReport) -> tvm.IRModule:
    """The CPU stages: blocked conv layouts at the machine's lanes, legalization into reforge's
    blocked kernels, operator fusion."""
    lanes = target.machine.lanes()
    mod = reserved_channels_as_copies(mod)  # remove-residual's reserved channels: copies, not multiplications
    mod, report.layout = blocked_layout(mod, lanes)
    mod = fplus_in_blocked_layout(mod)  # fplus reads the blocked conv, to fuse into its epilogue
    mod = pack_in_blocked_layout(mod)  # a bit pack reads the blocked conv, not an NCHW copy of it
    # sparse convs in the machine's vectors, reading and writing NCHW[x]c too where the convs took it
    mod = sparse_in_blocked_layout(mod, target.machine, blocked=report.layout.startswith(f"NCHW{lanes}c"))
    report.layout_transforms = ops_histogram(mod)["layout_transform"]
    mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target.tvm_target))(mod)
    legalize = relax.transform.LegalizeOps({"relax.nn.conv2d": legalize_conv2d,
                                            "relax.matmul": legalize_matmul(lanes),
                                            "relax.image.resize2d": legalize_resize2d})
    fused = tvm.transform.Sequential(_fusion())(_quiet(legalize, mod))
    return vectorizable_math_module(fused)  # exp / sigmoid / erf as arithmetic, so their epilogues vectorize


def fuse_nchw(mod: tvm.IRModule, target: Backend) -> tvm.IRModule:
    """The device stages: legalization and fusion in the graph's own NCHW layout (GPU, FPGA)."""
    tgt = target.tvm_target
    mod = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        *cuda_pipeline.library_dispatch_passes(tgt),
    ])(mod)
    return tvm.transform.Sequential(_fusion())(_quiet(relax.transform.LegalizeOps(), mod))


def fuse(mod: tvm.IRModule, target: Backend, report: BuildReport) -> tvm.IRModule:
    """``target``'s layout, legalization and fusion of a rewritten module: the functions that tuning
    extracts and the build schedules (its time is added to ``report.seconds``)."""
    start = time.perf_counter()
    with target.tvm_target:
        fused = target.fuse(mod, report)
    report.seconds += time.perf_counter() - start
    return fused


def build_fused(fused: tvm.IRModule, target: Backend, report: BuildReport, database=None):
    """Schedule ``fused`` (tuned records from ``database`` where it has them) and generate
    ``target``'s executable; the time is added to ``report.seconds``."""
    start = time.perf_counter()
    with target.tvm_target:
        executable = target.codegen(target.schedule(fused, report, database))
    report.seconds += time.perf_counter() - start
    return executable, report


def build(mod: tvm.IRModule, target: Backend, database=None) -> tuple[object, BuildReport]:
    """Compile a rewritten ``mod`` for ``target``: a VM executable, or what the target's backend
    builds instead (the kernels and launch plan of ``opencl-fpga``)."""
    report = BuildReport()
    return build_fused(fuse(mod, target, report), target, report, database)
