"""CPU dequantization of whole rows (token embedding lookups), bit-exact with the gguf package's dequantize.

    e = embedding_rows(w, ids)             # (len(ids), n_in) float32

Each id's row is decoded alone from the row-interleaved tiles of cpu/weights.py (its lane of its tile).
"""

import numpy as np
from numba import njit, prange

from minirs.kernels.cpu.weights import QMatrix


@njit(cache=True, parallel=True, nogil=True)
def _deq_q4(q, d, m, off, tiles, lanes, out):
    # out[k, 32g + j (+16)] = d[k, g, r] * (lo (hi) nibble of byte j of group g - off) (+ m[k, g, r]) for row r of
    # tile t (t, r = tiles[k], lanes[k]); byte j of group g is q[t, 4g + j // 4, r, j % 4]; d and m are the float32
    # scales of the selected tiles (QMatrix.float_scales), d[k] for tile tiles[k]
    has_m = m.shape[0] > 0
    for k in prange(tiles.shape[0]):
        t, r = tiles[k], lanes[k]
        for g in range(d.shape[1]):
            dg = d[k, g, r]
            mg = m[k, g, r] if has_m else dg
            for j in range(32):
                u = (q[t, 4 * g + (j % 16) // 4, r, j % 4] >> np.uint8(4 * (j // 16))) & np.uint8(15)
                v = dg * (np.float32(u) - np.float32(off))
                out[k, 32 * g + j] = v + mg if has_m else v


@njit(cache=True, parallel=True, nogil=True)
def _deq_q8(q, d, m, off, tiles, lanes, out):
    # out[k, e] = d[k, e // gs, r] * (q[t, e // 4, r, e % 4] - off) (+ m[k, e // gs, r]),  t, r = tiles[k], lanes[k]
    has_m = m.shape[0] > 0
    gs = 4 * q.shape[1] // d.shape[1]
    for k in prange(tiles.shape[0]):
        t, r = tiles[k], lanes[k]
        for e in range(4 * q.shape[1]):
            v = d[k, e // gs, r] * (np.float32(q[t, e // 4, r, e % 4]) - np.float32(off))
            out[k, e] = v + m[k, e // gs, r] if has_m else v


@njit(cache=True, parallel=True, nogil=True)
def _deq_q6(q, d, m, off, tiles, lanes, out):
    # out[k, 16g + e] = d[k, g, r] * (u - off), u the 6-bit value of input e of group g (weights._pack_q6): low 4
    # bits in nibble e // 8 of byte e % 4 of word (e // 4) % 2, top 2 bits at bit 2 * (e // 4) of byte e % 4 of
    # word 2
    for k in prange(tiles.shape[0]):
        t, r = tiles[k], lanes[k]
        for g in range(d.shape[1]):
            dg = d[k, g, r]
            for e in range(16):
                s, b = e // 4, e % 4
                lo, top = q[t, 3 * g + s % 2, r, b], q[t, 3 * g + 2, r, b]
                u = (((lo >> np.uint8(4 * (s // 2))) & np.uint8(15)) | (((top >> np.uint8(2 * s)) & np.uint8(3))
                                                                        << np.uint8(4)))
                out[k, 16 * g + e] = dg * (np.float32(u) - np.float32(off))


_DECODE = {"q4": _deq_q4, "q6": _deq_q6, "q8": _deq_q8}


def _float_rows(w: QMatrix, rows) -> np.ndarray:
    raw = w.q[rows]
    if w.qtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return (raw.view(np.float16) if w.qtype == "F16" else raw).astype(np.float32)


def embedding_rows(w: QMatrix, ids) -> np.ndarray:
    """Rows `ids` of W as float32: (len(ids), n_in), bit-exact with gguf's dequantize (token embedding lookup)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = (ids < 0) | (ids >= w.n_out)
    if bad.any():
        raise IndexError(f"embedding_rows: id {ids[bad][0]} out of range for a matrix of {w.n_out} rows")
    if w.family == "float":
        return _float_rows(w, ids)
    tiles = ids // w.q.shape[2]
    d, m = w.float_scales(tiles)
    out = np.empty((ids.shape[0], w.n_in), np.float32)
    _DECODE[w.family](w.q, d, m, w.off, tiles, ids % w.q.shape[2], out)
    return out
