"""What the CPU backends (x86, arm) share: blocked-layout lowering, reforge's CPU default schedules,
code generation through TVM's generic CPU pipeline, and the Relax VM as the runner."""

from __future__ import annotations

from reforge.errors import ReforgeError

from .base import Backend


class CpuBackend(Backend):
    """A CPU target: NCHW[x]c convs at the machine's lanes, CPU default schedules, ``model.so``."""

    def fuse(self, mod, report):
        from reforge.build import fuse_blocked

        return fuse_blocked(mod, self, report)

    def schedule(self, fused, report, database=None):
        from tvm import relax

        from reforge.topi_ext.default_schedules import apply_default_schedules

        if database is not None:
            with self.tvm_target, database:
                fused = relax.transform.MetaScheduleApplyDatabase()(fused)
        scheduled, report.schedules = apply_default_schedules(fused, self.machine.lanes())
        return scheduled

    def codegen(self, scheduled):
        import tvm
        from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

        tgt = self.tvm_target
        passes = cpu_generic.dataflow_lower_passes(tgt) + cpu_generic.finalize_passes(tgt)
        return tvm.compile(scheduled, target=tgt, relax_pipeline=tvm.transform.Sequential(passes))

    def default_schedule(self, func):
        from reforge.topi_ext.schedule_x86 import default_schedule

        return default_schedule(func, self.machine.lanes())[0]

    def native_runner(self, artifact):
        """The Relax VM on this CPU over the artifact's module (loaded now if it was not)."""
        from reforge.artifact import load_library
        from reforge.execution import Runner

        executable = artifact.executable
        if executable is None:
            executable = load_library(artifact.library(), "this module")
        return Runner(executable, threads=artifact.threads, batch=artifact.batch)

    def lacking(self, needs: str) -> ReforgeError:
        return ReforgeError(f"this module was built for target '{self.name}' and needs {needs}, which this "
                            "machine lacks")
