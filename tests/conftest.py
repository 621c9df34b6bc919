"""Shared fixtures: small ONNX and PyTorch models written to a temporary folder."""

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

# Each pytest-xdist worker keeps to one core (`make test` starts one per core): reforge's default,
# every core (reforge.threads), would give each worker all of them. A TVM_NUM_THREADS of one's own wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TVM_NUM_THREADS", "1")


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_bn_relu_model(input_name="image.in", batch: int | str = 1, opset=17) -> onnx.ModelProto:
    """x -> Conv(3->4, 3x3, pad 1) -> BatchNormalization -> Relu, random weights and statistics."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w"),
             numpy_helper.from_array(rng.uniform(-1.5, 1.5, 4).astype("float32"), "gamma"),
             numpy_helper.from_array(rng.uniform(-1, 1, 4).astype("float32"), "beta"),
             numpy_helper.from_array(rng.uniform(-1, 1, 4).astype("float32"), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "var")]
    nodes = [helper.make_node("Conv", [input_name, "w"], ["c"], name="stem/conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="stem/bn"),
             helper.make_node("Relu", ["b"], ["y"], name="stem/relu")]
    return make_model(nodes, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits, opset)


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


TOTALS = ("all kernels", "outside kernels", "run")


def profile_table(out: str) -> tuple[dict[str, tuple[int, float]], dict[str, float]]:
    """``reforge run --profile``'s table: kernel -> (calls, ms), and the total rows' ms by name."""
    rows = out[out.index("profile: median of"):].splitlines()[3:]
    cells = [re.match(r"(all kernels|outside kernels|\S+)\s+(\d*)\s+([\d.]+)\s", r).groups() for r in rows]
    return ({n: (int(c), float(ms)) for n, c, ms in cells if n not in TOTALS},
            {n: float(ms) for n, _c, ms in cells if n in TOTALS})


@contextlib.contextmanager
def quiet_torch_export():
    """Silence the torch.onnx exporters' progress lines, deprecation warnings and missing-torchvision logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
