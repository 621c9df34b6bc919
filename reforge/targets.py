"""Named compilation targets: the one place that knows TVM target dicts and CPU features."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import ReforgeError

if TYPE_CHECKING:
    from tvm.target import Target

X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512vpopcntdq")


@dataclass(frozen=True)
class TargetSpec:
    """A reforge target: its name, the TVM target, and the CPU features it may use."""

    name: str
    kind: str  # "x86", "arm", "cuda" or "opencl-fpga"
    tvm_target: Target = field(compare=False)
    features: frozenset[str] = frozenset()

    def has(self, feature: str) -> bool:
        return feature in self.features

    def vector_lanes(self, bits: int = 32) -> int:
        """Elements of ``bits`` bits in one SIMD register."""
        width = 512 if self.has("avx512f") else 256 if self.has("avx2") else 128  # NEON: 128
        return width // bits

    def how_to_run(self) -> str:
        """The manifest's note on where and how the artifact runs."""
        if self.kind == "opencl-fpga":
            return ("compile kernels.cl with the FPGA vendor's offline compiler (Intel: `aoc kernels.cl`) and "
                    "launch the kernels in launch_plan.json's order on params.bin's weights (the plan names "
                    "every buffer and argument); `reforge run ARTIFACT` does this with pyopencl, on the "
                    "CPU through PoCL when no FPGA platform is installed")
        if self.kind == "cuda":
            return ("on a machine with an NVIDIA GPU of compute capability "
                    f"{sorted(self.features)[0]} or newer and TVM built with CUDA: `reforge run ARTIFACT` (model.so "
                    "JIT-compiles its kernels with NVRTC, or nvcc with TVM_CUDA_COMPILE_MODE=nvcc); "
                    "kernels.fatbin holds them compiled ahead of time by nvcc, kernels.cu their source")
        if self.kind == "arm":
            return ("on an aarch64 Linux device: `reforge run ARTIFACT --rpc-tracker HOST:PORT --rpc-key KEY` "
                    "with TVM's rpc_server running on the device, or model.so loaded by libtvm_runtime.so "
                    "(reforge/native/run_vm.cc is a C++ host); on x86, `reforge run ARTIFACT` emulates it "
                    "with qemu-aarch64")
        return f"`reforge run ARTIFACT` on an x86-64 CPU with {', '.join(sorted(self.features)) or 'SSE2'}"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "tvm": json.loads(str(self.tvm_target)),
                "features": sorted(self.features)}


def _num_cores() -> int:
    return len(os.sched_getaffinity(0))


def _x86(name: str, mcpu: str | None) -> TargetSpec:
    from tvm.target import Target, codegen

    host = Target.from_device("cpu").export()
    spec = {"kind": "llvm", "mcpu": mcpu or host["mcpu"], "num-cores": _num_cores()}
    if not codegen.llvm_is_valid_cpu(spec["mcpu"], "x86_64-linux-gnu"):
        raise ReforgeError(f"LLVM does not know the CPU '{spec['mcpu']}'")
    tgt = Target(spec)
    feats = frozenset(f for f in X86_FEATURES if codegen.llvm_cpu_has_features([f], tgt))
    return TargetSpec(name, "x86", tgt, feats)


def _arm(name: str, mcpu: str, cores: int) -> TargetSpec:
    """aarch64 Linux with NEON, cross-compiled (``aarch64-linux-gnu-g++``)."""
    from tvm.target import Target

    tgt = Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"],
                  "num-cores": cores})
    return TargetSpec(name, "arm", tgt, frozenset({"neon"}))


def _cuda(arch: str) -> TargetSpec:
    """NVIDIA GPUs of compute capability ``arch`` (``sm_80``: A100); the host side is generic x86-64."""
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
        raise ReforgeError(f"bad CUDA architecture '{arch}': expected sm_XY, e.g. sm_80 (A100), sm_86, sm_90")
    from tvm.target import Target

    tgt = Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 48 * 1024,
                  "max_threads_per_block": 1024, "thread_warp_size": 32}, host={"kind": "llvm", "mcpu": "x86-64"})
    return TargetSpec("cuda" if arch == DEFAULT_CUDA_ARCH else f"cuda-{arch}", "cuda", tgt, frozenset({arch}))


def _opencl_fpga() -> TargetSpec:
    from tvm.target import Target

    return TargetSpec("opencl-fpga", "opencl-fpga", Target({"kind": "opencl"}, host={"kind": "llvm", "mcpu": "x86-64"}))


DEFAULT_CUDA_ARCH = "sm_80"

# preset name -> how to make it
_PRESETS = {
    "x86": lambda: _x86("x86", None),  # the host CPU, features detected
    "x86-avx2": lambda: _x86("x86-avx2", "haswell"),  # any x86-64 with AVX2 + FMA
    "x86-avx512": lambda: _x86("x86-avx512", "icelake-server"),  # AVX-512 F/BW/VL/VNNI/VPOPCNTDQ
    "arm": lambda: _arm("arm", "cortex-a72", 4),  # aarch64 + NEON, e.g. Raspberry Pi 4
    "arm-a76": lambda: _arm("arm-a76", "cortex-a76", 4),  # ARMv8.2 + dot product, e.g. Raspberry Pi 5
    "cuda": lambda: _cuda(DEFAULT_CUDA_ARCH),  # "cuda-sm_XY" picks another architecture
    "opencl-fpga": _opencl_fpga,
}


def get_target(name: str | TargetSpec) -> TargetSpec:
    """Resolve a target preset name (``reforge compile --help`` lists them)."""
    if isinstance(name, TargetSpec):
        return name
    if name.startswith("cuda-"):
        return _cuda(name[len("cuda-"):])
    if name not in _PRESETS:
        raise ReforgeError(f"unknown target '{name}'; choose one of: {', '.join(_PRESETS)}")
    return _PRESETS[name]()


def host_can_run(target: dict | TargetSpec) -> bool:
    """Whether this machine's CPU executes code built for ``target`` (a spec or its manifest entry)."""
    kind, feats = ((target.kind, target.features) if isinstance(target, TargetSpec)
                   else (target.get("kind"), set(target.get("features", []))))
    return kind == "x86" and set(feats) <= host_x86_features()


@lru_cache(maxsize=None)
def host_x86_features() -> frozenset[str]:
    """The X86_FEATURES this CPU has and the kernel enables, from /proc/cpuinfo (LLVM's names; no TVM
    needed, so an artifact loads without TVM's compiler)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    linux_names = {f.replace("_", "") for f in flags}  # avx512_vnni -> avx512vnni
    return frozenset(f for f in X86_FEATURES if f in linux_names)
