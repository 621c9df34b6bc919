"""Relax module to executable for a target: layout, legalize, fuse, schedule (tuned or default), lower, build."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.relax.backend.cuda import pipeline as cuda_pipeline

from reforge.passes.blocked_forms import in_blocked_forms, channel_moves_in_blocked_layout
from reforge.passes.blocked_pack import pack_in_blocked_layout
from reforge.passes.fuse_fplus import fplus_in_blocked_layout
from reforge.passes.graph import mutate_functions, op_name, ops_histogram
from reforge.passes.reserved_copies import reserved_channels_as_copies
from reforge.topi_ext.conv2d_nchwc import legalize_conv2d
from reforge.topi_ext.dense_packed import legalize_matmul
from reforge.topi_ext.fast_math import vectorizable_math_module
from reforge.topi_ext.layouts import blocked_conv2d_layouts
from reforge.topi_ext.schedules.default import apply_default_schedules
from reforge.topi_ext.schedules.fpga import apply_fpga_schedules
from reforge.topi_ext.schedules.gpu import apply_gpu_schedules

from .errors import one_line
from .machine import machine_for
from .native_log import quiet_stderr
from .opencl_plan import OpenCLProgram, build_program
from .targets import TargetSpec


@dataclass
class BuildReport:
    layout: str = "NCHW"
    layout_transforms: int = 0  # activation layout_transform calls the blocked layout left in main
    schedules: Counter = field(default_factory=Counter)  # default-schedule rule -> PrimFuncs
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"layout": self.layout, "layout_transforms": self.layout_transforms,
                "schedules": dict(self.schedules), "seconds": round(self.seconds, 3)}


def blocked_layout(mod: tvm.IRModule, lanes: int) -> tuple[tvm.IRModule, str]:
    """Convert eligible convs to NCHW[x]c; a graph TVM's layout propagation cannot handle stays NCHW."""
    mod = in_blocked_forms(mod)
    mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),  # batch_norm -> elementwise
                                    relax.transform.CanonicalizeBindings(),  # (y, mean, var)[0] -> y
                                    relax.transform.DeadCodeElimination()])(mod)
    try:
        with quiet_stderr():  # TVM logs a BlockBuilder warning while unwinding a refusal
            converted = relax.transform.ConvertLayout({}, blocked_conv2d_layouts(lanes))(mod)
    except (tvm.error.InternalError, ValueError, TypeError) as err:  # TVM reports unsupported graphs so
        return mod, f"NCHW (blocked layout not applied: {one_line(err)})"
    converted = mutate_functions(converted, lambda m, _f: _BoolLayouts(m))
    # one transform of a tensor read blocked twice (a residual block's input: its conv and its add)
    converted = channel_moves_in_blocked_layout(relax.transform.EliminateCommonSubexpr()(converted))
    # pre-pack the weights into their blocked layout
    return _quiet(relax.transform.FoldConstant(), converted), f"NCHW{lanes}c where channels allow"


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


def fuse(mod: tvm.IRModule, target: TargetSpec, report: BuildReport) -> tvm.IRModule:
    """Blocked conv layouts, legalization and operator fusion: the functions tuning works on."""
    mod = reserved_channels_as_copies(mod)  # remove-residual's reserved channels: copies, not multiplications
    mod, report.layout = blocked_layout(mod, target.vector_lanes())
    mod = fplus_in_blocked_layout(mod)  # fplus reads the blocked conv, to fuse into its epilogue
    mod = pack_in_blocked_layout(mod)  # a bit pack reads the blocked conv, not an NCHW copy of it
    report.layout_transforms = ops_histogram(mod)["layout_transform"]
    mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target.tvm_target))(mod)
    legalize = relax.transform.LegalizeOps({"relax.nn.conv2d": legalize_conv2d,
                                            "relax.matmul": legalize_matmul(target.vector_lanes())})
    fused = tvm.transform.Sequential(_fusion())(_quiet(legalize, mod))
    return vectorizable_math_module(fused)  # exp / sigmoid / erf as arithmetic, so their epilogues vectorize


def _quiet(transform: tvm.transform.Pass, mod: tvm.IRModule) -> tvm.IRModule:
    """Run a pass that legalizes operators (LegalizeOps, FoldConstant) without TVM's log lines: it
    warns for every ``take`` in its default "fast" mode (no bounds checks), and reforge's takes
    (fft-conv's windows) index with in-bound constants, so on a user's terminal that is noise.
    Errors still raise."""
    with quiet_stderr():
        return transform(mod)


def lower(mod: tvm.IRModule, target: TargetSpec, report: BuildReport, database=None) -> tvm.IRModule:
    """Fuse, then schedule: tuned records where ``database`` has them, default schedules elsewhere."""
    mod = fuse(mod, target, report)
    if database is not None:
        with target.tvm_target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    mod, report.schedules = apply_default_schedules(mod, machine_for(target))
    return mod


def fuse_nchw(mod: tvm.IRModule, target: TargetSpec) -> tvm.IRModule:
    """Legalization and fusion in the graph's own NCHW layout (the GPU and FPGA targets)."""
    tgt = target.tvm_target
    mod = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        *cuda_pipeline.library_dispatch_passes(tgt),
    ])(mod)
    return tvm.transform.Sequential(_fusion())(_quiet(relax.transform.LegalizeOps(), mod))


def lower_gpu(mod: tvm.IRModule, target: TargetSpec, report: BuildReport, database=None) -> tvm.IRModule:
    """NCHW fusion, then tuned records where ``database`` has them, reforge's and dlight's GPU
    schedules elsewhere."""
    mod = fuse_nchw(mod, target)
    if database is not None:
        with target.tvm_target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    mod, report.schedules = apply_gpu_schedules(mod, target.tvm_target)
    return mod


def lower_fpga(mod: tvm.IRModule, target: TargetSpec, report: BuildReport) -> tvm.IRModule:
    """NCHW fusion, then single work-item kernels."""
    mod, report.schedules = apply_fpga_schedules(fuse_nchw(mod, target))
    return mod


def build(mod: tvm.IRModule, target: TargetSpec, database=None) -> tuple[relax.VMExecutable | OpenCLProgram,
                                                                           BuildReport]:
    """Compile ``mod`` for ``target``, applying tuning records from ``database`` if given: a VM
    executable, or for ``opencl-fpga`` the kernels and their launch plan."""
    start, report = time.perf_counter(), BuildReport()
    tgt = target.tvm_target
    with tgt:
        if target.kind == "opencl-fpga":
            report.layout = "NCHW"
            executable = build_program(lower_fpga(mod, target, report), tgt)
            report.seconds = time.perf_counter() - start
            return executable, report
        if target.kind == "cuda":
            lowered = lower_gpu(mod, target, report, database)
            passes = cuda_pipeline.dataflow_lower_passes(tgt) + cuda_pipeline.finalize_passes(tgt)
        else:
            lowered = lower(mod, target, report, database)
            passes = cpu_generic.dataflow_lower_passes(tgt) + cpu_generic.finalize_passes(tgt)
        executable = tvm.compile(lowered, target=tgt, relax_pipeline=tvm.transform.Sequential(passes))
    report.seconds = time.perf_counter() - start
    return executable, report
