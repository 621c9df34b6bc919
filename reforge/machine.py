"""The machine model: what a CPU schedule asks of the processor it is compiled for.

A backend describes its target as a :class:`Machine` (tinygrad's ``Renderer`` in spirit: capabilities
as attributes that generic code asks); the schedule rules read register counts, lane widths and cache
sizes from it instead of inferring them from one ISA. The presets give each ISA's architectural facts;
a backend picks one and fills in the target's cores and caches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Machine:
    """One core's vector unit and caches, and how many cores the code may use.

    ``fma_units * fma_latency`` independent accumulators keep every FMA pipe busy (Little's law);
    a register tile holds at most ``vector_registers`` vectors (accumulators, weights, a broadcast).
    """

    isa: str  # "avx512", "avx2", "neon", "sse"
    vector_bits: int  # width of one SIMD register
    vector_registers: int  # architectural SIMD registers
    fma_units: int = 2  # FMA pipes per core
    fma_latency: int = 4  # cycles from an FMA's issue to its result
    l1d_bytes: int = 32 << 10
    l2_bytes: int = 1 << 20
    cores: int = 1

    def lanes(self, bits: int = 32) -> int:
        """Elements of ``bits`` bits in one SIMD register."""
        return self.vector_bits // bits

    @property
    def min_accumulators(self) -> int:
        """Independent FMA chains that hide the FMA latency on every pipe."""
        return self.fma_units * self.fma_latency

    def with_(self, **changes) -> Machine:
        return replace(self, **changes)


AVX512 = Machine("avx512", 512, 32, l1d_bytes=32 << 10, l2_bytes=2 << 20)  # Zen 4 (Sapphire Rapids: 48 KiB L1d)
AVX2 = Machine("avx2", 256, 16, l1d_bytes=32 << 10, l2_bytes=512 << 10)
SSE = Machine("sse", 128, 16, fma_units=1, l1d_bytes=32 << 10, l2_bytes=256 << 10)
NEON = Machine("neon", 128, 32, fma_units=2, fma_latency=4, l1d_bytes=32 << 10, l2_bytes=1 << 20)

