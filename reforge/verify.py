"""Numerical verification: compare outputs stage by stage on random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from .execution import Runner
from .native_log import quiet_stderr
from .backends import Backend


@dataclass(frozen=True)
class Check:
    """One comparison: ``rel = max|out − ref| / max|ref|`` over all outputs."""

    stage: str
    reference: str
    max_abs: float
    rel: float
    rtol: float

    @property
    def ok(self) -> bool:
        return self.rel <= self.rtol

    def to_json(self) -> dict:
        return {"stage": self.stage, "reference": self.reference, "max_abs": self.max_abs,
                "rel": self.rel, "rtol": self.rtol, "ok": self.ok}


def compare(out: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """Largest absolute error and error relative to the largest reference magnitude.

    Positions where both sides hold the same NaN or infinity agree; any other mismatch of
    non-finite values, shape or count is an infinite error.
    """
    if len(out) != len(ref):
        return float("inf"), float("inf")
    max_abs, scale = 0.0, 0.0
    for o, r in zip(out, ref):
        o, r = np.asarray(o, dtype=np.float64), np.asarray(r, dtype=np.float64)
        if o.shape != r.shape:
            return float("inf"), float("inf")
        same = (o == r) | (np.isnan(o) & np.isnan(r))
        diff = np.where(same, 0.0, np.abs(o - r))
        if diff.size:
            max_abs = max(max_abs, float(np.nan_to_num(diff, nan=np.inf).max()))
            finite = r[np.isfinite(r)]
            scale = max(scale, float(np.abs(finite).max()) if finite.size else 0.0)
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def run_module(mod: tvm.IRModule, arrays: list[np.ndarray], host: Backend) -> list[np.ndarray]:
    """Run ``mod`` once through TVM's plain lowering (no reforge layouts or schedules): quick to
    build, and independent of the schedules that the final-module check then covers. TVM's log lines
    while it legalizes (a warning per ``take``, see reforge.build) are silenced."""
    with quiet_stderr():
        executable = tvm.compile(mod, target=host.tvm_target)
    return Runner(executable).run(arrays)


def check(stage: str, reference: str, out, ref, rtol: float) -> Check:
    max_abs, rel = compare(out, ref)
    return Check(stage, reference, max_abs, rel, rtol)
