"""compile(): import, rewrite pass by pass (verifying if asked), build, package."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import torch
import tvm
import tvm_ffi

from reforge import frontend
from reforge.passes import registry
from reforge.passes.analysis import GraphStats, graph_stats
from reforge.passes.report import PassReport

from .artifact import FORMAT, Artifact
from .build import build
from .errors import VerificationError
from .targets import get_target, host_can_run
from .verify import Check, check, run_module

IMPORT_RTOL = 1e-4  # imported Relax module vs the original framework
FINAL_RTOL = 1e-4  # built module vs the original framework


@dataclass
class PassRecord:
    name: str
    report: PassReport
    before: GraphStats
    after: GraphStats
    seconds: float
    check: Check | None = None

    def to_json(self) -> dict:
        return {"name": self.name, **self.report.to_json(), "seconds": round(self.seconds, 3),
                "before": self.before.to_json(), "after": self.after.to_json(),
                "verify": self.check.to_json() if self.check else None}


def compile(model, target="x86", *, opt_level: int = 2, passes: list[str] | None = None,
            enable_passes=(), disable_passes=(), input_shapes: dict | None = None, example_inputs=None,
            verify: bool = False, seed: int = 0, log: Callable[[str], None] | None = None) -> Artifact:
    """Compile ``model`` (.onnx / .pt2 path, ``onnx.ModelProto``, ``nn.Module``, ``ExportedProgram``).

    The passes are the ``-O`` level's defaults for the target, or ``passes`` if given, adjusted
    by ``enable_passes`` / ``disable_passes``. With ``verify``, the imported module, the module
    after every pass and the built module run on the same random inputs; a stage beyond its
    tolerance raises ``VerificationError`` (which carries the artifact and its report).
    """
    say = log or (lambda _msg: None)
    tgt = get_target(target)
    names = registry.select(opt_level, tgt.kind, enable_passes, disable_passes, passes)
    imported = frontend.load(model, input_shapes, example_inputs)
    host = get_target("x86")
    say(f"imported {imported.name} ({imported.source}): "
        f"{', '.join(f'{s.name}{list(s.shape)}' for s in imported.inputs)}")

    checks: list[Check] = []
    feeds = imported.random_inputs(seed) if verify else None
    arrays = [feeds[s.name] for s in imported.inputs] if verify else None
    ref_name = "onnxruntime" if imported.source == "onnx" else "pytorch"
    if verify:
        reference = imported.reference(feeds)
        previous = run_module(imported.mod, arrays, host)
        checks.append(check("import", ref_name, previous, reference, IMPORT_RTOL))

    mod, records = imported.mod, []
    for name in names:
        info = registry.get(name)
        pass_ = info.make()
        before, start, received = graph_stats(mod), time.perf_counter(), mod
        mod = pass_(mod)
        record = PassRecord(name, pass_.report, before, graph_stats(mod), time.perf_counter() - start)
        if verify:  # each pass against the module it received; an unchanged module needs no rerun
            unchanged = tvm_ffi.structural_equal(received, mod)
            out = previous if unchanged else run_module(mod, arrays, host)
            record.check = check(name, "before the pass", out, previous, info.rtol)
            previous = out
        records.append(record)
        say(f"pass {name}: {record.report.total} rewrites")

    executable, build_report = build(mod, tgt)
    say(f"built for {tgt.name} in {build_report.seconds:.1f} s")
    artifact = Artifact(executable, _manifest(imported, tgt, opt_level, records, build_report))
    artifact.imported = imported
    if verify:
        skipped = None
        if host_can_run(tgt):
            final = artifact.run(feeds)
            checks.append(check("final module", ref_name, list(final.values()), reference, FINAL_RTOL))
        else:
            skipped = f"final module not run: this CPU cannot execute {tgt.name} code"
        checks[1:1] = [r.check for r in records]
        artifact.manifest["verification"] = {"seed": seed, "checks": [c.to_json() for c in checks],
                                             "passed": all(c.ok for c in checks), "skipped": skipped}
        failed = [c for c in checks if not c.ok]
        if failed:
            err = VerificationError(f"verification failed at '{failed[0].stage}': relative error "
                                    f"{failed[0].rel:.3g} exceeds its tolerance {failed[0].rtol:g}")
            err.artifact = artifact
            raise err
    return artifact


def _manifest(imported, tgt, opt_level: int, records: list[PassRecord], build_report) -> dict:
    from reforge import __version__

    return {
        "format": FORMAT,
        "model": {"name": imported.name, "source": imported.source},
        "inputs": [s.to_json() for s in imported.inputs],
        "outputs": [s.to_json() for s in imported.outputs],
        "target": tgt.describe(),
        "opt_level": opt_level,
        "passes": [r.to_json() for r in records],
        "build": build_report.to_json(),
        "verification": None,
        "versions": {"reforge": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
