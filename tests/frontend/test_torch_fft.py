"""torch.fft graphs (rfft2 / irfft2 / fft2 / ifft2, complex products) through torch.export.

Reference: the PyTorch module itself. Tolerance: max|out - ref| <= 1e-4 * max|ref| (fp32).
"""

import numpy as np
import pytest
import torch

import reforge
from reforge import ReforgeError
from reforge.frontend.torch_import import import_torch


def frequency_norm(h: int, w: int) -> torch.Tensor:
    """|ξ| on rfft2's half grid [H, W//2 + 1]."""
    fh = torch.fft.fftfreq(h).reshape(-1, 1)
    fw = torch.fft.rfftfreq(w).reshape(1, -1)
    return 2 * torch.pi * torch.sqrt(fh ** 2 + fw ** 2)


class FractionalLaplacian(torch.nn.Module):
    """u ↦ F⁻¹[|ξ|^{2s} · F u]; for s < 0 the zero frequency (where |ξ|^{2s} is infinite) maps to 0."""

    def __init__(self, h: int, w: int, s: float, norm: str = "backward"):
        super().__init__()
        xi = frequency_norm(h, w)
        self.register_buffer("m", torch.where(xi == 0, torch.zeros(()), xi.clamp_min(1e-12) ** (2 * s)))
        self.norm = norm

    def forward(self, x):
        return torch.fft.irfft2(self.m * torch.fft.rfft2(x, norm=self.norm), s=x.shape[-2:], norm=self.norm)


class LearnedSpectral(torch.nn.Module):
    """CEMNet-style frequency-domain layer: a learned complex multiplier per channel."""

    def __init__(self, c: int, h: int, w: int, norm: str, pair: bool):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.pair, self.norm = pair, norm
        if pair:  # real / imaginary parameters
            self.wr = torch.nn.Parameter(torch.randn(c, h, w // 2 + 1, generator=g))
            self.wi = torch.nn.Parameter(torch.randn(c, h, w // 2 + 1, generator=g))
        else:  # one real parameter viewed as complex
            self.w = torch.nn.Parameter(torch.randn(c, h, w // 2 + 1, 2, generator=g))

    def forward(self, x):
        k = torch.complex(self.wr, self.wi) if self.pair else torch.view_as_complex(self.w)
        return torch.fft.irfft2(torch.fft.rfft2(x, norm=self.norm) * k, s=x.shape[-2:], norm=self.norm)


class FullSpectrum(torch.nn.Module):
    """fft2 / ifft2 with .real / .imag / abs and an input-dependent complex product (not foldable)."""

    def __init__(self, norm: str):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        z = torch.fft.fft2(x, norm=self.norm)
        y = torch.fft.ifft2(z * z.imag, norm=self.norm).real + 0.1 * z.abs()
        half = torch.fft.rfft2(x, norm=self.norm)
        return y + torch.fft.irfft2(half * half.abs(), s=x.shape[-2:], norm=self.norm) - z.imag


class Resized(torch.nn.Module):
    """``s=`` sizes: zero-padded and cropped spectra, and a 1-D transform with ``n=``."""

    def forward(self, x):
        up = torch.fft.irfft2(torch.fft.rfft2(x, s=(8, 10), norm="ortho"), s=(9, 12), norm="ortho")
        crop = torch.fft.irfft2(torch.fft.rfft2(x)[..., 1:5, :], s=(4, 5))
        line = torch.fft.irfft(torch.fft.rfft(x) * 0.5, n=7)
        return up[..., :6, :7] + crop.sum() + line


class ConvSpectralConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.spectral = LearnedSpectral(4, 12, 10, "ortho", pair=False)
        self.conv2 = torch.nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.spectral(torch.relu(self.conv1(x)))))


def close_to_torch(net: torch.nn.Module, shape, **compile_args) -> reforge.Artifact:
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    art = reforge.compile(net, input_shapes={"x": shape}, **compile_args)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = art.run({"x": x})["output0"]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    return art


@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
@pytest.mark.parametrize("s", [0.5, -0.5])
def test_fractional_laplacian(hw, s):
    close_to_torch(FractionalLaplacian(*hw, s), (2, 3, *hw))


@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
def test_learned_multiplier(norm):
    close_to_torch(LearnedSpectral(3, 6, 7, norm, pair=norm == "ortho"), (1, 3, 6, 7))


@pytest.mark.parametrize("norm,hw", [("backward", (6, 8)), ("ortho", (5, 7)), ("forward", (8, 5))])
def test_full_spectrum(norm, hw):
    close_to_torch(FullSpectrum(norm), (1, 2, *hw))


def test_sizes():
    close_to_torch(Resized(), (1, 2, 6, 7))


def test_conv_spectral_conv_end_to_end():
    art = close_to_torch(ConvSpectralConv(), (1, 3, 12, 10), verify=True)
    assert art.outputs[0].shape == (1, 2, 12, 10)


def ops(mod) -> list[str]:
    return [b.value.op.name for block in mod["main"].body.blocks for b in block.bindings
            if hasattr(b.value, "op") and hasattr(b.value.op, "name")]


@pytest.mark.parametrize("hw,matmuls", [((8, 8), 3), ((4, 4), 1)])
def test_constant_multiplier_is_folded(hw, matmuls):
    """No complex product, no transform pair: three products (factored) or one (dense, tiny maps)."""
    found = ops(import_torch(FractionalLaplacian(*hw, 0.5), {"x": (1, 3, *hw)}).mod)
    assert "relax.multiply" not in found and "relax.split" not in found
    assert found.count("relax.matmul") == matmuls


def test_input_dependent_multiplier_is_not_folded():
    found = ops(import_torch(FullSpectrum("backward"), {"x": (1, 2, 6, 8)}).mod)
    assert "relax.multiply" in found


class FFTOverChannels(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft(x, dim=1).real


class ComplexInput(torch.nn.Module):
    def forward(self, z):
        return torch.fft.ifft2(z).real


class Shifted(torch.nn.Module):
    def forward(self, x):
        return torch.fft.ifft2(torch.fft.fftshift(torch.fft.fft2(x))).real


@pytest.mark.parametrize("net,inputs,match", [
    (FFTOverChannels(), (torch.randn(1, 3, 4, 4),), r"'aten\._fft_\w+\.default' at node '\w+' transforms dims \[1\]"),
    (ComplexInput(), (torch.randn(1, 3, 4, 4, dtype=torch.complex64),), r"complex input 'z'"),
    (Shifted(), (torch.randn(1, 3, 4, 4),), r"unsupported operator 'aten\.[\w.]+' on a complex tensor at node '\w+'"),
])
def test_unsupported_is_one_line(net, inputs, match):
    with pytest.raises(ReforgeError, match=match) as err:
        import_torch(net, example_inputs=inputs)
    assert "\n" not in str(err.value)
