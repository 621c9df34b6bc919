"""Devices behind TVM's RPC tracker, on the loopback interface: a tracker and two servers.
Remote outputs are compared with the local run of the same artifact (identical code: exact)."""

import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import tvm

import reforge
from reforge import ReforgeError
from reforge.remote import RemoteDevices
from tests.helpers import RPC_KEY, conv_bn_relu_model, tracker_with_servers


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    yield from tracker_with_servers(tmp_path_factory.mktemp("rpc"), "tvm.exec.rpc_server", 2)


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    onnx.save(conv_bn_relu_model(), folder / "m.onnx")
    art = reforge.compile(str(folder / "m.onnx"))
    return str(folder / "m.onnx"), art.save(str(folder / "m.tar"))


def test_run_on_a_remote_device(tracker, artifact_path):
    remote = RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", RPC_KEY)
    assert remote.count() >= 1
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    there = reforge.load(artifact_path[1], remote=remote)
    np.testing.assert_array_equal(there.run({"image.in": x})["y"], reforge.load(artifact_path[1]).run({"image.in": x})["y"])
    assert len(there.time({"image.in": x}, 5)) == 5


def test_batch_buckets_on_a_remote_device(tracker, tmp_path):
    """A --max-batch artifact over RPC: batch 3 runs as buckets 2 + 1 there, as it does here."""
    onnx.save(conv_bn_relu_model(batch="N"), tmp_path / "dyn.onnx")
    path = reforge.compile(str(tmp_path / "dyn.onnx"), max_batch=4).save(str(tmp_path / "dyn.tar"))
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype("float32")
    there = reforge.load(path, remote=RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", RPC_KEY))
    np.testing.assert_array_equal(there.run({"image.in": x})["y"], reforge.load(path).run({"image.in": x})["y"])
    assert len(there.time({"image.in": x}, 5)) == 5


def test_cli_run_remote_and_errors(tracker, artifact_path, capsys):
    from reforge.cli import main

    assert main(["run", artifact_path[1], "--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", RPC_KEY,
                 "--print-time", "--repeat", "3"]) == 0
    assert "time over 3 runs" in capsys.readouterr().out
    for argv, message in [(["--rpc-tracker", "localhost"], "bad --rpc-tracker 'localhost'"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}"], "--rpc-tracker needs --rpc-key"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", "nobody"],
                           "no device registered under key 'nobody'"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", RPC_KEY, "--profile"],
                           "time a module on an RPC device whole with --print-time")]:
        assert main(["run", artifact_path[1], *argv]) == 2
        assert message in capsys.readouterr().err


def test_cuda_tuning_measures_on_gpu_devices(tracker, artifact_path, tmp_path):
    from reforge.autotune import tune

    remote = RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", RPC_KEY)
    output = str(tmp_path / "cuda.json")
    if tvm.cuda(0).exist:  # the servers run on this machine, with its GPU
        assert tune(artifact_path[0], "cuda", trials=4, output=output, remote=remote, log=lambda _m: None).records >= 1
    else:
        with pytest.raises(ReforgeError, match=r"tuning for cuda measures on GPUs: the device under key .* has no "
                                               r"CUDA GPU"):
            tune(artifact_path[0], "cuda", trials=4, output=output, remote=remote)


def test_tuning_survives_a_device_dying(tracker, artifact_path, tmp_path):
    port, procs = tracker
    records = tmp_path / "records.json"
    tune = subprocess.Popen([sys.executable, "-m", "reforge", "tune", artifact_path[0], "--trials", "48",
                             "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", RPC_KEY, "-o", str(records)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = False
    for line in tune.stderr:
        if line.startswith("[") and "trials]" in line and not killed:
            os.killpg(procs[2].pid, signal.SIGKILL)  # one device dies mid-tuning
            killed = True
    out, _ = tune.communicate(timeout=600)
    assert killed and tune.returncode == 0, out
    assert "wrote" in out and records.exists()
    art = reforge.compile(artifact_path[0], tuning_records=str(records))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    with pytest.raises(ReforgeError, match="no device registered"):
        RemoteDevices.parse(f"127.0.0.1:{port}", "someone-else").count()
