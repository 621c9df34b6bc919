"""Tensor intrinsics for one target kind, instead of all of TVM's.

``ms.TuneContext`` imports the package ``tvm.s_tir.tensor_intrin``, whose ``__init__`` parses every
intrinsic TVM has (about 41 s here, 29 s of it CUDA's) in each process that tunes. Registering the
package unexecuted and importing only the target's module (x86: 0.7 s, arm: 2.7 s) leaves
MetaSchedule the intrinsics it can use for that target; other modules still import on demand.
Each backend names its module (``Backend.tensor_intrinsics``); ``cuda`` names none: its space
(``space``) leaves out the tensor-core rules, the only ones that use intrinsics.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import tvm.s_tir

PACKAGE = "tvm.s_tir.tensor_intrin"


def load_for(module: str | None) -> None:
    """Register the tensor intrinsics of ``module`` (a module of PACKAGE, or None for none) and make
    the package importable cheaply."""
    if PACKAGE not in sys.modules:
        package = importlib.util.module_from_spec(importlib.util.find_spec(PACKAGE))
        sys.modules[PACKAGE] = package
        tvm.s_tir.tensor_intrin = package
    if module is not None:
        importlib.import_module(f"{PACKAGE}.{module}")
