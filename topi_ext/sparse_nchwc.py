"""Direct sparse convolution in the blocked layout: NCHW[ib]c activations in, NCHW[ob]c out (ib = ob = 1:
NCHW), a constant mostly-zero weight, any kernel, stride and zero padding, groups 1, dilation 1, with the
epilogue (bias, ReLU, residual add, in any order) applied as each output is written.

The output is walked as one long row (Park et al., ICLR 2017; Elsen et al., CVPR 2020): with stride s, the
zero-padded input split into s×s phase planes ``P[c, py, px][i, j] = xpad[c, i·s + py, j·s + px]`` of
``Wq = ceil(Wp / s)`` columns, output (oy, ox) is position ``q = oy·Wq + ox`` and tap (c, ky, kx) reads plane
``(c, ky % s, kx % s)`` at ``q + (ky // s)·Wq + kx // s``: a constant offset, so ``width`` consecutive outputs
read ``width`` consecutive plane values (the Wq − OW positions past each row are computed and not written).
A tile of ``width`` positions (whole vectors of the machine, as many as two alternating sets of accumulators
that keep its FMA pipes busy: 64 on AVX-512, 32 on AVX2, 16 on NEON, :func:`for_machine`; the last tile only its
:attr:`Spec.tail`) stages, per
plane a tap reads (:attr:`Spec.phases`: a strided 1×1 conv reads plane (0, 0) only), the ``band`` values it
reads into a contiguous buffer, or the planes are staged whole once per call (:attr:`Spec.whole`: NCHW input,
and small planes, whose tiles' bands would overlap); with the weight's nonzeros kept per output channel
(compressed rows: taps j in ``indptr[o] .. indptr[o+1]``, each a value and ``offsets[j] = plane·pitch +
(ky // s)·Wq + kx // s``, plane = (c·PH + ky % s)·PW + kx % s, pitch the band or the whole plane)

    out[o, q0 + t] = epilogue(Σ_j values[j] · staged[q0' + offsets[j] + t])    (q0' = 0 or q0: band or planes)

the same products as the dense conv, the zeros skipped: one broadcast FMA of a tap against ``width`` pixels
(the pixels vectorized, as XNNPACK's sparse inference does). The staging is where the blocked layout is read:
it transposes the tile's [pixel][lane] input into per-channel rows once, so the layout costs one pass over
the input tile instead of a layout transform of the whole tensor before and after the layer, and the
epilogue writes each output in its lane of the output block. Where a block is one vector of channels, both
transposes go a vector of pixels × a vector of channels at a time through registers (16 × 16 on AVX-512, 4 × 4 on
NEON, :func:`transpose_lines`) instead of one value at a time: across rows where the walk is the flattened map
(1×1, stride 1, no padding), else along each row of the image (a row's last ``W mod vector`` pixels, and rows
narrower than a vector, a value at a time). Offsets
depend on the blocks only through the pitch: :func:`retapped` moves the NCHW kernel's taps to a blocked one.
Where a tile's staged values outgrow the L1 cache (:func:`chunked`), the taps are summed a chunk of input
channels at a time (rows ``k·O + o``), the sums of every output channel kept between the passes.

Emitted scheduled (the loop over a row's nonzeros has data-dependent bounds, which TE cannot express),
tagged ``reforge.op = "sparse_conv2d_nchwc"``; ``reforge.sparse_nchwc`` holds the geometry and epilogue
(JSON) from which the build re-emits the kernel for the machine's vectors and the blocks of the layout it chose.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import tvm

from reforge.machine import Machine

from .op_kind import tag
from .sparse_conv import SparseConvGeometry

OP = "sparse_conv2d_nchwc"  # the PrimFunc's ``reforge.op`` attribute
SPEC_ATTR = "reforge.sparse_nchwc"  # the PrimFunc attribute holding its Spec as JSON
VECTOR = 16  # lanes of a vector where no machine is named (the pass's NCHW kernel): AVX-512's floats
ACCUMULATORS = 8  # vector FMA chains in flight where no machine is named: AVX-512's 2 FMA pipes × latency 4
WHOLE_BYTES = 512 * 1024  # the most blocked input staged as whole planes (a share of a core's L2 cache)
EPILOGUE_STEPS = ("bias", "relu", "add")  # + per-channel bias, max(·, 0), + a tensor of the output's shape


@dataclass(frozen=True)
class Spec(SparseConvGeometry):
    """A sparse conv: its NCHW geometry, its count of nonzeros, input / output channel blocks (1: NCHW)
    and the epilogue steps in order."""

    nnz: int = 0
    ib: int = 1
    ob: int = 1
    epilogue: tuple[str, ...] = ()
    chunk: int = 0  # input channels per pass over the output channels (0: all of them, one pass)
    vector: int = VECTOR  # lanes of the machine's vector: tiles, bands and chunks are whole vectors
    accumulators: int = ACCUMULATORS  # vectors of sums in flight: two alternating sets of half the tile each
    splits: int = 1  # parallel tasks per tile, each summing its share of the output blocks

    @property
    def chunks(self) -> int:
        """Passes over the output channels, each summing the taps of ``chunk`` input channels."""
        return -(-self.c // self.chunk) if self.chunk else 1

    @property
    def plane_hw(self) -> tuple[int, int]:
        """(Hq, Wq): rows and columns of a phase plane of the padded input."""
        t, l, b, r = self.padding
        (sh, sw) = self.strides
        return -(-(self.h + t + b) // sh), -(-(self.w + l + r) // sw)

    @property
    def positions(self) -> int:
        """Positions of the walk up to the last output: (OH − 1)·Wq + OW."""
        oh, ow = self.out_hw
        return (oh - 1) * self.plane_hw[1] + ow

    @property
    def width(self) -> int:
        """Positions per tile: the vectors of one set of accumulators (LLVM splits a vector of positions that
        is not whole vectors, 28 of them, into scalars), or the walk where it is shorter."""
        return min(self.accumulators // 2 * self.vector, -(-self.positions // self.vector) * self.vector)

    @property
    def tiles(self) -> int:
        return -(-self.positions // self.width)

    @property
    def tail(self) -> int:
        """Positions the last tile accumulates: the walk's rest past the whole tiles, in whole vectors."""
        return -(-(self.positions - (self.tiles - 1) * self.width) // self.vector) * self.vector

    @property
    def band(self) -> int:
        """Staged values per plane and tile: the tile's positions and the furthest tap's shift."""
        reach = self.width + (self.kh - 1) // self.strides[0] * self.plane_hw[1] + (self.kw - 1) // self.strides[1]
        return -(-reach // self.vector) * self.vector  # each plane's band starts on a vector boundary

    @property
    def plane_length(self) -> int:
        """Values per phase plane staged whole (NCHW input): the plane, and at least the last tile's furthest
        read, in whole vectors."""
        hq, wq = self.plane_hw
        reach = self.tiles * self.width + (self.kh - 1) // self.strides[0] * wq + (self.kw - 1) // self.strides[1]
        return -(-max(hq * wq, reach) // self.vector) * self.vector

    @property
    def whole(self) -> bool:
        """Whether the input is staged as whole phase planes once per call, not a band per tile: any walk but
        the linear one, from NCHW, and from NCHW16c where its planes fit WHOLE_BYTES. A k×k walk's band
        reaches (k − 1) plane rows past its tile, so per-tile staging copies a value once for each band
        that overlaps it; but larger planes, read a band at a time, leave the caches (and its compact band
        stays in them). A linear walk's bands do not overlap: staged per tile, its rows stay in L1."""
        small = self.c * self.phases[0] * self.phases[1] * self.plane_length * 4 <= WHOLE_BYTES
        return not self.linear and (self.ib == 1 or (self.ib == self.vector and small))

    @property
    def pitch(self) -> int:
        """Staged values per plane, the unit of the taps' offsets: the whole plane (:attr:`whole`), else a
        tile's band."""
        return self.plane_length if self.whole else self.band

    @property
    def phases(self) -> tuple[int, int]:
        """(PH, PW): the phase planes a tap reads, ky % sh < min(sh, kh) and kx % sw < min(sw, kw) (a strided
        1×1 conv reads plane (0, 0) only); only these are staged."""
        return min(self.strides[0], self.kh), min(self.strides[1], self.kw)

    @property
    def linear(self) -> bool:
        """Whether the walk is the flattened map on both sides (1×1, stride 1, no padding: Wq = W = OW), so a
        tile's positions are consecutive pixels of the blocked input and output."""
        return (self.kh, self.kw, *self.strides, *self.padding) == (1, 1, 1, 1, 0, 0, 0, 0)

    def x_shape(self) -> tuple[int, ...]:
        return _blocked((self.n, self.c, self.h, self.w), self.ib)

    def out_shape(self) -> tuple[int, ...]:
        return _blocked((self.n, self.o, *self.out_hw), self.ob)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Spec":
        d = json.loads(text)
        return Spec(**{**d, "padding": tuple(d["padding"]), "strides": tuple(d["strides"]),
                       "epilogue": tuple(d["epilogue"])})


def _blocked(shape, block: int) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, c, h, w) if block == 1 else (n, c // block, h, w, block)


def spec(geometry: SparseConvGeometry, nnz: int, epilogue=()) -> Spec:
    g = geometry
    return Spec(g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, tuple(g.padding), tuple(g.strides), nnz, 1, 1, tuple(epilogue))


def for_machine(s: Spec, machine: Machine) -> Spec:
    """``s`` in ``machine``'s vectors: as many lanes, and a tile of as many positions as keep its FMA pipes busy
    in two alternating sets of accumulators (:attr:`Machine.min_accumulators`: 8 vectors on AVX-512, AVX2 and
    NEON, so 64, 32 and 16 positions; the tile, its staged loads and the broadcast tap stay well inside the
    registers, 32 on AVX-512 and NEON, 16 on AVX2)."""
    return replace(s, vector=machine.lanes(), accumulators=max(2, machine.min_accumulators))


def chunked(s: Spec, l1d_bytes: int) -> Spec:
    """``s`` summing its input channels in chunks whose staged values for a tile fit half the L1 data cache,
    where a k×k walk's do not all fit it: each pass reads its chunk from L1 instead of every tap's band from L2,
    and adds to the sums kept in ``block`` (1×1 walks measured no faster chunked: their taps read aligned
    vectors, which the L2 streams). Chunks are whole vectors of channels."""
    per_channel = s.phases[0] * s.phases[1] * s.band * 4
    if s.kh * s.kw == 1 or s.c * per_channel <= l1d_bytes:
        return s
    chunk = max(s.vector, l1d_bytes // 2 // per_channel // s.vector * s.vector)
    return replace(s, chunk=chunk) if chunk < s.c else s


def spread(s: Spec, cores: int) -> Spec:
    """``s`` with each tile's output blocks split over parallel tasks where the tiles alone are fewer than the
    tasks ``cores`` can share (a 7×7 map is one tile): 2 tasks a core where the input is staged whole before the
    tiles, one where each task of a tile repeats its staging."""
    target = (2 if s.whole else 1) * cores
    tasks = s.n * s.tiles
    if cores < 2 or tasks >= target:
        return s
    return replace(s, splits=max(1, min(s.o // s.ob, -(-target // tasks))))


@dataclass(frozen=True)
class Taps:
    """Compressed rows of an OIHW weight with offsets into the band (module docstring); at least one
    slot (a zero-length buffer cannot be passed), so an all-zero weight keeps one unused tap."""

    indptr: np.ndarray  # int32 [O + 1]
    offsets: np.ndarray  # int32 [max(nnz, 1)]
    values: np.ndarray  # float32 [max(nnz, 1)]

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


def taps(weight: np.ndarray, s: Spec) -> Taps:
    (sh, sw), (ph, pw) = s.strides, s.phases
    wq = s.plane_hw[1]
    o, c, ky, kx = np.nonzero(weight)  # row-major: by output channel, then c, ky, kx
    offsets = (((c * ph + ky % sh) * pw + kx % sw) * s.pitch + ky // sh * wq + kx // sw).astype("int32")
    return _rows(s, o, c, offsets, weight[o, c, ky, kx].astype("float32"))


def _rows(s: Spec, o: np.ndarray, c: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> Taps:
    """Taps (output channel ``o``, input channel ``c``, ``offsets``, ``values``, row-major by o then c) as
    compressed rows: row ``k·O + o`` holds output channel o's taps of the k-th chunk of input channels."""
    row = (c // s.chunk if s.chunk else 0) * s.o + o
    order = np.argsort(row, kind="stable")  # each row keeps its taps in input-channel order
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=s.chunks * s.o))]).astype("int32")
    offsets, values = offsets[order].astype("int32"), values[order]
    if values.size == 0:
        offsets, values = np.zeros(1, "int32"), np.zeros(1, "float32")
    return Taps(indptr, offsets, values)


def retapped(t: Taps, old: Spec, new: Spec) -> Taps:
    """Taps of ``old``'s kernel for ``new``'s (other blocks, so another pitch, or other chunks of input channels):
    offsets plane · pitch + shift (the shift below both pitches) counted in ``new``'s pitch, the rows regrouped."""
    count = np.diff(t.indptr)
    o = np.repeat(np.arange(count.size) % old.o, count)
    offsets, values = t.offsets[:t.nnz], t.values[:t.nnz]
    plane = offsets // old.pitch
    return _rows(new, o, plane // (old.phases[0] * old.phases[1]), plane * new.pitch + offsets % old.pitch, values)


def transpose_lines(load, store, indent: str, vector: int) -> list[str]:
    """TVMScript lines transposing a ``vector`` × ``vector`` block in registers (``vector`` a power of two): rows
    ``load(t)`` (vectors), then ``store(l, value)`` of the block's column l. log2(vector) rounds of two-vector
    shuffles, each swapping the off-diagonal half × half blocks of every pair of rows ``half`` apart (the
    recursive transpose): vector · log2(vector) shuffles per vector² values (16 lanes: 64 per 256; NEON's 4: 8
    per 16, its zip / trn instructions), where moving them one lane at a time takes one instruction each."""
    assert vector & (vector - 1) == 0, vector
    lines = [f"{indent}r0_{t} = T.Bind({load(t)})" for t in range(vector)]
    level, half = 0, vector // 2
    while half:
        for i in (i for i in range(vector) if not i & half):
            low = [j if not j & half else vector + j - half for j in range(vector)]
            high = [j + half if not j & half else vector + j for j in range(vector)]
            pair = f"[r{level}_{i}, r{level}_{i + half}]"
            lines += [f"{indent}r{level + 1}_{i} = T.Bind(T.Shuffle({pair}, {low}))",
                      f"{indent}r{level + 1}_{i + half} = T.Bind(T.Shuffle({pair}, {high}))"]
        level, half = level + 1, half // 2
    return lines + [f"{indent}{store(l, f'r{level}_{l}')}" for l in range(vector)]


def prim_func(s: Spec) -> tvm.tirx.PrimFunc:
    """``(x, offsets, values, indptr[, bias][, res], out)``, scheduled, tagged ``reforge.op``. NCHW input is
    staged whole before the tiles (:func:`_plane_staging`), blocked input per tile a block of ``ib`` channels
    (one vector) at a time; the accumulators of ``ob`` output channels are kept, then written a block (one
    vector) per position, the epilogue on the vector (NCHW output: a channel's row of positions at a time,
    :func:`_plain_writing`). The last tile accumulates only its :attr:`Spec.tail`."""
    nnz = max(s.nnz, 1)
    (sh, sw), (ph, pw), (pt, pl) = s.strides, s.phases, s.padding[:2]
    wq, width, band, tiles = s.plane_hw[1], s.width, s.band, s.tiles
    extra = "".join([f', bias: T.Buffer(({s.o},), "float32")' if "bias" in s.epilogue else "",
                     f', res: T.Buffer({s.out_shape()}, "float32")' if "add" in s.epilogue else ""])
    rows = -(-band // wq) + 1  # plane rows a band touches
    n, q0, q = f"it // {tiles}", f"it % {tiles} * {width}", f"(it % {tiles} * {width} + t)"
    i = f"({q0} // {wq} + r)"  # plane row r of the band; v: the band position of its column j
    iy, ix, v = f"({i} * {sh} + py - {pt})", f"(j * {sw} + px - {pl})", f"({i} * {wq} + j - {q0})"
    oy, ox = f"{q} // {wq}", f"{q} % {wq}"
    ch = f"cb * {s.ib} + l" if s.ib > 1 else "cb"
    slot = f"((({ch}) * {ph} + py) * {pw} + px) * {band} + {v}"
    x_at = f"x[{n}, cb, {iy}, {ix}, l]" if s.ib > 1 else f"x[{n}, cb, {iy}, {ix}]"
    out_at = (lambda name: f"{name}[{n}, ob, {oy}, {ox}, l]") if s.ob > 1 else (lambda name: f"{name}[{n}, ob, {oy}, {ox}]")
    value = f"block[{_sum_row(s, 'l')} + t]"
    for step in s.epilogue:
        value = {"bias": f"({value} + bias[ob * {s.ob} + l])", "relu": f"T.max({value}, T.float32(0))",
                 "add": f"({value} + {out_at('res')})"}[step]
    staging = f"""
        staged = T.alloc_buffer(({s.c * ph * pw * band},), "float32")
        for cb, py, px, r, j in T.grid({s.c // s.ib}, {ph}, {pw}, {rows}, {wq}):
            if 0 <= {v} and {v} < {band}:
                if 0 <= {iy} and {iy} < {s.h} and 0 <= {ix} and {ix} < {s.w}:
                    for l in T.vectorized({s.ib}):
                        staged[{slot}] = {x_at}
                else:
                    for l in T.vectorized({s.ib}):
                        staged[{slot}] = T.float32(0)
"""
    writing = f"""
            for t in range({width}):
                if {q} < {s.positions} and {ox} < {s.out_hw[1]}:
                    for l in T.vectorized({s.ob}):
                        {out_at('out')} = {value}
"""
    whole, start = "", "0"
    if s.whole:
        whole, staging = _plane_staging(s) if s.ib == 1 else _row_staging(s), ""
        start = f"it // {tiles} * {s.c * ph * pw * s.pitch} + {q0}"  # the tile's first position in staged
    elif s.ib == s.vector or (s.ib == 1 and s.linear):
        rows = _linear_staging(s) if s.linear and s.ib == s.vector else _linear_rows(s) if s.linear else _band_staging(s)
        staging = f"""
        staged = T.alloc_buffer(({s.c * ph * pw * band},), "float32"){rows}"""
    if s.ob == 1:
        writing = _plain_writing(s)
    elif s.ob == s.vector:
        writing = _linear_writing(s, writing) if s.linear else _row_writing(s, f"{out_at('out')} = {value}")
    body = _accumulating(s, width, start) + writing
    if s.tail < width:
        tail = _accumulating(s, s.tail, start) + writing
        body = f"""
        if it % {tiles} < {tiles - 1}:{_indented(body)}
        else:{_indented(tail)}"""
    src = f"""
@T.prim_func
def sparse_conv2d_nchwc(x: T.Buffer({s.x_shape()}, "float32"), offsets: T.Buffer(({nnz},), "int32"),
                        values: T.Buffer(({nnz},), "float32"), indptr: T.Buffer(({s.chunks * s.o + 1},), "int32"){extra},
                        out: T.Buffer({s.out_shape()}, "float32")):
    T.func_attr({{"tirx.noalias": True}}){whole}
    for {"it" if s.splits == 1 else "task"} in T.parallel({s.n * tiles * s.splits}):{_task(s)}
        block = T.alloc_buffer(({(s.o if s.chunks > 1 else s.ob) * width},), "float32"){staging}{body}"""
    from tvm.script import tirx

    func = tvm.script.from_source(src, extra_vars={"T": tirx})
    return tag(func, OP).with_attr(SPEC_ATTR, s.to_json())


def _task(s: Spec) -> str:
    """A split tile's task: its tile ``it`` (as unsplit) and its share ``sp`` of the output blocks."""
    if s.splits == 1:
        return ""
    return f"""
        it = T.Bind(task // {s.splits})
        sp = T.Bind(task % {s.splits})"""


def _indented(text: str) -> str:
    return "\n".join("    " + line if line.strip() else line for line in text.split("\n"))


def _accumulating(s: Spec, width: int, start: str) -> str:
    """Per output channel, its taps as broadcast FMAs against ``width`` staged positions from ``start``,
    alternating between two sets of accumulators; the sums into ``block`` (a row of the main width per lane;
    chunked: a row per output channel, each pass adding its chunk's taps to the sums so far)."""
    chunked = s.chunks > 1
    row = f"kc * {s.o} + ob * {s.ob} + l" if chunked else f"ob * {s.ob} + l"
    at = f"{_sum_row(s, 'l')} + t"

    def vectors(indent: int, statement: str) -> str:
        """``statement`` on positions ``t`` of the tile, one vector at a time (LLVM scalarizes a 48-wide one)."""
        pad = " " * indent
        return (f"{pad}for v in T.unroll({width // s.vector}):\n{pad}    for u in T.vectorized({s.vector}):\n"
                f"{pad}        t = T.Bind(v * {s.vector} + u)\n{pad}        {statement}")
    loop = f"""
        for ob in {_blocks(s)}:
            for l in range({s.ob}):
                acc = T.alloc_buffer(({2 * width},), "float32", scope="local")
                for v in T.unroll({2 * width // s.vector}):
                    for u in T.vectorized({s.vector}):
                        acc[v * {s.vector} + u] = T.float32(0)"""
    if chunked:
        loop += f"""
                if kc > 0:
{vectors(20, f"acc[t] = block[{at}]")}"""
    def tap(j: str, a: str) -> str:  # accumulator row ``a`` += tap j's value × its staged positions
        return f"acc[{a} + t] = acc[{a} + t] + values[{j}] * staged[{start} + offsets[{j}] + t]"
    loop += f"""
                first = T.Bind(indptr[{row}])
                count = T.Bind(indptr[{row} + 1] - first)
                for k in range(count // 2):
                    for h in T.unroll(2):
{vectors(24, tap("first + 2 * k + h", f"h * {width}"))}
                if count % 2 == 1:
{vectors(20, tap("first + count - 1", "0"))}
{vectors(16, f"block[{at}] = acc[t] + acc[{width} + t]")}"""
    if not chunked:
        return loop
    return f"""
        for kc in range({s.chunks}):{_indented(loop)}
        for ob in {_blocks(s)}:"""


def _blocks(s: Spec) -> str:
    """The range of output blocks a task sums: all of them, or task ``sp``'s share of :attr:`Spec.splits`."""
    blocks = s.o // s.ob
    if s.splits == 1:
        return f"range({blocks})"
    return f"range(sp * {blocks} // {s.splits}, (sp + 1) * {blocks} // {s.splits})"


def _sum_row(s: Spec, lane: str) -> str:
    """Where lane ``lane`` of output block ``ob`` keeps its row of sums in ``block``: one block's rows, written
    before the next block's are summed; chunked, every output channel's, kept across the passes."""
    return f"(ob * {s.ob} + {lane}) * {s.width}" if s.chunks > 1 else f"{lane} * {s.width}"


def _plane_staging(s: Spec) -> str:
    """Staging of NCHW input, once per call: each image channel's phase planes of the padded input, whole
    (:attr:`Spec.plane_length` values each, zero where they pad), the rows copied a vector at a time (stride
    sw: every sw-th pixel). A value is copied once however much the tiles' bands overlap (a k×k walk's band
    reaches (k − 1) rows of the plane past its tile)."""
    (sh, sw), (ph, pw), (pt, pl), vec = s.strides, s.phases, s.padding[:2], s.vector
    (hq, wq), length = s.plane_hw, s.plane_length
    return f"""
    staged = T.alloc_buffer(({s.n * s.c * ph * pw * length},), "float32")
    xf = T.decl_buffer(({s.n * s.c * s.h * s.w},), "float32", data=x.data)
    for nc in T.parallel({s.n * s.c}):
        for z in range({ph * pw * length // vec}):
            for l in T.vectorized({vec}):
                staged[nc * {ph * pw * length} + z * {vec} + l] = T.float32(0)
        for py, px, i in T.grid({ph}, {pw}, {hq}):
            iy = T.Bind(i * {sh} + py - {pt})
            if 0 <= iy and iy < {s.h}:
                lo = T.Bind(T.max(0, ({pl} - px + {sw - 1}) // {sw}))
                hi = T.Bind(T.min({wq}, ({s.w + pl} - px + {sw - 1}) // {sw}))
                row = T.Bind(((nc * {ph} + py) * {pw} + px) * {length} + i * {wq})
                pixel = T.Bind((nc * {s.h} + iy) * {s.w} + px - {pl})
                for k in range((hi - lo) // {vec}):
                    for l in T.vectorized({vec}):
                        staged[row + lo + k * {vec} + l] = xf[pixel + (lo + k * {vec} + l) * {sw}]
                for j in range(lo + (hi - lo) // {vec} * {vec}, hi):
                    staged[row + j] = xf[pixel + j * {sw}]
"""


def _plain_writing(s: Spec) -> str:
    """The output of any walk into NCHW: per output row the tile reaches, the channel's sums from ``block``
    a vector at a time, the epilogue on the vector, the row's rest a value at a time (a linear walk: its
    positions are the map's, one row)."""
    vec, width, wq = s.vector, s.width, s.plane_hw[1]
    (oh, ow), q0, n = s.out_hw, f"(it % {s.tiles} * {s.width})", f"(it // {s.tiles})"
    rows, first, row_w = ((1, "0", oh * ow) if s.linear else ((width - 1) // wq + 2, f"{q0} // {wq}", ow))

    def store(t: str) -> str:
        v = f"block[{_sum_row(s, '0')} + t0 + {t}]"
        for step in s.epilogue:
            v = {"bias": f"({v} + bias[ob])", "relu": f"T.max({v}, T.float32(0))",
                 "add": f"({v} + resf[dst + {t}])"}[step]
        return f"outf[dst + {t}] = {v}"

    pitch = 0 if s.linear else wq
    return f"""{_flat_out(s)}
            for r in range({rows}):
                oy = T.Bind({first} + r)
                if oy < {oh}:
                    lo = T.Bind(T.max(0, {q0} - oy * {pitch}))
                    hi = T.Bind(T.min({row_w}, {q0} + {width} - oy * {pitch}))
                    dst = T.Bind(({n} * {s.o} + ob) * {oh * ow} + oy * {ow})
                    t0 = T.Bind(oy * {pitch} - {q0})
                    for k in range(T.max(hi - lo, 0) // {vec}):
                        for l in T.vectorized({vec}):
                            {store(f"lo + k * {vec} + l")}
                    for j in range(lo + T.max(hi - lo, 0) // {vec} * {vec}, hi):
                        {store("j")}
"""


def _linear_staging(s: Spec) -> str:
    """Staging of a linear walk (:attr:`Spec.linear`) from NCHW[v]c (v the vector): each whole block of v pixels × v
    channels transposed in registers (:func:`transpose_lines`), a block the map's end cuts a value at a time."""
    hw, band, vec = s.h * s.w, s.band, s.vector
    p = f"(it % {s.tiles} * {s.width} + vb * {vec})"  # the block's first pixel
    pixel = f"((it // {s.tiles} * {s.c // vec} + cb) * {hw} + {p} + {{t}}) * {vec}"  # a pixel's vector in xf
    row = f"(cb * {vec} + {{l}}) * {band} + vb * {vec}"  # a channel's row of the block in staged
    lines = transpose_lines(lambda t: f"xf[T.ramp({pixel.format(t=t)}, 1, {vec})]",
                            lambda l, v: f"staged[T.ramp({row.format(l=l)}, 1, {vec})] = {v}", " " * 16, vec)
    body = "\n".join(lines)
    return f"""
        xf = T.decl_buffer(({s.n * s.c * hw},), "float32", data=x.data)
        for cb, vb in T.grid({s.c // vec}, {band // vec}):
            if {p} + {vec} <= {hw}:
{body}
            else:
                for l, t in T.grid({vec}, {vec}):
                    if {p} + t < {hw}:
                        staged[{row.format(l="l")} + t] = xf[{pixel.format(t="t")} + l]
                    else:
                        staged[{row.format(l="l")} + t] = T.float32(0)
"""


def _linear_rows(s: Spec) -> str:
    """Staging of a linear walk (:attr:`Spec.linear`) from NCHW: each channel's ``band`` pixels of the tile,
    contiguous in the input, copied a vector at a time (zeros past the map's end)."""
    hw, band, vec = s.h * s.w, s.band, s.vector
    p = f"it % {s.tiles} * {s.width} + v * {vec}"  # the vector's first pixel
    return f"""
        xf = T.decl_buffer(({s.n * s.c * hw},), "float32", data=x.data)
        for c, v in T.grid({s.c}, {band // vec}):
            if {p} + {vec} <= {hw}:
                for l in T.vectorized({vec}):
                    staged[c * {band} + v * {vec} + l] = xf[(it // {s.tiles} * {s.c} + c) * {hw} + {p} + l]
            else:
                for l in range({vec}):
                    staged[c * {band} + v * {vec} + l] = T.if_then_else({p} + l < {hw},
                        xf[(it // {s.tiles} * {s.c} + c) * {hw} + {p} + l], T.float32(0))
"""


def _linear_writing(s: Spec, generic: str) -> str:
    """The output of a linear walk into NCHW[v]c: each whole block of v pixels × v channels of ``block``
    transposed in registers, the epilogue on each pixel's vector; the last, cut block by ``generic`` (the
    writing of any walk, on its positions ``tb·v + tt``)."""
    vec, width = s.vector, s.width
    p = f"(it % {s.tiles} * {width} + tb * {vec})"
    pixel = f"((it // {s.tiles} * {s.o // vec} + ob) * {s.h * s.w} + {p} + {{t}}) * {vec}"

    body = "\n".join(transpose_lines(lambda l: f"block[T.ramp({_sum_row(s, l)} + tb * {vec}, 1, {vec})]",
                                      lambda t, v: _written(s, pixel.format(t=t), v), " " * 20, vec))
    cut = generic.replace(f"for t in range({width}):", f"for tt in range({vec}):\n                t = T.Bind(tb * {vec} + tt)")
    cut = "\n".join(" " * 8 + line if line.strip() else line for line in cut.splitlines())
    return f"""{_flat_out(s)}
            for tb in range({width // vec}):
                if {p} + {vec} <= {s.positions}:
{body}
                else:{cut}
"""


def _written(s: Spec, at: str, v: str) -> str:
    """The store of one pixel's vector ``v`` of an output block at ``at`` in ``outf``, the epilogue applied."""
    vec = s.vector
    for step in s.epilogue:
        v = {"bias": f"({v} + bias[T.ramp(ob * {vec}, 1, {vec})])",
             "relu": f"T.max({v}, T.Broadcast(T.float32(0), {vec}))",
             "add": f"({v} + resf[T.ramp({at}, 1, {vec})])"}[step]
    return f"outf[T.ramp({at}, 1, {vec})] = {v}"


def _flat_out(s: Spec) -> str:
    """``outf`` (and ``resf``): the output (and residual) as flat buffers, for :func:`_written`."""
    size = s.n * s.o * s.out_hw[0] * s.out_hw[1]
    res = f'\n            resf = T.decl_buffer(({size},), "float32", data=res.data)' if "add" in s.epilogue else ""
    return f'\n            outf = T.decl_buffer(({size},), "float32", data=out.data){res}'


def _row_transposes(pixel: str, slot: str, vec: int) -> str:
    """The staging of ``vec`` pixels × ``vec`` channels of an image row from column ``lo + k·vec``, transposed in
    registers: ``pixel`` (column ``{j}``) indexes a pixel's vector in ``xf``, ``slot`` (channel ``{l}``, column
    ``{j}``) the staged value."""
    return "\n".join(transpose_lines(
        lambda t: f"xf[T.ramp({pixel.format(j=f'lo + k * {vec} + {t}')}, 1, {vec})]",
        lambda l, v: f"staged[T.ramp({slot.format(l=l, j=f'lo + k * {vec}')}, 1, {vec})] = {v}", " " * 20, vec))


def _band_staging(s: Spec) -> str:
    """Staging of any walk from NCHW16c, per tile: the planes zeroed, then per plane row of the band the
    columns that read the image, a vector at a time transposed in registers (stride sw: every sw-th pixel), the rest
    a value at a time."""
    (sh, sw), (ph, pw), (pt, pl), vec = s.strides, s.phases, s.padding[:2], s.vector
    wq, band, tiles, width = s.plane_hw[1], s.band, s.tiles, s.width
    rows = -(-band // wq) + 1
    q0 = f"(it % {tiles} * {width})"
    pixel = f"((((it // {tiles} * {s.c // vec} + cb) * {s.h} + iy) * {s.w} + ({{j}}) * {sw} + px - {pl}) * {vec})"
    slot = f"(((cb * {vec} + {{l}}) * {ph} + py) * {pw} + px) * {band} + i * {wq} + {{j}} - {q0}"
    body = _row_transposes(pixel, slot, vec)
    return f"""
        xf = T.decl_buffer(({s.n * s.c * s.h * s.w},), "float32", data=x.data)
        for z in range({s.c * ph * pw * band // vec}):
            for l in T.vectorized({vec}):
                staged[z * {vec} + l] = T.float32(0)
        for cb, py, px, r in T.grid({s.c // vec}, {ph}, {pw}, {rows}):
            i = T.Bind({q0} // {wq} + r)
            iy = T.Bind(i * {sh} + py - {pt})
            if 0 <= iy and iy < {s.h}:
                lo = T.Bind(T.max(({pl} - px + {sw - 1}) // {sw}, {q0} - i * {wq}))
                hi = T.Bind(T.min(({s.w + pl} - px + {sw - 1}) // {sw}, {q0} - i * {wq} + {band}))
                for k in range(T.max(hi - lo, 0) // {vec}):
{body}
                for j in range(lo + T.max(hi - lo, 0) // {vec} * {vec}, hi):
                    for l in T.vectorized({vec}):
                        staged[{slot.format(l="l", j="j")}] = xf[{pixel.format(j="j")} + l]
"""


def _row_staging(s: Spec) -> str:
    """Staging of any walk from NCHW16c, once per call into whole phase planes (:attr:`Spec.plane_length`
    values each): the planes zeroed, then per plane row the columns that read the image, a vector at a time
    transposed in registers (stride sw: every sw-th pixel), the rest a value at a time."""
    (sh, sw), (ph, pw), (pt, pl), vec = s.strides, s.phases, s.padding[:2], s.vector
    (hq, wq), length, blocks = s.plane_hw, s.plane_length, s.n * s.c // s.vector
    pixel = f"(((nb * {s.h} + iy) * {s.w} + ({{j}}) * {sw} + px - {pl}) * {vec})"
    slot = f"(((nb * {vec} + {{l}}) * {ph} + py) * {pw} + px) * {length} + i * {wq} + {{j}}"
    body = _row_transposes(pixel, slot, vec)
    return f"""
    staged = T.alloc_buffer(({s.n * s.c * ph * pw * length},), "float32")
    xf = T.decl_buffer(({s.n * s.c * s.h * s.w},), "float32", data=x.data)
    for nb in T.parallel({blocks}):
        for z in range({ph * pw * length}):
            for l in T.vectorized({vec}):
                staged[nb * {vec * ph * pw * length} + z * {vec} + l] = T.float32(0)
        for py, px, i in T.grid({ph}, {pw}, {hq}):
            iy = T.Bind(i * {sh} + py - {pt})
            if 0 <= iy and iy < {s.h}:
                lo = T.Bind(T.max(0, ({pl} - px + {sw - 1}) // {sw}))
                hi = T.Bind(T.min({wq}, ({s.w + pl} - px + {sw - 1}) // {sw}))
                for k in range((hi - lo) // {vec}):
{body}
                for j in range(lo + (hi - lo) // {vec} * {vec}, hi):
                    for l in T.vectorized({vec}):
                        staged[{slot.format(l="l", j="j")}] = xf[{pixel.format(j="j")} + l]
"""


def _row_writing(s: Spec, store: str) -> str:
    """The output of any walk into NCHW16c: per output row the tile reaches, its pixels a vector at a time from
    ``block`` transposed in registers, the epilogue on each pixel's vector; the rest by ``store`` (the
    generic write of position ``t``, lane ``l``)."""
    vec, width, wq = s.vector, s.width, s.plane_hw[1]
    (oh, ow), q0 = s.out_hw, f"(it % {s.tiles} * {s.width})"
    pixel = f"(((it // {s.tiles} * {s.o // vec} + ob) * {oh} + oy) * {ow} + lo + k * {vec} + {{t}}) * {vec}"
    t0 = f"oy * {wq} + lo + k * {vec} - {q0}"
    body = "\n".join(transpose_lines(lambda l: f"block[T.ramp({_sum_row(s, l)} + {t0}, 1, {vec})]",
                                      lambda t, v: _written(s, pixel.format(t=t), v), " " * 24, vec))
    return f"""{_flat_out(s)}
            for r in range({(width - 1) // wq + 2}):
                oy = T.Bind({q0} // {wq} + r)
                if oy < {oh}:
                    lo = T.Bind(T.max(0, {q0} - oy * {wq}))
                    hi = T.Bind(T.min({ow}, {q0} + {width} - oy * {wq}))
                    for k in range(T.max(hi - lo, 0) // {vec}):
{body}
                    for ox in range(lo + T.max(hi - lo, 0) // {vec} * {vec}, hi):
                        t = T.Bind(oy * {wq} + ox - {q0})
                        for l in T.vectorized({vec}):
                            {store}
"""


def arguments(s: Spec, x, t: Taps, bias=None, res=None) -> list:
    """The kernel's Relax arguments: ``x``, the taps, and ``bias`` [O] / ``res`` where the epilogue reads them."""
    from tvm import relax

    args = [x, relax.const(t.offsets), relax.const(t.values), relax.const(t.indptr)]
    return args + [a for a, step in ((bias, "bias"), (res, "add")) if step in s.epilogue]


def emit(bb, s: Spec, args: list):
    """Emit the kernel of ``s`` on ``args`` (:func:`arguments`) into ``bb``; returns its output (``s.out_shape()``)."""
    from tvm import relax

    func = prim_func(s)
    gv = bb.add_func(func, OP)
    bb.update_func(gv, func.with_attr("global_symbol", gv.name_hint))
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(s.out_shape(), "float32")))


def sparse_conv2d_nchwc_np(x: np.ndarray, weight: np.ndarray, s: Spec, bias=None, res=None) -> np.ndarray:
    """numpy twin (float64) in the blocked layouts of ``s``: the phase planes flattened, tile by tile, tap by tap."""
    t = taps(weight, s)
    (sh, sw), (pt, pl) = s.strides, s.padding[:2]
    hq, wq = s.plane_hw
    rows = max(hq, -(-(s.tiles * s.width + s.band) // wq))  # the last tile's band reads zeros past the planes
    xp = np.zeros((s.n, s.c, rows * sh, wq * sw))
    xp[:, :, pt:pt + s.h, pl:pl + s.w] = unblock(x.astype(np.float64), s.ib)
    (ph, pw) = s.phases
    planes = xp.reshape(s.n, s.c, -1, sh, wq, sw)[:, :, :, :ph, :, :pw]
    planes = planes.transpose(0, 1, 3, 5, 2, 4).reshape(s.n, s.c * ph * pw, -1)
    walk = np.zeros((s.n, s.o, s.tiles * s.width))
    for tile in range(s.tiles):
        q0 = tile * s.width
        for row in range(s.chunks * s.o):
            o = row % s.o
            for j in range(t.indptr[row], t.indptr[row + 1]):
                plane, at = divmod(int(t.offsets[j]), s.pitch)  # offsets: plane · pitch + shift
                walk[:, o, q0:q0 + s.width] += float(t.values[j]) * planes[:, plane, q0 + at:q0 + at + s.width]
    oh, ow = s.out_hw
    out = np.pad(walk, ((0, 0), (0, 0), (0, oh * wq)))[:, :, :oh * wq].reshape(s.n, s.o, oh, wq)[..., :ow]
    bias_map = None if bias is None else np.asarray(bias, np.float64)[None, :, None, None]
    for step in s.epilogue:
        out = {"bias": lambda v: v + bias_map, "relu": lambda v: np.maximum(v, 0),
               "add": lambda v: v + unblock(res.astype(np.float64), s.ob)}[step](out)
    return block(out, s.ob)


def block(x: np.ndarray, b: int) -> np.ndarray:
    """NCHW → NCHW[b]c (b = 1: unchanged)."""
    if b == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2)


def unblock(x: np.ndarray, b: int) -> np.ndarray:
    """NCHW[b]c → NCHW (b = 1: unchanged)."""
    if b == 1:
        return x
    n, cb, h, w, _ = x.shape
    return x.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)
