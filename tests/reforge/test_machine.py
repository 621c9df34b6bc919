"""The machine model's derived quantities."""

from reforge.machine import AVX2, AVX512, NEON


def test_lanes_follow_the_vector_width():
    assert (AVX512.lanes(), AVX2.lanes(), NEON.lanes()) == (16, 8, 4)
    assert AVX512.lanes(8) == 64


def test_accumulators_hide_the_fma_latency():
    assert AVX2.min_accumulators == 8
    assert AVX2.with_(fma_units=1).min_accumulators == 4
