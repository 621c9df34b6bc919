"""Graph rewrites on Relax, each a ``tvm.transform.Pass`` with a ``report`` of what it did."""

from .fft_conv import FFTConv
from .fold_batchnorm import FoldBatchNorm
from .fwht import FastWHT
from .merge_branches import MergeBranches
from .registry import PASSES, PassInfo, get, select
from .remove_noops import RemoveNoops
from .report import PassReport
from .tvm_builtin import DeadCode, FoldConstants

__all__ = ["PASSES", "PassInfo", "PassReport", "get", "select",
           "DeadCode", "FastWHT", "FFTConv", "FoldBatchNorm", "FoldConstants", "MergeBranches", "RemoveNoops"]
