"""reforge.codegen: kernels compiled as several LLVM modules by several threads give the module that
one LLVM module gives (the same outputs bit for bit, exported and loaded back too)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import reforge
from reforge import codegen
from tests.helpers import MobileBlock, onnxruntime, resnet_ish, to_onnx


@pytest.mark.parametrize("sizes,jobs", [([5, 9, 1, 30, 7, 7, 2], 3), ([1] * 10, 4), ([100, 1, 1], 8), ([3], 2)])
def test_balanced_chunks_cover_every_function_once(sizes, jobs, monkeypatch):
    monkeypatch.setattr(codegen, "MIN_CHUNK_CHARS", 1)
    groups = codegen.balanced_chunks(sizes, jobs)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert len(groups) == min(jobs, len(sizes)) and all(g == sorted(g) for g in groups)
    totals = [sum(sizes[i] for i in g) for g in groups]
    # largest-first to the lightest group: no group exceeds the mean by more than one function
    assert max(totals) <= sum(sizes) / len(groups) + max(sizes)


def test_small_modules_stay_one_chunk():
    assert codegen.balanced_chunks([codegen.MIN_CHUNK_CHARS // 4] * 3, 8) == [[0, 1, 2]]
    assert len(codegen.balanced_chunks([codegen.MIN_CHUNK_CHARS] * 3, 8)) == 3


@pytest.mark.parametrize("net", [resnet_ish, MobileBlock])
def test_parallel_kernels_match_one_module_bit_for_bit(net, monkeypatch, tmp_path):
    """Compiled as three LLVM modules by three threads and as one: identical outputs, also from the
    artifact saved and loaded back (its model.so links the three objects); onnxruntime within 1e-4."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = to_onnx(net().eval(), x)
    monkeypatch.setattr(codegen, "compile_jobs", lambda: 1)
    one = reforge.compile(model)
    monkeypatch.setattr(codegen, "compile_jobs", lambda: 3)
    monkeypatch.setattr(codegen, "MIN_CHUNK_CHARS", 1)
    three = reforge.compile(model)
    kinds = lambda art: [m.kind for m in art.executable.mod.imports]  # noqa: E731
    assert kinds(one) == ["llvm"] and kinds(three) == ["llvm"] * 3
    feed = {"x": x.numpy()}
    want = one.run(feed)["y"]
    np.testing.assert_array_equal(three.run(feed)["y"], want)
    loaded = reforge.load(three.save(str(tmp_path / "three.tar")))
    np.testing.assert_array_equal(loaded.run(feed)["y"], want)
    ref = onnxruntime(model, x.numpy())
    assert np.abs(want - ref).max() <= 1e-4 * np.abs(ref).max()
    # the three modules' assembly defines the functions of the one module's
    labels = lambda art: set(re.findall(r"^([A-Za-z_]\w*):", codegen.assembly(art.executable), re.M))  # noqa: E731
    assert labels(three) == labels(one) and any(name.startswith("fused_") for name in labels(one))
