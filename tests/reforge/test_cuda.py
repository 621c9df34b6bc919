"""The ``cuda`` target: reforge's GPU lowering, nvcc-compiled kernels in the artifact, and the
numerics of the direct conv2d schedule.

Without a GPU, each conv kernel as scheduled for CUDA is compiled by TVM's OpenCL codegen and run
on PoCL (tests/opencl_emulation.py), against PyTorch's conv2d: ``max|out - ref| <= 1e-5 *
max|ref|`` (float32; only the summation order differs); whole models the same way
(reforge/cuda_emulation.py) against the x86 module: 1e-4 relative, bit-exact for a binarized chain.
Where a GPU is present, whole models run on it and are compared with the x86 module at 1e-4 relative.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import tvm
from tvm import relax, tirx

import reforge
from reforge import ReforgeError, backends
from reforge.build import BuildReport
from reforge.cli import main
from reforge.cuda_emulation import emulate
from reforge.pipeline import run_passes
from reforge.topi_ext import fft_conv
from reforge.topi_ext.schedules.gpu import apply_gpu_schedules

from tests import zoo
from tests.opencl_emulation import run_kernel
from tests.helpers import Chain, binarized_chain, conv_bn_relu_model, randomize_threshold_bn

FATBIN_MAGIC = bytes.fromhex("50ed55ba")  # little-endian 0xBA55ED50


def conv_block(cin, cout, hw, k, pad, stride, residual: bool, seed: int = 0):
    """conv2d + bias (+ residual input) + ReLU as one Relax function, and the PyTorch reference."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, k, k)).astype("float32")
    b = rng.standard_normal((1, cout, 1, 1)).astype("float32")
    out_hw = (hw + 2 * pad - k) // stride + 1
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    r = relax.Var("r", relax.TensorType((1, cout, out_hw, out_hw), "float32"))
    with bb.function("main", [x, r] if residual else [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad))
            y = bb.emit(relax.op.add(y, relax.const(b)))
            if residual:
                y = bb.emit(relax.op.add(y, r))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(y)))
        bb.emit_func_output(out)

    def reference(xv, rv):
        y = torch.nn.functional.conv2d(torch.from_numpy(xv), torch.from_numpy(w), torch.from_numpy(b.reshape(-1)),
                                       stride=stride, padding=pad)
        return torch.relu(y + (torch.from_numpy(rv) if residual else 0)).numpy()

    return bb.get(), w, b, reference, out_hw


@pytest.mark.parametrize("cin, cout, hw, k, pad, stride, residual", [
    (16, 32, 14, 3, 1, 1, False),
    (3, 20, 17, 5, 2, 2, False),  # channels off the tiles, stride 2
    (13, 40, 9, 1, 0, 1, True),  # 1x1, odd channels, residual epilogue
    (64, 64, 8, 7, 3, 1, False),  # a large kernel shrinks the staged channel tile
    (32, 64, 28, 3, 1, 2, True),
    (8, 8, 56, 3, 1, 1, False),  # one block per image row: the staged patch spans rows
])
def test_direct_conv2d_schedule_numerics(cin, cout, hw, k, pad, stride, residual):
    mod, w, b, reference, out_hw = conv_block(cin, cout, hw, k, pad, stride, residual)
    report = BuildReport()
    lowered = backends.get("cuda").lower(mod, report)
    assert report.schedules == {"conv2d_direct": 1}
    (func,) = [f for _, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, cin, hw, hw)).astype("float32")
    r = rng.standard_normal((1, cout, out_hw, out_hw)).astype("float32")
    out = np.zeros((1, cout, out_hw, out_hw), "float32")
    by_name = {"x": x, "r": r, "param_0": w, "param_1": b}
    args = [by_name.get(p.name, out) for p in func.params]
    assert args[-1] is out
    src = run_kernel(func, args)
    assert "__local" in src and "barrier(CLK_LOCAL_MEM_FENCE)" in src  # shared-memory staging
    ref = reference(x, r)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.fixture(scope="module")
def resnet_cuda():
    entry = next(e for e in zoo.MODELS if e.name == "resnet")
    return entry, reforge.compile(entry.build(), target="cuda", example_inputs=(entry.example(),))


def test_artifact_holds_nvcc_kernels(resnet_cuda, tmp_path):
    _, art = resnet_cuda
    assert art.manifest["build"]["schedules"]["conv2d_direct"] >= 5
    cu = art.kernel_files["kernels.cu"].decode()
    assert "__shared__" in cu and "threadIdx.x" in cu and "__syncthreads()" in cu
    assert art.kernel_files["kernels.fatbin"][:4] == FATBIN_MAGIC
    path = art.save(str(tmp_path / "r.tar"))
    loaded = reforge.load(path)
    assert loaded.kernel_files == art.kernel_files
    assert loaded.manifest["files"].keys() == {"model.so", "kernels.cu", "kernels.fatbin"}
    assert "NVIDIA GPU" in loaded.manifest["run"]


def test_cuda_arch_option_and_errors(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    out = str(tmp_path / "m.tar")
    assert main(["compile", model, "--target", "cuda", "--cuda-arch", "sm_86", "-o", out]) == 0
    assert "target:  cuda-sm_86 (arch sm_86)" in capsys.readouterr().out
    assert reforge.load(out).manifest["target"]["tvm"]["arch"] == "sm_86"
    for argv, message in [(["--target", "cuda", "--cuda-arch", "86"], "bad CUDA architecture '86'"),
                          (["--cuda-arch", "sm_86"], "--cuda-arch applies to --target cuda")]:
        assert main(["compile", model, *argv, "-o", out]) == 2
        assert message in capsys.readouterr().err
    if not tvm.cuda(0).exist:
        assert main(["run", out]) == 2
        assert "needs an NVIDIA GPU (sm_86) with TVM's CUDA runtime, which this machine lacks" in capsys.readouterr().err


def emulated(model, example, **options) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outputs of the cuda build's kernels run as OpenCL on PoCL, outputs of the x86 build) on the
    example inputs."""
    x86 = reforge.compile(model, example_inputs=example, **options)
    mod, _ = run_passes(x86.imported.mod, backends.get("cuda").passes(2, options.get("enable_passes", ())), None, None)
    arrays = [t.numpy() for t in example]
    return emulate(mod, backends.get("cuda")).run(arrays), x86.runner.run(arrays)


def test_resnet_as_emulated_cuda_kernels_matches_x86():
    entry = next(e for e in zoo.MODELS if e.name == "resnet")
    (out,), (ref,) = emulated(entry.build(), (entry.example(),))
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_binarized_chain_as_emulated_cuda_kernels_is_bit_exact():
    """binarize is on at -O2 for cuda: the chain's bit-serial convs, thresholds, OR-pool and dense run
    through their GPU schedules (``popcount`` in the kernels, ``__popcll`` in CUDA) with exactly the x86
    build's outputs and PyTorch's (integer-valued output, so exact)."""
    art, x, torch_ref = binarized_chain("cuda")
    assert "__popcll" in art.kernel_files["kernels.cu"].decode()
    torch.manual_seed(3)
    module = randomize_threshold_bn(Chain("sign"))
    (out,), (ref,) = emulated(module, (torch.from_numpy(x),))
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out, torch_ref)


def test_verify_runs_the_final_module_as_emulated_kernels_without_a_gpu(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    assert main(["compile", model, "--target", "cuda", "--verify", "-o", str(tmp_path / "m.tar")]) == 0
    report = capsys.readouterr().out
    verification = reforge.load(str(tmp_path / "m.tar")).manifest["verification"]
    stages = [c["stage"] for c in verification["checks"]]
    assert verification["passed"] and verification["skipped"] is None
    if tvm.cuda(0).exist:
        assert stages[-1] == "final module" and verification["emulated"] is None
    else:
        assert stages[-1] == "final module (emulated)"
        assert "final module emulated: no GPU here; its cuda schedules ran as OpenCL kernels on PoCL" in report


@pytest.mark.skipif(tvm.cuda(0).exist, reason="the final stage runs on the GPU here")
def test_verify_says_why_kernels_it_cannot_emulate_were_not_run(tmp_path, monkeypatch):
    def refuse(*_args):
        raise ReforgeError("OpenCL launch plan: 'lv = relax.foo(...)' is not a kernel launch")

    monkeypatch.setattr("reforge.cuda_emulation.emulate", refuse)
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    verification = reforge.compile(model, target="cuda", verify=True).manifest["verification"]
    assert verification["passed"] and verification["checks"][-1]["stage"] == "dead-code"
    assert verification["skipped"] == ("final module not run: this machine cannot execute cuda code (its kernels "
                                       "could not be emulated: OpenCL launch plan: 'lv = relax.foo(...)' is not a "
                                       "kernel launch)")


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
def test_resnet_on_the_gpu_matches_x86(resnet_cuda):
    entry, art = resnet_cuda
    x = entry.example(seed=3).numpy()
    out = art.run({"image": x})
    ref = reforge.compile(entry.build(), target="x86", example_inputs=(entry.example(),)).run({"image": x})
    for name in ref:
        assert np.abs(out[name] - ref[name]).max() <= 1e-4 * np.abs(ref[name]).max()


def test_fft_conv_builds_and_its_channel_mix_runs():
    """dlight's Matmul rule asserts on the FFT conv's channel mix (a GEMM with a complex combination
    after it): the mix falls through to the next rule, and the kernel it gets is exact on PoCL."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 15, padding=7).eval()
    art = reforge.compile(conv, target="cuda", example_inputs=(torch.randn(1, 16, 32, 32),),
                          enable_passes=["fft-conv"])
    (record,) = [p for p in art.manifest["passes"] if p["name"] == "fft-conv"]
    assert record["rewrites"] == {"conv 15x15 to FFT (L = 32)": 1}
    assert art.kernel_files["kernels.fatbin"][:4] == FATBIN_MAGIC
    q, p, c, o = 6, 5, 12, 8
    mod, used = apply_gpu_schedules(tvm.IRModule({"mix": fft_conv.mix_prim_func(q, p, c, o)}),
                                    backends.get("cuda").tvm_target)
    assert "matmul" not in used and sum(used.values()) == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((q, 2 * p, c)).astype("float32")
    k = rng.standard_normal((q, 2 * o // fft_conv.strip_width(2 * o), c, fft_conv.strip_width(2 * o)))
    k = k.astype("float32")
    out = np.zeros((q, 2, p, o), "float32")
    run_kernel(mod["mix"], [x, k, out])
    m = x @ k.transpose(0, 2, 1, 3).reshape(q, c, 2 * o)  # real GEMM on [Re | Im] rows against [Re K | Im K]
    ref = np.stack([m[:, :p, :o] - m[:, p:, o:], m[:, :p, o:] + m[:, p:, :o]], axis=1)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
