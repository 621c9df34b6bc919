"""compile(): import, rewrite pass by pass (verifying if asked), build, package."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import tvm
import tvm_ffi

from reforge import frontend
from reforge.passes import registry
from reforge.passes.analysis import GraphStats, graph_stats
from reforge.autotune.records import TuningRecords
from reforge.passes.report import PassReport

from .artifact import FORMAT, Artifact
from .batching import BatchSpec, check_max_batch
from .bucket_module import merge_buckets
from .build import build
from .cuda_emulation import emulate
from .errors import ReforgeError, VerificationError, one_line
from .targets import get_target
from .toolchains import cuda_kernel_files, runs_here
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


def run_passes(mod: tvm.IRModule, names: list[str], after_pass=None,
               options: dict[str, dict] | None = None) -> tuple[tvm.IRModule, list[PassRecord]]:
    """Run the named passes in order, recording each one's report and graph statistics.

    ``after_pass(name, received, result)`` may return a ``Check`` to attach to the record;
    ``options[name]`` are keyword arguments for that pass (tuning records' measured choices).
    """
    records = []
    for name in names:
        pass_ = registry.get(name).make(**(options or {}).get(name, {}))
        before, start, received = graph_stats(mod), time.perf_counter(), mod
        mod = pass_(mod)
        record = PassRecord(name, pass_.report, before, graph_stats(mod), time.perf_counter() - start)
        if after_pass is not None:
            record.check = after_pass(name, received, mod)
        records.append(record)
    return mod, records


def compile(model, target="x86", *, opt_level: int = 2, passes: list[str] | None = None,
            enable_passes=(), disable_passes=(), input_shapes: dict | None = None, example_inputs=None,
            tuning_records: str | None = None, verify: bool = False, seed: int = 0, max_batch: int | None = None,
            log: Callable[[str], None] | None = None) -> Artifact:
    """Compile ``model`` (.onnx / .pt2 path, ``onnx.ModelProto``, ``nn.Module``, ``ExportedProgram``).

    The passes are the ``-O`` level's defaults for the target, or ``passes`` if given, adjusted
    by ``enable_passes`` / ``disable_passes``. ``tuning_records`` (from ``reforge tune``) schedule
    the functions they cover (the rest get the default schedules) and decide fft-conv for the convs
    they measured. With ``verify``, the imported module, the module after every pass and the built
    module run on the same random inputs; a stage beyond its tolerance raises ``VerificationError``
    (which carries the artifact and its report).

    ``max_batch``: one artifact running every batch from 1 to ``max_batch`` on the leading axis of
    every input and output, the batch axis being named in ``input_shapes`` (``{"image": ("N", 3, 224,
    224)}``) or left dynamic in the model; it holds one function per batch bucket
    (:mod:`reforge.batching`), each imported, rewritten and verified at its static batch.
    """
    say = log or (lambda _msg: None)
    tgt = get_target(target)
    names = registry.select(opt_level, tgt.kind, enable_passes, disable_passes, passes)
    records_db = TuningRecords.load(tuning_records, tgt.describe()) if tuning_records else None
    batch = None if max_batch is None else BatchSpec.of(check_max_batch(max_batch))
    if batch is not None and tgt.kind != "x86":
        raise ReforgeError(f"--max-batch: batch buckets are built for the x86 targets; target '{tgt.name}' "
                           "runs the one batch of --input-shape")
    imports = {b: frontend.load(model, input_shapes, example_inputs, batch=b)
               for b in (batch.buckets if batch else (None,))}
    imported = next(iter(imports.values()))  # batch 1's with --max-batch
    if batch is not None:
        check_batch_axis(imports)
    say(f"imported {imported.name} ({imported.source}): "
        f"{', '.join(f'{s.name}{list(s.shape)}' for s in imported.inputs)}"
        + (f"; batch {batch.describe()}" if batch else ""))

    verifiers = {b: _Verifier(imp, seed, b) for b, imp in imports.items()} if verify else {}
    mods, bucket_records = {}, {}
    for b, imp in imports.items():
        verifier = verifiers.get(b)
        mods[b], bucket_records[b] = run_passes(imp.mod, names, verifier.after_pass if verifier else None,
                                                records_db.pass_options() if records_db else None)
    records = bucket_records[next(iter(imports))]  # the manifest's pass report: batch 1's
    for r in records:
        say(f"pass {r.name}: {r.report.total} rewrites")
    mod = merge_buckets(mods) if batch else mods[None]

    try:
        database = records_db.database() if records_db else None
        executable, build_report = build(mod, tgt, database)
        if verifiers and tgt.kind == "cuda" and not runs_here(tgt.describe()):
            verifiers[None].emulate_gpu(mod, tgt, database)
    finally:
        if records_db is not None:
            records_db.close()
    say(f"built for {tgt.name} in {build_report.seconds:.1f} s")
    manifest = _manifest(imported, tgt, opt_level, records, build_report)
    if batch is not None:
        manifest["batch"] = batch.to_json()
    if tuning_records:
        manifest["tuning_records"] = {"path": os.path.basename(tuning_records), "sha256": _sha256(tuning_records)}
    if tgt.kind == "opencl-fpga":  # no shared library: kernels, launch plan and weights
        artifact = Artifact(None, manifest, kernel_files=executable.files())
    else:
        kernels = cuda_kernel_files(executable, sorted(tgt.features)[0]) if tgt.kind == "cuda" else None
        artifact = Artifact(executable, manifest, kernel_files=kernels)
    artifact.imported = imported
    if verifiers:
        found = [v.checked(artifact, tgt, bucket_records[b]) for b, v in verifiers.items()]
        record_verification(artifact, seed, [c for checks, _, _ in found for c in checks], *found[0][1:])
    return artifact


def check_batch_axis(imports: dict) -> None:
    """Every input and output of each bucket's import (batch -> ImportedModel) has that batch as
    its axis 0 and batch 1's shape elsewhere: the one batch axis ``--max-batch`` supports."""
    first = imports[1]
    for b, imp in imports.items():
        for kind, specs, base in (("input", imp.inputs, first.inputs), ("output", imp.outputs, first.outputs)):
            for spec, one in zip(specs, base):
                if spec.shape[:1] != (b,) or spec.shape[1:] != one.shape[1:]:
                    seen = f"shape {list(spec.shape)} at batch {b}" + (
                        f", {list(one.shape)} at batch 1" if b > 1 else "")
                    how = f": name it with --input-shape {spec.name}:Nx..." if kind == "input" else ""
                    raise ReforgeError(f"--max-batch: {kind} '{spec.name}' has no leading batch axis ({seen}); reforge "
                                       f"batches only an axis 0 shared by every input and output{how}")


def record_verification(artifact: Artifact, seed: int, checks: list[Check], skipped: str | None,
                        emulated: str | None) -> None:
    """Write the checks into the manifest; raise ``VerificationError`` (carrying the artifact) if one failed."""
    artifact.manifest["verification"] = {"seed": seed, "checks": [c.to_json() for c in checks],
                                         "passed": all(c.ok for c in checks), "skipped": skipped,
                                         "emulated": emulated}
    failed = [c for c in checks if not c.ok]
    if failed:
        err = VerificationError(f"verification failed at '{failed[0].stage}': relative error "
                                f"{failed[0].rel:.3g} exceeds its tolerance {failed[0].rtol:g}")
        err.artifact = artifact
        raise err


class _Verifier:
    """``--verify``: the imported module against the original framework, each pass against the
    module it received, the built module against the original framework again."""

    def __init__(self, imported, seed: int, batch: int | None = None):
        self.imported, self.seed, self.host, self.batch = imported, seed, get_target("x86"), batch
        self.feeds = imported.random_inputs(seed)
        self.arrays = [self.feeds[s.name] for s in imported.inputs]
        self.ref_name = "onnxruntime" if imported.source == "onnx" else "pytorch"
        self.reference = imported.reference(self.feeds)
        self.previous = run_module(imported.mod, self.arrays, self.host)
        self.checks = [check("import", self.ref_name, self.previous, self.reference, IMPORT_RTOL)]
        self.emulated = None  # the cuda schedules as OpenCL kernels on PoCL, where no GPU can run them
        self.no_emulation = None

    def emulate_gpu(self, mod: tvm.IRModule, tgt, database) -> None:
        if importlib.util.find_spec("pyopencl") is None:
            self.no_emulation = "without a GPU, emulating the cuda kernels needs pyopencl and PoCL"
            return
        try:
            self.emulated = emulate(mod, tgt, database)
        except ReforgeError as err:  # a graph the launch planner cannot lay out as kernel launches
            self.no_emulation = f"its kernels could not be emulated: {one_line(err)}"

    def after_pass(self, name: str, received: tvm.IRModule, result: tvm.IRModule) -> Check:
        unchanged = tvm_ffi.structural_equal(received, result)  # an unchanged module needs no rerun
        out = self.previous if unchanged else run_module(result, self.arrays, self.host)
        found = check(name, "before the pass", out, self.previous, registry.get(name).rtol)
        self.previous = out
        return found

    def checked(self, artifact: Artifact, tgt, records: list[PassRecord]) -> tuple[list[Check], str | None,
                                                                                  str | None]:
        """Every check of this model (stages named with their batch bucket under ``--max-batch``),
        why the final module was not run (or None) and how it was emulated (or None)."""
        checks, skipped, emulated = self.checks + [r.check for r in records], None, None
        if runs_here(artifact.manifest["target"]):
            final = artifact.run(self.feeds)
            checks.append(check("final module", self.ref_name, list(final.values()), self.reference, FINAL_RTOL))
        elif self.emulated is not None:
            final = self.emulated.run(self.arrays)
            checks.append(check("final module (emulated)", self.ref_name, final, self.reference, FINAL_RTOL))
            emulated = (f"final module emulated: no GPU here; its {tgt.name} schedules ran as OpenCL kernels on "
                        "PoCL (reforge/cuda_emulation.py)")
        else:
            skipped = f"final module not run: this machine cannot execute {tgt.name} code" + (
                f" ({self.no_emulation})" if self.no_emulation else "")
        if self.batch is not None:
            checks = [replace(c, stage=f"{c.stage} [batch {self.batch}]") for c in checks]
        return checks, skipped, emulated


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# manifest key -> the distribution whose version it records
_VERSIONED = (("tvm", "apache-tvm"), ("tvm_ffi", "apache-tvm-ffi"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
              ("torch", "torch"), ("numpy", "numpy"))


def _installed_version(dist: str) -> str | None:
    """A distribution's version from its metadata: reading it imports nothing (importing torch or
    onnxruntime to ask costs seconds)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _manifest(imported, tgt, opt_level: int, records: list[PassRecord], build_report) -> dict:
    from reforge import __version__

    return {
        "format": FORMAT,
        "model": {"name": imported.name, "source": imported.source},
        "inputs": [s.to_json() for s in imported.inputs],
        "outputs": [s.to_json() for s in imported.outputs],
        "target": tgt.describe(),
        "run": tgt.how_to_run(),
        "opt_level": opt_level,
        "passes": [r.to_json() for r in records],
        "build": build_report.to_json(),
        "verification": None,
        "versions": {"reforge": __version__, **{name: _installed_version(dist) for name, dist in _VERSIONED},
                     "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
