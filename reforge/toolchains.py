"""The native tools a target needs beyond TVM: cross compilers, and reforge's native programs
(``native/``: the runner ``run_vm`` over the C API ``reforge_runtime.h``, and the RPC session
``rpc_session``) built against the TVM runtime libraries alone, for aarch64 or for this machine.

The aarch64 runtime comes from the aarch64 wheels of the installed TVM version (``pip download``),
unpacked once into ``$REFORGE_CACHE`` (default ``~/.cache/reforge``) beside the programs built for it;
this machine's is the installed wheels' own (``tvm/lib``, ``tvm_ffi/lib``), which the programs built
here find through their rpath.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata

from .errors import ReforgeError

AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
QEMU_AARCH64 = "qemu-aarch64"
NATIVE = os.path.join(os.path.dirname(__file__), "native")
HOST_CXX = "g++"
# program -> its sources in native/ and the runtime libraries it links (the "extra" one registers
# random_fill_for_measure)
_PROGRAMS = {"run_vm": (("run_vm.cc", "reforge_runtime.cc"), ("tvm_runtime", "tvm_ffi")),
             "rpc_session": (("rpc_session.cc",), ("tvm_runtime", "tvm_runtime_extra", "tvm_ffi"))}
_RUNTIME_LIBS = {"apache-tvm": ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_extra.so"),
                 "apache-tvm-ffi": ("tvm_ffi/lib/libtvm_ffi.so",)}
_INSTALL_HINT = "apt-get install g++-aarch64-linux-gnu qemu-user"


def require(tool: str, why: str, hint: str = _INSTALL_HINT) -> str:
    """The path of ``tool`` on PATH, or a one-line error saying what needs it and how to get it."""
    path = shutil.which(tool)
    if path is None:
        raise ReforgeError(f"{why} needs '{tool}', which is not on PATH ({hint})")
    return path


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
    """The aarch64 build of the native program ``name`` next to its TVM runtime libraries (all
    programs are fetched and built together, on first use)."""
    return _built(name, "aarch64", AARCH64_CXX, sorted(_PROGRAMS), "running an 'arm' module here")


def host_program(name: str = "run_vm") -> str:
    """The native program ``name`` built for this machine with the system compiler, linked to the
    installed wheels' TVM runtime (built on first use)."""
    return _built(name, "host", HOST_CXX, [name], f"building reforge's native {name}")


def host_runtime_dirs() -> list[str]:
    """The folders of the installed wheels' runtime libraries (libtvm_runtime.so, libtvm_ffi.so)."""
    folders = []
    for members in _RUNTIME_LIBS.values():
        for member in members:
            package = importlib.util.find_spec(member.split("/")[0]).submodule_search_locations[0]
            folder = os.path.join(package, os.path.dirname(member).split("/", 1)[1])
            folders += [folder] if folder not in folders else []
    return folders


def host_build_command(sources: list[str], output: str, libs: tuple[str, ...] = _PROGRAMS["run_vm"][1]) -> list[str]:
    """The system compiler's command that builds ``sources`` (a program using the C API
    ``reforge_runtime.h`` plus ``native/reforge_runtime.cc``) into ``output``, linked to the
    installed wheels' TVM runtime libraries, which it finds at run time through its rpath."""
    folders = host_runtime_dirs()
    return _compile_command(HOST_CXX, sources, folders, libs, ":".join(folders), output)


def _built(name: str, arch: str, compiler_name: str, programs: list[str], why: str) -> str:
    """``name`` from the cached build of ``programs`` for ``arch``, building them all first if needed."""
    # a host build's rpath names the installed runtime's folders: another environment builds its own
    linked = host_runtime_dirs() if arch == "host" else []
    digest = hashlib.sha256(repr((_PROGRAMS, programs, linked)).encode())
    for source in sorted(os.listdir(NATIVE)):
        with open(os.path.join(NATIVE, source), "rb") as f:
            digest.update(source.encode() + f.read())
    versions = "-".join(metadata.version(p) for p in _RUNTIME_LIBS)
    folder = os.path.join(cache_dir(), f"{arch}-{versions}-{digest.hexdigest()[:12]}")
    if os.path.exists(os.path.join(folder, name)):
        return os.path.join(folder, name)
    compiler = require(compiler_name, why, _INSTALL_HINT if arch != "host" else f"apt-get install {compiler_name}")
    staging = tempfile.mkdtemp(prefix=f"{arch}-", dir=_ensure(cache_dir()))
    try:
        if arch == "host":
            folders, rpath = linked, ":".join(linked)
        else:
            _fetch_runtime(staging)
            folders, rpath = [staging], "$ORIGIN"
        for program in programs:
            sources, libs = _PROGRAMS[program]
            cmd = _compile_command(compiler, [os.path.join(NATIVE, s) for s in sources], folders, libs, rpath,
                                   os.path.join(staging, program))
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                errors = ([ln for ln in done.stderr.splitlines() if "error" in ln]
                          or done.stderr.strip().splitlines() or ["?"])
                raise ReforgeError(f"cannot build the {arch} {program}: {errors[0].strip()}")
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


def _compile_command(compiler: str, sources: list[str], lib_dirs: list[str], libs: tuple[str, ...], rpath: str,
                     output: str) -> list[str]:
    """Compile and link ``sources`` against the TVM runtime libraries ``libs`` found in ``lib_dirs``
    (linked even where no symbol is referenced: model.so needs them loaded), found at run time in
    ``rpath``."""
    import tvm_ffi.libinfo

    includes = dict.fromkeys([NATIVE, tvm_ffi.libinfo.find_include_path(), tvm_ffi.libinfo.find_dlpack_include_path()])
    return [compiler, "-std=c++17", "-O2", *(f"-I{i}" for i in includes), *sources,
            *(f"-L{d}" for d in lib_dirs), "-Wl,--no-as-needed", *(f"-l{lib}" for lib in libs),
            f"-Wl,-rpath,{rpath}", "-o", output]


def native_host_commands(manifest: dict, artifact_path: str) -> list[str]:
    """For an x86 artifact: the two shell commands that build reforge's runner ``run_vm`` (a C++
    program over the C API ``reforge_runtime.h``) with the system compiler and run the artifact with
    it, without Python; one raw file per input (``in0.bin``, ... in the manifest's order)."""
    build = host_build_command([os.path.join(NATIVE, s) for s in _PROGRAMS["run_vm"][0]], "run_vm")
    inputs = [f"in{i}.bin {d['dtype']} {'x'.join(map(str, d['shape'])) or 'scalar'}"
              for i, d in enumerate(manifest["inputs"])]
    run = f"tar -xf {shlex.quote(artifact_path)} model.so && ./run_vm model.so . 0 {' '.join(inputs)}"
    return [shlex.join(build), run]
