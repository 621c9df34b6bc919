"""reforge tune for cuda. Without a GPU: the search space's candidates build with nvcc and compute
the conv (each run on PoCL through TVM's OpenCL codegen of the same schedule, against PyTorch,
``max|out - ref| <= 1e-5 * max|ref|``), records of them are applied by compile (the tuned model
verified against PyTorch as emulated kernels, 1e-4 relative), and tuning asks for GPU devices.
With a GPU: a few trials tune, and the tuned model matches PyTorch (1e-4 relative)."""

import importlib

import numpy as np
import pytest
import torch
import tvm
from tvm.s_tir import meta_schedule as ms

import reforge
from reforge import ReforgeError, backends, frontend
from reforge.autotune import TuningRecords, tune
from reforge.backends.cuda import CudaBackend
from reforge.build import BuildReport
from reforge.passes import registry

from tests.opencl_emulation import run_kernel

SHAPE = (1, 32, 14, 14)
TARGET = backends.get("cuda")
tune_module = importlib.import_module("reforge.autotune.tune")  # the package exports the function by that name
extract_tasks = tune_module.extract_tasks


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda_tune") / "net.pt2"
    torch.export.save(torch.export.export(make_net(), (torch.randn(SHAPE),)), path)
    return str(path)


def conv_task(path: str):
    """The conv's tuning task, found as ``tune`` finds it."""
    mod = frontend.load(path).mod
    for name in TARGET.passes(2):
        mod = registry.get(name).make()(mod)
    (task,) = [t for t in extract_tasks(TARGET.fuse(mod, BuildReport()), TARGET) if "conv2d" in t.task_name]
    return task


def sampled_candidates(task, count: int) -> list[ms.MeasureCandidate]:
    TARGET.load_intrinsics()  # as tune does: without it TuneContext imports every intrinsic (~40 s)
    ctx = ms.TuneContext(mod=task.dispatched[0], target=TARGET.tvm_target,
                         space_generator=TARGET.tuning_space(task.dispatched[0]),
                         search_strategy=ms.search_strategy.EvolutionarySearch(
                             population_size=2 * count, init_min_unmeasured=count, genetic_num_iters=1),
                         task_name=task.task_name, rand_state=7).clone()
    ctx.pre_tuning(max_trials=count, num_trials_per_iter=count, design_spaces=ctx.generate_design_space(),
                   database=ms.database.MemoryDatabase(), cost_model=ms.cost_model.RandomModel())
    return list(ctx.search_strategy.generate_measure_candidates())


def test_candidates_build_with_nvcc_and_compute_the_conv(model):
    candidates = sampled_candidates(conv_task(model), 8)
    assert len({str(c.sch.trace) for c in candidates}) >= 4  # the search varies the tiles
    built = TARGET.tuning_builder(2).build([ms.builder.BuilderInput(c.sch.mod, TARGET.tvm_target)
                                            for c in candidates[:2]])
    assert [b.error_msg for b in built] == [None, None]
    net = make_net()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype("float32")
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    conv = net[0]
    by_name = {"param_0": conv.weight.detach().numpy(), "param_1": conv.bias.detach().numpy().reshape(1, -1, 1, 1)}
    for candidate in candidates[:3]:
        func = candidate.sch.mod["main"]
        out = np.zeros(SHAPE, "float32")
        args = [by_name.get(p.name, x) for p in func.params[:-1]] + [out]
        src = run_kernel(func, args)
        assert "__local" in src  # shared-memory staging
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_records_of_candidates_are_applied_by_compile(model, tmp_path):
    task = conv_task(model)
    (candidate,) = sampled_candidates(task, 1)
    records = TuningRecords(TARGET.describe())
    database = records.database()
    database.commit_tuning_record(ms.database.TuningRecord(
        candidate.sch.trace, database.commit_workload(task.dispatched[0]), run_secs=[1e-4],
        target=TARGET.tvm_target, args_info=candidate.args_info))
    path = str(tmp_path / "records.json")
    records.save(path)
    records.close()
    untuned = reforge.compile(model, target="cuda").manifest["build"]["schedules"]
    art = reforge.compile(model, target="cuda", tuning_records=path, verify=True)
    schedules = art.manifest["build"]["schedules"]
    assert untuned.get("conv2d_direct") == 1 and "tuned" not in untuned
    assert schedules.get("tuned") == 1 and "conv2d_direct" not in schedules
    # the whole tuned model, on the GPU or as emulated kernels, against PyTorch (1e-4 relative)
    verification = art.manifest["verification"]
    assert verification["passed"] and verification["checks"][-1]["stage"].startswith("final module")
    with pytest.raises(ReforgeError, match=r"records were tuned for target 'cuda' \(cuda/sm_80\); this compile is "
                                           r"for 'cuda-sm_86' \(cuda/sm_86\)"):
        reforge.compile(model, target="cuda-sm_86", tuning_records=path)


def test_tuning_without_a_gpu_asks_for_gpu_devices(model, tmp_path, monkeypatch):
    monkeypatch.setattr(CudaBackend, "can_measure", lambda _self: False)
    with pytest.raises(ReforgeError, match=r"tuning for 'cuda' measures on its devices: give --rpc-tracker and "
                                           r"--rpc-key \(this machine has no CUDA GPU"):
        tune(model, "cuda", trials=1, output=str(tmp_path / "r.json"))


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
def test_tuned_model_runs_on_the_gpu(model, tmp_path):
    records = str(tmp_path / "records.json")
    result = tune(model, "cuda", trials=16, output=records, log=lambda _m: None)
    assert result.trials >= 1 and all(t.best_ms <= t.default_ms for t in result.tasks if t.default_ms)
    art = reforge.compile(model, target="cuda", tuning_records=records)
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    x = np.random.default_rng(1).standard_normal(SHAPE).astype("float32")
    with torch.no_grad():
        ref = make_net()(torch.from_numpy(x)).numpy()
    (out,) = art.run({"input": x}).values()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
