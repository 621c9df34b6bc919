"""A MetaSchedule builder that works on this TVM install.

The default ``LocalBuilder`` re-spawns workers that each import ``tvm.s_tir.tensor_intrin``
(about 41 s) and time out; building with ``tvm.tirx.build`` directly skips that import.
Candidates for a cross-compiled target (``arm``) are exported as shared libraries linked by its
cross compiler, ready for a device without a compiler.
"""

from __future__ import annotations

import os
import tempfile

import tvm
from tvm.s_tir import meta_schedule as ms

from reforge.toolchains import CROSS_CXX, export_library


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def local_builder(workers: int, kind: str = "x86") -> ms.builder.LocalBuilder:
    export = _cross_export(kind) if kind in CROSS_CXX else None  # None: MetaSchedule's own (a tar)
    return ms.builder.LocalBuilder(f_build=fast_build, f_export=export, timeout_sec=60, max_workers=workers)


def _cross_export(kind: str):
    def export(mod: tvm.runtime.Module) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="reforge-candidate-"), "candidate.so")
        export_library(mod, path, kind)
        return path

    return export
