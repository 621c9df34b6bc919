"""sparse by measurement: autotune/sparse_choice.py times a layer dense and sparse and records the
faster; the records' sparse choices load (a malformed one is refused with its path and line), reach
the pass as ``measured`` and override the crossovers; a layer whose choice was measured is still exact
(1e-5 relative against numpy)."""

import json
import statistics
import time

import numpy as np
import pytest
import tvm
from tvm import relax

from reforge import ReforgeError, backends
from reforge.autotune import TuningRecords
from reforge.autotune import sparse_choice
from reforge.passes.sparse import CROSSOVER, Layer, Sparse, eligible_layers


def pruned(shape, sparsity, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype("float32")
    w[rng.random(shape) < sparsity] = 0
    return w


def timer(executable, arrays):
    """Median seconds of 7 calls after 2."""
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in arrays]
    times = []
    for i in range(9):
        start = time.perf_counter()
        vm["main"](*args)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_measure_records_the_faster_way():
    layer = Layer("conv 1x1", (1, 64, 14, 14), pruned((64, 64, 1, 1), 0.95))
    found = sparse_choice.measure(layer, backends.get("x86"), timer)
    assert set(found["ms"]) == {"dense", "sparse"} and all(v > 0 for v in found["ms"].values())
    assert found["sparse"] == (found["ms"]["sparse"] < found["ms"]["dense"])
    assert sparse_choice.measure(Layer("dense", (1, 32), pruned((32, 16), 0.3)), backends.get("x86"), timer) is None


@pytest.mark.parametrize("sparsity,measured", [(0.55, True), (0.97, False)])
def test_measured_choice_overrides_the_crossover(sparsity, measured):
    """A 55 %-sparse conv (below the crossover) made sparse by its record, a 97 % one kept dense; exact."""
    assert (sparsity >= CROSSOVER["conv kxk"]) is not measured
    w = pruned((6, 5, 3, 3), sparsity, seed=int(sparsity * 100))
    layer = Layer("conv kxk", (1, 5, 9, 8), w, (1, 1), (1, 1, 1, 1))
    mod = sparse_choice.layer_alone(layer)
    assert [found.key for found in eligible_layers(mod)] == [layer.key]
    p = Sparse(measured={layer.key: measured})
    out_mod = p(mod)
    assert p.report.total == int(measured) and p.report.notes[0].endswith(", measured")
    x = np.random.default_rng(3).standard_normal(layer.x_shape).astype("float32")
    ex = tvm.compile(out_mod, target=backends.get("x86").tvm_target)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    import torch

    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def records_file(tmp_path, choices):
    target = backends.get("x86").describe()
    path = tmp_path / "records.json"
    path.write_text("\n".join([json.dumps({"format": "reforge-tuning-records/1", "target": target}),
                               *(json.dumps({"choice": c}) for c in choices)]) + "\n")
    return str(path), target


def test_records_carry_sparse_choices_to_the_pass(tmp_path):
    choices = [{"pass": "sparse", "layer": "dense 1x32 -> 16 nnz 20", "sparse": True,
                "ms": {"dense": 1, "sparse": 0.5}},
               {"pass": "fft-conv", "conv": "1x16x12x12 -> 8 k 9x9 pad 4,4,4,4", "fft_size": None, "ms": {}}]
    path, target = records_file(tmp_path, choices)
    records = TuningRecords.load(path, target)
    assert records.pass_options() == {"fft-conv": {"measured": {choices[1]["conv"]: None}},
                                      "sparse": {"measured": {choices[0]["layer"]: True}}}
    records.save(str(tmp_path / "again.json"))
    assert TuningRecords.load(str(tmp_path / "again.json"), target).pass_options() == records.pass_options()


def test_a_malformed_sparse_choice_is_refused(tmp_path):
    path, target = records_file(tmp_path, [{"pass": "sparse", "layer": "dense 1x32 -> 16 nnz 20", "sparse": "yes"}])
    with pytest.raises(ReforgeError, match=r"records.json:2: a sparse choice is"):
        TuningRecords.load(path, target)
