"""CPU dequantization of whole rows (token embedding lookups), bit-exact with the gguf package's dequantize.

    e = embedding_rows(w, ids)             # (len(ids), n_in) float32

The row-interleaved tiles of cpu/weights.py are decoded a tile (32 rows) at a time.
"""

import numpy as np
from numba import njit, prange

from minirs.kernels.cpu.weights import QMatrix


@njit(cache=True, parallel=True, nogil=True)
def _deq_q4(q, d, m, off, tiles, out):
    # out[32g + j (+16), k*L + l] = d[t, g, l] * (lo (hi) nibble of byte j of group g - off) (+ m[t, g, l]),
    # t = tiles[k]; byte j of group g is q[t, 4g + j // 4, l, j % 4]; d and m are the float32 scales of the
    # selected tiles (QMatrix.float_scales), d[k] for tile tiles[k]
    L = q.shape[2]
    has_m = m.shape[0] > 0
    for k in prange(tiles.shape[0]):
        t = tiles[k]
        for g in range(d.shape[1]):
            dg = d[k, g]
            mg = m[k, g] if has_m else dg
            for j in range(32):
                byte = q[t, 4 * g + (j % 16) // 4, :, j % 4]
                shift = np.uint8(4 * (j // 16))
                o = out[32 * g + j, k * L:(k + 1) * L]
                for l in range(L):
                    v = dg[l] * (np.float32((byte[l] >> shift) & np.uint8(15)) - np.float32(off))
                    o[l] = v + mg[l] if has_m else v


@njit(cache=True, parallel=True, nogil=True)
def _deq_q8(q, d, m, off, tiles, out):
    # out[e, k*L + l] = d[k, e // gs, l] * (q[t, e // 4, l, e % 4] - off) (+ m[k, e // gs, l]),  t = tiles[k]
    L = q.shape[2]
    has_m = m.shape[0] > 0
    gs = 4 * q.shape[1] // d.shape[1]
    for k in prange(tiles.shape[0]):
        t = tiles[k]
        for e in range(4 * q.shape[1]):
            dg = d[k, e // gs]
            mg = m[k, e // gs] if has_m else dg
            u = q[t, e // 4, :, e % 4]
            o = out[e, k * L:(k + 1) * L]
            for l in range(L):
                v = dg[l] * (np.float32(u[l]) - np.float32(off))
                o[l] = v + mg[l] if has_m else v


@njit(cache=True, parallel=True, nogil=True)
def _deq_q6(q, d, m, off, tiles, out):
    # out[16g + e, k*L + l] = d[k, g, l] * (u - off), u the 6-bit value of input e of group g (weights._pack_q6):
    # low 4 bits in nibble e // 8 of byte e % 4 of word (e // 4) % 2, top 2 bits at bit 2 * (e // 4) of byte e % 4
    # of word 2
    L = q.shape[2]
    for k in prange(tiles.shape[0]):
        t = tiles[k]
        for g in range(d.shape[1]):
            dg = d[k, g]
            for e in range(16):
                s, b = e // 4, e % 4
                lo, top = q[t, 3 * g + s % 2, :, b], q[t, 3 * g + 2, :, b]
                o = out[16 * g + e, k * L:(k + 1) * L]
                for l in range(L):
                    u = (((lo[l] >> np.uint8(4 * (s // 2))) & np.uint8(15))
                         | (((top[l] >> np.uint8(2 * s)) & np.uint8(3)) << np.uint8(4)))
                    o[l] = dg[l] * (np.float32(u) - np.float32(off))


def _decode_tiles(w: QMatrix, tiles: np.ndarray, out: np.ndarray) -> None:
    """out[:, k*L:(k+1)*L] <- rows tiles[k]*L ... of W, transposed: (n_in, len(tiles)*L) float32, bit-exact with
    gguf's dequantize."""
    d, m = w.float_scales(tiles)
    if w.family == "q4":
        _deq_q4(w.q, d, m, w.off, tiles, out)
    elif w.family == "q6":
        _deq_q6(w.q, d, m, w.off, tiles, out)
    else:
        _deq_q8(w.q, d, m, w.off, tiles, out)



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
    L = w.q.shape[2]
    buf = np.empty((w.n_in, ids.shape[0] * L), np.float32)  # whole tiles: decoding 32 rows per id is cheap
    _decode_tiles(w, ids // L, buf)
    return np.ascontiguousarray(buf[:, np.arange(ids.shape[0]) * L + ids % L].T)
