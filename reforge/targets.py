"""Target names, resolved to backends (:mod:`reforge.backends` holds what differs by target); the
names callers and scripts use to ask for a target."""

from __future__ import annotations

from .backends import DEFAULT_CUDA_ARCH, Backend, for_manifest, get
from .backends.x86 import FEATURES as X86_FEATURES
from .backends.x86 import host_features as host_x86_features

TargetSpec = Backend  # a resolved target is its backend
get_target = get

__all__ = ["DEFAULT_CUDA_ARCH", "X86_FEATURES", "TargetSpec", "get_target", "host_can_run", "host_x86_features"]


def host_can_run(target: dict | Backend) -> bool:
    """Whether this machine's CPU executes code built for ``target`` (a backend or its manifest entry)."""
    return for_manifest(target).runs_on_host_cpu()
