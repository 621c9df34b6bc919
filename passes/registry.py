"""The pass table: every reforge pass, its summary and paper, prerequisites and defaults.

``reforge passes`` prints this table, and the pipeline selects from it; nothing else lists passes.
Which targets run a per-target pass by default is the backends' (``Backend.default_passes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import tvm

from reforge.errors import ReforgeError

from .binarize import Binarize
from .complex_conv import ComplexConv
from .fft_conv import FFTConv
from .fold_batchnorm import FoldBatchNorm
from .fold_channel_tile import FoldChannelTile
from .fold_masks import FoldMasks
from .fuse_fplus import FuseFPlus
from .fwht import FastWHT
from .merge_branches import MergeBranches
from .padding_taps import DropPaddingTaps
from .prune_channels import PruneChannels
from .remove_noops import RemoveNoops
from .remove_residual import RemoveResidual
from .sparse import Sparse
from .tvm_builtin import DeadCode, FoldConstants

OPT_LEVELS = (0, 1, 2)


@dataclass(frozen=True)
class PassInfo:
    """One row of the table.

    ``level``: the lowest -O level that runs the pass by default (None: only on request);
    ``per_target``: whether it pays off only on some targets, so that it is on by default (from ``level``)
    only where the backend names it in ``default_passes`` (else: on every target);
    ``rtol``: the relative error ``--verify`` accepts after this pass (max|Δ| / max|reference|).
    """

    name: str
    make: Callable[[], tvm.transform.Pass]
    summary: str
    paper: str
    level: int | None = 1
    per_target: bool = False
    requires: tuple[str, ...] = ()
    rtol: float = 1e-4

    def on_by_default(self, opt_level: int, target_passes: Collection[str]) -> bool:
        """At ``opt_level``, for a backend whose per-target defaults are ``target_passes``."""
        return (self.level is not None and opt_level >= self.level
                and (not self.per_target or self.name in target_passes))


PASSES: dict[str, PassInfo] = {p.name: p for p in [
    PassInfo("remove-noops", RemoveNoops,
             "drop inference no-ops: Dropout, eval-mode DropConnect / frequency-dropout remains (x1, +0), "
             "identity reshapes / casts / transposes",
             "Srivastava et al., Dropout, JMLR 2014; Wan et al., DropConnect, ICML 2013", rtol=1e-5),
    PassInfo("fold-masks", FoldMasks,
             "masked weights (PyTorch pruning's weight_orig * weight_mask, SCL's W * step(M) as Greater / Cast / "
             "Mul, where(mask, W, 0), bool / uint8 / float masks) evaluated into one constant weight; the sparsity "
             "of every conv / dense weight reported per layer",
             "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015; "
             "Zhu & Gupta, To prune, or not to prune, ICLR-W 2018 (torch.nn.utils.prune)", rtol=1e-5),
    PassInfo("fold-constants", FoldConstants,
             "evaluate operators whose inputs are all constants at compile time",
             "Aho, Lam, Sethi, Ullman, Compilers (2nd ed.), sec. 9.4 constant propagation", rtol=1e-5),
    PassInfo("fold-batchnorm", FoldBatchNorm,
             "fold BatchNorm and constant channel scales / shifts into the neighbouring conv / dense; "
             "a lone BatchNorm becomes a per-channel affine",
             "Ioffe & Szegedy, Batch Normalization, ICML 2015; Jacob et al., CVPR 2018 (sec. 3.2 folding)",
             requires=("fold-constants",)),
    PassInfo("fold-channel-tile", FoldChannelTile,
             "a conv reading a channel tile (repeat / Tile / concat of one tensor β times), through per-channel "
             "affines, reads the tensor itself with the kernel's β input-channel slices summed (scales folded in)",
             "Shi et al., Rep-BNN: Towards a Precise Binary Neural Network with Enhanced Feature Map via Repeating, "
             "arXiv 2022",
             level=2, requires=("fold-constants", "fold-batchnorm")),
    PassInfo("complex-conv", ComplexConv,
             "a complex conv written as four real convs (yr = conv(xr, Wr) − conv(xi, Wi), yi = conv(xr, Wi) + "
             "conv(xi, Wr), any 2×2 block of convs alike) becomes one conv over concat(xr, xi) with the block "
             "kernel [[Wr, −Wi], [Wi, Wr]]",
             "Worrall et al., Harmonic Networks: Deep Translation and Rotation Equivariance, CVPR 2017; "
             "Trabelsi et al., Deep Complex Networks, ICLR 2018",
             level=2, requires=("fold-constants", "fold-batchnorm")),
    PassInfo("merge-branches", MergeBranches,
             "structural re-parameterization: parallel linear branches on one input (k×k, 1×1, 1×k / k×1, "
             "identity, per-channel affine, average pooling) summed into one conv, and chains of linear convs "
             "composed into one",
             "Ding et al., RepVGG, CVPR 2021; Ding et al., ACNet, ICCV 2019; Ding et al., Diverse Branch Block, "
             "CVPR 2021; Vasu et al., MobileOne, CVPR 2023; Chen et al., RepGhost, 2022",
             level=2, requires=("fold-constants", "fold-batchnorm")),
    PassInfo("fuse-fplus", FuseFPlus,
             "FPlus / PFPlus activations written with pow / abs / sign or where, λ·((1 + μ|x|)^sign(x) − 1), "
             "become one elementwise operator, fused into the preceding conv's epilogue",
             "Duan et al., FPLUS: First Power Linear Unit with Sign, arXiv 2111.14349, 2021; "
             "Duan, Yang & Dai, Feature Activation through First Power Linear Unit with Sign, Electronics 2022",
             level=2, requires=("fold-constants",), rtol=1e-5),
    PassInfo("remove-residual", RemoveResidual,
             "RMNet reserve-and-merge: a residual block (basic or bottleneck; identity or 1x1 projection shortcut) "
             "whose input is provably non-negative becomes a plain chain, the input carried in reserved channels; "
             "costs multiply-adds (dense reserved channels), so on by default only for FPGA streaming",
             "Meng et al., RMNet: Equivalently Removing Residual Connection from Deep Neural Networks (RM Operation), "
             "arXiv 2021",
             level=2, per_target=True, requires=("fold-constants", "fold-batchnorm")),
    PassInfo("prune-channels", PruneChannels,
             "channel liveness across the graph (per-channel ops, residual adds, concats, depthwise convs): output "
             "channels nothing reads and constant channels (all-zero filters; their bias, affine, activation and "
             "pooling folded into every reader's bias, or an exact bias map before a zero-padding conv) removed",
             "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017; He, Zhang & Sun, Channel Pruning for "
             "Accelerating Very Deep Neural Networks, ICCV 2017",
             level=2, per_target=True, requires=("fold-constants", "fold-batchnorm"), rtol=1e-5),
    PassInfo("drop-padding-taps", DropPaddingTaps,
             "conv taps that read only zero padding dropped (a dilated conv on a map smaller than its rate keeps "
             "its centre taps: DeepLab's ASPP at rates 24 / 36 on 14×14 becomes a 1×1 conv); a conv whose taps "
             "mostly read padding split into a sum of unpadded convs, each run of taps over the outputs it reaches "
             "inside the map",
             "Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation (DeepLab-V3), "
             "arXiv 1706.05587, 2017 (sec. 3.3: at large rates only the centre filter weight stays effective)",
             level=2, rtol=1e-5),
    PassInfo("fwht", FastWHT,
             "products with a constant Hadamard matrix (MatMul / Gemm / 1×1 conv, either side of a 2-D H·X·Hᵀ; "
             "any scale, natural or sequency order, zero-padded, block-diagonal, rows or columns scaled) and "
             "butterfly chains (log2 N stages of slice / add / sub / concat) become a fast Walsh-Hadamard "
             "transform, with the soft / smooth threshold after it fused",
             "Fino & Algazi, Unified matrix treatment of the fast Walsh-Hadamard transform, IEEE Trans. "
             "Computers 1976; Pan, Badawi & Cetin, Fast Walsh-Hadamard transform and smooth-thresholding based "
             "binary layers in deep neural networks, CVPR-W 2021; Pan, Badawi & Cetin, Block Walsh-Hadamard "
             "transform based binary layers in deep neural networks, ACM TECS 2022",
             level=2, requires=("fold-constants",), rtol=1e-5),
    PassInfo("binarize", Binarize,
             "binarized conv / dense (±1 weights, sign / where / STE activations) to bit-packed XNOR-popcount "
             "operators; BatchNorm + sign between binary convs fused into integer thresholds; before fft-conv and "
             "sparse, which never see a ±1 conv",
             "Courbariaux et al., BinaryNet, 2016; Rastegari et al., XNOR-Net, ECCV 2016",
             level=2, requires=("fold-constants", "fold-batchnorm")),
    PassInfo("fft-conv", FFTConv,
             "large-kernel stride-1 convs through overlap-save tiled 2-D real DFTs (weight spectra precomputed, "
             "per-frequency channel mixing as a batched GEMM over the tiles), where a cost model measured on "
             "this CPU estimates FFT faster (never 3×3), or where `reforge tune` measured it faster; x86 only",
             "Mathieu, Henaff & LeCun, Fast training of convolutional networks through FFTs, ICLR 2014; "
             "Vasilache et al., Fast convolutional nets with fbfft, ICLR 2015",
             level=2, per_target=True, requires=("fold-constants",)),
    PassInfo("sparse", Sparse,
             "convs and dense layers whose constant weights are mostly zero (pruned) run as sparse operators: "
             "1×1 / k×k convs as a direct sparse convolution in the blocked layout (nonzero taps per output "
             "channel, pixels vectorized, bias / ReLU / residual add fused), dense as blocks of 16 output columns "
             "(one per lane, sorted by their nonzeros) against gathered activations; per layer where the sparsity "
             "reaches the crossover measured on this CPU, or where `reforge tune` measured sparse faster; a no-op on "
             "a dense network; on by default for x86 and arm "
             "(arm with x86's crossovers), kernels in the machine's vectors",
             "Park et al., Faster CNNs with Direct Sparse Convolutions and Guided Pruning, ICLR 2017; "
             "Elsen et al., Fast Sparse ConvNets, CVPR 2020",
             level=2, per_target=True, requires=("fold-constants",), rtol=1e-5),
    PassInfo("dead-code", DeadCode,
             "remove bindings and functions whose results are never used",
             "Aho, Lam, Sethi, Ullman, Compilers (2nd ed.), sec. 8.5 dead-code elimination", rtol=1e-5),
]}


def get(name: str) -> PassInfo:
    if name not in PASSES:
        raise ReforgeError(f"unknown pass '{name}'; `reforge passes` lists them: {', '.join(PASSES)}")
    return PASSES[name]


def select(opt_level: int = 2, target_passes: Collection[str] = frozenset(), enable=(), disable=(),
           passes: list[str] | None = None) -> list[str]:
    """The passes to run, in table order, with prerequisites added.

    The -O level's defaults are its passes that are not per-target, and those of ``target_passes``
    (the backend's ``default_passes``); ``passes`` replaces them with an explicit list;
    ``enable`` / ``disable`` adjust either. Disabling a prerequisite of a pass that runs is an error.
    """
    if opt_level not in OPT_LEVELS:
        raise ReforgeError(f"unknown optimization level -O{opt_level}; use one of "
                           f"{', '.join(f'-O{o}' for o in OPT_LEVELS)}")
    for name in [*target_passes, *enable, *disable, *(passes or [])]:
        get(name)
    if passes is not None:
        chosen = set(passes)
    else:
        chosen = {n for n, p in PASSES.items() if p.on_by_default(opt_level, target_passes)}
    chosen = (chosen | set(enable)) - set(disable)
    pending = list(chosen)
    while pending:
        for req in PASSES[pending.pop()].requires:
            if req in disable:
                users = ", ".join(f"'{n}'" for n in sorted(n for n in chosen if req in PASSES[n].requires))
                raise ReforgeError(f"cannot disable '{req}': {users} require{'s' if ',' not in users else ''} it "
                                   f"(disable {users} too)")
            if req not in chosen:
                chosen.add(req)
                pending.append(req)
    return [n for n in PASSES if n in chosen]
