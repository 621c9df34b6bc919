"""One Backend class per target kind (x86, arm, cuda, opencl-fpga): everything that differs by target.
Any reforge module may import it (it imports TVM only when a method needs it); it imports the rest lazily."""

from __future__ import annotations

from reforge.errors import ReforgeError

from .arm import ArmBackend
from .base import Backend
from .cuda import DEFAULT_ARCH as DEFAULT_CUDA_ARCH
from .cuda import CudaBackend
from .opencl_fpga import OpenCLFPGABackend
from .x86 import X86Backend

__all__ = ["Backend", "DEFAULT_CUDA_ARCH", "KINDS", "PRESETS", "for_manifest", "get", "kinds_defaulting_to",
           "preset_name", "tunable_kinds"]

KINDS: dict[str, type[Backend]] = {cls.kind: cls for cls in (X86Backend, ArmBackend, CudaBackend, OpenCLFPGABackend)}

# preset name -> how to make it
PRESETS = {
    "x86": lambda: X86Backend.make("x86", None),  # the host CPU, features detected
    "x86-avx2": lambda: X86Backend.make("x86-avx2", "haswell"),  # any x86-64 with AVX2 + FMA
    "x86-avx512": lambda: X86Backend.make("x86-avx512", "icelake-server"),  # AVX-512 F/BW/VL/VNNI/VPOPCNTDQ
    "arm": lambda: ArmBackend.make("arm", "cortex-a72", 4),  # aarch64 + NEON, e.g. Raspberry Pi 4
    "arm-a76": lambda: ArmBackend.make("arm-a76", "cortex-a76", 4),  # ARMv8.2 + dot product, e.g. Raspberry Pi 5
    "cuda": lambda: CudaBackend.make(DEFAULT_CUDA_ARCH),  # "cuda-sm_XY" picks another architecture
    "opencl-fpga": OpenCLFPGABackend.make,
}


def get(name: str | Backend) -> Backend:
    """The backend of a target preset (``reforge compile --help`` lists them), or ``name`` if it is one."""
    if isinstance(name, Backend):
        return name
    if name.startswith("cuda-"):
        return CudaBackend.make(name[len("cuda-"):])
    if name not in PRESETS:
        raise ReforgeError(f"unknown target '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


def for_manifest(target: dict | Backend) -> Backend:
    """The backend of an artifact's ``manifest["target"]`` (``Backend.describe()``), without TVM's compiler."""
    if isinstance(target, Backend):
        return target
    cls = KINDS.get(target.get("kind"))
    if cls is None:
        raise ReforgeError(f"target '{target.get('name')}' is of kind {target.get('kind')!r}, which this reforge "
                           f"does not know ({', '.join(KINDS)})")
    return cls(target.get("name", "?"), target.get("tvm", {}), frozenset(target.get("features", ())))


def preset_name(target: str, cuda_arch: str | None) -> str:
    """``--target`` with ``--cuda-arch`` folded in (``cuda-sm_86``)."""
    if cuda_arch is None:
        return target
    if target != "cuda":
        raise ReforgeError("--cuda-arch applies to --target cuda")
    return f"cuda-{cuda_arch}"


def tunable_kinds() -> list[str]:
    """The kinds ``reforge tune`` searches schedules for."""
    return [kind for kind, cls in KINDS.items() if cls.tunable]


def kinds_defaulting_to(pass_name: str) -> list[str]:
    """The kinds whose backends run the per-target pass ``pass_name`` by default (``default_passes``)."""
    return sorted(kind for kind, cls in KINDS.items() if pass_name in cls.default_passes)
