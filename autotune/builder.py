"""A MetaSchedule builder that works on this TVM install.

The default ``LocalBuilder`` re-spawns workers that each import ``tvm.s_tir.tensor_intrin``
(about 41 s) and time out; building with ``tvm.tirx.build`` directly skips that import.
A backend that cross-compiles passes its own export (``arm``: shared libraries linked by its cross
compiler, ready for a device without a compiler).
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms


def fast_build(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def local_builder(workers: int, export: Callable[[tvm.runtime.Module], str] | None = None) -> ms.builder.LocalBuilder:
    """Build candidates with ``fast_build``; ``export(module) -> path`` writes each (None: MetaSchedule's
    own export, a tar)."""
    return ms.builder.LocalBuilder(f_build=fast_build, f_export=export, timeout_sec=60, max_workers=workers)
