"""compile(): import, rewrite pass by pass (verifying if asked), fuse, build, package; the import,
rewrite and fuse steps are ``rewrite_and_fuse``, which ``tune`` shares."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass, replace
from typing import Callable

import tvm
import tvm_ffi

from reforge import frontend
from reforge.passes import registry
from reforge.passes.analysis import GraphStats, graph_stats
from reforge.autotune.records import TuningRecords
from reforge.passes.report import PassReport

from . import backends
from .artifact import FORMAT, Artifact
from .backends import Backend
from .batching import BatchSpec, check_max_batch
from .bucket_module import merge_buckets
from .build import BuildReport, build_fused, fuse
from .errors import ReforgeError, VerificationError, one_line
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
               pass_options: Callable[[str], dict] | None = None,
               before_pass: Callable[[str, tvm.IRModule], None] | None = None) -> tuple[tvm.IRModule, list[PassRecord]]:
    """Run the named passes in order, recording each one's report and graph statistics.

    ``before_pass(name, mod)`` runs first (tuning measures the choices a pass then follows);
    ``pass_options(name)`` are that pass's keyword arguments, read when it runs (tuning records'
    measured choices); ``after_pass(name, received, result)`` may return a ``Check`` to attach to
    the record.
    """
    records = []
    stats = graph_stats(mod) if names else None  # a pass's "after" is the next one's "before"
    for name in names:
        if before_pass is not None:
            before_pass(name, mod)
        pass_ = registry.get(name).make(**(pass_options(name) if pass_options else {}))
        before, start, received = stats, time.perf_counter(), mod
        mod = pass_(mod)
        seconds = time.perf_counter() - start
        stats = graph_stats(mod)
        record = PassRecord(name, pass_.report, before, stats, seconds)
        if after_pass is not None:
            record.check = after_pass(name, received, mod)
        records.append(record)
    return mod, records


@dataclass
class Rewritten:
    """A model imported, rewritten and fused for its backend: what ``compile`` builds and ``tune`` tunes."""

    imports: dict  # batch bucket (None: the one batch) -> its ImportedModel
    records: dict  # batch bucket -> its PassRecords
    mod: tvm.IRModule  # after the passes (under --max-batch, the buckets merged into one module)
    fused: tvm.IRModule  # mod after the backend's layout, legalization and fusion
    report: BuildReport

    @property
    def imported(self):
        """The import the manifest describes (batch 1's under --max-batch)."""
        return next(iter(self.imports.values()))


def rewrite_and_fuse(model, backend: Backend, names: list[str], *, input_shapes: dict | None = None,
                     example_inputs=None, batch: BatchSpec | None = None, checker=None,
                     pass_options: Callable[[str], dict] | None = None, before_pass=None,
                     log: Callable[[str], None] | None = None) -> Rewritten:
    """The front half of ``compile`` and ``tune``: import ``model`` (once per batch bucket), run the
    passes ``names`` on each import (``run_passes``), merge the buckets and fuse for ``backend``.

    ``checker(bucket, imported)`` returns the bucket's ``after_pass`` hook (``--verify``) or None.
    """
    say = log or (lambda _msg: None)
    imports = {b: frontend.load(model, input_shapes, example_inputs, batch=b)
               for b in (batch.buckets if batch else (None,))}
    imported = next(iter(imports.values()))
    if batch is not None:
        check_batch_axis(imports)
    say(f"imported {imported.name} ({imported.source}): "
        f"{', '.join(f'{s.name}{list(s.shape)}' for s in imported.inputs)}"
        + (f"; batch {batch.describe()}" if batch else ""))
    mods, records = {}, {}
    for b, imp in imports.items():
        mods[b], records[b] = run_passes(imp.mod, names, checker(b, imp) if checker else None, pass_options,
                                         before_pass)
    for r in records[next(iter(imports))]:
        say(f"pass {r.name}: {r.report.total} rewrites")
    mod = merge_buckets(mods) if batch else mods[None]
    report = BuildReport()
    return Rewritten(imports, records, mod, fuse(mod, backend, report), report)


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
    backend = backends.get(target)
    names = backend.passes(opt_level, enable_passes, disable_passes, passes)
    records_db = TuningRecords.load(tuning_records, backend.describe()) if tuning_records else None
    batch = None if max_batch is None else BatchSpec.of(check_max_batch(max_batch))
    if batch is not None and not backend.batches:
        raise ReforgeError(f"--max-batch: batch buckets are built for the x86 targets; target '{backend.name}' "
                           "runs the one batch of --input-shape")
    verifiers = {}

    def checker(bucket, imported):
        verifiers[bucket] = _Verifier(imported, seed, bucket)
        return verifiers[bucket].after_pass

    try:
        options = records_db.pass_options() if records_db else {}
        front = rewrite_and_fuse(model, backend, names, input_shapes=input_shapes, example_inputs=example_inputs,
                                 batch=batch, checker=checker if verify else None,
                                 pass_options=lambda name: options.get(name, {}), log=say)
        database = records_db.database() if records_db else None
        executable, build_report = build_fused(front.fused, backend, front.report, database)
        if verifiers and not backend.can_run():
            verifiers[None].emulate(front.mod, backend, database)
    finally:
        if records_db is not None:
            records_db.close()
    say(f"built for {backend.name} in {build_report.seconds:.1f} s")
    imported, records = front.imported, front.records[next(iter(front.imports))]  # the manifest's: batch 1's
    manifest = _manifest(imported, backend, opt_level, records, build_report)
    if batch is not None:
        manifest["batch"] = batch.to_json()
    if tuning_records:
        manifest["tuning_records"] = {"path": os.path.basename(tuning_records), "sha256": _sha256(tuning_records)}
    artifact = backend.artifact(executable, manifest)
    artifact.imported = imported
    if verifiers:
        found = [v.checked(artifact, backend, front.records[b]) for b, v in verifiers.items()]
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
        self.imported, self.seed, self.host, self.batch = imported, seed, backends.get("x86"), batch
        self.feeds = imported.random_inputs(seed)
        self.arrays = [self.feeds[s.name] for s in imported.inputs]
        self.ref_name = "onnxruntime" if imported.source == "onnx" else "pytorch"
        self.reference = imported.reference(self.feeds)
        self.previous = run_module(imported.mod, self.arrays, self.host)
        self.checks = [check("import", self.ref_name, self.previous, self.reference, IMPORT_RTOL)]
        self.emulated = None  # the backend's emulation of the final module, where this machine cannot run it
        self.no_emulation = None

    def emulate(self, mod: tvm.IRModule, backend: Backend, database) -> None:
        """Where this machine cannot run the final module: the backend's emulation of it, if it has one."""
        try:
            self.emulated = backend.emulator(mod, database)
        except ReforgeError as err:
            self.no_emulation = one_line(err)

    def after_pass(self, name: str, received: tvm.IRModule, result: tvm.IRModule) -> Check:
        unchanged = tvm_ffi.structural_equal(received, result)  # an unchanged module needs no rerun
        out = self.previous if unchanged else run_module(result, self.arrays, self.host)
        found = check(name, "before the pass", out, self.previous, registry.get(name).rtol)
        self.previous = out
        return found

    def checked(self, artifact: Artifact, tgt: Backend, records: list[PassRecord]) -> tuple[list[Check], str | None,
                                                                                  str | None]:
        """Every check of this model (stages named with their batch bucket under ``--max-batch``),
        why the final module was not run (or None) and how it was emulated (or None)."""
        checks, skipped, emulated = self.checks + [r.check for r in records], None, None
        if tgt.can_run():
            final = artifact.run(self.feeds)
            checks.append(check("final module", self.ref_name, list(final.values()), self.reference, FINAL_RTOL))
        elif self.emulated is not None:
            final = self.emulated.run(self.arrays)
            checks.append(check("final module (emulated)", self.ref_name, final, self.reference, FINAL_RTOL))
            emulated = tgt.emulation_note
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


def _manifest(imported, tgt: Backend, opt_level: int, records: list[PassRecord], build_report) -> dict:
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
