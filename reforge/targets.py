"""Named compilation targets: the one place that knows TVM target dicts and CPU features."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tvm.target import Target, codegen

from .errors import ReforgeError

X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512vpopcntdq")


@dataclass(frozen=True)
class TargetSpec:
    """A reforge target: its name, the TVM target, and the CPU features it may use."""

    name: str
    kind: str  # "x86" for now; "arm", "cuda", "opencl-fpga" later
    tvm_target: Target = field(compare=False)
    features: frozenset[str] = frozenset()

    def has(self, feature: str) -> bool:
        return feature in self.features

    def vector_lanes(self, bits: int = 32) -> int:
        """Elements of ``bits`` bits in one SIMD register."""
        width = 512 if self.has("avx512f") else 256 if self.has("avx2") else 128
        return width // bits

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "tvm": json.loads(str(self.tvm_target)),
                "features": sorted(self.features)}


def _num_cores() -> int:
    return len(os.sched_getaffinity(0))


def _x86(name: str, mcpu: str | None) -> TargetSpec:
    host = Target.from_device("cpu").export()
    spec = {"kind": "llvm", "mcpu": mcpu or host["mcpu"], "num-cores": _num_cores()}
    if not codegen.llvm_is_valid_cpu(spec["mcpu"], "x86_64-linux-gnu"):
        raise ReforgeError(f"LLVM does not know the CPU '{spec['mcpu']}'")
    tgt = Target(spec)
    feats = frozenset(f for f in X86_FEATURES if codegen.llvm_cpu_has_features([f], tgt))
    return TargetSpec(name, "x86", tgt, feats)


# preset name -> LLVM CPU (None: this machine's)
_X86_PRESETS = {
    "x86": None,  # the host CPU, features detected
    "x86-avx2": "haswell",  # any x86-64 with AVX2 + FMA
    "x86-avx512": "icelake-server",  # AVX-512 F/BW/VL/VNNI/VPOPCNTDQ
}


def get_target(name: str | TargetSpec) -> TargetSpec:
    """Resolve a target preset name (``x86``, ``x86-avx2``, ``x86-avx512``)."""
    if isinstance(name, TargetSpec):
        return name
    if name not in _X86_PRESETS:
        raise ReforgeError(f"unknown target '{name}'; choose one of: {', '.join(_X86_PRESETS)}")
    return _x86(name, _X86_PRESETS[name])


def host_can_run(target: TargetSpec) -> bool:
    """Whether this machine can execute code built for ``target``."""
    host = get_target("x86")
    return target.kind == "x86" and target.features <= host.features
