"""Load-time re-layout of the k-quants (Q2_K..Q6_K) into plain matmul arrays, array code for NumPy or CuPy.

Each function takes a tensor's raw rows (n_out, row_bytes) and returns (family, q, d, m, h): q4 / q5 nibbles with
one scale (and offset) per 32-group, or q8 int8 elements with one per 16-group; d and m float32 (n_out, n_groups),
m and h None when the type has none. Every block layout is written next to its decoder. The same code runs on
the GPU (xp=cupy, rows uploaded raw: a 7B Q4_K loads in seconds) and on the host (xp=numpy), where the CPU
matmul (kernels/cpu/weights.py) uses it too before tiling the rows its own way.
(The legacy 32-block types are re-laid out on the GPU too, in kernels/cuda/weights.GMatrix.from_tensor.)
"""

import numpy as np

from minirs.formats.quants import k_scale_min


def _f16(b, xp=np):
    """(..., 2) uint8 little-endian f16 bytes -> (...) float32."""
    return xp.ascontiguousarray(b).view(xp.float16)[..., 0].astype(xp.float32)


def _pack_nibbles(v, xp=np):
    """(n_out, n_groups, 32) values 0..15 -> (n_out, n_groups*16) bytes: lo nibble = element j, hi = element j+16."""
    v = v.astype(xp.uint8)
    return xp.ascontiguousarray(v[..., :16] | (v[..., 16:] << 4)).reshape(v.shape[0], -1)


def _pack_hbits(v, xp=np):
    """(n_out, n_groups, 32) values 0..31 -> (n_out, n_groups) uint32 holding bit 4 of element j at bit j."""
    bits = ((v >> 4) & 1).astype(xp.uint32) << xp.arange(32, dtype=xp.uint32)
    return xp.bitwise_or.reduce(bits, axis=-1) if xp is np else bits.sum(axis=-1, dtype=xp.uint32)


def _k_scale_min(s, xp=np) -> tuple:
    """Q4_K / Q5_K 12-byte scales -> (sc, mn) as float32, each (..., 8): the format's decoder, as floats."""
    sc, mn = k_scale_min(s, xp)
    return sc.astype(xp.float32), mn.astype(xp.float32)


def _q45k(qtype: str, n_out: int, n_in: int, rows, xp=np) -> tuple:
    """Q4_K [d f16, dmin f16, scales 12, qs 128] and Q5_K [d, dmin, scales 12, qh 32, qs 128], 256 elements.

    Element e = 64*c + 32*k + l (chunk c, half k, lane l) is nibble k of qs[32*c + l], and its fifth bit is bit
    e // 32 of qh[l]; group e // 32 has weight d*sc[g] * q - dmin*mn[g].
    """
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    sc, mn = _k_scale_min(blk[..., 4:16], xp)
    d = (_f16(blk[..., 0:2], xp)[..., None] * sc).reshape(n_out, -1)
    m = -(_f16(blk[..., 2:4], xp)[..., None] * mn).reshape(n_out, -1)
    qs = blk[..., -128:].reshape(n_out, nb, 4, 1, 32)
    v = ((qs >> xp.array([0, 4], xp.uint8).reshape(2, 1)) & 15).reshape(n_out, nb * 8, 32)
    if qtype == "Q4_K":
        return "q4", _pack_nibbles(v, xp), d, m, None
    qh = blk[..., 16:48].reshape(n_out, nb, 1, 32)
    v = v | (((qh >> xp.arange(8, dtype=xp.uint8).reshape(8, 1)) & 1) << 4).reshape(n_out, nb * 8, 32)
    return "q5", _pack_nibbles(v & 15, xp), d, m, _pack_hbits(v, xp)


def _q6_k(qtype: str, n_out: int, n_in: int, rows, xp=np) -> tuple:
    """Q6_K [ql 128, qh 64, scales int8 16, d f16], 256 elements. Element e = 128*h + 64*s + l (l < 64) has low
    nibble s of ql[64*h + l]; e = 128*h + 32*t + l (l < 32) has bits 2t..2t+1 of qh[32*h + l] as bits 4-5;
    weight (d * scales[e // 16]) * (q - 32)."""
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    ql = (blk[..., 0:128].reshape(n_out, nb, 2, 1, 64) >> xp.array([0, 4], xp.uint8).reshape(2, 1)) & 15
    qh = (blk[..., 128:192].reshape(n_out, nb, 2, 1, 32) >> xp.array([0, 2, 4, 6], xp.uint8).reshape(4, 1)) & 3
    q = (ql.reshape(n_out, nb, 256) | (qh.reshape(n_out, nb, 256) << 4)).astype(xp.int8) - xp.int8(32)
    sc = blk[..., 192:208].view(xp.int8).astype(xp.float32)
    d = (_f16(blk[..., 208:210], xp)[..., None] * sc).reshape(n_out, -1)
    return "q8", q.reshape(n_out, n_in), d, None, None


def _q3_k(qtype: str, n_out: int, n_in: int, rows, xp=np) -> tuple:
    """Q3_K [hmask 32, qs 64, scales 12, d f16], 256 elements. Element e = 128*h + 32*s + l has bits 2s..2s+1 of
    qs[32*h + l], minus 4 unless bit e // 32 of hmask[l] is set; 16 6-bit scales (low nibbles from bytes 0-7,
    2-bit highs from bytes 8-11), weight (d * (scale - 32)) * q."""
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    ql = (blk[..., 32:96].reshape(n_out, nb, 2, 1, 32) >> xp.array([0, 2, 4, 6], xp.uint8).reshape(4, 1)) & 3
    hm = (blk[..., 0:32].reshape(n_out, nb, 1, 32) >> xp.arange(8, dtype=xp.uint8).reshape(8, 1)) & 1
    q = ql.reshape(n_out, nb, 256).astype(xp.int8) - ((hm.reshape(n_out, nb, 256) ^ 1) << 2).astype(xp.int8)
    s = blk[..., 96:108]
    k = xp.arange(16)
    lo = (s[..., k % 8] >> (4 * (k // 8)).astype(xp.uint8)) & 15
    hi = (s[..., 8 + k % 4] >> (2 * (k // 4)).astype(xp.uint8)) & 3
    sc = ((lo | (hi << 4)).astype(xp.int8) - xp.int8(32)).astype(xp.float32)
    d = (_f16(blk[..., 108:110], xp)[..., None] * sc).reshape(n_out, -1)
    return "q8", q.reshape(n_out, n_in), d, None, None


def _q2_k(qtype: str, n_out: int, n_in: int, rows, xp=np) -> tuple:
    """Q2_K [scales 16, qs 64, d f16, dmin f16], 256 elements. Element e = 128*h + 32*s + l is bits 2s..2s+1 of
    qs[32*h + l]; weight (d * (scales[e//16] & 15)) * q - dmin * (scales[e//16] >> 4)."""
    nb = n_in // 256
    blk = rows.reshape(n_out, nb, -1)
    q = (blk[..., 16:80].reshape(n_out, nb, 2, 1, 32) >> xp.array([0, 2, 4, 6], xp.uint8).reshape(4, 1)) & 3
    s = blk[..., 0:16]
    d = (_f16(blk[..., 80:82], xp)[..., None] * (s & 15).astype(xp.float32)).reshape(n_out, -1)
    m = -(_f16(blk[..., 82:84], xp)[..., None] * (s >> 4).astype(xp.float32)).reshape(n_out, -1)
    return "q8", q.astype(xp.int8).reshape(n_out, n_in), d, m, None




RELAYOUT = {"Q4_K": _q45k, "Q5_K": _q45k, "Q6_K": _q6_k, "Q3_K": _q3_k, "Q2_K": _q2_k}
