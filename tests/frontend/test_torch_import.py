"""PyTorch import: nn.Module, ExportedProgram and saved .pt2 programs.

Numeric checks compare with the PyTorch module itself: max|out - ref| <= 1e-4 * max|ref|.
"""

import numpy as np
import pytest
import torch

import reforge
from reforge import ReforgeError
from reforge.frontend import load


def feeds(seed=5):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((1, 3, 8, 8)).astype("float32"),
            "signal": rng.standard_normal((1, 4, 20)).astype("float32")}


def assert_matches_torch(art, net, inputs):
    with torch.no_grad():
        ref = [t.numpy() for t in net(*(torch.from_numpy(v) for v in inputs.values()))]
    out = list(art.run(inputs).values())
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()


SHAPES = {"image": (1, 3, 8, 8), "signal": (1, 4, 20)}


def test_module_keeps_forward_argument_names(two_input_net):
    art = reforge.compile(two_input_net, input_shapes=SHAPES)
    assert [s.name for s in art.inputs] == ["image", "signal"]
    assert [s.shape for s in art.outputs] == [(1, 8), (1, 6, 16)]
    assert_matches_torch(art, two_input_net, feeds())


def test_module_needs_every_input_shape(two_input_net):
    with pytest.raises(ReforgeError, match=r"give a shape for input 'signal' of TwoInputNet.forward"):
        load(two_input_net, {"image": (1, 3, 8, 8)})


def test_saved_program(tmp_path, two_input_net):
    path = tmp_path / "net.pt2"
    args = tuple(torch.from_numpy(v) for v in feeds(0).values())
    torch.export.save(torch.export.export(two_input_net, args), path)
    art = reforge.compile(str(path))
    assert art.manifest["model"] == {"name": "net.pt2", "source": "pt2"}
    assert_matches_torch(art, two_input_net, feeds())


def test_saved_dynamic_program_is_specialized(tmp_path, two_input_net):
    path = tmp_path / "dyn.pt2"
    args = (torch.randn(2, 3, 8, 8), torch.randn(2, 4, 20))
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(two_input_net, args, dynamic_shapes={"image": {0: batch}, "signal": {0: batch}})
    torch.export.save(program, path)
    with pytest.raises(ReforgeError, match=r"input 'image' has dynamic shape \(\w+, 3, 8, 8\); fix it with --input-shape image:1x3x8x8"):
        load(str(path))
    shapes = {"image": (3, 3, 8, 8), "signal": (3, 4, 20)}
    art = reforge.compile(str(path), input_shapes=shapes)
    rng = np.random.default_rng(6)
    inputs = {n: rng.standard_normal(s).astype("float32") for n, s in shapes.items()}
    assert_matches_torch(art, two_input_net, inputs)


def test_unreadable_pt2(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(ReforgeError, match=r"is not a loadable torch.export program"):
        load(str(path))


def test_unknown_extension(tmp_path):
    with pytest.raises(ReforgeError, match=r"cannot tell the format of .*model.h5"):
        load(str(tmp_path / "model.h5"))


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x
        return -x


def test_export_failure_is_one_line():
    with pytest.raises(ReforgeError, match=r"^torch.export failed on _Untraceable: ") as info:
        load(_Untraceable(), {"x": (1, 4)})
    assert "\n" not in str(info.value)
