"""Encoders: float32 -> GGML quantized blocks, vectorised over blocks with NumPy.

    raw = quantize(w, "Q4_K")   # w (..., n) float -> uint8 (..., n // 256 * 144), the bytes of a Q4_K tensor

Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are bit-exact with `gguf.quants.quantize` (llama.cpp's reference rounding).
Q4_K, Q5_K and Q6_K follow llama.cpp's reference quantizers (`quantize_row_q4_K_ref` and friends in
ggml-quants.c): a weighted least-squares search for each sub-block's scale and min (`make_qkx2_quants`) or
scale (`make_qx_quants`), then 6- or 8-bit quantization of those scales against one f16 super-scale. They are
written for whole tensors at once, not bit-for-bit ports; tests compare their round-trip error with llama.cpp's.
F32, F16 and BF16 are plain conversions (BF16 rounds to nearest even, as ggml does).
"""

import numpy as np

from minirs.errors import FormatError
from minirs.formats.types import QTYPES

QK_K = 256
GROUP_MAX_EPS = 1e-15
_CHUNK_ELEMENTS = 1 << 18  # quantize ~256k elements at a time so the search's temporaries stay small


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n, 1) float -> (n, 2) uint8 of its f16."""
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf: round half away from zero."""
    a = np.abs(x)
    f = np.floor(a)
    return np.sign(x) * (f + np.floor(2 * (a - f)))


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, 0, 1 / d)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 2k) values < 16 -> (n, k) bytes: element i < k in the low nibble of byte i, element k + i high."""
    k = q.shape[-1] // 2
    return q[..., :k] | (q[..., k:] << np.uint8(4))


def _pack_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) values < 32 -> (n, 4) bytes holding bit 4 of element i at bit i (a little-endian u32)."""
    return np.packbits((q >> np.uint8(4)).reshape(-1, 1, 32), axis=-1, bitorder="little").reshape(-1, 4)


# --- 32-element blocks, as gguf.quants (and llama.cpp's *_ref functions) -------------------------------------
def _q4_0(x):  # d = max / -8 (max: the value of largest magnitude); q = trunc(x / d + 8.5)
    amax = np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)
    d = amax / -8
    q = np.trunc(x * _inverse(d) + np.float32(8.5), dtype=np.float32).astype(np.uint8).clip(0, 15)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=-1)


def _q4_1(x):  # d = (max - min) / 15, m = min; q = trunc((x - min) / d + 0.5)
    mx, mn = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    d = (mx - mn) / 15
    q = np.trunc((x - mn) * _inverse(d) + np.float32(0.5), dtype=np.float32).astype(np.uint8).clip(0, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _pack_nibbles(q)], axis=-1)


def _q5_0(x):  # d = max / -16; q = trunc(x / d + 16.5), 5 bits
    amax = np.take_along_axis(x, np.abs(x).argmax(axis=-1, keepdims=True), axis=-1)
    d = amax / -16
    q = np.trunc(x * _inverse(d) + np.float32(16.5), dtype=np.float32).astype(np.uint8).clip(0, 31)
    return np.concatenate([_f16_bytes(d), _pack_bits(q), _pack_nibbles(q & np.uint8(0x0F))], axis=-1)


def _q5_1(x):  # d = (max - min) / 31, m = min
    mx, mn = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    d = (mx - mn) / 31
    q = np.trunc((x - mn) * _inverse(d) + np.float32(0.5), dtype=np.float32).astype(np.uint8).clip(0, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _pack_bits(q), _pack_nibbles(q & np.uint8(0x0F))],
                          axis=-1)


def _q8_0(x):  # d = max|x| / 127; q = roundf(x / d)
    d = np.abs(x).max(axis=-1, keepdims=True) / 127
    q = _roundf(x * _inverse(d))
    return np.concatenate([_f16_bytes(d), q.astype(np.int8).view(np.uint8)], axis=-1)


# --- k-quants --------------------------------------------------------------------------------------------------
def _rint(x):
    return np.rint(x)  # llama.cpp's nearest_int rounds half to even, as rint does


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Scale, min and levels L in [0, nmax] minimising sum w (scale * L - min - x)^2 for each row of x.

    As llama.cpp's make_qkx2_quants: start from the min/max grid, then try nstep + 1 slightly different grids
    and keep the weighted least-squares (scale, min) fit of whichever levels fit best. Returns (scale, -min, L).
    """
    mn = np.minimum(x.min(axis=-1), 0)[:, None]
    mx = x.max(axis=-1)[:, None]
    flat = mx == mn
    span = np.where(flat, 1, mx - mn)
    sum_w = w.sum(axis=-1, keepdims=True)
    sum_x = (w * x).sum(axis=-1, keepdims=True)
    iscale = nmax / span
    scale = 1 / iscale
    L = np.clip(_rint(iscale * (x - mn)), 0, nmax)
    best = (w * np.square(scale * L + mn - x)).sum(axis=-1, keepdims=True)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / span
        La = np.clip(_rint(iscale * (x - mn)), 0, nmax)
        wl = w * La
        sum_l = wl.sum(axis=-1, keepdims=True)
        sum_l2 = (wl * La).sum(axis=-1, keepdims=True)
        sum_xl = (wl * x).sum(axis=-1, keepdims=True)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, 1)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        positive = this_min > 0
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1), this_scale)
        this_min = np.where(positive, 0, this_min)
        err = (w * np.square(this_scale * La + this_min - x)).sum(axis=-1, keepdims=True)
        better = ok & (err < best)
        L = np.where(better, La, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    return np.where(flat, 0, scale), -mn, np.where(flat, 0, L)


def make_qx_quants(x: np.ndarray, nmax: int):
    """Scale and levels L in [0, 2 nmax) (value = scale * (L - nmax)) for each row, as llama.cpp's
    make_qx_quants with rmse_type 1: weights x^2, try 19 grids around nmax / max and keep the best fit."""
    amax_i = np.abs(x).argmax(axis=-1)[:, None]
    mx = np.take_along_axis(x, amax_i, axis=-1)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, 1, mx)
    w = x * x

    def fit(iscale):
        lv = np.clip(_rint(iscale * x), -nmax, nmax - 1)
        wl = w * lv
        return lv, (wl * x).sum(axis=-1, keepdims=True), (wl * lv).sum(axis=-1, keepdims=True)

    lv, sumlx, suml2 = fit(-nmax / mx)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1), 0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        la, sumlx, suml2 = fit(-(nmax + 0.1 * step) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        lv = np.where(better, la, lv)
        scale = np.where(better, sumlx / np.where(suml2 > 0, suml2, 1), scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, 0, scale), np.where(zero, 0, lv) + nmax


def _qkx_block(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Shared start of Q4_K / Q5_K: per 32-element sub-block (scale, min) fits, their 6-bit codes against the
    super-block's f16 d and dmin, and the final levels. x: (nb, 256) -> (d, dmin, ls, lm, L)."""
    nb = len(x)
    xs = x.reshape(nb * 8, 32)
    av_x = np.sqrt(np.mean(xs * xs, axis=-1, keepdims=True))
    scales, mins, L = make_qkx2_quants(xs, av_x + np.abs(xs), nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = scales.max(axis=-1, keepdims=True)
    max_min = mins.max(axis=-1, keepdims=True)
    ls = np.minimum(_rint(_inverse(max_scale / 63) * scales), 63).astype(np.uint8)
    lm = np.minimum(_rint(_inverse(max_min / 63) * mins), 63).astype(np.uint8)
    d = (max_scale / 63).astype(np.float16)
    dmin = (max_min / 63).astype(np.float16)
    dl = (d.astype(np.float32) * ls).reshape(nb * 8, 1)
    ml = (dmin.astype(np.float32) * lm).reshape(nb * 8, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_rint((xs + ml) / dl), 0, nmax)
    L = np.where(dl != 0, requant, L).astype(np.uint8).reshape(nb, 8, 32)
    scale_bytes = np.concatenate([ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                                  (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)], axis=-1)
    return d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), scale_bytes, L


def _q4_k(x):  # d f16 | dmin f16 | scales[12] | qs[128]  (see quants.py for the layout)
    d, dmin, sc, L = _qkx_block(x, 15, -1.0, 20)
    qs = _pack_nibbles(L.reshape(-1, 4, 64)).reshape(-1, 128)
    return np.concatenate([d, dmin, sc, qs], axis=-1)


def _q5_k(x):  # d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
    d, dmin, sc, L = _qkx_block(x, 31, -0.5, 15)
    qs = _pack_nibbles((L & np.uint8(0x0F)).reshape(-1, 4, 64)).reshape(-1, 128)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qh = np.bitwise_or.reduce(((L >> np.uint8(4)) & np.uint8(1)) << shifts, axis=1)
    return np.concatenate([d, dmin, sc, qh, qs], axis=-1)


def _q6_k(x):  # ql[128] | qh[64] | scales int8[16] | d f16
    nb = len(x)
    xs = x.reshape(nb * 16, 16)
    scales, L = make_qx_quants(xs, 32)
    scales = scales.reshape(nb, 16)
    i = np.abs(scales).argmax(axis=-1)[:, None]
    max_scale = np.take_along_axis(scales, i, axis=-1)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = np.where(zero, 0, -128 / np.where(zero, 1, max_scale))
    d = _inverse(iscale).astype(np.float16)
    ls = np.minimum(_rint(iscale * scales), 127).astype(np.int8)
    dl = (d.astype(np.float32) * ls).reshape(nb * 16, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_rint(xs / dl), -32, 31) + 32
    L = np.where(dl != 0, requant, L).astype(np.uint8).reshape(nb, 2, 4, 32)  # (block, half, k, l)
    ql = np.concatenate([L[:, :, 0] & 0x0F | (L[:, :, 2] & 0x0F) << 4,
                         L[:, :, 1] & 0x0F | (L[:, :, 3] & 0x0F) << 4], axis=-1).reshape(nb, 128)
    qh = (L[:, :, 0] >> 4 | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6).reshape(nb, 64)
    out = np.concatenate([ql, qh, ls.view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=-1)
    return np.where(zero, np.uint8(0), out)


def _bf16(x):
    n = x.view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)  # quiet nan
    n = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16  # round to nearest even
    return n.astype(np.uint16).view(np.uint8)


ENCODERS = {"F32": lambda x: x.view(np.uint8), "F16": lambda x: x.astype(np.float16).view(np.uint8),
            "BF16": _bf16, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
            "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(array: np.ndarray, qtype: str) -> np.ndarray:
    """Encode `array` (..., n) as `qtype`: uint8 of shape (..., row_bytes), the layout of a GGUF tensor's data.

    n must be a multiple of the type's block size. Types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
    Q5_K, Q6_K.
    """
    if qtype not in ENCODERS:
        raise FormatError(f"cannot quantize to {qtype!r} (have {', '.join(ENCODERS)})")
    qt = QTYPES[qtype]
    x = np.ascontiguousarray(array, dtype=np.float32)
    shape = x.shape if x.ndim else (1,)
    if shape[-1] % qt.block_size:
        raise FormatError(f"cannot quantize a row of {shape[-1]} elements to {qtype}: not a multiple of its "
                          f"block size {qt.block_size}")
    blocks = x.reshape(-1, qt.block_size)
    out = np.empty((len(blocks), qt.type_size), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // qt.block_size)
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(0, len(blocks), step):
            out[i:i + step] = ENCODERS[qtype](blocks[i:i + step]).reshape(-1, qt.type_size)
    return out.reshape(*shape[:-1], qt.row_bytes(shape[-1]))
