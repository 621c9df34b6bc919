"""The NVIDIA GPU backend: NCHW fusion, reforge's and dlight's GPU schedules, nvcc-compiled kernels
beside model.so; runs on this machine's GPU, and for ``--verify`` without one, as OpenCL on PoCL."""

from __future__ import annotations

import importlib.util
import re

from reforge.errors import ReforgeError, one_line
from reforge.machine import SSE, Machine

from .base import Backend

DEFAULT_ARCH = "sm_80"


class CudaBackend(Backend):
    kind = "cuda"
    device = "gpu"
    device_name = "CUDA GPU"

    @classmethod
    def make(cls, arch: str) -> CudaBackend:
        """GPUs of compute capability ``arch`` (``sm_80``: A100); the host side is generic x86-64."""
        if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
            raise ReforgeError(f"bad CUDA architecture '{arch}': expected sm_XY, e.g. sm_80 (A100), sm_86, sm_90")
        from tvm.target import Target

        tgt = Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 48 * 1024,
                      "max_threads_per_block": 1024, "thread_warp_size": 32}, host={"kind": "llvm", "mcpu": "x86-64"})
        return cls("cuda" if arch == DEFAULT_ARCH else f"cuda-{arch}", tgt, frozenset({arch}))

    @property
    def arch(self) -> str:
        return sorted(self.features)[0]

    def make_machine(self) -> Machine:
        """The host side's CPU (generic x86-64: SSE); the kernels' schedules do not consult it."""
        return SSE

    def summary(self) -> str:
        return f"arch {self.arch}"

    def fuse(self, mod, report):
        from reforge.build import fuse_nchw

        return fuse_nchw(mod, self)

    def schedule(self, fused, report, database=None):
        from reforge.topi_ext.schedules.gpu import apply_gpu_schedules

        scheduled, report.schedules = apply_gpu_schedules(self.tuned(fused, database), self.tvm_target)
        return scheduled

    def codegen(self, scheduled):
        from tvm.relax.backend.cuda import pipeline

        return self.relax_build(scheduled, pipeline)

    def default_schedule(self, func):
        from reforge.topi_ext.schedules.gpu import default_gpu_schedule

        return default_gpu_schedule(func, self.tvm_target)[0]

    def artifact(self, executable, manifest):
        """model.so, and the kernels as source and as nvcc's fatbin."""
        from reforge.artifact import Artifact
        from reforge.toolchains import cuda_kernel_files

        return Artifact(executable, manifest, kernel_files=cuda_kernel_files(executable, self.arch))

    def how_to_run(self) -> str:
        return ("on a machine with an NVIDIA GPU of compute capability "
                f"{self.arch} or newer and TVM built with CUDA: `reforge run ARTIFACT` (model.so "
                "JIT-compiles its kernels with NVRTC, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc); "
                "kernels.fatbin holds them compiled ahead of time by nvcc, kernels.cu their source")

    def can_run(self) -> bool:
        return self.can_measure()

    def can_measure(self) -> bool:
        import tvm

        return tvm.cuda(0).exist

    def runner(self, artifact):
        from reforge.artifact import load_library
        from reforge.execution import Runner

        if not self.can_run():
            raise ReforgeError(f"this module was built for target '{self.name}' and needs an NVIDIA GPU "
                               f"({', '.join(sorted(self.features))}) with TVM's CUDA runtime, which this machine lacks")
        return Runner(load_library(artifact.library(), "this module"), self.local_device())

    def local_device(self):
        import tvm

        return tvm.cuda(0)

    def remote_device(self, session):
        return session.cuda()

    def emulator(self, mod, database=None):
        """The cuda schedules as OpenCL kernels on PoCL (``reforge.cuda_emulation``)."""
        if importlib.util.find_spec("pyopencl") is None:
            raise ReforgeError("without a GPU, emulating the cuda kernels needs pyopencl and PoCL")
        from reforge.cuda_emulation import emulate

        try:
            return emulate(mod, self, database)
        except ReforgeError as err:  # a graph the launch planner cannot lay out as kernel launches
            raise ReforgeError(f"its kernels could not be emulated: {one_line(err)}") from err

    @property
    def emulation_note(self) -> str:
        return (f"final module emulated: no GPU here; its {self.name} schedules ran as OpenCL kernels on "
                "PoCL (reforge/cuda_emulation.py)")

    def tuning_space(self, task_mod):
        """MetaSchedule's CUDA space: multi-level tiling bound to blocks and threads, shared-memory staging."""
        from tvm.s_tir import meta_schedule as ms

        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")

    def measure_hint(self) -> str:
        return ("this machine has no CUDA GPU; `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` "
                "registers a GPU machine")
