"""The Backend interface: everything about a compilation target that differs from one kind of target
to another, asked by the pipeline, the artifact, tuning and the reports instead of testing the kind."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from abc import ABC, abstractmethod
from functools import cached_property
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from reforge.artifact import LIBRARY
from reforge.errors import ReforgeError

if TYPE_CHECKING:
    import tvm
    from tvm.target import Target

    from reforge.artifact import Artifact
    from reforge.build import BuildReport
    from reforge.machine import Machine


class Backend(ABC):
    """A target of one kind (a subclass per kind): its TVM target, the features it may use, and how
    reforge compiles, exports, runs, measures and tunes for it.

    Built from a preset (:func:`reforge.backends.get`: the TVM target made now) or from an artifact's
    manifest (:func:`reforge.backends.for_manifest`: the TVM target made only if asked, so loading an
    artifact needs no TVM compiler).
    """

    kind: ClassVar[str]  # "x86", "arm", "cuda", "opencl-fpga": the manifest's name for the class
    device: ClassVar[str] = "cpu"  # what executes the kernels: "cpu", "gpu" or "fpga"
    device_name: ClassVar[str] = "CPU"  # that device in an error message
    tunable: ClassVar[bool] = True  # `reforge tune` searches its schedules
    batches: ClassVar[bool] = False  # builds --max-batch's batch buckets
    tensor_intrinsics: ClassVar[str | None] = None  # module of tvm.s_tir.tensor_intrin its tuning may use
    required_files: ClassVar[tuple[str, ...]] = (LIBRARY,)  # files its artifact must hold beside manifest.json
    # the per-target passes (``per_target`` in passes/registry.py) it runs by default from their -O level
    default_passes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, target: Target | dict, features=frozenset()):
        self.name, self.features = name, frozenset(features)
        self._target = target  # a tvm Target, or its JSON (a manifest's) until tvm_target is asked

    # identity -------------------------------------------------------------------------------------

    @property
    def tvm_target(self) -> Target:
        if isinstance(self._target, dict):
            from tvm.target import Target

            self._target = Target(self._target)
        return self._target

    def target_json(self) -> dict:
        """The TVM target as JSON (what the manifest records)."""
        return self._target if isinstance(self._target, dict) else json.loads(str(self._target))

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and (self.name, self.features) == (other.name, other.features)

    def __hash__(self) -> int:
        return hash((self.kind, self.name, self.features))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, features={sorted(self.features)})"

    def has(self, feature: str) -> bool:
        return feature in self.features

    def describe(self) -> dict:
        """The manifest's ``target`` entry (what :func:`reforge.backends.for_manifest` reads back)."""
        return {"name": self.name, "kind": self.kind, "tvm": self.target_json(), "features": sorted(self.features)}

    def summary(self) -> str:
        """The compile report's words for the machine: ``mcpu cortex-a72, neon``."""
        return f"mcpu {self.target_json().get('mcpu', '?')}, {', '.join(sorted(self.features)) or 'baseline ISA'}"

    @cached_property
    def machine(self) -> Machine:
        """The processor the CPU schedules are parameterised by (``reforge.machine``)."""
        return self.make_machine()

    @abstractmethod
    def make_machine(self) -> Machine:
        """This target's machine model (made once, on first use of :attr:`machine`)."""

    def vector_lanes(self, bits: int = 32) -> int:
        """Elements of ``bits`` bits in one SIMD register of :attr:`machine`."""
        return self.machine.lanes(bits)

    # compilation ---------------------------------------------------------------------------------

    def passes(self, opt_level: int = 2, enable=(), disable=(), only: list[str] | None = None) -> list[str]:
        """The rewrite passes to run: the -O level's defaults (``passes.registry``) with this kind's
        :attr:`default_passes`."""
        from reforge.passes import registry

        return registry.select(opt_level, self.default_passes, enable, disable, only)

    @abstractmethod
    def fuse(self, mod: tvm.IRModule, report: BuildReport) -> tvm.IRModule:
        """Layout, legalization and operator fusion: the functions that tuning works on and scheduling
        schedules (``report.layout`` says which layout)."""

    @abstractmethod
    def schedule(self, fused: tvm.IRModule, report: BuildReport, database=None) -> tvm.IRModule:
        """Tuned records where ``database`` has them, the backend's default schedules elsewhere
        (``report.schedules`` counts the rules)."""

    def lower(self, mod: tvm.IRModule, report: BuildReport, database=None) -> tvm.IRModule:
        """Fuse, then schedule."""
        with self.tvm_target:
            return self.schedule(self.fuse(mod, report), report, database)

    @abstractmethod
    def codegen(self, scheduled: tvm.IRModule):
        """The scheduled module as this target's executable."""

    def tuned(self, fused: tvm.IRModule, database) -> tvm.IRModule:
        """``fused`` with the records of ``database`` (None: none) applied to the functions they cover. A record
        is looked up by the form tuning measured (``fast_math.without_lets``) and its trace replayed on the
        function itself (the same blocks and loops), whose approximations keep their bound values (the
        rounding step of e^x relies on one)."""
        if database is None:
            return fused
        import tvm
        from tvm import s_tir
        from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

        from reforge.topi_ext.fast_math import without_lets

        out = tvm.IRModule(dict(fused.functions_items()), attrs=fused.attrs)
        with self.tvm_target:
            for gv, func in fused.functions_items():
                if not isinstance(func, tvm.tirx.PrimFunc) or _scheduled(func):
                    continue
                record = database.query_tuning_record(_normalize_mod(without_lets(func)), self.tvm_target,
                                                      gv.name_hint)
                if record is None:
                    continue
                sch = s_tir.Schedule(_normalize_mod(func))
                record.trace.apply_to_schedule(sch, remove_postproc=False)
                scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                if "global_symbol" not in (func.attrs or {}):  # the normal form names every function main
                    scheduled = scheduled.without_attr("global_symbol")
                out.update_func(gv, scheduled)
        return out

    def relax_build(self, scheduled: tvm.IRModule, pipeline, parallel: bool = False) -> object:
        """A VM executable through TVM's lowering ``pipeline`` module for this target
        (``tvm.relax.backend.cpu_generic.pipeline``, ``...cuda.pipeline``); ``parallel`` (CPU code
        only): the kernels compiled by several threads (:func:`reforge.codegen.vm_build`)."""
        import tvm

        from reforge.codegen import vm_build

        tgt = self.tvm_target
        passes = pipeline.dataflow_lower_passes(tgt) + pipeline.finalize_passes(tgt)
        if parallel:
            return vm_build(scheduled, tgt, passes)
        return tvm.compile(scheduled, target=tgt, relax_pipeline=tvm.transform.Sequential(passes))

    @abstractmethod
    def default_schedule(self, func):
        """The schedule ``compile`` gives the PrimFunc ``func`` without records (tuning's first record);
        None when no rule covers it."""

    # export ------------------------------------------------------------------------------------------

    def export_library(self, executable, path: str) -> None:
        """Write ``executable`` as a shared library that this target's machine loads."""
        executable.export_library(path)

    def artifact(self, executable, manifest: dict) -> Artifact:
        """The artifact of a built ``executable`` (its required_files: model.so and any device code)."""
        from reforge.artifact import Artifact

        return Artifact(executable, manifest)

    @abstractmethod
    def how_to_run(self) -> str:
        """The manifest's note on where and how the artifact runs."""

    def native_commands(self, manifest: dict, artifact_path: str) -> list[str]:
        """Shell commands that run the artifact without Python (none unless the backend has them)."""
        return []

    # running -----------------------------------------------------------------------------------------

    @abstractmethod
    def can_run(self) -> bool:
        """Whether this machine executes this target's artifacts at all: natively or emulated."""

    @abstractmethod
    def can_measure(self) -> bool:
        """Whether this machine runs this target's code at the target's own speed, so that tuning and
        ``bench`` may time it here (else: on RPC devices)."""

    def runs_on_host_cpu(self) -> bool:
        """The artifact's code executes directly on this machine's CPU (loaded as soon as the
        artifact is, and timed against the CPU baselines of ``bench``)."""
        return self.device == "cpu" and self.can_measure()

    @abstractmethod
    def runner(self, artifact: Artifact):
        """Where the artifact's ``run`` / ``time`` execute on this machine (``Runner``, ``QemuRunner``,
        ``OpenCLRunner``); a one-line error naming what this machine lacks."""

    def local_device(self):
        import tvm

        return tvm.cpu()

    def remote_device(self, session):
        """The device of an RPC ``session`` that runs this target's code."""
        return session.cpu()

    def emulator(self, mod: tvm.IRModule, database=None):
        """A runner of ``mod`` as built here on a machine that cannot run it (``--verify``'s final
        check); None where the backend has no emulation. A ReforgeError says why it failed."""
        return None

    emulation_note = ""  # the verification's words for what ``emulator`` ran

    # tuning --------------------------------------------------------------------------------------------

    def measure_hint(self) -> str:
        """Where tuning measures when this machine cannot (the error's advice)."""
        return ("`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` registers a machine "
                f"that runs {self.name} code")

    def tuning_space(self, task_mod: tvm.IRModule):
        """MetaSchedule's design space of one task (a module holding one fused PrimFunc)."""
        from reforge.autotune.space import space_for

        return space_for(task_mod, self.machine)

    def tuning_builder(self, workers: int):
        """MetaSchedule's builder of this target's candidates."""
        from reforge.autotune.builder import local_builder

        return local_builder(workers)

    def load_intrinsics(self) -> None:
        """Register the tensor intrinsics this target's tuning may use, and no others (``intrinsics``)."""
        from reforge.autotune import intrinsics

        intrinsics.load_for(self.tensor_intrinsics)

    def timer(self, remote=None) -> Callable[[object, list[np.ndarray]], float]:
        """``measure(lib, arrays) -> seconds``: here, or on one device of ``remote`` (a
        :class:`reforge.remote.RemoteDevices`, its session held until ``measure`` is dropped)."""
        from tvm import relax

        if remote is None:
            dev = self.local_device()
            return lambda lib, arrays: timed(lib if isinstance(lib, relax.VMExecutable) else lib.mod, dev, arrays,
                                             isinstance(lib, relax.VMExecutable))
        session = remote.session()
        dev = self.remote_device(session)
        if not dev.exist:
            raise ReforgeError(f"tuning for {self.kind} measures on {self.device.upper()}s: the device under "
                               f"{remote} has no {self.device_name}")
        uploads = itertools.count()

        def measure(lib, arrays) -> float:
            # a fresh name per module: the device's dlopen would hand back the first one it loaded
            name = f"default{next(uploads)}.so"
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, name)
                self.export_library(lib, path)
                session.upload(path)
            return timed(session.load_module(name), dev, arrays, isinstance(lib, relax.VMExecutable))

        return measure


def timed(module, dev, arrays, relax_vm: bool) -> float:
    """Median seconds of ``main`` (a PrimFunc, or a Relax function run by the VM) on ``dev``."""
    import tvm
    from tvm import relax

    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    runner = relax.VirtualMachine(module, dev) if relax_vm else module
    return float(np.median(runner.time_evaluator("main", dev, number=3, repeat=3, min_repeat_ms=20)(*args).results))


def _scheduled(func) -> bool:
    """Whether a PrimFunc carries a schedule (MetaSchedule's record applied, or emitted scheduled)."""
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))
