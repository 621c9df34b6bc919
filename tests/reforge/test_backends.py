"""The Backend interface: each kind's machine model, what this machine can run and measure, the
products each backend exports, manifests read back without TVM, and that target knowledge stays in
reforge/backends (no other module tests the target kind)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import onnx
import pytest
import tvm

import reforge
from reforge import ReforgeError, backends
from reforge.backends import ArmBackend, CudaBackend, OpenCLFPGABackend, X86Backend
from reforge.backends.x86 import host_cache_bytes, host_features, parse_size
from reforge.machine import AVX2, AVX512, NEON, SSE

from tests.helpers import EM_AARCH64, EM_X86_64, ROOT, conv_bn_relu_model, elf_machine

def lscpu_bytes(name: str) -> int:
    """One cache's size in bytes as lscpu reports it (an independent reading of the host's caches)."""
    out = subprocess.run(["lscpu", "-B", "-C=NAME,ONE-SIZE"], capture_output=True, text=True, check=True).stdout
    return next(int(line.split()[1]) for line in out.splitlines()[1:] if line.split()[0] == name)


def test_each_kind_has_its_class_and_presets_resolve_to_it():
    kinds = {name: type(backends.get(name)) for name in backends.PRESETS}
    assert kinds == {"x86": X86Backend, "x86-avx2": X86Backend, "x86-avx512": X86Backend, "arm": ArmBackend,
                     "arm-a76": ArmBackend, "cuda": CudaBackend, "opencl-fpga": OpenCLFPGABackend}
    assert backends.get("cuda-sm_86").features == {"sm_86"} and backends.get("cuda-sm_86").name == "cuda-sm_86"
    assert backends.tunable_kinds() == ["x86", "arm", "cuda"]
    with pytest.raises(ReforgeError, match=r"^unknown target 'riscv'; choose one of: x86, "):
        backends.get("riscv")
    with pytest.raises(ReforgeError, match=r"^bad CUDA architecture 'sm_8'"):
        backends.get("cuda-sm_8")


def test_x86_machine_follows_the_features_and_reads_the_host_caches():
    cores = len(os.sched_getaffinity(0))
    avx2 = backends.get("x86-avx2").machine
    assert (avx2.isa, avx2.vector_bits, avx2.vector_registers, avx2.cores) == ("avx2", 256, 16, cores)
    assert (avx2.l1d_bytes, avx2.l2_bytes) == (AVX2.l1d_bytes, AVX2.l2_bytes)  # a named CPU: the preset's caches
    avx512 = backends.get("x86-avx512").machine
    assert (avx512.isa, avx512.lanes(), avx512.vector_registers) == ("avx512", 16, 32)
    host = backends.get("x86")
    preset = AVX512 if "avx512f" in host_features() else AVX2 if "avx2" in host_features() else SSE
    assert (host.machine.isa, host.machine.cores) == (preset.isa, cores)
    if shutil.which("lscpu"):
        assert (host.machine.l1d_bytes, host.machine.l2_bytes) == (lscpu_bytes("L1d"), lscpu_bytes("L2"))
    for name in ("x86", "x86-avx2", "x86-avx512"):
        target = backends.get(name)
        assert [target.vector_lanes(bits) for bits in (8, 32, 64)] == [target.machine.lanes(b) for b in (8, 32, 64)]


def test_arm_machine_is_neon_with_its_cores_and_devices_have_the_generic_host():
    arm = backends.get("arm").machine
    assert (arm.isa, arm.vector_bits, arm.vector_registers, arm.cores) == ("neon", 128, NEON.vector_registers, 4)
    assert backends.get("arm").vector_lanes() == 4
    for name in ("cuda", "opencl-fpga"):  # their host side is generic x86-64
        assert backends.get(name).machine == SSE


def test_host_caches_from_a_sysfs_folder(tmp_path):
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "2048K"), ("3", "Unified", "32M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    assert host_cache_bytes(str(tmp_path)) == (48 * 1024, 2048 * 1024)
    assert host_cache_bytes(str(tmp_path / "absent")) == (None, None)
    assert [parse_size(s) for s in ("64", "48K", "32M", "1G")] == [64, 48 << 10, 32 << 20, 1 << 30]


def test_what_this_machine_can_run_and_measure():
    lacks = X86Backend("x86-future", {"kind": "llvm"}, {"avx2", "avx1024"})
    assert not lacks.can_run() and not lacks.can_measure() and not lacks.runs_on_host_cpu()
    assert "this CPU lacks avx1024" in lacks.measure_hint()
    for name in ("x86", "x86-avx2", "x86-avx512"):
        native = backends.get(name).features <= host_features()
        target = backends.get(name)
        assert (target.can_run(), target.can_measure(), target.runs_on_host_cpu()) == (native, native, native)
    emulator = shutil.which("qemu-aarch64") is not None and shutil.which("aarch64-linux-gnu-g++") is not None
    arm = backends.get("arm")
    assert (arm.can_run(), arm.can_measure(), arm.runs_on_host_cpu()) == (emulator, False, False)
    gpu = tvm.cuda(0).exist
    cuda = backends.get("cuda")
    assert (cuda.can_run(), cuda.can_measure(), cuda.runs_on_host_cpu()) == (gpu, gpu, False)
    fpga = backends.get("opencl-fpga")
    pyopencl = importlib.util.find_spec("pyopencl") is not None
    assert (fpga.can_run(), fpga.can_measure(), fpga.runs_on_host_cpu(), fpga.tunable) == (pyopencl, False, False,
                                                                                               False)


def test_manifest_entries_read_back_to_the_same_backend():
    for name in ("x86", "x86-avx2", "arm-a76", "cuda-sm_90", "opencl-fpga"):
        target = backends.get(name)
        again = backends.for_manifest(json.loads(json.dumps(target.describe())))
        assert again == target and type(again) is type(target) and again.machine == target.machine.with_(
            l1d_bytes=again.machine.l1d_bytes, l2_bytes=again.machine.l2_bytes)
        assert str(again.tvm_target) == str(target.tvm_target)
        assert again.how_to_run() == target.how_to_run() and again.summary() == target.summary()
    with pytest.raises(ReforgeError, match=r"^target 'tpu' is of kind 'tpu', which this reforge does not know"):
        backends.for_manifest({"name": "tpu", "kind": "tpu", "tvm": {}, "features": []})


def test_reading_a_manifest_needs_no_tvm_compiler():
    code = ("import sys, json; from reforge import backends; "
            "b = backends.for_manifest({'name': 'x86', 'kind': 'x86', 'tvm': {'kind': 'llvm'}, 'features': ['avx2']}); "
            "print(b.runs_on_host_cpu() in (True, False), b.summary(), 'tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "mcpu", "?,", "avx2", "False"]


def test_notes_and_summaries_per_kind():
    assert backends.get("x86-avx2").how_to_run() == "`reforge run ARTIFACT` on an x86-64 CPU with avx2, fma"
    assert "qemu-aarch64" in backends.get("arm").how_to_run()
    assert "compute capability sm_86 or newer" in backends.get("cuda-sm_86").how_to_run()
    assert "launch_plan.json" in backends.get("opencl-fpga").how_to_run()
    assert [backends.get(n).summary() for n in ("arm", "cuda", "opencl-fpga")] == [
        "mcpu cortex-a72, neon", "arch sm_80", "OpenCL C, single work-item kernels"]
    assert backends.preset_name("cuda", "sm_86") == "cuda-sm_86" and backends.preset_name("arm", None) == "arm"
    with pytest.raises(ReforgeError, match=r"^--cuda-arch applies to --target cuda$"):
        backends.preset_name("x86", "sm_86")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("backends") / "m.onnx")
    onnx.save(conv_bn_relu_model(), path)
    return path


def members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.parametrize("name, files, machine", [
    ("x86", {"model.so"}, EM_X86_64),
    ("arm", {"model.so"}, EM_AARCH64),
    ("cuda", {"model.so", "kernels.cu", "kernels.fatbin"}, EM_X86_64),
    ("opencl-fpga", {"kernels.cl", "launch_plan.json", "params.bin"}, None),
])
def test_export_products(model, tmp_path, name, files, machine):
    """Each backend's artifact: x86 and cuda host code as x86-64 ELF, arm's cross-compiled to aarch64,
    cuda's kernels as source and nvcc's fatbin, opencl-fpga's kernels, plan and weights without model.so."""
    needs = {"arm": "aarch64-linux-gnu-g++", "cuda": "nvcc"}.get(name)
    if needs and shutil.which(needs) is None:
        pytest.skip(f"{needs} is not installed")
    path = reforge.compile(model, target=name).save(str(tmp_path / "m.tar"))
    found = members(path)
    assert set(found) == {"manifest.json"} | files
    if machine is not None:
        assert elf_machine(found["model.so"]) == machine
    if name == "cuda":
        assert b"__global__" in found["kernels.cu"] and found["kernels.fatbin"]
    if name == "opencl-fpga":
        assert b"__kernel" in found["kernels.cl"] and json.loads(found["launch_plan.json"])
    assert json.loads(found["manifest.json"])["run"] == backends.get(name).how_to_run()


def test_front_half_is_shared_by_compile_and_tune(model):
    """tune's tasks are the fused functions compile schedules: the same rewrite_and_fuse, built here
    and checked against onnxruntime (1e-4 relative)."""
    import onnxruntime as ort

    from reforge.autotune.tune import extract_tasks
    from reforge.build import build_fused
    from reforge.execution import Runner
    from reforge.pipeline import rewrite_and_fuse

    target = backends.get("x86")
    front = rewrite_and_fuse(model, target, target.passes())
    tasks = extract_tasks(front.fused, target)
    primfuncs = [g.name_hint for g, f in front.fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert tasks and {t.task_name for t in tasks} <= set(primfuncs)
    executable, report = build_fused(front.fused, target, front.report)
    assert sum(report.schedules.values()) == len(primfuncs) and report.layout.startswith(f"NCHW{target.machine.lanes()}c")
    x = np.random.default_rng(0).standard_normal(front.imported.inputs[0].shape).astype("float32")
    (out,) = Runner(executable).run([x])
    (ref,) = ort.InferenceSession(model).run(None, {front.imported.inputs[0].name: x})
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


# a test of the target kind: a comparison with a kind's name, or a read of a target's kind
KIND_TEST = re.compile(r"""[=!]=\s*["'](x86|arm|cuda|opencl-fpga)["']|["'](x86|arm|cuda|opencl-fpga)["']\s*[=!]="""
                       r"""|\b(tgt|backend|spec)\.kind\b|\[\s*["']target["']\s*\]\s*(\[\s*["']kind["']|\.get\(\s*["']kind)"""
                       r"""|get\(\s*["']target["'][^)]*\)\s*\.get\(\s*["']kind""")


SOURCE = ("reforge", "autotune", "passes", "frontend", "topi_ext")


def lines_matching(pattern: re.Pattern, folders, suffixes=(".py",)) -> list[str]:
    """``path:line: text`` of every line of the files under ``folders`` (outside reforge/backends)
    that ``pattern`` finds."""
    found = []
    for folder in (os.path.join(ROOT, name) for name in folders):
        paths = [folder] if os.path.isfile(folder) else [os.path.join(d, n) for d, _, ns in os.walk(folder) for n in ns]
        for path in paths:
            rel = os.path.relpath(path, ROOT)
            if rel.startswith(os.path.join("reforge", "backends")) or not rel.endswith(suffixes):
                continue
            with open(path, errors="replace") as f:
                found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(f, 1) if pattern.search(line)]
    return found


def test_no_module_outside_backends_tests_the_target_kind():
    assert lines_matching(KIND_TEST, SOURCE) == []
    assert KIND_TEST.search('if tgt.kind == "cuda":') and KIND_TEST.search('manifest["target"]["kind"]')
    assert not KIND_TEST.search('if layer.kind == "dense":')


# a target kind as a string of its own, as the pass table's default targets once were; a parameter naming a kind
KIND_NAME = re.compile(r"""["'](x86|arm|cuda|opencl-fpga)["']|\btarget_kinds?\b""")
OLD_TARGETS = re.compile(r"reforge[./]targets\b|from \.+targets import|from reforge import targets\b")


def test_pass_defaults_are_the_backends_and_no_module_imports_the_old_targets():
    """The passes name no target kind (a backend's ``default_passes`` turns its per-target passes on), and
    nothing reaches the backends through the alias module of old names that ``reforge`` once had."""
    assert lines_matching(KIND_NAME, ["passes"]) == []
    assert KIND_NAME.search('targets=frozenset({"x86", "arm"})') and KIND_NAME.search("select(2, target_kind)")
    assert not KIND_NAME.search('"x86-avx2"') and not KIND_NAME.search("fused for x86 CPUs")
    assert not os.path.exists(os.path.join(ROOT, "reforge", "targets.py"))
    everywhere = (*SOURCE, "benchmarks", "tests", "examples", "docs", "Makefile", "pyproject.toml")
    this = os.path.relpath(__file__, ROOT)  # its patterns and examples
    assert [hit for hit in lines_matching(OLD_TARGETS, everywhere, (".py", ".md", "Makefile", ".toml"))
            if not hit.startswith(f"{this}:")] == []
    assert OLD_TARGETS.search("from reforge.targets import get_target") and OLD_TARGETS.search("from .targets import X")
    assert OLD_TARGETS.search("reforge/targets.py") and not OLD_TARGETS.search("reforge/backends/targets")
