"""One differential check: a model compiled by reforge under a configuration against onnxruntime
on the same random input. Tolerance: ``max|out - ref| <= RTOL * max|ref|`` (float32)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

import reforge

RTOL = 1e-4
REGRESSIONS = os.path.join(os.path.dirname(__file__), "regressions")
STATS = {"graphs": 0, "checks": 0, "failures": 0, "rewrites": Counter(), "exercised": Counter()}


def configurations(single_pass: str | None) -> list[tuple[str, dict]]:
    """-O0, -O2, and (when given) one pass alone with its prerequisites."""
    found = [("-O0", {"opt_level": 0}), ("-O2", {"opt_level": 2})]
    return found + ([(single_pass, {"passes": [single_pass]})] if single_pass else [])


def check(model: onnx.ModelProto, configs: list[tuple[str, dict]], seed: int = 0) -> None:
    """Compile and run ``model`` under every configuration; on a mismatch, save the model as
    ``regressions/last-failure.onnx`` (hypothesis replays its minimal example last) and fail."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"x": x})[0]
    STATS["graphs"] += 1
    for label, options in configs:
        art = reforge.compile(model, **options)
        for p in art.manifest["passes"]:
            STATS["rewrites"][p["name"]] += sum(p["rewrites"].values())
            STATS["exercised"][p["name"]] += 1
        out = art.run({"x": x})["y"]
        STATS["checks"] += 1
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(out - ref).max()) / scale if out.shape == ref.shape else float("inf")
        if not err <= RTOL:
            STATS["failures"] += 1
            os.makedirs(REGRESSIONS, exist_ok=True)
            onnx.save(model, os.path.join(REGRESSIONS, "last-failure.onnx"))
            raise AssertionError(f"{label}: relative error {err:.3g} > {RTOL} (model saved to "
                                 f"tests/fuzz/regressions/last-failure.onnx; rename it to keep it)")
