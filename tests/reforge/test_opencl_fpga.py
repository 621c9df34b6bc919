"""The ``opencl-fpga`` target: single work-item OpenCL C kernels, a launch plan and the weights,
run by reforge's pyopencl host on PoCL (the CPU emulation path of an FPGA flow).

Each model's output is compared with the x86 module on the same inputs:
``max|fpga - x86| <= 1e-4 * max|x86|`` (float32; only the summation order may differ).
"""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import onnx
import pytest

import reforge
from reforge import ReforgeError
from reforge.cli import main

from tests import zoo
from tests.helpers import binarized_chain, conv_bn_relu_model, profile_table

RTOL = 1e-4


@pytest.mark.parametrize("name", ["resnet", "vgg_bn", "ssvep"])
def test_zoo_model_matches_x86(name):
    entry = next(e for e in zoo.MODELS if e.name == name)
    model, example = entry.build(), (entry.example(),)
    fpga = reforge.compile(model, target="opencl-fpga", example_inputs=example)
    x = entry.example(seed=5).numpy()
    out = fpga.run({entry.input_name: x})
    ref = reforge.compile(model, target="x86", example_inputs=example).run({entry.input_name: x})
    for key in ref:
        assert np.abs(out[key] - ref[key]).max() <= RTOL * np.abs(ref[key]).max()
    assert fpga.emulated


def test_kernels_are_single_work_item_and_the_plan_is_complete():
    entry = next(e for e in zoo.MODELS if e.name == "resnet")
    art = reforge.compile(entry.build(), target="opencl-fpga", example_inputs=(entry.example(),))
    source = art.kernel_files["kernels.cl"].decode()
    plan = json.loads(art.kernel_files["launch_plan.json"])
    for ndrange_only in ("get_local_id", "get_group_id", "get_global_id", "barrier("):
        assert ndrange_only not in source
    assert "for (int ry" not in source and "for (int rx" not in source  # kernel windows unrolled
    buffers = {b["name"]: b for b in plan["buffers"]}
    assert len(buffers) == len(plan["buffers"])  # unique names
    for step in plan["launches"]:
        assert step["global"] == step["local"] == [1, 1, 1]
        assert f"__kernel void {step['kernel']}(" in source
        assert all(a in buffers for a in step["args"])
    params = [b for b in plan["buffers"] if b["kind"] == "param"]
    assert sum(b["nbytes"] for b in params) == len(art.kernel_files["params.bin"])
    assert [buffers[n]["kind"] for n in plan["outputs"]] == ["output"]
    assert art.manifest["build"]["schedules"]["single_work_item_reduction"] >= 5
    removed = next(p for p in art.manifest["passes"] if p["name"] == "remove-residual")  # -O2 default here
    assert sum(removed["rewrites"].values()) >= 1  # the streaming form: skip connections gone


def test_cli_compile_verify_run_and_tamper(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    onnx.save(conv_bn_relu_model(), model)
    out = str(tmp_path / "m.tar")
    assert main(["compile", model, "--target", "opencl-fpga", "--verify", "-o", out]) == 0
    report = capsys.readouterr().out
    assert re.search(r"final module\s+onnxruntime", report) and "OpenCL C, single work-item kernels" in report
    with tarfile.open(out) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert set(members) == {"manifest.json", "kernels.cl", "launch_plan.json", "params.bin"}
    assert main(["run", out, "--print-time", "--repeat", "2"]) == 0
    assert "emulated on this CPU" in capsys.readouterr().out
    assert main(["run", out, "--profile", "--repeat", "2"]) == 0
    kernels, _totals = profile_table(capsys.readouterr().out)
    launches = [step["kernel"] for step in json.loads(members["launch_plan.json"])["launches"]]
    assert {n: c for n, (c, _ms) in kernels.items()} == {k: launches.count(k) for k in launches}  # each launch timed
    assert main(["inspect", out]) == 0
    assert "aoc kernels.cl" in capsys.readouterr().out

    members["kernels.cl"] = members["kernels.cl"].replace(b"0.000000e+00f", b"1.000000e+00f", 1)
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ReforgeError, match="kernels.cl does not match its SHA-256"):
        reforge.load(str(bad))


def test_binarized_chain_runs_bit_exact_as_fpga_kernels():
    """binarize at -O2 on opencl-fpga: thresholds, a packed OR-pool and a packed flatten, all as
    single work-item kernels using OpenCL's popcount; integer-valued output, so exact."""
    art, x, ref = binarized_chain("opencl-fpga")
    assert "popcount(" in art.kernel_files["kernels.cl"].decode()
    np.testing.assert_array_equal(list(art.run([x]).values())[0], ref)
