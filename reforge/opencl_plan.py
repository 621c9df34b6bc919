"""The ``opencl-fpga`` artifact: OpenCL C kernels, a launch plan, and the weights.

The scheduled module's Relax ``main`` is a straight sequence of ``call_tir`` bindings; each
becomes one or more kernel launches (TVM names the kernels of PrimFunc ``f`` ``f_kernel``,
``f_kernel_1``, ... in execution order). The plan lists every buffer (model inputs, weights,
intermediates, outputs) with its shape and dtype, and every launch with its kernel name, its
arguments in the kernel's own signature order, and its work sizes: one work item for the FPGA's
single work-item kernels; for a GPU schedule (``cuda_emulation``), the extents of the kernel's
``blockIdx`` × ``threadIdx`` loops. A host (``opencl_runner``, or a C++ host on the FPGA board)
needs nothing else.

``kernels.cl`` is the source for the vendor's offline compiler (Intel: ``aoc kernels.cl``);
``params.bin`` holds the weights back to back, at the plan's byte offsets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, tirx
from tvm_ffi.structural import structural_visit

from .errors import ReforgeError

PLAN_FORMAT = "reforge-opencl-plan/1"
SOURCE, PLAN, PARAMS = "kernels.cl", "launch_plan.json", "params.bin"
_KERNEL = re.compile(r"__kernel void (\w+)\(([^)]*)\)\s*\{")


@dataclass
class OpenCLProgram:
    """What ``build`` produces for ``opencl-fpga``: the three files of the artifact."""

    source: str
    plan: dict
    params: bytes

    def files(self) -> dict[str, bytes]:
        return {SOURCE: self.source.encode(), PLAN: json.dumps(self.plan, indent=1).encode(), PARAMS: self.params}


def build_program(mod: tvm.IRModule, target: tvm.target.Target) -> OpenCLProgram:
    """Generate the kernels of every scheduled PrimFunc and the plan that launches them."""
    prims = {gv.name_hint: f.with_attr("global_symbol", gv.name_hint)
             for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    source = tvm.compile(tvm.IRModule(prims), target=target).mod.imports[0].inspect_source()
    signatures = {name: [_arg_name(a, name) for a in args.split(",")] for name, args in _KERNEL.findall(source)}
    return _Planner(prims, signatures).plan(mod["main"], source)


def _arg_name(arg: str, kernel: str) -> str:
    found = re.search(r"__global\s+[\w\s]+\*\s*(?:restrict\s+)?(\w+)_ptr$", arg.strip())
    if found is None:
        raise ReforgeError(f"OpenCL launch plan: kernel {kernel} takes a non-buffer argument '{arg.strip()}'")
    return found.group(1)


class _Planner:
    def __init__(self, prims: dict, signatures: dict[str, list[str]]):
        self.prims, self.signatures = prims, signatures
        self.buffers: list[dict] = []
        self.launches: list[dict] = []
        self.params = bytearray()
        self.names: dict[relax.Expr, str] = {}

    def plan(self, main: relax.Function, source: str) -> OpenCLProgram:
        for p in main.params:
            self.names[p] = self._buffer(p.name, p.ty, "input")
        for block in main.body.blocks:
            for binding in block.bindings:
                self._bind(binding)
        outputs = [self._resolve(e) for e in _flatten(main.body.body)]
        for name in outputs:
            entry = next(b for b in self.buffers if b["name"] == name)
            if entry["kind"] == "temp":
                entry["kind"] = "output"
        plan = {"format": PLAN_FORMAT, "source": SOURCE, "params": PARAMS, "buffers": self.buffers,
                "launches": self.launches, "inputs": [self.names[p] for p in main.params], "outputs": outputs}
        return OpenCLProgram(source, plan, bytes(self.params))

    def _bind(self, binding) -> None:
        value = binding.value
        if isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            func_name = value.args[0].name_hint
            args = [self._resolve(a) for a in value.args[1].fields]
            out = self._buffer(binding.var.name, binding.var.ty, "temp")
            self._launch(func_name, args + [out])
            self.names[binding.var] = out
        elif isinstance(value, relax.Var):
            self.names[binding.var] = self._resolve(value)
        else:
            what = value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else type(value).__name__
            raise ReforgeError(f"OpenCL launch plan: '{binding.var.name} = {what}(...)' is not a kernel launch; "
                               "it runs graphs of fused operators only")

    def _launch(self, func_name: str, buffers: list[str]) -> None:
        func = self.prims[func_name]
        by_param = dict(zip((p.name for p in func.params), buffers))
        for alloc in _root_allocations(func):  # a multi-kernel function's intermediates
            by_param[alloc.name] = self._buffer(f"{func_name}.{alloc.name}", alloc, "temp")
        kernels = sorted((k for k in self.signatures if re.fullmatch(rf"{func_name}_kernel(_\d+)?", k)),
                         key=lambda k: int(k.rsplit("_", 1)[1]) if k[-1].isdigit() else 0)
        dims = launch_dims(func, func_name)
        if len(dims) != len(kernels):
            raise ReforgeError(f"{func_name}: {len(kernels)} kernels generated for {len(dims)} thread-bound loop "
                               "nests; cannot plan its launches")
        for kernel, (glob, local) in zip(kernels, dims):
            self.launches.append({"kernel": kernel, "args": [by_param[a] for a in self.signatures[kernel]],
                                  "global": glob, "local": local})

    def _resolve(self, expr) -> str:
        if isinstance(expr, relax.Var):
            return self.names[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            if expr not in self.names:
                value = np.ascontiguousarray(expr.value.numpy())
                name = self._buffer(f"const{len(self.names)}", expr.ty, "param")
                self.buffers[-1].update(offset=len(self.params), nbytes=value.nbytes)
                self.params += value.tobytes()
                self.names[expr] = name
            return self.names[expr]
        raise ReforgeError(f"OpenCL launch plan: unsupported argument {type(expr).__name__} in the graph")

    def _buffer(self, name: str, ty, kind: str) -> str:
        """Add a buffer to the plan under a unique name (Relax names repeat across scopes)."""
        taken = {b["name"] for b in self.buffers}
        base, n = name, 1
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        shape = [int(d) for d in (ty.shape.values if isinstance(ty.shape, relax.ShapeExpr) else ty.shape)]
        self.buffers.append({"name": name, "shape": shape, "dtype": str(ty.dtype), "kind": kind})
        return name


def launch_dims(func: tirx.PrimFunc, name: str) -> list[tuple[list[int], list[int]]]:
    """(global, local) work sizes of each kernel of ``func`` (named ``name``), in order: a kernel is an outermost loop
    bound to a thread axis, its sizes the extents of the ``blockIdx`` × ``threadIdx`` loops in it."""
    kernels: list[dict[str, int]] = []
    inside, host_loops = [False], [0]

    def on_for(loop, visitor):
        tag = loop.thread_binding.thread_tag if loop.thread_binding is not None else None
        if inside[0]:
            if tag is not None:
                kernels[-1][tag] = int(loop.extent)
            return visitor.default_visit(loop)
        if tag is None:  # a loop on the host: a kernel under it would be launched once per iteration
            host_loops[0] += int(loop.extent) > 1
            visitor.default_visit(loop)
            host_loops[0] -= int(loop.extent) > 1
            return None
        if host_loops[0]:
            raise ReforgeError(f"{name}: a kernel under a host loop; cannot plan its launches")
        kernels.append({tag: int(loop.extent)})
        inside[0] = True
        visitor.default_visit(loop)
        inside[0] = False
        return None

    structural_visit(func, [(tirx.For, on_for)])
    dims = []
    for extents in kernels:
        local = [extents.get(f"threadIdx.{a}", 1) for a in "xyz"]
        dims.append(([extents.get(f"blockIdx.{a}", 1) * n for a, n in zip("xyz", local)], local))
    return dims


def _root_allocations(func: tirx.PrimFunc) -> list:
    """Global-memory buffers the function allocates for itself (passed between its kernels)."""
    body = func.body
    allocs = body.block.alloc_buffers if isinstance(body, s_tir.stmt.SBlockRealize) else []
    return [b for b in allocs if b.scope() == "global"]


def _flatten(expr) -> list:
    return [x for f in expr.fields for x in _flatten(f)] if isinstance(expr, relax.Tuple) else [expr]
