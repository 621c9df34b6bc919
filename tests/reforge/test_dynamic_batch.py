"""--max-batch: one artifact running every batch from 1 to B in batch buckets (reforge/batching.py),
against onnxruntime on the same dynamic-batch ONNX file, against batch-1 runs, across threads, and
the refusals of what it does not batch."""

import os
import re
import subprocess
import tarfile
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import reforge
from reforge.batching import bucket_sizes, split
from reforge.cli import main
from reforge.errors import ReforgeError
from reforge.toolchains import host_program
from reforge.verify import compare
from tests.helpers import make_model

RTOL = 1e-4  # against onnxruntime: relative to the largest reference magnitude (reforge.verify.compare)
CONCAT_RTOL = 1e-5  # a batch against its rows run one at a time: other kernels, same arithmetic per row
MAX_BATCH = 8


class SmallCNN(torch.nn.Module):
    """conv-bn-relu, strided conv, flatten, two dense layers: the first holds 1 MiB of weights."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(16 * 8 * 8, 256), torch.nn.Linear(256, 10)

    def forward(self, image):
        y = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(image)))))
        return self.fc2(torch.relu(self.fc1(y.flatten(1))))


FC1_BYTES = 16 * 8 * 8 * 256 * 4


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory):
    """SmallCNN exported with a dynamic batch axis ``batch`` (dim_param) on its input and output."""
    torch.manual_seed(0)
    net = SmallCNN().eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    path = str(tmp_path_factory.mktemp("dynbatch") / "smallcnn_dynamic.onnx")
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def bucketed(dynamic_onnx, tmp_path_factory):
    """The dim_param spelling: the model's dynamic axis kept with max_batch, saved and loaded back."""
    path = str(tmp_path_factory.mktemp("dynbatch") / "b8.tar")
    reforge.compile(dynamic_onnx, max_batch=MAX_BATCH).save(path)
    return reforge.load(path), path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).standard_normal((MAX_BATCH, 3, 16, 16)).astype("float32")


def onnxruntime_logits(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def rel(out, ref) -> float:
    return compare([out], [ref])[1]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_buckets_and_greedy_split():
    assert bucket_sizes(1) == (1,) and bucket_sizes(8) == (1, 2, 4, 8) and bucket_sizes(6) == (1, 2, 4, 6)
    assert split(5, (1, 2, 4, 8)) == [4, 1] and split(7, (1, 2, 4, 6)) == [6, 1]
    for b in range(1, 33):
        buckets = bucket_sizes(b)
        for n in range(1, b + 1):
            parts = split(n, buckets)
            # the parts cover n exactly (no padded rows), are buckets, and are distinct (Runner keeps one
            # set of input tensors per part size)
            assert sum(parts) == n and set(parts) <= set(buckets) and len(set(parts)) == len(parts)


def test_every_batch_matches_onnxruntime_and_batch1_runs(bucketed, dynamic_onnx, images):
    artifact, _ = bucketed
    singles = np.concatenate([artifact.run({"image": images[i:i + 1]})["logits"] for i in range(MAX_BATCH)])
    for n in range(1, MAX_BATCH + 1):
        out = artifact.run({"image": images[:n]})["logits"]
        assert out.shape == (n, 10)
        assert rel(out, onnxruntime_logits(dynamic_onnx, images[:n])) <= RTOL, n
        assert rel(out, singles[:n]) <= CONCAT_RTOL, n


def test_batch1_is_the_static_artifact_and_weights_are_held_once(bucketed, dynamic_onnx, images, tmp_path):
    artifact, _ = bucketed
    static = reforge.compile(dynamic_onnx, input_shapes={"image": (1, 3, 16, 16)})
    assert np.array_equal(artifact.run(images[:1])["logits"], static.run(images[:1])["logits"])
    # four buckets, one copy of fc1's weights: the buckets' code adds less than one more copy would
    assert len(artifact.library()) - len(static.library()) < FC1_BYTES, (len(artifact.library()),
                                                                         len(static.library()))


def test_manifest_and_inspect_show_the_buckets(bucketed, capsys):
    artifact, path = bucketed
    assert artifact.manifest["batch"] == {"axis": 0, "max": 8, "buckets": [1, 2, 4, 8],
                                          "functions": {"1": "main", "2": "main_b2", "4": "main_b4", "8": "main_b8"}}
    assert artifact.manifest["inputs"] == [{"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    code, out, _ = cli(capsys, "inspect", path)
    assert code == 0
    assert "image: float32[N, 3, 16, 16]" in out and "logits: float32[N, 10]" in out
    assert "batch:   N from 1 to 8 on axis 0, in buckets 1, 2, 4, 8" in out
    assert "the C API runs the batch-1 function" in out


def test_native_host_runs_batch_1(bucketed, images, tmp_path):
    """The C API runs ``main``, the batch-1 function: bit-identical to ``run`` at batch 1 (same
    model.so kernels and runtime library, one thread each)."""
    artifact, path = bucketed
    with tarfile.open(path) as tar:
        tar.extract("model.so", tmp_path)
    images[:1].tofile(tmp_path / "in0.bin")
    done = subprocess.run([host_program("run_vm"), "--threads", "1", str(tmp_path / "model.so"), str(tmp_path), "0",
                           str(tmp_path / "in0.bin"), "float32", "1x3x16x16"], capture_output=True, text=True,
                          env=dict(os.environ, TVM_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "output 0 float32 1x10"
    out = np.fromfile(tmp_path / "out0.bin", dtype="float32").reshape(1, 10)
    np.testing.assert_array_equal(out, artifact.run(images[:1])["logits"])


def test_reforge_run_takes_any_batch(bucketed, dynamic_onnx, images, tmp_path, capsys):
    _, path = bucketed
    np.save(tmp_path / "x.npy", images[:5])
    code, out, _ = cli(capsys, "run", path, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "y.npz", "--print-time")
    assert code == 0 and "logits: float32[5, 10]" in out and "time over 20 runs" in out
    assert rel(np.load(tmp_path / "y.npz")["logits"], onnxruntime_logits(dynamic_onnx, images[:5])) <= RTOL


def test_threads_with_mixed_batches_equal_serial_runs(bucketed, images):
    artifact, _ = bucketed
    rng = np.random.default_rng(3)
    jobs = [[(int(n), int(rng.integers(0, MAX_BATCH - n + 1))) for n in rng.integers(1, MAX_BATCH + 1, 40)]
            for _ in range(4)]
    serial = {job: artifact.run(images[job[1]:job[1] + job[0]])["logits"] for calls in jobs for job in calls}
    found, errors = [], []

    def caller(calls):
        try:
            for n, start in calls:
                found.append(((n, start), artifact.run(images[start:start + n])["logits"]))
        except Exception as err:  # reported below: a thread's exception does not fail the test by itself
            errors.append(err)

    workers = [threading.Thread(target=caller, args=(calls,)) for calls in jobs]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert len(found) == sum(map(len, jobs))
    for job, out in found:
        assert np.array_equal(out, serial[job]), job


def test_name_spelling_with_verify_checks_every_bucket(dynamic_onnx, images, tmp_path, capsys):
    path = tmp_path / "n3.tar"
    code, out, err = cli(capsys, "compile", dynamic_onnx, "--input-shape", "image:Nx3x16x16", "--max-batch", 3,
                         "--verify", "-o", path)
    assert code == 0, err
    for b in (1, 2, 3):
        assert f"final module [batch {b}]" in out
    artifact = reforge.load(str(path))
    assert artifact.manifest["batch"]["buckets"] == [1, 2, 3]
    assert all(c["ok"] for c in artifact.manifest["verification"]["checks"])
    for n in (1, 2, 3):
        assert rel(artifact.run(images[:n])["logits"], onnxruntime_logits(dynamic_onnx, images[:n])) <= RTOL


def test_torch_module_with_a_named_batch_axis(images):
    torch.manual_seed(1)
    net = SmallCNN().eval()
    artifact = reforge.compile(net, input_shapes={"image": ("N", 3, 16, 16)}, max_batch=2)
    assert artifact.manifest["batch"]["buckets"] == [1, 2]
    with torch.no_grad():
        for n in (1, 2):
            assert rel(artifact.run(images[:n])["output0"], net(torch.from_numpy(images[:n])).numpy()) <= RTOL


def test_pt2_program_with_a_dynamic_batch_dim(images, tmp_path):
    torch.manual_seed(2)
    net = SmallCNN().eval()
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=64)}})
    torch.export.save(program, tmp_path / "dyn.pt2")
    artifact = reforge.compile(str(tmp_path / "dyn.pt2"), max_batch=3)
    assert artifact.manifest["batch"]["buckets"] == [1, 2, 3]
    with torch.no_grad():
        for n in (1, 2, 3):
            assert rel(artifact.run(images[:n])["output0"], net(torch.from_numpy(images[:n])).numpy()) <= RTOL


# --- what is refused, in one line naming the input or argument


def reduce_all_model(batch="N"):
    """x[batch, 4] -> ReduceMean over both axes: an output without the batch axis."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0, 1], keepdims=0)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                      [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])])


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_batch=0), "--max-batch 0: must be an integer of at least 1"),
    (dict(max_batch=4, input_shapes={"image": (1, 3, "H", 16)}),
     "--input-shape for 'image' names axis 2 ('H'); only a leading batch axis (axis 0) may be a name"),
    (dict(input_shapes={"image": ("N", 3, 16, 16)}),
     "--input-shape for 'image' names its batch axis 'N': give --max-batch B"),
    (dict(max_batch=4, input_shapes={"image": (1, 3, 16, 16)}),
     "--max-batch: input 'image' has no leading batch axis (shape [1, 3, 16, 16] at batch 2, [1, 3, 16, 16] at batch "
     "1); reforge batches only an axis 0 shared by every input and output: name it with --input-shape image:Nx..."),
    (dict(max_batch=4, target="arm"), "--max-batch: batch buckets are built for the x86 targets; target 'arm'"),
])
def test_refusals_at_compile(dynamic_onnx, kwargs, message):
    with pytest.raises(ReforgeError, match="^" + re.escape(message)):
        reforge.compile(dynamic_onnx, **kwargs)


def test_output_without_batch_axis_is_refused():
    message = ("--max-batch: output 'm' has no leading batch axis (shape [] at batch 1); reforge batches only an "
               "axis 0 shared by every input and output")
    with pytest.raises(ReforgeError, match="^" + re.escape(message) + "$"):
        reforge.compile(reduce_all_model(), max_batch=2)


def test_dynamic_batch_without_max_batch_says_how(dynamic_onnx):
    message = ("input 'image' has dynamic shape (batch, 3, 16, 16); fix it with --input-shape image:1x3x16x16 (or "
               "keep a dynamic axis 0 with --max-batch B)")
    with pytest.raises(ReforgeError, match="^" + re.escape(message) + "$"):
        reforge.compile(dynamic_onnx)


def test_refusals_at_run(bucketed, images, dynamic_onnx, capsys, tmp_path):
    artifact, path = bucketed
    for bad, message in ((images[:0], "input 'image' has batch 0; the module runs batches 1 to 8"),
                         (np.concatenate([images, images[:1]]), "input 'image' has batch 9; the module runs batches 1 "
                                                                "to 8 (compiled with --max-batch 8)"),
                         (images[:2, :, :8], "input 'image' has shape [2, 3, 8, 16]; the module was compiled for "
                                             "[N, 3, 16, 16] for N from 1 to 8")):
        with pytest.raises(ReforgeError, match="^" + re.escape(message)):
            artifact.run(bad)
    np.save(tmp_path / "x9.npy", np.concatenate([images, images[:1]]))
    code, _, err = cli(capsys, "run", path, "--inputs", tmp_path / "x9.npy")
    assert code != 0 and err.count("\n") == 1 and "input 'image' has batch 9" in err
    code, _, err = cli(capsys, "compile", dynamic_onnx, "--max-batch", "-2", "-o", tmp_path / "m.tar")
    assert code != 0 and err.strip() == "reforge: error: --max-batch -2: must be an integer of at least 1"
