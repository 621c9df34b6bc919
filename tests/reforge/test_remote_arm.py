"""Tuning and running for the ``arm`` target on aarch64 devices behind an RPC tracker: here two
emulated ones (``python -m reforge.qemu_rpc_server``: TVM's server in front, each session served
by reforge's aarch64 ``rpc_session`` under qemu-aarch64), on the loopback interface.

Outputs of the aarch64 module are compared with the x86 module of the same model on the same
input: ``max|arm - x86| <= 1e-4 * max|x86|`` (float32; vector width and instruction selection
differ), and exactly between the same aarch64 module run remotely and under the local runner.
"""

from __future__ import annotations

import gc
import json

import numpy as np
import onnx
import pytest

import reforge
from reforge import ReforgeError, backends
from reforge.autotune import sparse_choice, tune
from reforge.passes.sparse import Layer
from reforge.remote import RemoteDevices
from tests.helpers import RPC_KEY, conv_bn_relu_model, pruned_weight, tracker_with_servers

RTOL = 1e-4
TRIALS = 6


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    for port, _procs in tracker_with_servers(tmp_path_factory.mktemp("rpc-arm"), "reforge.qemu_rpc_server", 2):
        yield RemoteDevices.parse(f"127.0.0.1:{port}", RPC_KEY)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("arm-model") / "m.onnx"
    onnx.save(conv_bn_relu_model(), path)
    return str(path)


def test_tune_for_arm_on_emulated_devices(devices, model, tmp_path):
    records = tmp_path / "records.json"
    lines = []
    result = tune(model, "arm", trials=TRIALS, output=str(records), remote=devices, log=lines.append)
    assert result.trials >= 1 and result.records >= len(result.tasks)
    assert json.loads(records.read_text().splitlines()[0])["target"]["kind"] == "arm"
    conv = next(t for t in result.tasks if "conv2d" in t.name)
    assert conv.default_ms > 0 and conv.best_ms <= conv.default_ms * 1.0001  # the default is a candidate

    art = reforge.compile(model, target="arm", tuning_records=str(records))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    arm, x86 = art.run({"image.in": x})["y"], reforge.compile(model).run({"image.in": x})["y"]
    assert np.abs(arm - x86).max() <= RTOL * np.abs(x86).max()

    saved = art.save(str(tmp_path / "m.tar"))
    there = reforge.load(saved, remote=devices)  # the same aarch64 code on a device instead of the local runner
    np.testing.assert_array_equal(there.run({"image.in": x})["y"], arm)


def test_tune_for_arm_needs_devices(model, tmp_path):
    with pytest.raises(ReforgeError, match="measures on its devices: give --rpc-tracker"):
        tune(model, "arm", trials=4, output=str(tmp_path / "r.json"))
    with pytest.raises(ReforgeError, match="supports the targets of kind x86, arm and cuda"):
        tune(model, "opencl-fpga", trials=4, output=str(tmp_path / "r.json"))


def test_sparse_choice_measured_on_an_emulated_device(devices):
    """sparse by measurement for arm (``reforge tune``'s path): a 95 %-sparse 1×1 conv built alone for aarch64, dense
    and sparse (the kernel at NEON's width), each timed on a device through the target's timer (the cross-compiled
    library uploaded over RPC); the record names the faster of the two times. qemu's times say nothing of a
    device's: only the path is checked."""
    gc.collect()  # the device sessions of the modules earlier tests loaded (in reference cycles) go back
    layer = Layer("conv 1x1", (1, 16, 8, 8), pruned_weight(np.random.default_rng(7), (16, 16, 1, 1), 0.95))
    arm = backends.get("arm")
    found = sparse_choice.measure(layer, arm, arm.timer(devices))
    assert set(found["ms"]) == {"dense", "sparse"} and all(v > 0 for v in found["ms"].values())
    assert found["sparse"] == (found["ms"]["sparse"] < found["ms"]["dense"])
