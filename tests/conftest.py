"""Fixtures for every test: small ONNX and PyTorch models written to a temporary folder, warnings kept quiet,
and the fuzz report summed over pytest-xdist workers. Shared functions live in tests/helpers.py."""

import json
import os
import shutil
import tempfile
import warnings

import onnx
import pytest
import torch

# Each pytest-xdist worker keeps to one core (`make test` starts one per core): reforge's default,
# every core (reforge.threads), would give each worker all of them. A TVM_NUM_THREADS of one's own wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TVM_NUM_THREADS", "1")

# helpers import reforge, which sizes TVM's pools: after the line above
from tests.helpers import conv_bn_relu_model  # noqa: E402


@pytest.fixture
def onnx_path(tmp_path):
    path = tmp_path / "convbn.onnx"
    onnx.save(conv_bn_relu_model(), path)
    return str(path)


class TwoInputNet(torch.nn.Module):
    """An image branch and a 1-D signal branch, two outputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv1d = torch.nn.Conv1d(4, 6, 5)

    def forward(self, image, signal):
        return torch.relu(self.bn(self.conv(image))).mean((2, 3)), self.conv1d(signal)


@pytest.fixture
def two_input_net():
    torch.manual_seed(0)
    net = TwoInputNet()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- the fuzz report line (tests/fuzz), summed over pytest-xdist workers: each worker leaves its
# statistics in a folder the controller names, the controller adds them up. Here, not in
# tests/fuzz/conftest.py: an xdist controller collects nothing, so it loads only this conftest.
_FUZZ_STATS = "reforge_fuzz_stats"
_fuzz_folder: list[str] = []


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        _fuzz_folder.append(tempfile.mkdtemp(prefix="reforge-fuzz-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # xdist: where a worker leaves its statistics
    node.workerinput[_FUZZ_STATS] = _fuzz_folder[0]


def pytest_sessionfinish(session):
    from .fuzz.differential import STATS

    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None and STATS["graphs"]:
        with open(os.path.join(workerinput[_FUZZ_STATS], f"{workerinput['workerid']}.json"), "w") as f:
            json.dump(STATS, f)


def pytest_terminal_summary(terminalreporter, config):
    from .fuzz.differential import STATS, merge_stats, summary

    for folder in _fuzz_folder:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name)) as f:
                merge_stats(json.load(f))
        shutil.rmtree(folder, ignore_errors=True)
    if STATS["graphs"]:
        terminalreporter.write_line(summary())
