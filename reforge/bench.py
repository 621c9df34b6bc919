"""Timing reforge against onnxruntime, OpenVINO and PyTorch in one process, on the same inputs."""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable


import numpy as np

from . import threads
from .errors import ReforgeError, one_line
from .execution import time_calls
from .native_log import quiet_stderr
from .verify import compare

BASELINES = ("onnxruntime", "openvino", "torch")
ROUND = 5  # runs of each runtime per turn
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Timing:
    runtime: str
    times_ms: list[float] | None = None
    rel_err: float | None = None  # outputs vs reforge's
    unavailable: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    def to_json(self) -> dict:
        if self.unavailable:
            return {"runtime": self.runtime, "unavailable": self.unavailable}
        return {"runtime": self.runtime, "median_ms": self.median, "min_ms": min(self.times_ms),
                "runs": len(self.times_ms), "rel_err_vs_reforge": self.rel_err}


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (None: :mod:`reforge.threads`' default) in reforge's runs and, where imported, in
    PyTorch (onnxruntime is set per session); returns the count."""
    n = threads.use(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def onnxruntime_runner(model, imported, threads: int, spin: bool = True):
    """onnxruntime's CPU provider on the ONNX file (a torch model exported first); ``spin=False`` keeps its
    idle worker threads from busy-waiting between operators (fairer on a machine shared with others)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if imported.source == "onnx":
        src = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    else:
        src = _export_onnx(model, imported)
    session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, dict(zip(names, feeds.values())))


def openvino_runner(model, imported, threads: int):
    """OpenVINO's CPU plugin on the same ONNX file, compiled for latency (one stream) in f32 on ``threads``
    threads, its inputs fixed to the shapes reforge compiled for."""
    if imported.source != "onnx":
        raise ReforgeError("the model is not an ONNX file; OpenVINO runs the ONNX file only")
    try:
        import openvino as ov
    except ImportError:
        raise ReforgeError("openvino is not installed (pip install openvino)") from None
    core = ov.Core()
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    network = core.read_model(source)
    network.reshape({spec.name: ov.PartialShape(list(spec.shape)) for spec in imported.inputs})
    compiled = core.compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                   "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda feeds: list(request.infer(feeds, share_inputs=True).values())


def _export_onnx(model, imported) -> bytes:
    """A torch model as ONNX (torch.onnx's exporter) for the onnxruntime baseline."""
    import torch

    program = model if isinstance(model, torch.export.ExportedProgram) else None
    if isinstance(model, (str, os.PathLike)):
        program = torch.export.load(os.fspath(model))
    module = program.module() if program is not None else model
    args = tuple(torch.from_numpy(a) for a in imported.random_inputs().values())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():  # the exporter narrates its steps
            torch.onnx.export(program if program is not None else module, args, path, dynamo=True,
                              external_data=False, verbose=False)
        with open(path, "rb") as f:
            return f.read()


def _torch_runner(model, imported):
    import torch

    if imported.source == "onnx":
        raise ReforgeError("the model is ONNX; there is no PyTorch module to run")
    module = model
    if isinstance(model, (str, os.PathLike)):
        module = torch.export.load(os.fspath(model)).module()
    elif isinstance(model, torch.export.ExportedProgram):
        module = model.module()

    def run(feeds):
        with torch.no_grad():
            out = module(*(torch.from_numpy(a) for a in feeds.values()))
        return [t.numpy() for t in torch.utils._pytree.tree_leaves(out)]

    return run


def parse_baselines(text: str) -> list[str]:
    """``"onnxruntime,torch"`` -> the list, refusing unknown names."""
    names = [a for a in text.split(",") if a]
    unknown = [a for a in names if a not in BASELINES]
    if unknown:
        raise ReforgeError(f"unknown baseline '{unknown[0]}'; choose from: {', '.join(BASELINES)}")
    return names


def baseline_runners(model, imported, against, threads: int, spin: bool = True) -> dict[str, Runner | str]:
    """A runner per requested baseline, or the reason it cannot run on this model (``spin``: onnxruntime's)."""
    make = {"onnxruntime": lambda: onnxruntime_runner(model, imported, threads, spin),
            "openvino": lambda: openvino_runner(model, imported, threads),
            "torch": lambda: _torch_runner(model, imported)}
    runners: dict[str, Runner | str] = {}
    for name in against:
        try:
            runners[name] = make[name]()
        except ReforgeError as err:
            runners[name] = str(err)
        except Exception as err:  # an exporter failing on this model is a result, not a crash
            runners[name] = one_line(err)
    return runners


def bench(artifact, imported, runners: dict[str, Runner | str], threads: int = 1, repeat: int = 30,
          seed: int = 0, artifacts: dict | None = None) -> list[Timing]:
    """Median latency of reforge's ``artifact``, of other builds of it (``artifacts``: name -> artifact, a tuned
    one, timed as it is) and of each baseline runner on one set of random inputs.

    The runtimes take turns, ROUND runs each, so a slow phase of a shared machine falls on all of them."""
    if repeat < 20:
        raise ReforgeError(f"--repeat {repeat}: benchmarks take the median of at least 20 runs")
    set_threads(threads)
    feeds = imported.random_inputs(seed)
    arrays = list(feeds.values())
    ours = artifact.runner.run(arrays)
    others = artifacts or {}
    timed = {name: run for name, run in runners.items() if not isinstance(run, str)}
    errors = {name: compare(run(feeds), ours)[1] for name, run in timed.items()}
    errors.update({name: compare(other.runner.run(arrays), ours)[1] for name, other in others.items()})
    times: dict[str, list[float]] = {"reforge": [], **{name: [] for name in (*others, *timed)}}
    for count in [ROUND] * (repeat // ROUND) + ([repeat % ROUND] if repeat % ROUND else []):
        times["reforge"] += artifact.runner.time(arrays, count)
        for name, other in others.items():
            times[name] += other.runner.time(arrays, count)
        for name, run in timed.items():
            times[name] += time_calls(lambda: run(feeds), count, warmup=1)
    return [Timing("reforge", times["reforge"])] + [
        Timing(name, times[name], rel_err=errors[name]) for name in others] + [
        Timing(name, unavailable=run) if isinstance(run, str) else Timing(name, times[name], rel_err=errors[name])
        for name, run in runners.items()]


def format_bench(results: list[Timing], threads: int) -> str:
    from .report_format import table

    ours = results[0].median
    rows = []
    for r in results:
        if r.unavailable:
            rows.append([r.runtime, "-", "-", "-", "-", f"unavailable: {r.unavailable}"])
            continue
        rows.append([r.runtime, f"{r.median:.3f}", f"{min(r.times_ms):.3f}", f"{r.median / ours:.2f}x",
                     "-" if r.rel_err is None else f"{r.rel_err:.2g}", ""])
    head = (f"latency, {threads} thread(s), median of {len(results[0].times_ms)} runs after warm-up; "
            "'reforge speed-up' = baseline time / reforge time")
    return head + "\n" + table(["runtime", "median ms", "min ms", "reforge speed-up", "rel err", ""], rows)
