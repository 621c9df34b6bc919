"""Running one GPU-scheduled PrimFunc on the CPU: TVM's OpenCL codegen of the same schedule,
launched with pyopencl on PoCL. A schedule's thread bindings, shared-memory staging and barriers
mean the same in OpenCL as in CUDA, so this checks the numerics of reforge's GPU schedules on a
machine without a GPU.
"""

from __future__ import annotations

import re

import numpy as np
import pyopencl as cl
import tvm
from tvm import tirx

from reforge import backends
from reforge.cuda_emulation import opencl_twin
from reforge.opencl_plan import launch_dims
from reforge.opencl_runner import context_and_queue

OPENCL = opencl_twin(backends.get("cuda").tvm_target)


def run_kernel(func: tirx.PrimFunc, arrays: list[np.ndarray]) -> str:
    """Run a one-kernel scheduled PrimFunc on ``arrays`` (its parameters in order, outputs
    included), copying every buffer back; returns the OpenCL source."""
    func = func.with_attr("global_symbol", "main")
    src = tvm.compile(tvm.IRModule({"main": func}), target=OPENCL).mod.imports[0].inspect_source()
    (name, signature), = re.findall(r"__kernel void (\w+)\(([^)]*)\)\s*\{", src)
    by_name = dict(zip([p.name for p in func.params], arrays))
    order = [re.search(r"(\w+)_ptr$", a.strip()).group(1) for a in signature.split(",")]
    ctx, queue = context_and_queue(cl)  # the runner's one context per process (PoCL crashes with many)
    flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
    buffers = {n: cl.Buffer(ctx, flags, hostbuf=a) for n, a in by_name.items()}
    ((glob, local),) = launch_dims(func, name)
    getattr(cl.Program(ctx, src).build(), name)(queue, glob, local, *[buffers[n] for n in order])
    for n, a in by_name.items():
        cl.enqueue_copy(queue, a, buffers[n])
    queue.finish()
    return src
