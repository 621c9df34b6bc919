"""The odd shards of the differential fuzz test (tests/fuzz/test_differential.py), in a file of their
own: `make test` runs a file on one worker (--dist loadfile), so the two halves run side by side."""

from __future__ import annotations

import pytest

from .differential import SHARDS, shard_test


@pytest.mark.parametrize("shard", range(1, SHARDS, 2))
def test_reforge_agrees_with_onnxruntime(shard):
    shard_test(shard)()
