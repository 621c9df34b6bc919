"""Shared harness for the pass tests: build a small ONNX graph, import it, run passes on the
Relax module, build it for the host, and run the original graph under onnxruntime.

onnxruntime runs with its graph optimizations off, so the reference never folds a BatchNorm
itself: it computes every node as the ONNX spec writes it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from reforge import frontend
from reforge.frontend.imported import ImportedModel
from reforge.passes.analysis import graph_stats
from reforge.passes.report import PassReport
from reforge.targets import get_target
from reforge.verify import run_module


def seed_of(name: str) -> int:
    """A stable per-test seed, so every case draws different but reproducible numbers."""
    return zlib.crc32(name.encode())


def max_rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """``max|out - ref| / max|ref|`` in float64 (shapes must already agree)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


@dataclass
class Rewritten:
    imported: ImportedModel
    mod: object  # the Relax IRModule after the passes
    reports: list[PassReport]
    ops_before: dict
    ops_after: dict

    @property
    def report(self) -> PassReport:
        """The report of the last pass run (the one under test)."""
        return self.reports[-1]


class Harness:
    def __init__(self):
        self.target = get_target("x86")

    @staticmethod
    def model(nodes, inputs: dict, params: dict, outputs=("y",), opset: int = 17) -> onnx.ModelProto:
        """An ONNX model; ``inputs`` maps names to shapes (float32) or ``(shape, dtype)``."""
        def info(name, spec):
            shape, dtype = spec if isinstance(spec[-1], str) else (spec, "float32")
            return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                 list(shape))
        graph = helper.make_graph(
            nodes, "g", [info(n, s) for n, s in inputs.items()],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            [numpy_helper.from_array(np.asarray(v), n) for n, v in params.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
        types = {v.name: v.type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
        for out in model.graph.output:  # output types as ONNX infers them
            out.type.CopyFrom(types[out.name])
        onnx.checker.check_model(model, full_check=True)
        return model

    @staticmethod
    def random_feeds(imported: ImportedModel, rng) -> dict[str, np.ndarray]:
        return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in imported.inputs}

    @staticmethod
    def onnxruntime(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)

    @staticmethod
    def rewrite(model, *pass_types, **load_kwargs) -> Rewritten:
        """Import ``model`` and run fresh instances of ``pass_types`` on it, in order."""
        imported = frontend.load(model, **load_kwargs)
        mod, reports = imported.mod, []
        for make in pass_types:
            p = make()
            mod = p(mod)
            reports.append(p.report)
        return Rewritten(imported, mod, reports, dict(graph_stats(imported.mod).ops), dict(graph_stats(mod).ops))

    def run(self, mod, imported: ImportedModel, feeds) -> list[np.ndarray]:
        return run_module(mod, [feeds[s.name] for s in imported.inputs], self.target)


@pytest.fixture(scope="session")
def harness() -> Harness:
    return Harness()
