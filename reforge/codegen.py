"""A CPU module's VM executable with its kernels compiled by several threads.

``tvm.compile`` lowers all TIR functions of a module as one module and hands it to LLVM as one
module: one core does all of it, though no function calls another. Here the Relax part is
lowered and turned into VM bytecode as ``tvm.compile`` does, and the kernels are split into
several modules of about equal size, each lowered and compiled by LLVM in its own thread (TVM
releases the GIL inside its passes and LLVM). The VM executable imports them all; the exported
library links one object per module. Every function gets the same passes and LLVM options as in
one module, so the machine code is the same.
"""

from __future__ import annotations

import heapq
import os
from concurrent.futures import ThreadPoolExecutor

import tvm
from tvm import relax, tirx

# a thread's share below this many characters of printed TIR costs about as much to compile as a
# module's fixed setup, so smaller modules are not split further
MIN_CHUNK_CHARS = 10_000


def compile_jobs() -> int:
    """Threads that compile kernels: the cores this process may use."""
    return len(os.sched_getaffinity(0))


def balanced_chunks(sizes: list[int], jobs: int) -> list[list[int]]:
    """Indices of ``sizes`` in at most ``jobs`` groups of about equal total size (largest first, each
    to the lightest group; no group under MIN_CHUNK_CHARS in all unless there is one group), groups
    and their members in index order."""
    count = max(1, min(jobs, len(sizes), sum(sizes) // MIN_CHUNK_CHARS))
    heap = [(0, k) for k in range(count)]
    groups: list[list[int]] = [[] for _ in range(count)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        total, k = heapq.heappop(heap)
        groups[k].append(i)
        heapq.heappush(heap, (total + sizes[i], k))
    return [sorted(g) for g in groups if g]


def vm_build(mod: tvm.IRModule, target: tvm.target.Target, relax_passes: list, jobs: int | None = None):
    """``tvm.compile(mod, target, relax_pipeline=Sequential(relax_passes))`` for a CPU target, its TIR
    functions compiled as up to ``jobs`` LLVM modules in parallel (default :func:`compile_jobs`)."""
    with target:
        mod = tvm.transform.Sequential(relax_passes)(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    rest = tvm.get_global_func("relax.VMCodeGen")(builder, mod)  # the bytecode; the TIR functions are left
    prims = [(gv, f) for gv, f in rest.functions_items() if isinstance(f, tirx.PrimFunc)]
    context = tvm.transform.PassContext.current()  # the caller's options, entered in every thread
    jobs = 1 if context.instruments else jobs or compile_jobs()  # an instrument sees one sequence at a time
    groups = balanced_chunks([len(str(f)) for _, f in prims], jobs) if prims and jobs > 1 else [range(len(prims))]
    chunks = [tvm.IRModule({prims[i][0]: prims[i][1] for i in g}, attrs=rest.attrs) for g in groups if g]

    def build(chunk: tvm.IRModule):
        with context:
            return tvm.tirx.build(chunk, target=target)

    with ThreadPoolExecutor(max(1, len(chunks))) as pool:
        libs = list(pool.map(build, chunks))
    link = tvm.get_global_func("relax.VMLink")
    return relax.VMExecutable(link(builder, target, libs[0] if libs else None, libs[1:] + ext_libs, params))


def assembly(executable) -> str:
    """The assembly of every kernel module of a CPU ``executable`` (a VM executable or an artifact's)."""
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")
