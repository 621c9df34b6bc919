"""benchmarks/model_zoo.py end to end on a small network of tests/zoo.py, exported by zoo_export.save as the
zoo's networks are (its torchvision / timm networks need the second venv, which tests do not depend on): a
network that matches PyTorch within 1e-4, one whose reference output is off (a mismatch row), one that failed
to export (a failure row), all three in the table write_table prepends to benchmarks/results/model_zoo.md."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from benchmarks import model_zoo, results, zoo_export
from tests.zoo import AllConvNet, randomize_batchnorm


def test_the_zoo_covers_issue_20s_families():
    names = [m.name for m in zoo_export.MODELS]
    assert len(names) == len(set(names)) >= 25
    for family in ("ReLU6", "SE", "hardswish", "SiLU", "channel shuffle", "grouped", "MixConv", "Ghost",
                   "ConvNeXt", "dense concat", "inception", "RepVGG", "MobileOne"):
        assert any(family in m.family for m in zoo_export.MODELS), family
    assert "efficientnet_lite0" in names


def test_pick_keeps_the_zoo_order_and_names_an_unknown_model():
    assert [m.name for m in zoo_export.pick("resnet18,mobilenet_v2")] == ["resnet18", "mobilenet_v2"]
    assert zoo_export.pick(None) == zoo_export.MODELS
    with pytest.raises(SystemExit, match=r"unknown model 'resnet19'; the zoo has: mobilenet_v2, "):
        zoo_export.pick("resnet18,resnet19")


def test_bad_threads_and_repeat_are_one_line():
    with pytest.raises(SystemExit):
        model_zoo.parse_args(["--threads", "0,2"])
    with pytest.raises(SystemExit, match=r"--repeat 5: .* at least 20 runs"):
        model_zoo.main(["--repeat", "5", "--skip-export"])


def test_model_zoo_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "zoo"
    out.mkdir()
    zoo_export.save(randomize_batchnorm(AllConvNet().eval()), "allconv", 32, str(out))
    shutil.copy(out / "allconv.onnx", out / "allconv_off.onnx")
    data = np.load(out / "allconv.npz")
    np.savez(out / "allconv_off.npz", input=data["input"], output=data["output"] * 1.01)  # 1 % off: a mismatch
    (out / "broken.err").write_text("RuntimeError: the exporter gave up\n")
    models = [zoo_export.ZooModel("allconv", "plain, strided", "tests"),
              zoo_export.ZooModel("allconv_off", "plain, strided", "tests"),
              zoo_export.ZooModel("broken", "none", "tests")]
    monkeypatch.setattr(model_zoo, "pick", lambda names: models)
    monkeypatch.setattr(results, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # main sets it (the most threads asked for): undone after the test

    code = model_zoo.main(["--skip-export", "--out", str(out), "--threads", "1", "--repeat", "20",
                           "--profile-runs", "2"])
    assert code == 1  # a mismatch and a failure
    printed = capsys.readouterr().out
    assert re.search(r"allconv \(tests\) \.\.\.\n  compile [\d.]+ s, layout .*rel err .*1t: reforge [\d.]+ ms, "
                     r"onnxruntime [\d.]+ ms, openvino [\d.]+ ms", printed), printed

    with open(tmp_path / "results" / "model_zoo.md") as f:
        text = f.read()
    assert text.startswith("# model_zoo\n\nNewest run first") and "## 3 networks, threads 1\n" in text
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ")]
    rows = {row[0]: row for row in cells}
    assert len(rows["network"]) == 7 + 4  # 7 columns, then reforge / onnxruntime / OpenVINO ms and speed-up
    good = rows["allconv (tests)"]
    assert float(good[5]) <= 1e-4, good  # max rel err against PyTorch
    assert float(good[3]) > 0 and int(good[4].split()[0]) >= 0  # compile s, layout transforms
    assert all(float(ms) > 0 for ms in good[7:10]) and re.fullmatch(r"[\d.]+x", good[10]), good
    off = rows["allconv_off (tests)"]
    assert re.fullmatch(r"\S+ \*\*mismatch\*\*", off[5]) and float(off[5].split()[0]) > 5e-3, off
    assert rows["broken (tests)"][2] == "**failed** export: RuntimeError: the exporter gave up"
    geo = rows["**geometric mean**"]  # over the matching network alone: its own speed-up
    assert geo[10].strip("*") == good[10], (geo, good)


def test_model_zoo_times_a_tuned_build_beside_the_untuned_one(tmp_path, monkeypatch):
    out = tmp_path / "zoo"
    out.mkdir()
    zoo_export.save(randomize_batchnorm(AllConvNet().eval()), "allconv", 32, str(out))
    monkeypatch.setattr(model_zoo, "pick", lambda names: [zoo_export.ZooModel("allconv", "plain", "tests")])
    monkeypatch.setattr(results, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("TVM_NUM_THREADS", "1")

    assert model_zoo.main(["--skip-export", "--out", str(out), "--threads", "1", "--repeat", "20",
                           "--profile-runs", "2", "--tune", "4"]) == 0
    assert (out / "allconv.records.json").exists()
    with open(tmp_path / "results" / "model_zoo.md") as f:
        text = f.read()
    assert "Tuned: `reforge tune` with 4 trials per network" in text
    rows = {row[0]: row for row in ([c.strip() for c in line.strip().strip("|").split("|")]
                                    for line in text.splitlines() if line.startswith("| "))}
    head, good = rows["network"], rows["allconv (tests)"]
    assert head[7:] == ["tuning s", "reforge ms (1t)", "tuned ms (1t)", "onnxruntime ms (1t)", "OpenVINO ms (1t)",
                        "speed-up (1t)", "tuned speed-up (1t)"]
    assert float(good[7]) > 0 and all(float(ms) > 0 for ms in good[8:12]), good
    assert re.fullmatch(r"[\d.]+x", good[12]) and re.fullmatch(r"[\d.]+x", good[13]), good  # ms cells round
    assert rows["**geometric mean**"][13].strip("*") == good[13]
