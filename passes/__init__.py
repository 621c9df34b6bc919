"""Graph rewrites on Relax, each a ``tvm.transform.Pass`` with a ``report`` of what it did, and the pass table.
Imported by reforge's pipeline, build and tuner; passes import TVM, numpy, topi_ext and reforge's errors, never a backend."""

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
from .registry import PASSES, PassInfo, get, select
from .remove_noops import RemoveNoops
from .remove_residual import RemoveResidual
from .report import PassReport
from .sparse import Sparse
from .tvm_builtin import DeadCode, FoldConstants

__all__ = ["PASSES", "PassInfo", "PassReport", "get", "select",
           "Binarize", "ComplexConv", "DeadCode", "DropPaddingTaps", "FastWHT", "FFTConv", "FoldBatchNorm", "FoldChannelTile",
           "FoldConstants", "FoldMasks", "FuseFPlus", "MergeBranches", "PruneChannels", "RemoveNoops", "RemoveResidual",
           "Sparse"]
