"""The x86-64 backend: the host CPU or a named one (LLVM's mcpu), its AVX / AVX-512 features, and the
machine model they imply; code runs natively where this CPU has the features."""

from __future__ import annotations

import os
from functools import lru_cache

from reforge.errors import ReforgeError
from reforge.machine import AVX2, AVX512, SSE, Machine

from .cpu import CpuBackend

FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512vpopcntdq")
CACHES = "/sys/devices/system/cpu/cpu0/cache"


class X86Backend(CpuBackend):
    kind = "x86"
    batches = True
    tensor_intrinsics = "x86"
    # fft-conv and sparse: their cost models are measured on x86 CPUs
    default_passes = frozenset({"prune-channels", "fft-conv", "sparse"})

    def __init__(self, name: str, target, features=frozenset(), host: bool = False):
        super().__init__(name, target, features)
        self.host = host  # compiled for this machine's own CPU: the machine model reads its caches

    @classmethod
    def make(cls, name: str, mcpu: str | None) -> X86Backend:
        """``mcpu`` (an LLVM CPU name), or this machine's CPU when None; every core this process may use."""
        from tvm.target import Target, codegen

        host = Target.from_device("cpu").export()
        spec = {"kind": "llvm", "mcpu": mcpu or host["mcpu"], "num-cores": len(os.sched_getaffinity(0))}
        if not codegen.llvm_is_valid_cpu(spec["mcpu"], "x86_64-linux-gnu"):
            raise ReforgeError(f"LLVM does not know the CPU '{spec['mcpu']}'")
        tgt = Target(spec)
        return cls(name, tgt, frozenset(f for f in FEATURES if codegen.llvm_cpu_has_features([f], tgt)),
                   host=mcpu is None)

    def make_machine(self) -> Machine:
        """AVX-512, AVX2 or SSE by the features; the target's cores; the host's L1d / L2 when compiling
        for this machine's CPU."""
        preset = AVX512 if self.has("avx512f") else AVX2 if self.has("avx2") else SSE
        machine = preset.with_(cores=int(self.target_json().get("num-cores", 1)))
        if self.host:
            l1d, l2 = host_cache_bytes()
            machine = machine.with_(l1d_bytes=l1d or machine.l1d_bytes, l2_bytes=l2 or machine.l2_bytes)
        return machine

    def how_to_run(self) -> str:
        return f"`reforge run ARTIFACT` on an x86-64 CPU with {', '.join(sorted(self.features)) or 'SSE2'}"

    def native_commands(self, manifest: dict, artifact_path: str) -> list[str]:
        from reforge.toolchains import native_host_commands

        return native_host_commands(manifest, artifact_path)

    def can_run(self) -> bool:
        return self.can_measure()

    def can_measure(self) -> bool:
        return self.features <= host_features()

    def runner(self, artifact):
        """The Relax VM on this CPU over the artifact's module (loaded now if it was not)."""
        from reforge.artifact import load_library
        from reforge.execution import Runner

        if not self.can_measure():
            raise ReforgeError(f"this module was built for target '{self.name}' and needs "
                               f"{', '.join(sorted(self.features - host_features()))}, which this machine lacks")
        executable = artifact.executable
        if executable is None:
            executable = load_library(artifact.library(), "this module")
        return Runner(executable, threads=artifact.threads, batch=artifact.batch)

    def measure_hint(self) -> str:
        return (f"this CPU lacks {', '.join(sorted(self.features - host_features()))}; "
                "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` registers a machine that has them")


@lru_cache(maxsize=None)
def host_features() -> frozenset[str]:
    """The FEATURES this CPU has and the kernel enables, from /proc/cpuinfo (LLVM's names; no TVM
    needed, so an artifact loads without TVM's compiler)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    linux_names = {f.replace("_", "") for f in flags}  # avx512_vnni -> avx512vnni
    return frozenset(f for f in FEATURES if f in linux_names)


@lru_cache(maxsize=None)
def host_cache_bytes(folder: str = CACHES) -> tuple[int | None, int | None]:
    """This CPU's L1 data and L2 cache sizes in bytes, from sysfs (None where it does not say)."""
    found: dict[tuple[str, str], int] = {}
    try:
        entries = sorted(e for e in os.listdir(folder) if e.startswith("index"))
    except OSError:
        return None, None
    for entry in entries:
        try:
            level, kind, size = (read_text(os.path.join(folder, entry, name)) for name in ("level", "type", "size"))
        except OSError:
            continue
        found[(level, kind)] = parse_size(size)
    return found.get(("1", "Data")), found.get(("2", "Unified"))


def parse_size(text: str) -> int:
    """sysfs's cache size (``48K``, ``2048K``, ``32M``) in bytes."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KMGkmg")) * scale


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
