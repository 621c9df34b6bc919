"""Devices behind TVM's RPC tracker, on the loopback interface: a tracker and two servers.
Remote outputs are compared with the local run of the same artifact (identical code: exact)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from tvm import rpc

import reforge
from reforge import ReforgeError
from reforge.remote import RemoteDevices

from ..conftest import conv_bn_relu_model

KEY = "reforge-test"


# ports: each process searches a range and binds the first free port, so no port is picked in advance
# and then lost to another process (the race that made this fixture flaky). Two processes scanning the
# same range can still bind one port together and the second fails to listen on it (seen with two
# servers started at once): servers start one at a time, and each pytest-xdist worker scans its own range.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
PORTS = (9190 + 400 * (_WORKER % 8), 9190 + 400 * (_WORKER % 8) + 399)
TRACKER = ("import sys; from tvm.rpc.tracker import Tracker; "
           "t = Tracker('127.0.0.1', port=int(sys.argv[1]), port_end=int(sys.argv[2])); "
           "print(t.port, flush=True); t.proc.join()")


def spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)


def start_tracker(log: Path) -> tuple[subprocess.Popen, int]:
    """A tracker on the first free port of PORTS; the port it bound is read back from its stdout."""
    proc = spawn(["-c", TRACKER, *map(str, PORTS)], log)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.wait(timeout=30)
        raise RuntimeError(f"RPC tracker did not start: {log.read_text()[-2000:]}")
    return proc, int(line)


def start_server(tracker_port: int, log: Path, module: str) -> subprocess.Popen:
    return spawn(["-m", module, "--tracker", f"127.0.0.1:{tracker_port}", "--key", KEY,
                  "--host", "127.0.0.1", "--port", str(PORTS[0]), "--port-end", str(PORTS[1])], log)


def wait_for_servers(port: int, servers: list[subprocess.Popen], logs: list[Path], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            info = rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]
            if sum(1 for s in info if s.get("key") == f"server:{KEY}") >= len(servers):
                return
        except (OSError, RuntimeError):
            pass
        dead = [log for proc, log in zip(servers, logs) if proc.poll() is not None]
        if dead:
            raise RuntimeError(f"RPC server exited: {dead[0].read_text()[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{len(servers)} RPC servers did not register: {logs[0].read_text()[-2000:]}")


def tracker_with_servers(logs: Path, module: str, count: int):
    """Yield (tracker port, [tracker, servers...]): ``count`` servers run by ``python -m module``."""
    proc, port = start_tracker(logs / "tracker.log")
    procs = [proc]
    try:
        server_logs = [logs / f"server{i}.log" for i in range(count)]
        for i, log in enumerate(server_logs):
            procs.append(start_server(port, log, module))
            wait_for_servers(port, procs[1:], server_logs[:i + 1])
        yield port, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


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
    remote = RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", KEY)
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
    there = reforge.load(path, remote=RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", KEY))
    np.testing.assert_array_equal(there.run({"image.in": x})["y"], reforge.load(path).run({"image.in": x})["y"])
    assert len(there.time({"image.in": x}, 5)) == 5


def test_cli_run_remote_and_errors(tracker, artifact_path, capsys):
    from reforge.cli import main

    assert main(["run", artifact_path[1], "--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", KEY,
                 "--print-time", "--repeat", "3"]) == 0
    assert "time over 3 runs" in capsys.readouterr().out
    for argv, message in [(["--rpc-tracker", "localhost"], "bad --rpc-tracker 'localhost'"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}"], "--rpc-tracker needs --rpc-key"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", "nobody"],
                           "no device registered under key 'nobody'"),
                          (["--rpc-tracker", f"127.0.0.1:{tracker[0]}", "--rpc-key", KEY, "--profile"],
                           "time a module on an RPC device whole with --print-time")]:
        assert main(["run", artifact_path[1], *argv]) == 2
        assert message in capsys.readouterr().err


def test_cuda_tuning_measures_on_gpu_devices(tracker, artifact_path, tmp_path):
    from reforge.autotune import tune

    remote = RemoteDevices.parse(f"127.0.0.1:{tracker[0]}", KEY)
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
