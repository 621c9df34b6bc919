"""The native tools a target needs beyond TVM: cross compilers, and for aarch64 the TVM runtime
libraries plus reforge's native programs (``native/``: the runner ``run_vm`` and the RPC session
``rpc_session``) built for that architecture.

The aarch64 runtime comes from the aarch64 wheels of the installed TVM version (``pip download``),
unpacked once into ``$REFORGE_CACHE`` (default ``~/.cache/reforge``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata

import tvm
from tvm.support import cc

from .errors import ReforgeError

CROSS_CXX = {"arm": "aarch64-linux-gnu-g++"}
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
QEMU_AARCH64 = "qemu-aarch64"
_NATIVE = os.path.join(os.path.dirname(__file__), "native")
# program -> the runtime libraries it links (the "extra" one registers random_fill_for_measure)
_PROGRAMS = {"run_vm": ("tvm_runtime", "tvm_ffi"), "rpc_session": ("tvm_runtime", "tvm_runtime_extra", "tvm_ffi")}
_RUNTIME_LIBS = {"apache-tvm": ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_extra.so"),
                 "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so",)}
_INSTALL_HINT = "apt-get install g++-aarch64-linux-gnu qemu-user"


def require(tool: str, why: str) -> str:
    """The path of ``tool`` on PATH, or a one-line error saying what needs it and how to get it."""
    path = shutil.which(tool)
    if path is None:
        raise ReforgeError(f"{why} needs '{tool}', which is not on PATH ({_INSTALL_HINT})")
    return path


def runs_here(target: dict) -> bool:
    """Whether this machine can run a module for ``target`` (a manifest entry): natively, an
    aarch64 module under qemu when the emulator and the cross compiler are installed, OpenCL
    kernels with pyopencl, CUDA kernels on a GPU."""
    from .targets import host_can_run

    kind = target.get("kind")
    if kind == "opencl-fpga":
        return importlib.util.find_spec("pyopencl") is not None
    if kind == "cuda":
        return tvm.cuda(0).exist
    return host_can_run(target) or (kind == "arm" and shutil.which(QEMU_AARCH64) is not None
                                    and shutil.which(CROSS_CXX["arm"]) is not None)


def export_library(executable, path: str, kind: str) -> None:
    """Write ``executable`` as a shared library for a target of ``kind``, cross-compiling if needed."""
    if kind in CROSS_CXX:
        compiler = require(CROSS_CXX[kind], f"the '{kind}' target")
        executable.export_library(path, fcompile=cc.cross_compiler(compiler))
    else:
        executable.export_library(path)


def cuda_kernel_files(executable, arch: str) -> dict[str, bytes]:
    """The module's CUDA kernels as source (``kernels.cu``) and as a fatbin built by nvcc for
    ``arch`` plus PTX for newer GPUs (``kernels.fatbin``)."""
    nvcc = require("nvcc", "the 'cuda' target")
    source = executable.mod.imports[0].imports[0].inspect_source()
    compute = arch.replace("sm_", "compute_")
    with tempfile.TemporaryDirectory() as tmp:
        cu, fatbin = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        with open(cu, "w") as f:
            f.write(source)
        done = subprocess.run([nvcc, "--fatbin", "-O3", f"-gencode=arch={compute},code=[{arch},{compute}]",
                               "-o", fatbin, cu], capture_output=True, text=True)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines() or ["?"]
            raise ReforgeError(f"nvcc rejected the generated kernels for {arch}: {errors[0].strip()}")
        with open(fatbin, "rb") as f:
            return {"kernels.cu": source.encode(), "kernels.fatbin": f.read()}


def cache_dir() -> str:
    return os.environ.get("REFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reforge")


def aarch64_program(name: str) -> str:
    """The aarch64 build of ``native/NAME.cc`` next to its TVM runtime libraries (all programs are
    fetched and built together, on first use)."""
    digest = hashlib.sha256(repr(_PROGRAMS).encode())
    for program in sorted(_PROGRAMS):
        with open(os.path.join(_NATIVE, f"{program}.cc"), "rb") as f:
            digest.update(f.read())
    versions = "-".join(metadata.version(p) for p in _RUNTIME_LIBS)
    folder = os.path.join(cache_dir(), f"aarch64-{versions}-{digest.hexdigest()[:12]}")
    if os.path.exists(os.path.join(folder, name)):
        return os.path.join(folder, name)
    compiler = require(CROSS_CXX["arm"], "running an 'arm' module here")
    staging = tempfile.mkdtemp(prefix="aarch64-", dir=_ensure(cache_dir()))
    try:
        _fetch_runtime(staging)
        for program, libs in _PROGRAMS.items():
            _build_program(compiler, program, libs, staging)
        if os.path.exists(folder):  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(folder, name)


def _ensure(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    return folder


def _fetch_runtime(dest: str) -> None:
    """Unpack the runtime libraries from the aarch64 wheels of the installed versions."""
    with tempfile.TemporaryDirectory() as wheels:
        pins = [f"{p}=={metadata.version(p)}" for p in _RUNTIME_LIBS]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", *pins,
               "--platform", "manylinux_2_28_aarch64", "--only-binary=:all:", "--no-deps",
               "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}", "-d", wheels]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ReforgeError(f"cannot download the aarch64 TVM runtime ({' '.join(pins)}): "
                               f"{(done.stderr.strip().splitlines() or ['pip failed'])[-1]}")
        for package, members in _RUNTIME_LIBS.items():
            wheel = next(w for w in os.listdir(wheels) if w.startswith(package.replace("-", "_") + "-"))
            with zipfile.ZipFile(os.path.join(wheels, wheel)) as z:
                for member in members:
                    with open(os.path.join(dest, os.path.basename(member)), "wb") as out:
                        out.write(z.read(member))


def _build_program(compiler: str, name: str, libs: tuple[str, ...], dest: str) -> None:
    import tvm_ffi.libinfo

    cmd = [compiler, "-std=c++17", "-O2", os.path.join(_NATIVE, f"{name}.cc"),
           "-I", tvm_ffi.libinfo.find_include_path(), "-I", tvm_ffi.libinfo.find_dlpack_include_path(),
           "-L", dest, "-Wl,--no-as-needed", *(f"-l{lib}" for lib in libs), "-Wl,-rpath,$ORIGIN",
           "-o", os.path.join(dest, name)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.strip().splitlines() or ["?"]
        raise ReforgeError(f"cannot build the aarch64 {name}: {errors[0].strip()}")
