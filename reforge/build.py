"""Relax module to executable for a target: legalize, fuse, lower, build."""

from __future__ import annotations

import tvm
from tvm import relax

from .targets import TargetSpec


def build(mod: tvm.IRModule, target: TargetSpec) -> relax.VMExecutable:
    """Compile ``mod`` with the target's default Relax pipeline (legalization and operator fusion)."""
    tgt = target.tvm_target
    with tgt:
        return tvm.compile(mod, target=tgt, relax_pipeline=relax.get_default_pipeline(tgt))
