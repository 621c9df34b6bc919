"""The aarch64 backend: Linux with NEON, cross-compiled with aarch64-linux-gnu-g++; its artifacts run on
the device (RPC, or libtvm_runtime.so there) or, on x86, under qemu-aarch64."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

from reforge.machine import NEON, Machine

from .cpu import CpuBackend


class ArmBackend(CpuBackend):
    kind = "arm"
    tensor_intrinsics = "arm_cpu"
    # sparse with x86's crossovers (no aarch64 board measured them; `reforge tune` measures each layer on a device)
    default_passes = frozenset({"prune-channels", "sparse"})

    @classmethod
    def make(cls, name: str, mcpu: str, cores: int) -> ArmBackend:
        from tvm.target import Target

        return cls(name, Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"],
                                 "num-cores": cores}), frozenset({"neon"}))

    def make_machine(self) -> Machine:
        return NEON.with_(cores=int(self.target_json().get("num-cores", 1)))

    def export_library(self, executable, path: str) -> None:
        """Cross-compile: the aarch64 device needs no compiler."""
        cross_compile(executable, path, self.name)

    def how_to_run(self) -> str:
        return ("on an aarch64 Linux device: `reforge run ARTIFACT --rpc-tracker HOST:PORT --rpc-key KEY` "
                "with TVM's rpc_server running on the device, or model.so loaded by libtvm_runtime.so "
                "(reforge/native/run_vm.cc is a C++ host); on x86, `reforge run ARTIFACT` emulates it "
                "with qemu-aarch64")

    def can_run(self) -> bool:
        """Under qemu-aarch64, with the cross compiler that builds reforge's aarch64 runner."""
        from reforge.toolchains import AARCH64_CXX, QEMU_AARCH64

        return shutil.which(QEMU_AARCH64) is not None and shutil.which(AARCH64_CXX) is not None

    def can_measure(self) -> bool:
        """An emulator's times say nothing of the device's: aarch64 code is measured on RPC devices."""
        return False

    def runner(self, artifact):
        from reforge.qemu_runner import QemuRunner

        return QemuRunner(artifact.library())

    def measure_hint(self) -> str:
        return "`python -m reforge.qemu_rpc_server` registers an emulated aarch64 device"

    def tuning_builder(self, workers: int):
        """Candidates exported as shared libraries linked by the cross compiler, ready for a device."""
        from reforge.autotune.builder import local_builder

        return local_builder(workers, functools.partial(export_candidate, self.name))


def cross_compile(executable, path: str, target_name: str) -> None:
    """Write ``executable`` as an aarch64 shared library, linked by the cross compiler."""
    from tvm.support import cc

    from reforge.toolchains import AARCH64_CXX, require

    executable.export_library(path, fcompile=cc.cross_compiler(require(AARCH64_CXX, f"the '{target_name}' target")))


def export_candidate(target_name: str, mod) -> str:
    """A tuning candidate as a cross-compiled library in a fresh folder (run in MetaSchedule's builder
    workers: a module-level function of plain arguments, so it pickles)."""
    path = os.path.join(tempfile.mkdtemp(prefix="reforge-candidate-"), "candidate.so")
    cross_compile(mod, path, target_name)
    return path
