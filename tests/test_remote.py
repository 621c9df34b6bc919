"""Devices behind TVM's RPC tracker, on the loopback interface: a tracker and two servers.
Remote outputs are compared with the local run of the same artifact (identical code: exact)."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from tvm import rpc

import reforge
from reforge import ReforgeError
from reforge.remote import RemoteDevices

from .conftest import conv_bn_relu_model

KEY = "reforge-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tracker_port: int) -> subprocess.Popen:
    port = free_port()
    return subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker_port}",
                             "--key", KEY, "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_servers(port: int, n: int, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            info = rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]
            if sum(1 for s in info if s.get("key") == f"server:{KEY}") >= n:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{n} RPC servers did not register")


@pytest.fixture(scope="module")
def tracker():
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    procs += [start_server(port), start_server(port)]
    try:
        wait_for_servers(port, 2)
        yield port, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    onnx.save(conv_bn_relu_model(), folder / "m.onnx")
    art = reforge.compile(str(folder / "m.onnx"))
    return str(folder / "m.onnx"), art.save(str(folder / "m.tar"))


def test_run_on_a_remote_device(tracker, artifact_path):
    remote = RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", KEY)
    assert remote.count() >= 1
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    there = reforge.load(artifact_path[1], remote=remote)
    np.testing.assert_array_equal(there.run({"image.in": x})["y"], reforge.load(artifact_path[1]).run({"image.in": x})["y"])
    assert len(there.time({"image.in": x}, 5)) == 5


def test_cli_run_remote_and_errors(tracker, artifact_path, capsys):
    from reforge.cli import main

    assert main(["run", artifact_path[1], "--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", KEY,
                 "--print-time", "--repeat", "3"]) == 0
    assert "time over 3 runs" in capsys.readouterr().out
    for argv, message in [(["--rpc-tracker", "localhost"], "bad --rpc-tracker 'localhost'"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}"], "--rpc-tracker needs --rpc-key"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", "nobody"],
                           "no device registered under key 'nobody'")]:
        assert main(["run", artifact_path[1], *argv]) == 2
        assert message in capsys.readouterr().err


def test_tuning_survives_a_device_dying(tracker, artifact_path, tmp_path):
    port, procs = tracker
    records = tmp_path / "records.json"
    tune = subprocess.Popen([sys.executable, "-m", "reforge", "tune", artifact_path[0], "--trials", "48",
                             "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", KEY, "-o", str(records)],
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
