"""CPU weight layout: GGML blocks re-laid out at load time into the two families of the matmul kernels.

    w = QMatrix.from_tensor(tensor)        # once per weight, at load time (NumPy)

Load time re-lays every GGML block type out into one of two *families* of plain arrays, so that one matmul kernel
per family (plus a tile decoder for embeddings) covers fifteen types. Nibbles are re-packed to one order, and the
group scales keep a compact form that the kernel widens (qdot.SCALES): the legacy types' f16 bits as they are; the
K-quants' (Q4_K, Q5_K, Q6_K, IQ4_XS) 6- and 8-bit sub-scales with their super-block's d (and -dmin) as the file's
f16 bits, so that a Q4_K weight costs 0.578 bytes (the file 0.5625) instead of 0.75 with float32 scales per group;
Q3_K and Q2_K float32 scales.
Every conversion keeps the gguf dequantized value bit for bit (`d*q - dm` is stored as `d*q + (-dm)`).

| family | weight element            | integers per row (unsigned bytes)                     | types                   |
| ------ | ------------------------- | ----------------------------------------------------- | ----------------------- |
| q4     | d[g] * (u - off) (+ m[g]) | n_in/2 bytes; in each 32-group lo nibble j is element | Q4_0 (off 8), Q4_1, Q4_K|
|        |                           | j, hi nibble j element j+16                           |                         |
| q6     | d[g] * (u - 32)           | 12 bytes per 16-group: the low 4 bits as q4's nibbles | Q6_K                    |
|        |                           | (8 apart), the top 2 bits in a third word (_pack_q6)  |                         |
| q8     | d[g] * (u - 128) (+ m[g]) | one byte per element: the int8 value + 128            | Q8_0, Q5_*, Q3_K, Q2_K, |
|        |                           |                                                       | IQ4_NL, IQ4_XS          |

g is a group of 32 elements (16 for Q6_K, Q3_K, Q2_K). The other types are widened to one byte per weight (IQ4
through its codebook): one fast kernel instead of one per bit width, at 1.45x (Q5_0) to 3x (Q2_K) their file size;
never a float copy. Q6_K keeps its 6 bits (0.84 bytes a weight against the file's 0.82). F32, F16 and BF16 keep
their bytes and are converted on the fly. The integers are unsigned so that the matmul's integer dot products
(cpu/qdot.py: 16-bit activations as two int8 times these bytes, `vpdpbusd` where the CPU has it) take them as
they are.

Rows are interleaved in tiles of TILE = 32 rows, four integers at a time: q[t, k, l, b] is integer 4k + b of row
t*TILE + l, so one 64-byte load holds four integers of 16 rows, and d[t, g, l], m[t, g, l] are the scales of row
t*TILE + l.
"""

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from minirs.errors import ModelError
from minirs.formats.model_file import Tensor
from minirs.formats.types import QTYPES
from minirs.kernels import kquant_relayout as kq
from minirs.kernels.cpu.qdot import TILE

IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_NO_M = np.zeros((0, 0, 0), np.float32)
_NO_SUP = np.zeros((0, 0, 2, TILE), np.uint16)


@dataclass
class QMatrix:
    """A weight matrix (n_out, n_in) kept quantized, in the layout of its kernel family (see module docstring),
    zero-padded to whole tiles."""

    qtype: str
    n_out: int
    n_in: int
    family: str  # "q4", "q8" or "float"
    q: np.ndarray  # (T, n_in/8 | n_in/4, TILE, 4) uint8 integers | (n_out, n_in) raw F32/F16/BF16 rows
    d: np.ndarray  # (T, n_in/gs, TILE) group scales in one of qdot.SCALES' forms
    m: np.ndarray = field(default_factory=lambda: _NO_M)  # (T, n_in/gs, TILE) group offsets like d, or empty
    off: int = 0  # integer subtracted from u before scaling (Q4_0: 8, the q8 family: 128)
    sup: np.ndarray = field(default_factory=lambda: _NO_SUP)  # (T, n_in/256, 2, TILE) f16 bits [D, -DMIN], "k" forms

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes + self.d.nbytes + self.m.nbytes + self.sup.nbytes)

    def float_scales(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d and m of these tiles as float32 (len(tiles), n_in/gs, TILE), the products the kernel forms."""
        def one(a, which):
            a = a[tiles]
            if a.dtype == np.uint16:
                return a.view(np.float16).astype(np.float32)
            if a.dtype != np.float32:  # K-quant sub-scales times their super-block's D (or -DMIN)
                per = self.d.shape[1] // self.sup.shape[1]
                big = self.sup[tiles, :, which].view(np.float16).astype(np.float32)
                return np.repeat(big, per, axis=1) * a.astype(np.float32)
            return a
        return one(self.d, 0), one(self.m, 1) if self.m.shape[0] else np.zeros((0, 0, 0), np.float32)

    @property
    def group_size(self) -> int:
        return self.n_in // self.d.shape[1]

    @cached_property
    def kind(self) -> int:
        """The key of qdot.KINDS: the family, group size and offsets that the matmul kernel specialises on."""
        has_m = self.m.shape[0] > 0
        if self.family == "q4":
            return 1 if has_m else 0
        if self.family == "q6":
            return 6
        return (2 if self.group_size == 32 else 4) + has_m

    @classmethod
    def stacked(cls, parts: list) -> "QMatrix | None":
        """The parts' rows one after the other in one matrix (q|k|v, gate|up: one call instead of three), or None
        where they do not share a kernel (family, kind, n_in) or a part but the last ends inside a tile."""
        first = parts[0]
        if not all(isinstance(p, QMatrix) and p.family != "float" and p.kind == first.kind and p.n_in == first.n_in
                   and p.d.dtype == first.d.dtype for p in parts) or any(p.n_out % TILE for p in parts[:-1]):
            return None
        join = (lambda name: np.concatenate([getattr(p, name) for p in parts]))  # noqa: E731
        return QMatrix("+".join(dict.fromkeys(p.qtype for p in parts)), sum(p.n_out for p in parts), first.n_in,
                       first.family, join("q"), join("d"), join("m") if first.m.shape[0] else first.m, first.off,
                       join("sup") if first.sup.shape[1] else first.sup)

    @classmethod
    def from_tensor(cls, t: Tensor) -> "QMatrix":
        if len(t.shape) != 2:
            raise ValueError(f"{t.name}: a matrix needs 2 dims, got shape {t.shape}")
        n_out, n_in = t.shape
        if t.qtype not in _RELAYOUT:
            raise ModelError(f"{t.name}: no CPU matmul for type {t.qtype} (have {sorted(_RELAYOUT)})")
        if n_in % QTYPES[t.qtype].block_size:
            raise ValueError(f"{t.name}: n_in={n_in} is not a multiple of {t.qtype}'s block size")
        return _RELAYOUT[t.qtype](t.qtype, n_out, n_in, t.rows())


def _make(qtype: str, n_out: int, n_in: int, family: str, q: np.ndarray, d: np.ndarray, m=None,
          off: int = 0, sup=None) -> QMatrix:
    """Build a QMatrix from row-major family arrays (n_out, ...): q the q4 family's packed nibbles (uint8) or the
    q8 family's int8 values (stored + 128), interleaved in tiles of TILE rows and four integers; d, m (n_out, G)
    and sup (n_out, n_in/256, 2) tiled alike."""
    n_tiles = -(-n_out // TILE)
    if family == "q8":
        q, off = (q.astype(np.int16) + 128).astype(np.uint8), 128

    def padded(a: np.ndarray) -> np.ndarray:
        pad = np.zeros((n_tiles * TILE,) + a.shape[1:], a.dtype)
        pad[:n_out] = a
        return pad

    def scales(a: np.ndarray) -> np.ndarray:  # (n_out, G) -> (n_tiles, G, TILE)
        return np.ascontiguousarray(padded(a).reshape(n_tiles, TILE, -1).transpose(0, 2, 1))

    q4 = padded(q).reshape(n_tiles, TILE, -1, 4).transpose(0, 2, 1, 3)  # (n_tiles, items/4, TILE, 4)
    no_m = np.zeros((0, 0, 0), d.dtype)
    sup = _NO_SUP if sup is None else np.ascontiguousarray(padded(sup).reshape(n_tiles, TILE, -1, 2)
                                                           .transpose(0, 2, 3, 1))
    return QMatrix(qtype, n_out, n_in, family, np.ascontiguousarray(q4), scales(d),
                   no_m if m is None else scales(m), off, sup)


def _f16_bits(b: np.ndarray) -> np.ndarray:
    """(..., 2) bytes of f16 scales -> (...) uint16 bits: kept as they are (the kernel widens them, exactly)."""
    return np.ascontiguousarray(b).view(np.uint16)[..., 0]


def _pack_nibbles(v: np.ndarray) -> np.ndarray:
    """(n_out, n_groups, 32) values 0..15 -> (n_out, n_groups*16) bytes: lo nibble = element j, hi = element j+16."""
    v = v.astype(np.uint8)
    return np.ascontiguousarray(v[..., :16] | (v[..., 16:] << 4)).reshape(v.shape[0], -1)


def _pack_q6(u: np.ndarray) -> np.ndarray:
    """(n_out, n_in) values 0..63 -> (n_out, n_in/16 * 12) bytes, three 4-byte words per 16-group: word 0 byte b
    holds the low 4 bits of input b (low nibble) and of input 8 + b (high nibble), word 1 those of inputs 4 + b and
    12 + b, word 2 byte b the top 2 bits of input 4s + b in its bits 2s, 2s + 1 (s = 0..3)."""
    v = u.astype(np.uint8).reshape(u.shape[0], -1, 16)
    lo, top = v & 15, v >> 4
    w0 = lo[..., 0:4] | (lo[..., 8:12] << 4)
    w1 = lo[..., 4:8] | (lo[..., 12:16] << 4)
    w2 = top[..., 0:4] | (top[..., 4:8] << 2) | (top[..., 8:12] << 4) | (top[..., 12:16] << 6)
    return np.ascontiguousarray(np.concatenate([w0, w1, w2], axis=-1)).reshape(u.shape[0], -1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., 16) bytes of a 32-element block -> (..., 32) values: element j is the lo nibble of byte j, element
    j+16 its hi nibble (Q4_0/Q4_1/Q5_*/IQ4 order)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _legacy(qtype: str, n_out: int, n_in: int, rows: np.ndarray) -> QMatrix:
    """Q4_0 [d f16, qs 16], Q4_1 [d f16, m f16, qs 16], Q5_0 [d f16, qh u32, qs 16], Q5_1 [d, m, qh u32, qs 16],
    IQ4_NL [d f16, qs 16], Q8_0 [d f16, qs int8 32]. 32 elements per block; qs byte j holds element j (low
    nibble) and j+16 (high nibble); bit j of qh is bit 4 of element j. Weights: Q4_0 d*(q-8), Q4_1 d*q+m,
    Q5_0 d*(q-16), Q5_1 d*q+m, IQ4_NL d*IQ4_VALUES[q], Q8_0 d*q."""
    nb = n_in // 32
    blk = rows.reshape(n_out, nb, -1)
    d = _f16_bits(blk[..., 0:2])
    if qtype == "Q8_0":
        return _make(qtype, n_out, n_in, "q8", np.ascontiguousarray(blk[..., 2:]).view(np.int8).reshape(n_out, -1), d)
    if qtype == "IQ4_NL":
        return _make(qtype, n_out, n_in, "q8", IQ4_VALUES[_nibbles(blk[..., 2:])].reshape(n_out, -1), d)
    has_m = qtype in ("Q4_1", "Q5_1")
    m = _f16_bits(blk[..., 2:4]) if has_m else None
    p = 4 if has_m else 2
    if qtype in ("Q4_0", "Q4_1"):
        return _make(qtype, n_out, n_in, "q4", np.ascontiguousarray(blk[..., p:]).reshape(n_out, -1), d, m,
                     off=0 if has_m else 8)
    qh = np.ascontiguousarray(blk[..., p:p + 4]).view("<u4")  # (n_out, nb, 1)
    v = _nibbles(blk[..., p + 4:]) | (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)
    q = v.astype(np.int8) - np.int8(0 if has_m else 16)
    return _make(qtype, n_out, n_in, "q8", q.reshape(n_out, -1), d, m)

def _q45k(qtype: str, n_out: int, n_in: int, rows: np.ndarray) -> QMatrix:
    """Q4_K [d f16, dmin f16, scales 12, qs 128] and Q5_K [d, dmin, scales 12, qh 32, qs 128], 256 elements.

    Element e = 64*c + 32*k + l (chunk c, half k, lane l) is nibble k of qs[32*c + l], and its fifth bit is bit
    e // 32 of qh[l]; group e // 32 has weight d*sc[g] * q - dmin*mn[g].
    """
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    sc, mn = kq._k_scale_min(blk[..., 4:16])  # 6-bit sub-scales and mins: kept as bytes (the "k" scale form)
    d, m = sc.astype(np.uint8).reshape(n_out, -1), mn.astype(np.uint8).reshape(n_out, -1)
    sup = np.stack([_f16_bits(blk[..., 0:2]), _f16_bits(blk[..., 2:4]) ^ 0x8000], axis=-1)  # (n_out, nb, 2): D, -DMIN
    qs = blk[..., -128:].reshape(n_out, nb, 4, 1, 32)
    v = ((qs >> np.array([0, 4], np.uint8).reshape(2, 1)) & 15).reshape(n_out, nb * 8, 32)
    if qtype == "Q4_K":
        return _make(qtype, n_out, n_in, "q4", _pack_nibbles(v), d, m, sup=sup)
    qh = blk[..., 16:48].reshape(n_out, nb, 1, 32)
    v = v | (((qh >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 1) << 4).reshape(n_out, nb * 8, 32)
    return _make(qtype, n_out, n_in, "q8", v.astype(np.int8).reshape(n_out, -1), d, m, sup=sup)


def _iq4_xs(qtype: str, n_out: int, n_in: int, rows: np.ndarray) -> QMatrix:
    """IQ4_XS [d f16, scales_h u16, scales_l 4, qs 128], 256 elements in 8 groups of 32 laid out as IQ4_NL's qs
    (values IQ4_VALUES[nibble]); group g's scale is (nibble g of scales_l | bits 2g..2g+1 of scales_h << 4) - 32."""
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    sh = np.ascontiguousarray(blk[..., 2:4]).view(np.uint16)  # (n_out, nb, 1)
    sl = blk[..., 4:8]
    g = np.arange(8)
    lo = (sl[..., g // 2] >> (4 * (g % 2)).astype(np.uint8)) & 15
    hi = (sh >> (2 * g).astype(np.uint16)) & 3
    sc = ((lo.astype(np.int32) | (hi.astype(np.int32) << 4)) - 32).astype(np.int8)  # the "k" form, signed
    sup = np.stack([_f16_bits(blk[..., 0:2]), np.zeros((n_out, nb), np.uint16)], axis=-1)
    q = IQ4_VALUES[_nibbles(blk[..., 8:].reshape(n_out, nb, 8, 16))]
    return _make(qtype, n_out, n_in, "q8", q.reshape(n_out, -1), sc.reshape(n_out, -1), sup=sup)


def _kquant_q8(qtype: str, n_out: int, n_in: int, rows: np.ndarray) -> QMatrix:
    """Q6_K, Q3_K, Q2_K: one int8 per element with a scale (and an offset) per 16-group, decoded by
    kquant_relayout (their block layouts are written there), then tiled for the q8 kernels. Q6_K keeps its int8
    sub-scales and f16 d (the "k" scale form: d * sc is the product kquant_relayout forms); the others float32."""
    _, q, d, m, _ = kq.RELAYOUT[qtype](qtype, n_out, n_in, rows)
    if qtype == "Q6_K":
        blk = rows.reshape(n_out, n_in // 256, -1)
        sc = np.ascontiguousarray(blk[..., 192:208]).view(np.int8).reshape(n_out, -1)
        sup = np.stack([_f16_bits(blk[..., 208:210]), np.zeros(blk.shape[:2], np.uint16)], axis=-1)
        return _make(qtype, n_out, n_in, "q6", _pack_q6(q.astype(np.int16) + 32), sc, off=32, sup=sup)
    return _make(qtype, n_out, n_in, "q8", q, d, m)


def _float(qtype: str, n_out: int, n_in: int, rows: np.ndarray) -> QMatrix:
    """F32 / F16 / BF16 rows, kept as the file's bytes (a view, no copy)."""
    dt = {"F32": np.float32, "F16": np.uint16, "BF16": np.uint16}[qtype]  # F16 as bits: Numba has no float16
    return QMatrix(qtype, n_out, n_in, "float", rows.view(dt), _NO_M)  # no tiles: BLAS reads rows


_RELAYOUT = {
    "Q4_0": _legacy, "Q4_1": _legacy, "Q5_0": _legacy, "Q5_1": _legacy, "Q8_0": _legacy, "IQ4_NL": _legacy,
    "Q4_K": _q45k, "Q5_K": _q45k, "IQ4_XS": _iq4_xs, "Q6_K": _kquant_q8, "Q3_K": _kquant_q8, "Q2_K": _kquant_q8,
    "F32": _float, "F16": _float, "BF16": _float,
}
