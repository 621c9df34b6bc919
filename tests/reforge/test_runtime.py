"""The deployed runtime: its thread rule and TVM's pool size, concurrent callers, and what loading an
artifact imports."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import reforge
from reforge import threads
from tests.helpers import ROOT, SMALLCNN


@pytest.fixture(scope="module")
def smallcnn(tmp_path_factory):
    return reforge.compile(SMALLCNN).save(str(tmp_path_factory.mktemp("rt") / "smallcnn.tar"))


def python(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the rule, on made-up machines


def fake_cpus(root, siblings: list[str] | None = None, cores: list[tuple[int, int]] | None = None):
    for cpu in range(len(siblings or cores)):
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        if siblings:
            (topology / "thread_siblings_list").write_text(siblings[cpu] + "\n")
        else:
            (topology / "physical_package_id").write_text(f"{cores[cpu][0]}\n")
            (topology / "core_id").write_text(f"{cores[cpu][1]}\n")
    return str(root)


def no_cgroup(tmp_path):
    (tmp_path / "cgroup").write_text("")
    return dict(cgroup=str(tmp_path / "none"), proc_cgroup=str(tmp_path / "cgroup"))


def test_smt_siblings_count_once(tmp_path):
    sys_cpu = fake_cpus(tmp_path / "cpu", siblings=["0,2", "1,3", "0,2", "1,3"])
    assert threads.physical_cores(range(4), sys_cpu, **no_cgroup(tmp_path)) == 2
    assert threads.physical_cores({0, 2}, sys_cpu, **no_cgroup(tmp_path)) == 1
    assert threads.physical_cores({0, 1}, sys_cpu, **no_cgroup(tmp_path)) == 2


def test_core_ids_per_package_when_no_sibling_list(tmp_path):
    sys_cpu = fake_cpus(tmp_path / "cpu", cores=[(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1)])
    assert threads.physical_cores(range(6), sys_cpu, **no_cgroup(tmp_path)) == 4
    assert threads.physical_cores({0, 4}, sys_cpu, **no_cgroup(tmp_path)) == 1


def fake_cgroup(tmp_path, folder: str, proc_self_cgroup: str):
    """An 8-CPU machine without SMT, this process in cgroup ``folder`` (made) as /proc/self/cgroup says."""
    leaf = tmp_path / "cg" / folder
    leaf.mkdir(parents=True)
    (tmp_path / "self").write_text(proc_self_cgroup)
    where = dict(cgroup=str(tmp_path / "cg"), proc_cgroup=str(tmp_path / "self"))
    return fake_cpus(tmp_path / "cpu", siblings=[str(c) for c in range(8)]), leaf, where


def test_cgroup_v2_quota_caps_the_cores(tmp_path):
    sys_cpu, leaf, where = fake_cgroup(tmp_path, "app/worker", "0::/app/worker\n")
    (leaf / "cpu.max").write_text("max 100000\n")
    assert threads.cpu_quota(**where) is None and threads.physical_cores(range(8), sys_cpu, **where) == 8
    (leaf.parent / "cpu.max").write_text("250000 100000\n")  # an ancestor's limit binds its children
    assert threads.cpu_quota(**where) == 2.5 and threads.physical_cores(range(8), sys_cpu, **where) == 3
    (leaf / "cpu.max").write_text("50000 100000\n")
    assert threads.physical_cores(range(8), sys_cpu, **where) == 1


def test_cgroup_v1_quota_caps_the_cores(tmp_path):
    sys_cpu, cpu, where = fake_cgroup(tmp_path, "cpu,cpuacct/job", "4:memory:/job\n3:cpu,cpuacct:/job\n0::/\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.physical_cores(range(8), sys_cpu, **where) == 8
    (cpu / "cpu.cfs_quota_us").write_text("400000\n")
    assert threads.physical_cores(range(8), sys_cpu, **where) == 4


# --- TVM's pool, as the runtime reports it


POOL = """
import json, os, sys
{mask}
import numpy as np
import reforge
from reforge import threads, tvm_runtime
tasks = lambda: len(os.listdir("/proc/self/task"))
before = tasks()
art = reforge.load({path!r}{threads})
art.run(np.ones((1, 3, 32, 32), "float32"))
print(json.dumps({{"pool": tvm_runtime.pool_threads(), "rule": threads.physical_cores(),
                  "new_threads": tasks() - before, "mask": sorted(os.sched_getaffinity(0)),
                  "env": os.environ["TVM_NUM_THREADS"]}}))
"""


def test_pool_is_every_physical_core_the_process_may_use(smallcnn):
    got = python(POOL.format(mask="", path=smallcnn, threads=""), env={"TVM_NUM_THREADS": ""})
    assert got["pool"] == got["rule"] == threads.physical_cores()
    assert got["new_threads"] == got["pool"] - 1  # the calling thread is worker 0
    assert got["env"] == str(got["rule"])  # what child processes (tuning's measurement workers) inherit


def test_pool_follows_the_affinity_mask_and_keeps_it(smallcnn):
    cpu = max(os.sched_getaffinity(0))  # TVM, left to bind threads, would move the caller to CPU 0
    mask = f"os.sched_setaffinity(0, {{{cpu}}})"
    got = python(POOL.format(mask=mask, path=smallcnn, threads=""), env={"TVM_NUM_THREADS": ""})
    assert got["pool"] == got["rule"] == 1 and got["new_threads"] == 0
    assert got["mask"] == [cpu]  # TVM pins no thread outside it


def test_threads_argument_overrides_the_rule(smallcnn):
    got = python(POOL.format(mask="", path=smallcnn, threads=", threads=1"), env={"TVM_NUM_THREADS": ""})
    assert got["pool"] == 1
    cli = python(f"""
import json
from reforge import tvm_runtime
from reforge.cli import main
assert main(["run", {smallcnn!r}, "--threads", "1"]) == 0
print(json.dumps({{"pool": tvm_runtime.pool_threads()}}))
""", env={"TVM_NUM_THREADS": ""})
    assert cli["pool"] == 1
    with pytest.raises(reforge.ReforgeError, match="threads=0: must be at least 1"):
        reforge.load(smallcnn, threads=0)
    with pytest.raises(reforge.ReforgeError, match="TVM_NUM_THREADS=1000"):
        reforge.load(smallcnn, threads=1000)


# --- concurrent callers


def test_concurrent_calls_match_serial_runs(smallcnn, onnx_path):
    """8 threads x 200 calls, mixing two models and 12 inputs each, none of them the loading thread;
    every output bit-identical to the serial run's (each call runs the same kernels, on one thread)."""
    rng = np.random.default_rng(0)
    models = [reforge.load(smallcnn), reforge.compile(onnx_path)]
    cases = [(m, {s.name: s.random(rng) for s in m.inputs}) for m in models for _ in range(12)]
    serial = [m.run(x) for m, x in cases]
    mismatches, errors = [], []

    def caller(seed: int) -> None:
        try:
            for i in np.random.default_rng(seed).integers(0, len(cases), 200):
                model, x = cases[i]
                out = model.run(x)
                if any(not np.array_equal(out[k], serial[i][k]) for k in out):
                    mismatches.append(i)
        except Exception as err:  # noqa: BLE001  (reported below, with the thread's seed)
            errors.append((seed, repr(err)))

    callers = [threading.Thread(target=caller, args=(seed,)) for seed in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert errors == [] and mismatches == []


def big_dense_model(rows: int, cols: int):
    """y = relu(x @ W): ``rows`` x ``cols`` float32 weights."""
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MEMORY = """
import json, threading
import numpy as np, psutil, reforge
rss = lambda: psutil.Process().memory_info().rss
base = rss()
art = reforge.load({path!r})
x = np.ones((1, {rows}), "float32")
ref = art.run(x)["y"]
one = rss()
ready, go = threading.Barrier(9), threading.Event()
def caller():
    assert np.array_equal(art.run(x)["y"], ref)
    ready.wait()
    go.wait()
    assert np.array_equal(art.run(x)["y"], ref)
callers = [threading.Thread(target=caller) for _ in range(8)]
for t in callers:
    t.start()
ready.wait()
eight = rss()
go.set()
for t in callers:
    t.join()
print(json.dumps({{"one": one - base, "eight": eight - base}}))
"""


def test_weights_are_held_once_by_concurrent_callers(tmp_path):
    """8 callers, each with its own VM, hold no more than 1.2x the memory of one: the weights (64 MB)
    are the executable's constants, which every VM uses in place."""
    rows, cols = 2048, 8192
    path = reforge.compile(big_dense_model(rows, cols)).save(str(tmp_path / "dense.tar"))
    got = python(MEMORY.format(path=path, rows=rows))
    assert got["one"] >= rows * cols * 4  # the weights dominate what loading and one run cost
    assert got["eight"] <= 1.2 * got["one"], got


# --- what loading and running import


LIGHT = """
import json, sys
import numpy as np
import reforge
imported = [m for m in ("torch", "onnxruntime", "onnx", "tvm") if m in sys.modules]
art = reforge.load({path!r})
out = art.run(np.ones((1, 3, 32, 32), "float32"))["logits"]
{cli}
with open("/proc/self/maps") as f:
    compiler = "libtvm_compiler" in f.read()
print(json.dumps({{"at_import": imported, "after_run": [m for m in ("torch", "onnxruntime", "onnx", "tvm")
                  if m in sys.modules], "compiler_loaded": compiler, "out": out.tolist()}}))
"""


@pytest.mark.parametrize("cli", ["", "from reforge.cli import main; assert main(['run', {path!r}]) == 0"])
def test_running_an_artifact_imports_no_framework_nor_the_compiler(smallcnn, cli):
    got = python(LIGHT.format(path=smallcnn, cli=cli.format(path=smallcnn)))
    assert got["at_import"] == [] and got["after_run"] == [] and not got["compiler_loaded"]
    x = np.ones((1, 3, 32, 32), "float32")
    assert np.array_equal(np.asarray(got["out"], "float32"), reforge.load(smallcnn).run(x)["logits"])


def test_compiling_after_a_light_run_in_one_process(smallcnn):
    """tvm-ffi started without torch still takes torch models (their tensors arrive through DLPack)."""
    got = python(f"""
import json, numpy as np, reforge, torch
x = np.ones((1, 3, 32, 32), "float32")
light = reforge.load({smallcnn!r}).run(x)["logits"]
again = reforge.compile({SMALLCNN!r}).run(x)["logits"]
conv = torch.nn.Conv2d(3, 4, 3).eval()
y = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
out = list(reforge.compile(conv, input_shapes={{"input": (1, 3, 8, 8)}}).run([y]).values())[0]
ref = conv(torch.from_numpy(y)).detach().numpy()
print(json.dumps({{"same": bool(np.array_equal(light, again)), "err": float(np.abs(out - ref).max())}}))
""")
    assert got["same"] and got["err"] <= 1e-5


def test_manifest_versions_are_read_without_importing(smallcnn):
    from importlib.metadata import version

    manifest = reforge.load(smallcnn).manifest
    assert manifest["versions"]["torch"] == version("torch")
    assert manifest["versions"]["onnxruntime"] == version("onnxruntime")
    assert manifest["versions"]["tvm"] == version("apache-tvm")
