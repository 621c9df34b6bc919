"""reforge tune: records that compile applies (output still matching PyTorch, 1e-4 relative),
resuming, the time budget, and malformed records files reported with path and line."""

import json

import numpy as np
import pytest
import torch
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

import reforge
from reforge import ReforgeError, backends
from reforge.autotune import TuningRecords, tune

SHAPE = (1, 8, 12, 12)


FFT_CONV = "1x16x12x12 -> 8 k 9x9 pad 4,4,4,4"  # its cost-model estimates are close: tune measures it
SMALL_CONV = "1x8x12x12 -> 16 k 3x3 pad 1,1,1,1"  # FFT estimated 5x slower: never measured


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 8, 9, padding=4)).eval()


def reference(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune")
    path = folder / "net.pt2"
    net = make_net()
    torch.export.save(torch.export.export(net, (torch.randn(SHAPE),)), path)
    records = folder / "records.json"
    result = tune(str(path), trials=8, output=str(records), log=lambda _m: None)
    return net, path, records, result


def test_records_are_applied_and_correct(tuned):
    net, path, records, result = tuned
    assert result.trials >= 1 and result.records >= len(result.tasks)
    conv = [t for t in result.tasks if "conv2d_nchwc" in t.name]
    assert conv and all(t.best_ms <= t.default_ms for t in conv)  # the default is a record too
    art = reforge.compile(str(path), tuning_records=str(records))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    assert len(art.manifest["tuning_records"]["sha256"]) == 64
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    ref = reference(net, x)
    out = art.run({"input": x})["output0"]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_fft_conv_is_decided_by_measurement(tuned):
    """The 9×9 conv was timed direct and at two FFT sizes; the record keeps the fastest and compile
    follows it (the 3×3 conv, where the cost model is sure, was not timed)."""
    _net, path, records, _result = tuned
    choices = [json.loads(line)["choice"] for line in records.read_text().splitlines() if '"choice"' in line]
    assert [c["conv"] for c in choices] == [FFT_CONV]
    (choice,) = choices
    assert set(choice["ms"]) == {"direct", "fft L=16", "fft L=32"}
    fastest = min(choice["ms"], key=choice["ms"].get)
    assert choice["fft_size"] == (None if fastest == "direct" else int(fastest.split("=")[1]))
    art = reforge.compile(str(path), tuning_records=str(records))
    fft = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    if choice["fft_size"] is None:
        assert fft["rewrites"] == {} and "left convs direct where tuning measured direct faster" in fft["notes"]
    else:
        assert fft["rewrites"] == {f"conv 9x9 to FFT (L = {choice['fft_size']}, measured)": 1}


def test_recorded_choices_override_the_cost_model(tuned, tmp_path):
    """Records that choose FFT for both convs (the cost model would take neither) are followed, and the
    result still matches PyTorch (1e-4 relative)."""
    net, path, records, _result = tuned
    lines = [line for line in records.read_text().splitlines() if '"choice"' not in line]
    forced = [json.dumps({"choice": {"pass": "fft-conv", "conv": key, "fft_size": size, "ms": {}}})
              for key, size in ((FFT_CONV, 16), (SMALL_CONV, 8))]
    edited = tmp_path / "records.json"
    edited.write_text("\n".join(lines[:1] + forced + lines[1:]) + "\n")
    art = reforge.compile(str(path), tuning_records=str(edited))
    fft = next(p for p in art.manifest["passes"] if p["name"] == "fft-conv")
    assert fft["rewrites"] == {"conv 9x9 to FFT (L = 16, measured)": 1, "conv 3x3 to FFT (L = 8, measured)": 1}
    x = np.random.default_rng(1).standard_normal(SHAPE).astype("float32")
    ref = reference(net, x)
    assert np.abs(art.run({"input": x})["output0"] - ref).max() <= 1e-4 * np.abs(ref).max()


def claimed_latencies(path) -> dict[tuple[str, str], float]:
    """{(workload, trace): mean claimed seconds} of a records file, keyed by content, not by index."""
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    workloads = [json.dumps(x["workload"]) for x in lines if "workload" in x]
    claims = {}
    for number, body in (x["record"] for x in lines if "record" in x):
        secs = [float(s) for s in body[1] or []]  # none: the candidate failed, a claim of 0
        claims[(workloads[number], json.dumps(body[0]))] = sum(secs) / len(secs) if secs else 0.0
    return claims


def assert_resumed_from(before: dict, after: dict) -> None:
    """``after`` (a run resumed from ``before``) keeps every earlier record except those settling
    proves slower than they claimed: a record dropped claimed less than its workload's best after."""
    best = {}
    for (workload, _trace), secs in after.items():
        best[workload] = min(secs, best.get(workload, secs))
    assert {w for w, _t in before} <= set(best)
    dropped = {key: secs for key, secs in before.items() if key not in after}
    assert all(secs < best[workload] for (workload, _trace), secs in dropped.items())
    assert len(dropped) < len(before)


def test_resume_keeps_earlier_records_and_time_budget_stops(tuned, tmp_path):
    _net, path, records, _first = tuned
    again = tmp_path / "again.json"
    result = tune(str(path), trials=400, timeout=1, output=str(again), prior=str(records), log=lambda _m: None)
    assert result.timed_out and result.trials < 400
    assert_resumed_from(claimed_latencies(records), claimed_latencies(again))


def test_time_budget_spent_in_the_last_batch_ends_cleanly(tuned, tmp_path):
    """2 trials: the first batch is also the last, and the budget runs out while it is measured, as
    MetaSchedule's scheduler joins it and then terminates every task itself. The search ends there
    with that batch recorded, and the records compile to a model that matches PyTorch (1e-4 relative)."""
    net, path, _records, _first = tuned
    out = tmp_path / "budget.json"
    result = tune(str(path), trials=2, timeout=1e-3, output=str(out), log=lambda _m: None)
    assert result.timed_out and 1 <= result.trials <= 2
    art = reforge.compile(str(path), tuning_records=str(out))
    x = np.random.default_rng(2).standard_normal(SHAPE).astype("float32")
    ref = reference(net, x)
    assert np.abs(art.run({"input": x})["output0"] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_recorded_fft_size_that_cannot_hold_the_kernel_is_refused(tuned, tmp_path):
    _net, path, records, _result = tuned
    lines = [line for line in records.read_text().splitlines() if '"choice"' not in line]
    bad = json.dumps({"choice": {"pass": "fft-conv", "conv": FFT_CONV, "fft_size": 8, "ms": {}}})
    edited = tmp_path / "records.json"
    edited.write_text("\n".join(lines[:1] + [bad] + lines[1:]) + "\n")
    with pytest.raises(ReforgeError, match=r"records.json:2: the fft-conv choice for conv 1x16x12x12 -> 8 k 9x9 .* "
                                           r"FFT size 8; it must be a power of two above the kernel size"):
        reforge.compile(str(path), tuning_records=str(edited))


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: lines[:2] + ["{not json"] + lines[2:], r"records.json:3: not valid JSON"),
    (lambda lines: lines + ['{"record": [99, []]}'], r"records.json:\d+: record refers to workload 99"),
    (lambda lines: lines + ['{"something": 1}'], r"records.json:\d+: expected a 'workload', 'record' or 'choice'"),
    (lambda lines: lines + ['{"choice": {"pass": "fft-conv", "conv": "x", "fft_size": "16"}}'],
     r"records.json:\d+: a choice is \{\"pass\": \"fft-conv\", \"conv\": key, \"fft_size\": integer or null"),
    (lambda lines: ['{"format": "other"}'] + lines[1:], r"records.json:1: not a reforge tuning-records file"),
])
def test_malformed_records_name_path_and_line(tuned, tmp_path, mutate, message):
    lines = tuned[2].read_text().splitlines()
    bad = tmp_path / "records.json"
    bad.write_text("\n".join(mutate(lines)) + "\n")
    with pytest.raises(ReforgeError, match=message):
        TuningRecords.load(str(bad), backends.get("x86").describe())


def test_records_for_another_target_are_refused(tuned, tmp_path):
    lines = tuned[2].read_text().splitlines()
    header = json.loads(lines[0])
    header["target"]["tvm"]["mcpu"] = "cortex-a72"
    other = tmp_path / "other.json"
    other.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    with pytest.raises(ReforgeError, match=r"records were tuned for target .*cortex-a72"):
        reforge.compile(str(tuned[1]), tuning_records=str(other))


def test_killed_tuning_leaves_records_that_resume(tuned, tmp_path):
    """SIGKILL after the first measured batch: the records file is complete and a second tune
    resumes from it."""
    import signal
    import subprocess
    import sys

    _net, path, _records, _first = tuned
    out = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-m", "reforge", "tune", str(path), "--trials", "400", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("[") and "trials]" in line:  # one batch measured and checkpointed
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    kept = out.read_text().splitlines()
    assert json.loads(kept[0])["format"] == "reforge-tuning-records/1" and len(kept) > 2
    art = reforge.compile(str(path), tuning_records=str(out))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    before = claimed_latencies(out)
    tune(str(path), trials=4, output=str(out), prior=str(out), log=lambda _m: None)
    assert_resumed_from(before, claimed_latencies(out))  # nothing lost but what settling disproved


class BinaryNet(torch.nn.Module):
    """A float conv, then a sign-binarized conv (which the binarize pass makes bit-serial)."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(64, 64, 3, 3))

    def forward(self, x):
        return torch.nn.functional.conv2d(torch.sign(self.first(x)), torch.sign(self.weight), padding=1)


def test_bitserial_conv_is_searched_in_its_own_space(tmp_path):
    torch.manual_seed(0)
    net, x = BinaryNet().eval(), torch.randn(1, 3, 12, 12)
    path, records = tmp_path / "binary.pt2", tmp_path / "records.json"
    torch.export.save(torch.export.export(net, (x,)), path)
    lines = []
    result = tune(str(path), trials=24, output=str(records), log=lines.append)
    assert not [m for m in lines if m.startswith("fft-conv, measured")]  # binarize runs first: never an FFT
    (conv,) = [t for t in result.tasks if t.name.startswith("bitserial_conv2d")]
    assert conv.default_ms is not None and conv.best_ms <= conv.default_ms
    art = reforge.compile(str(path), tuning_records=str(records))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 1
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_array_equal(list(art.run([x.numpy()]).values())[0], ref)  # integer-valued: exact


def test_settling_ranks_by_remeasured_latency(tuned, tmp_path):
    """A record that claims an impossible latency (as one measured in a lucky moment would) is
    re-measured with the task's best and its default schedule, in turns, and loses its claim."""
    from types import SimpleNamespace

    from reforge.autotune.tune import _settle

    _net, _path, records_path, _result = tuned
    tgt = backends.get("x86")
    records = TuningRecords.load(str(records_path), tgt.describe())
    try:
        database = records.database()
        slowest = max(database.get_all_tuning_records(), key=lambda r: float(r.run_secs[0]))
        workload = slowest.workload
        database.commit_tuning_record(ms.database.TuningRecord(
            slowest.trace, workload, run_secs=[1e-9], target=tgt.tvm_target, args_info=slowest.args_info))
        assert float(database.get_top_k(workload, 1)[0].run_secs[0]) == 1e-9
        _settle(SimpleNamespace(dispatched=[workload.mod]), database, records, tgt, tgt.timer())
        settled = records.database()
        secs = [float(r.run_secs[0]) for r in settled.get_all_tuning_records()
                if tvm_ffi.structural_equal(r.workload.mod, workload.mod)]
        assert min(secs) > 1e-6  # the claim is gone: re-measured, or dropped
        assert float(settled.get_top_k(settled.commit_workload(workload.mod), 1)[0].run_secs[0]) == min(secs)
    finally:
        records.close()


def test_nets_with_vectorized_exp_tune_and_their_records_apply(tmp_path):
    """SiLU, sigmoid (squeeze-excite) and GELU epilogues compute e^x and erf as arithmetic that binds values with
    ``Let`` (topi_ext/fast_math.py), which MetaSchedule cannot estimate: tuning keys those functions by their
    Let-free form and compile replays the record on the function itself. Tuned output against PyTorch at 1e-4."""
    torch.manual_seed(0)

    class SiLUSE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.squeeze = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 1)
            self.out = torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            y = torch.nn.functional.silu(self.conv(x))
            y = y * torch.sigmoid(self.squeeze(y.mean((2, 3), keepdim=True)))
            return torch.nn.functional.gelu(self.out(y))

    net, x = SiLUSE().eval(), np.random.default_rng(1).standard_normal(SHAPE).astype("float32")
    path, records = tmp_path / "silu.pt2", tmp_path / "records.json"
    torch.export.save(torch.export.export(net, (torch.from_numpy(x),)), path)
    result = tune(str(path), trials=8, output=str(records), log=lambda _m: None)
    assert result.trials >= 1
    art = reforge.compile(str(path), tuning_records=str(records))
    assert art.manifest["build"]["schedules"].get("tuned", 0) >= 3
    ref = reference(net, x)
    out = list(art.run([x]).values())[0]
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
