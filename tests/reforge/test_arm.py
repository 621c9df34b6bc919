"""The ``arm`` target: aarch64 Linux with NEON, cross-compiled with Debian's g++-aarch64-linux-gnu
and run here under qemu-aarch64 by reforge's native runner on the aarch64 TVM runtime.

Each aarch64 module's output is compared with the x86 module of the same model on the same
inputs: ``max|arm - x86| <= 1e-4 * max|x86|`` (float32; the two differ only in vector width and
instruction selection).
"""

from __future__ import annotations

import os
import re
import tarfile

import numpy as np
import onnx
import pytest

import reforge
from reforge import ReforgeError
from reforge.cli import main

from tests import zoo
from tests.helpers import (DEPTHWISE_CONVS, EM_AARCH64, binarized_chain, conv_bn_relu_model, conv_relu_model, elf_machine,
                           mobilenet_style, onnxruntime, pruned_l1, sparse_kernel_specs, to_onnx)

RTOL = 1e-4
@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory):
    import torch

    entry = next(e for e in zoo.MODELS if e.name == "resnet")
    path = str(tmp_path_factory.mktemp("arm") / "resnet.onnx")
    torch.onnx.export(entry.build(), (entry.example(),), path, input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    return path


def test_resnet_on_aarch64_matches_x86(resnet_onnx, tmp_path):
    arm = reforge.compile(resnet_onnx, target="arm")
    path = arm.save(str(tmp_path / "resnet_arm.tar"))
    with tarfile.open(path) as tar:
        assert elf_machine(tar.extractfile("model.so").read()) == EM_AARCH64
    loaded = reforge.load(path)
    assert loaded.manifest["target"]["kind"] == "arm" and "aarch64" in loaded.manifest["run"]
    assert loaded.emulated
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype("float32")
    out = loaded.run({"image": x})["logits"]
    ref = reforge.compile(resnet_onnx, target="x86").run({"image": x})["logits"]
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()
    assert len(loaded.time({"image": x}, 2)) == 2


def test_blocked_depthwise_on_aarch64_matches_x86():
    """NEON's 4 lanes give 4-channel blocks: every depthwise conv of a MobileNet-style model runs in
    NCHW4c under the depthwise rule, and the aarch64 module agrees with the x86 one."""
    net, shape = mobilenet_style(), {"image": (1, 3, 24, 24)}
    # drop-padding-taps off: on the last 3×3 maps it splits depthwise convs into sums of several
    arm = reforge.compile(net, target="arm", input_shapes=shape, disable_passes=["drop-padding-taps"])
    assert arm.manifest["build"]["schedules"].get("depthwise_nchwc") == DEPTHWISE_CONVS
    assert arm.manifest["build"]["layout"].startswith("NCHW4c") and arm.emulated  # runs under qemu
    x = np.random.default_rng(2).standard_normal(shape["image"]).astype("float32")
    out = arm.run({"image": x})["output0"]
    ref = reforge.compile(net, target="x86", input_shapes=shape).run({"image": x})["output0"]
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


def test_winograd_conv_on_aarch64_matches_x86(tmp_path):
    """A 32 → 64 channel 3×3 conv takes the Winograd operator in 4-lane blocks on aarch64, its
    epilogue fused, and agrees with the x86 module."""
    path = str(tmp_path / "conv.onnx")
    onnx.save(conv_relu_model(32, 64, 1, 3), path)
    arm = reforge.compile(path, target="arm")
    assert arm.manifest["build"]["schedules"] == {"winograd_nchwc": 1, "generic": 2} and arm.emulated
    x = np.random.default_rng(3).standard_normal((1, 32, 12, 12)).astype("float32")
    (out,) = arm.run({"x": x}).values()
    (ref,) = reforge.compile(path, target="x86").run({"x": x}).values()
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()


def test_aarch64_code_uses_neon(resnet_onnx):
    arm = reforge.compile(resnet_onnx, target="arm")
    asm = arm.executable.mod.imports[0].inspect_source("asm")
    assert "fmla\tv" in asm  # vector fused multiply-add on 128-bit NEON registers
    assert "vfmadd" not in asm and "ymm" not in asm


def test_binarized_chain_on_aarch64_is_bit_exact_with_neon_popcount():
    """binarize at -O2 on arm: thresholds, a packed OR-pool and a packed flatten; the popcounts run on
    NEON vectors (``cnt`` on 16 bytes, then pairwise widening adds), not as scalar loops; integer-valued
    output, so the aarch64 module under qemu equals PyTorch exactly."""
    art, x, ref = binarized_chain("arm")
    asm = art.executable.mod.imports[0].inspect_source("asm")
    assert re.search(r"\tcnt\tv\d+\.16b", asm) and "uadalp\tv" in asm
    np.testing.assert_array_equal(list(art.run([x]).values())[0], ref)


def test_cli_compile_verify_run_for_arm(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    out = str(tmp_path / "m_arm.tar")
    assert main(["compile", model, "--target", "arm", "--verify", "-o", out]) == 0
    report = capsys.readouterr().out
    assert re.search(r"final module\s+onnxruntime", report) and "target:  arm (mcpu cortex-a72, neon)" in report
    assert main(["run", out, "--print-time", "--repeat", "2"]) == 0
    assert "emulated on this CPU" in capsys.readouterr().out
    assert main(["run", out, "--profile"]) == 2
    assert "an 'arm' module runs whole under qemu" in capsys.readouterr().err
    assert main(["bench", model, "--target", "arm"]) == 2
    assert "cannot run target 'arm' natively" in capsys.readouterr().err


def test_missing_cross_compiler_is_named(tmp_path, monkeypatch):
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    art = reforge.compile(model, target="arm")
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ here
    with pytest.raises(ReforgeError, match=r"the 'arm' target needs 'aarch64-linux-gnu-g\+\+'"):
        art.save(str(tmp_path / "m.tar"))
    assert not os.path.exists(tmp_path / "m.tar")


def test_native_runner_reports_bad_input_files(tmp_path):
    from reforge.qemu_runner import QemuRunner

    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    runner = QemuRunner(reforge.compile(model, target="arm").library())
    with pytest.raises(ReforgeError, match=r"failed under qemu: run_vm: .*image.in"):
        runner.run([np.zeros((1, 3, 8, 4), "float32")])  # the module was built for 1x3x8x8


def test_pruned_resnet_runs_sparse_kernels_on_aarch64_by_default():
    """sparse is on at -O2 for arm: the test zoo's ResNet pruned 90 % by torch (l1_unstructured on every conv and
    the classifier, which then keeps one weight an input) runs all its convs and the classifier as sparse kernels, at NEON's width (4-lane vectors and
    blocks, tiles of 16 positions: 8 accumulators, a quarter of the 32 registers), in NCHW4c (the 3-channel image
    read in NCHW, the last conv written in NCHW for the pooled head), the residual adds in their epilogues; the
    aarch64 module under qemu
    matches onnxruntime on the same ONNX file within RTOL."""
    import torch

    entry = next(e for e in zoo.MODELS if e.name == "resnet")
    net = pruned_l1(entry.build(), 0.9)
    w = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight
    with torch.no_grad():  # one weight an input at most: prune-channels drops the inputs whose filters it removed,
        keep = torch.zeros_like(w)  # which left the classifier's 90 % zeros at 84 %, below the dense crossover
        keep[w.abs().argmax(0), torch.arange(w.shape[1])] = 1
        w.mul_(keep)
    model = to_onnx(net, torch.randn(entry.input_shape), constant_folding=True)
    arm = reforge.compile(model, target="arm")
    record = next(p for p in arm.manifest["passes"] if p["name"] == "sparse")
    convs = record["rewrites"]["conv kxk to sparse"] + record["rewrites"]["conv 1x1 to sparse"]
    assert convs == 8 and record["rewrites"]["dense to sparse"] == 1 and record["rewrites"]["add fused into a sparse conv"] == 3
    assert arm.manifest["build"]["schedules"]["sparse_conv2d_nchwc"] == convs  # the build line counts them
    assert arm.manifest["build"]["schedules"]["sparse_dense"] == 1 and arm.emulated
    specs = sparse_kernel_specs(model, "arm")
    assert len(specs) == convs and all(s.vector == 4 and s.width <= 16 for s in specs)
    assert sorted(s.ib for s in specs) == sorted(s.ob for s in specs) == [1] + [4] * (convs - 1)
    x = np.random.default_rng(4).standard_normal(entry.input_shape).astype("float32")
    (out,) = arm.run({"x": x}).values()
    ref = onnxruntime(model, x)
    assert np.abs(out - ref).max() <= RTOL * np.abs(ref).max()
