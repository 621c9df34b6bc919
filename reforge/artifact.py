"""The deployable artifact: one .tar holding the compiled module (``model.so``) and
``manifest.json`` (signature, target, passes, verification, versions, SHA-256 of each file).

An artifact contains native code that ``load`` executes: run only artifacts you trust. ``load``
refuses archives with unexpected members (links, paths outside the archive, extra files) and
files whose SHA-256 does not match the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import threading
from functools import cached_property

import numpy as np

from reforge.frontend.tensor_spec import TensorSpec

from . import tvm_runtime
from .batching import BatchSpec
from .errors import ReforgeError, one_line
from .execution import Runner, check_inputs
from .native_log import quiet_stderr
from .profiling import Profile
from .threads import check as check_threads

FORMAT = "reforge-artifact/1"
LIBRARY = "model.so"
MANIFEST = "manifest.json"
KERNEL_FILES = ("kernels.cu", "kernels.fatbin",  # cuda: device code beside model.so
                "kernels.cl", "launch_plan.json", "params.bin")  # opencl-fpga: instead of model.so
MEMBERS = (MANIFEST, LIBRARY, *KERNEL_FILES)


class Artifact:
    """A compiled model: run it, time it, save it as a .tar."""

    def __init__(self, executable, manifest: dict, library: bytes | None = None,
                 kernel_files: dict[str, bytes] | None = None, threads: int | None = None):
        self.executable, self.manifest = executable, manifest
        self.kernel_files = kernel_files or {}  # KERNEL_FILES entries: device code for a GPU target
        self.imported = None  # the ImportedModel it was compiled from, when compiled in this process
        self.threads = threads  # TVM pool workers of a run on this CPU (None: reforge.threads' default)
        self._library = library  # model.so's bytes, once exported or read
        self._runner = None
        self._runner_lock = threading.Lock()

    @cached_property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["inputs"]]

    @cached_property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["outputs"]]

    @cached_property
    def batch(self) -> BatchSpec | None:
        """The batch buckets of an artifact compiled with ``--max-batch`` (None: the one batch of
        ``inputs``, whose shapes are otherwise batch 1's)."""
        return BatchSpec.from_json(self.manifest.get("batch"))

    @property
    def runner(self):
        """Where ``run`` and ``time`` execute: this CPU, this machine's GPU, or an aarch64
        module under qemu (made once, by whichever thread asks first)."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = self._make_runner()
        return self._runner

    def _make_runner(self):
        return self.backend.runner(self)

    @cached_property
    def backend(self):
        """The backend of the manifest's target (:mod:`reforge.backends`)."""
        from .backends import for_manifest

        return for_manifest(self.manifest["target"])

    @property
    def emulated(self) -> bool:
        """Whether ``run`` / ``time`` go through an emulator (qemu, or OpenCL on a CPU) rather than
        the target's device."""
        return self.runner.emulated

    def library(self) -> bytes | None:
        """``model.so`` as deployed: built for the target's CPU, cross-compiled where needed
        (None for opencl-fpga, whose artifact holds kernels and a launch plan instead)."""
        if self._library is None and self.executable is not None:
            with tempfile.TemporaryDirectory() as tmp:
                lib = os.path.join(tmp, LIBRARY)
                with quiet_stderr():
                    self.backend.export_library(self.executable, lib)
                with open(lib, "rb") as f:
                    self._library = f.read()
        return self._library

    def run(self, inputs) -> dict[str, np.ndarray]:
        """Run on ``inputs`` (dict by input name, list, or one array); outputs by name. Safe to call
        from any number of threads at once (each thread runs its own VM over the one set of weights)."""
        outs = self.runner.run(check_inputs(self.inputs, inputs, self.batch))
        return {spec.name: out for spec, out in zip(self.outputs, outs)}

    def time(self, inputs, repeat: int = 20) -> list[float]:
        """Milliseconds per run for ``repeat`` runs after warm-up."""
        return self.runner.time(check_inputs(self.inputs, inputs, self.batch), repeat)

    def profile(self, inputs, repeat: int = 20) -> Profile:
        """Each kernel's milliseconds within ``repeat`` runs after warm-up (:mod:`reforge.profiling`)."""
        return self.runner.profile(check_inputs(self.inputs, inputs, self.batch), repeat)

    def save(self, path: str) -> str:
        """Write the artifact to ``path`` (a .tar)."""
        library = self.library()
        payloads = {**({LIBRARY: library} if library is not None else {}), **self.kernel_files}
        manifest = dict(self.manifest, files={n: hashlib.sha256(b).hexdigest() for n, b in payloads.items()})
        data = json.dumps(manifest, indent=2).encode()
        out_dir = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(out_dir):
            raise ReforgeError(f"cannot write '{path}': folder '{out_dir}' does not exist")
        with tarfile.open(path, "w") as tar:
            for name, payload in ((MANIFEST, data), *payloads.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
        self.manifest = manifest
        return path


def load(path: str, remote=None, threads: int | None = None) -> Artifact:
    """Load an artifact written by ``Artifact.save``, checking its integrity first.

    ``threads``: the TVM pool workers a run on this CPU uses (default: every physical core this
    process may use, :mod:`reforge.threads`). With ``remote`` (a :class:`reforge.remote.RemoteDevices`),
    the module is uploaded to one of the tracker's devices and runs there; the CPU-feature check is
    then the device's business.
    """
    check_threads(threads)
    manifest, files = _verified(path)
    library = files.pop(LIBRARY, None)
    kernels = {n: b for n, b in files.items() if n in KERNEL_FILES}
    if remote is not None:
        if library is None:
            raise ReforgeError(f"'{path}' is an opencl-fpga artifact: run it where its OpenCL device is")
        session = remote.session()
        try:
            session.upload(bytearray(library), LIBRARY)
            lib = session.load_module(LIBRARY)
        except Exception as err:  # RPC and dlopen failures on the device arrive as assorted types
            raise ReforgeError(f"'{path}': cannot load {LIBRARY} on {remote}: {one_line(err)}") from err
        artifact = Artifact(lib, manifest, library, kernels)
        artifact._runner = Runner(lib, artifact.backend.remote_device(session), session=session, batch=artifact.batch)
        return artifact
    artifact = Artifact(None, manifest, library, kernels, threads)
    if artifact.backend.runs_on_host_cpu():  # else loaded when run: under qemu, on a GPU, or refused
        artifact.executable = load_library(library, f"'{path}'")
    return artifact


def load_library(library: bytes, what: str):
    """dlopen ``model.so`` from its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        lib_path = os.path.join(tmp, LIBRARY)
        with open(lib_path, "wb") as f:
            f.write(library)
        try:
            with quiet_stderr():
                return tvm_runtime.load_module(lib_path)
        except Exception as err:  # TVM raises its own error types from dlopen failures
            raise ReforgeError(f"{what}: cannot load {LIBRARY}: {one_line(err)}") from err


def _verified(path: str) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the files by name, after the format and SHA-256 checks."""
    members = _read_members(path)
    try:
        manifest = json.loads(members[MANIFEST])
    except (ValueError, UnicodeDecodeError) as err:
        raise ReforgeError(f"'{path}': manifest.json is not valid JSON: {one_line(err)}") from err
    if manifest.get("format") != FORMAT:
        raise ReforgeError(f"'{path}' has artifact format {manifest.get('format')!r}; this reforge reads {FORMAT}")
    expected = manifest.get("files", {})
    needed = set(_backend_of(path, manifest).required_files)
    for name in set(members) - {MANIFEST} | needed:
        if name not in members:
            raise ReforgeError(f"'{path}' is not a reforge artifact: it has no {name}")
        if name not in expected:
            raise ReforgeError(f"'{path}': manifest.json does not list the SHA-256 of {name}")
    for name, digest in expected.items():
        if name not in members:
            raise ReforgeError(f"'{path}' lacks {name}, which its manifest.json lists")
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise ReforgeError(f"'{path}' was modified after compilation: {name} does not match its "
                               "SHA-256 in manifest.json; refusing to load it")
    return manifest, members


def _backend_of(path: str, manifest: dict):
    from .backends import for_manifest

    if not isinstance(manifest.get("target"), dict):
        raise ReforgeError(f"'{path}': manifest.json names no target")
    return for_manifest(manifest["target"])


def _read_members(path: str) -> dict[str, bytes]:
    """The regular files of an artifact; anything else in the archive is refused."""
    if not os.path.isfile(path):
        raise ReforgeError(f"artifact '{path}' not found")
    try:
        tar = tarfile.open(path, "r")
    except (tarfile.TarError, OSError) as err:
        raise ReforgeError(f"'{path}' is not a reforge artifact (not a tar archive)") from err
    found: dict[str, bytes] = {}
    with tar:
        try:
            for member in tar.getmembers():
                if member.name not in MEMBERS or not member.isfile():
                    raise ReforgeError(f"'{path}' holds an unexpected member '{member.name}'; a reforge "
                                       f"artifact has {MANIFEST}, {LIBRARY} and for GPU targets "
                                       f"{' / '.join(KERNEL_FILES)}, as regular files")
                if member.name in found:
                    raise ReforgeError(f"'{path}' holds '{member.name}' twice")
                found[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ReforgeError(f"'{path}' is a damaged tar archive: {one_line(err)}") from err
    if MANIFEST not in found:
        raise ReforgeError(f"'{path}' is not a reforge artifact: it has no {MANIFEST}")
    return found
