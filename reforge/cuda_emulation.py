"""The ``cuda`` target's schedules, run on the CPU.

The module is fused and scheduled exactly as for CUDA (the cuda backend's ``lower``: tuning records where given,
reforge's and dlight's GPU schedules elsewhere); TVM's OpenCL code generator then emits the same
kernels as OpenCL C, which the ``opencl_runner`` launches on PoCL with each kernel's grid × block
as its NDRange. Thread bindings, shared-memory staging, barriers and popcounts mean the same in
both languages, so this checks a schedule's numerics (``--verify`` on a machine without a GPU, and
the tests); not nvcc's code generation, and not speed.
"""

from __future__ import annotations

import tvm
from tvm.target import Target

from .backends import Backend
from .build import BuildReport
from .opencl_plan import build_program
from .opencl_runner import OpenCLRunner


def emulate(mod: tvm.IRModule, target: Backend, database=None) -> OpenCLRunner:
    """A runner (``run`` / ``time`` on numpy arrays) of ``mod`` as built for the cuda ``target``."""
    lowered = target.lower(mod, BuildReport(), database)
    return OpenCLRunner(build_program(lowered, opencl_twin(target.tvm_target)).files())


def opencl_twin(gpu: Target) -> Target:
    """The OpenCL target that emits ``gpu``'s kernels: same shared-memory and threads-per-block limits."""
    limits = ("max_shared_memory_per_block", "max_threads_per_block")
    return Target({"kind": "opencl", **{k: int(gpu.attrs[k]) for k in limits}}, host={"kind": "llvm"})
