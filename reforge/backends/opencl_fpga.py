"""The FPGA backend: NCHW fusion into single work-item OpenCL C kernels, written with a launch plan and
the weights (no model.so) for the vendor's offline compiler; run here with pyopencl (PoCL on a CPU)."""

from __future__ import annotations

import importlib.util

from reforge.errors import ReforgeError
from reforge.machine import SSE, Machine

from .base import Backend


class OpenCLFPGABackend(Backend):
    kind = "opencl-fpga"
    device = "fpga"
    device_name = "OpenCL FPGA"
    tunable = False
    required_files = ("kernels.cl", "launch_plan.json", "params.bin")
    # remove-residual: a plain chain streams without buffering the shortcut, worth its reserved channels' MACs
    default_passes = frozenset({"remove-residual"})

    @classmethod
    def make(cls) -> OpenCLFPGABackend:
        from tvm.target import Target

        return cls("opencl-fpga", Target({"kind": "opencl"}, host={"kind": "llvm", "mcpu": "x86-64"}))

    def make_machine(self) -> Machine:
        """The host side's CPU (generic x86-64: SSE); the kernels' schedules do not consult it."""
        return SSE

    def summary(self) -> str:
        return "OpenCL C, single work-item kernels"

    def fuse(self, mod, report):
        from reforge.build import fuse_nchw

        return fuse_nchw(mod, self)

    def schedule(self, fused, report, database=None):
        """Single work-item kernels (an FPGA pipelines loops; no tuning records)."""
        from reforge.topi_ext.schedules.fpga import apply_fpga_schedules

        scheduled, report.schedules = apply_fpga_schedules(fused)
        return scheduled

    def codegen(self, scheduled):
        """The kernels as OpenCL C and the launch plan that calls them (``reforge.opencl_plan``)."""
        from reforge.opencl_plan import build_program

        return build_program(scheduled, self.tvm_target)

    def default_schedule(self, func):
        from reforge.topi_ext.schedules.fpga import schedule_single_work_item

        return schedule_single_work_item(func)

    def artifact(self, executable, manifest):
        from reforge.artifact import Artifact

        return Artifact(None, manifest, kernel_files=executable.files())

    def export_library(self, executable, path: str) -> None:
        raise ReforgeError(f"target '{self.name}' has no shared library: its artifact holds "
                           f"{', '.join(self.required_files)}")

    def how_to_run(self) -> str:
        return ("compile kernels.cl with the FPGA vendor's offline compiler (Intel: `aoc kernels.cl`) and "
                "launch the kernels in launch_plan.json's order on params.bin's weights (the plan names "
                "every buffer and argument); `reforge run ARTIFACT` does this with pyopencl, on the "
                "CPU through PoCL when no FPGA platform is installed")

    def can_run(self) -> bool:
        return importlib.util.find_spec("pyopencl") is not None

    def can_measure(self) -> bool:
        """PoCL's times on a CPU say nothing of an FPGA's."""
        return False

    def runner(self, artifact):
        from reforge.opencl_runner import OpenCLRunner

        return OpenCLRunner(artifact.kernel_files)
