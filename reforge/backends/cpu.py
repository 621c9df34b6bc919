"""What the CPU backends (x86, arm) share: blocked-layout lowering, reforge's CPU default schedules,
and code generation through TVM's generic CPU pipeline (kernels compiled in parallel, :mod:`reforge.codegen`)."""

from __future__ import annotations

from .base import Backend


class CpuBackend(Backend):
    """A CPU target: NCHW[x]c convs at the machine's lanes, CPU default schedules, ``model.so``."""

    def fuse(self, mod, report):
        from reforge.build import fuse_blocked

        return fuse_blocked(mod, self, report)

    def schedule(self, fused, report, database=None):
        from reforge.topi_ext.schedules.default import apply_default_schedules

        scheduled, report.schedules = apply_default_schedules(self.tuned(fused, database), self.machine)
        return scheduled

    def codegen(self, scheduled):
        from tvm.relax.backend.cpu_generic import pipeline

        return self.relax_build(scheduled, pipeline, parallel=True)

    def default_schedule(self, func):
        from reforge.topi_ext.schedules.default import default_schedule

        return default_schedule(func, self.machine)[0]
