"""Decoders (and a few encoders) of the GGML quantized types, vectorised over blocks with NumPy.

Each decoder takes a (n_blocks, type_size) uint8 matrix and returns (n_blocks, block_size) float32. Its block's
byte layout (from ggml-common.h) is written above it. The float32 arithmetic is done in the same order as
`gguf.quants` so the results are bit-exact with `gguf.quants.dequantize` (tests check every type).

    dequantize(tensor)                     # a Tensor from a ModelFile -> float32 array of tensor.shape
    dequantize(raw_uint8, "Q4_K", shape)   # the same from raw bytes, for kernels and tests

The encoders live in `minirs.formats.quantize`.
"""

from collections.abc import Callable

import numpy as np

from minirs.errors import FormatError
from minirs.formats.types import QTYPES

QK = 32  # elements per block of the simple types
QK_K = 256  # elements per super-block of the k-quants

# The non-linear 4-bit grid of IQ4_NL / IQ4_XS (kvalues_iq4nl in ggml-common.h).
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)

DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def decoder(name: str):
    def register(fn):
        DECODERS[name] = fn
        return fn
    return register


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 little-endian halves -> (n, 1) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(..., k) uint8 -> (..., 2k): the k low nibbles, then the k high nibbles (ggml's packing order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(b: np.ndarray, width: int, n_shifts: int) -> np.ndarray:
    """(..., k) uint8 -> (..., n_shifts, k): field s is (b >> (s * width)) & mask."""
    shifts = (np.arange(n_shifts, dtype=np.uint8) * width).reshape(n_shifts, 1)
    return (b[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


# --- plain floats --------------------------------------------------------------------------------------------
@decoder("F32")
def _f32(b):
    return b.view(np.float32)


@decoder("F16")
def _f16_dec(b):
    return b.view(np.float16).astype(np.float32)


@decoder("BF16")
def _bf16(b):
    # bf16 is the top half of a float32
    return (b.view(np.int16).astype(np.int32) << 16).view(np.float32)


def _integer(dtype):
    return lambda b: b.view(dtype).astype(np.float32)


for _name, _dtype in [("I8", np.int8), ("I16", np.int16), ("I32", np.int32), ("I64", np.int64),
                      ("F64", np.float64), ("U8", np.uint8), ("U16", np.uint16), ("U32", np.uint32),
                      ("U64", np.uint64), ("BOOL", np.bool_)]:
    DECODERS[_name] = _integer(_dtype)


# --- 32-element blocks ---------------------------------------------------------------------------------------
# Q4_0 (18 bytes): d f16 | qs[16]   x[i] = d * (nibble[i] - 8); nibble i < 16 is qs[i] & 15, else qs[i-16] >> 4
@decoder("Q4_0")
def _q4_0(b):
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


# Q4_1 (20 bytes): d f16 | m f16 | qs[16]   x[i] = d * nibble[i] + m
@decoder("Q4_1")
def _q4_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).astype(np.float32) + m


def _q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """5-bit values: low nibbles from qs[16], bit 4 of element i from bit i of the u32 qh."""
    high = _bits(qh, 1, 8).transpose(0, 2, 1).reshape(-1, 32)  # element 8*byte + bit
    return _nibbles(qs) | (high << np.uint8(4))


# Q5_0 (22 bytes): d f16 | qh u32 | qs[16]   x[i] = d * (q5[i] - 16)
@decoder("Q5_0")
def _q5_0(b):
    d = _f16(b[:, :2])
    q = _q5(b[:, 2:6], b[:, 6:]).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


# Q5_1 (24 bytes): d f16 | m f16 | qh u32 | qs[16]   x[i] = d * q5[i] + m
@decoder("Q5_1")
def _q5_1(b):
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _q5(b[:, 4:8], b[:, 8:]).astype(np.float32) + m


# Q8_0 (34 bytes): d f16 | qs int8[32]   x[i] = d * qs[i]
@decoder("Q8_0")
def _q8_0(b):
    return np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32) * _f16(b[:, :2])


# Q8_1 (36 bytes): d f16 | s f16 (= d * sum(qs), used by dot products only) | qs int8[32]   x[i] = d * qs[i]
@decoder("Q8_1")
def _q8_1(b):
    return np.ascontiguousarray(b[:, 4:]).view(np.int8).astype(np.float32) * _f16(b[:, :2])


# IQ4_NL (18 bytes): d f16 | qs[16]   x[i] = d * IQ4_NL_VALUES[nibble[i]]
@decoder("IQ4_NL")
def _iq4_nl(b):
    d = _f16(b[:, :2])
    return d * IQ4_NL_VALUES[_nibbles(b[:, 2:])].astype(np.float32)


# --- 256-element super-blocks (k-quants) ---------------------------------------------------------------------
# Q2_K (84 bytes): scales[16] (low nibble: scale, high nibble: min, per 16 elements) | qs[64] (2-bit) | d f16 | dmin f16
#   qs is two 32-byte halves; half h, shift s (0,2,4,6) holds elements 128h + 32s' .. (s' = s/2)
#   x = d * (sc & 15) * q - dmin * (sc >> 4)
@decoder("Q2_K")
def _q2_k(b):
    n = len(b)
    sc = b[:, :16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (sc & 0x0F).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (sc >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = _bits(b[:, 16:80].reshape(n, 2, 32), 2, 4).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K's 16 6-bit scales from 12 bytes: low 4 bits from nibbles of bytes 0-7 (all low nibbles first),
    high 2 bits from bytes 8-11 (bits 2j..2j+1 of byte 8+i%4 for scale i, j = i // 4)."""
    low = _nibbles(s[:, :8])
    high = _bits(s[:, 8:12], 2, 4).reshape(-1, 16)
    return ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).astype(np.float32)


# Q3_K (110 bytes): hmask[32] | qs[64] (low 2 bits) | scales[12] (16 x 6-bit) | d f16
#   element 32k + l (k = 0..7): low bits (qs[32(k//4) + l] >> 2(k%4)) & 3, high bit (hmask[l] >> k) & 1
#   x = d * (scale - 32) * (low - (high ? 0 : 4))
@decoder("Q3_K")
def _q3_k(b):
    n = len(b)
    d = _f16(b[:, 108:110])
    dl = (d * _q3_k_scales(b[:, 96:108])).reshape(n, 16, 1)
    low = _bits(b[:, 32:96].reshape(n, 2, 32), 2, 4).reshape(n, 16, 16)
    high = _bits(b[:, :32], 1, 8).reshape(n, 16, 16) ^ np.uint8(1)
    q = (low.astype(np.int8) - (high << np.uint8(2)).astype(np.int8)).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


def k_scale_min(s, xp=np) -> tuple:
    """Q4_K/Q5_K's eight 6-bit (scale, min) pairs from the last axis of 12 bytes (NumPy or CuPy arrays):
    j < 4: sc = s[j] & 63, m = s[j+4] & 63;  j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4,
    m = (s[j+4] >> 4) | (s[j] >> 6) << 4."""
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = xp.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    m = xp.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, m


# Q4_K (144 bytes): d f16 | dmin f16 | scales[12] (8 x 6-bit scale + min) | qs[128]
#   qs is four 32-byte groups, each giving 64 elements (low nibbles, then high); sub-block j = 32 elements
#   x = d * sc[j] * q - dmin * m[j]
@decoder("Q4_K")
def _q4_k(b):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = k_scale_min(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * m.astype(np.float32)).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


# Q5_K (176 bytes): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
#   low 4 bits as Q4_K; bit 4 of element 32j + l is (qh[l] >> j) & 1
@decoder("Q5_K")
def _q5_k(b):
    n = len(b)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = k_scale_min(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * m.astype(np.float32)).reshape(n, 8, 1)
    low = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    high = _bits(b[:, 16:48], 1, 8)
    q = (low | (high << np.uint8(4))).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


# Q6_K (210 bytes): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales int8[16] | d f16
#   half h (128 elements) uses ql[64h:64h+64] and qh[32h:32h+32]; within it element 32k + l (k = 0..3) has
#   low nibble of ql[l + 32(k%2)] (k < 2: low nibble, else high) and high bits (qh[l] >> 2k) & 3
#   x = d * scale[i // 16] * (q - 32)
@decoder("Q6_K")
def _q6_k(b):
    n = len(b)
    d = _f16(b[:, 208:210])
    dl = (d * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(n, 16, 1)
    low = _nibbles(b[:, :128].reshape(n, 2, 64)).reshape(n, 8, 32)
    high = _bits(b[:, 128:192].reshape(n, 2, 32), 2, 4).reshape(n, 8, 32)
    q = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


# Q8_K (292 bytes): d f32 | qs int8[256] | bsums int16[16] (sums of 16-element groups, for dot products)
#   x = d * qs[i]
@decoder("Q8_K")
def _q8_k(b):
    d = np.ascontiguousarray(b[:, :4]).view(np.float32)
    return d * np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(np.float32)


# IQ4_XS (136 bytes): d f16 | scales_h u16 (2 bits per sub-block) | scales_l[4] (4 bits per sub-block) | qs[128]
#   sub-block j (32 elements): ls = (low nibble j of scales_l | ((scales_h >> 2j) & 3) << 4) - 32
#   its 16 bytes give low nibbles then high nibbles; x = d * ls * IQ4_NL_VALUES[q]
@decoder("IQ4_XS")
def _iq4_xs(b):
    n = len(b)
    d = _f16(b[:, 0:2])
    sh = np.ascontiguousarray(b[:, 2:4]).view(np.uint16)  # (n, 1)
    sl = np.stack([b[:, 4:8] & 0x0F, b[:, 4:8] >> 4], axis=-1).reshape(n, 8)
    high = ((sh >> (np.arange(8, dtype=np.uint16) * 2)) & 3).astype(np.uint8)
    ls = (sl | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (d * ls.astype(np.float32)).reshape(n, 8, 1)
    q = IQ4_NL_VALUES[_nibbles(b[:, 8:].reshape(n, 8, 16))].astype(np.float32)
    return (dl * q).reshape(n, QK_K)


# --- whole tensors -------------------------------------------------------------------------------------------
_CHUNK_ELEMENTS = 1 << 20  # decode ~1M elements at a time so temporaries stay small


def dequantize(data, qtype: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode a tensor to float32 of its logical shape.

    `data` is a `Tensor` (qtype and shape come from it) or raw bytes (a uint8 array or anything viewable as one)
    with `qtype` (a GGUF type name such as "Q4_K") and `shape` (NumPy order) given.
    """
    if qtype is None:
        data, qtype, shape = data.data, data.qtype, data.shape
    if qtype not in DECODERS:
        raise FormatError(f"cannot dequantize type {qtype!r}: no decoder (have {', '.join(DECODERS)})")
    qt = QTYPES[qtype]
    raw = np.asarray(data)
    raw = raw.reshape(-1).view(np.uint8) if raw.dtype != np.uint8 else raw.reshape(-1)
    shape = tuple(int(s) for s in shape) if shape is not None else (raw.size // qt.type_size * qt.block_size,)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n % qt.block_size or raw.size != n // qt.block_size * qt.type_size:
        raise FormatError(f"{qtype} tensor of shape {shape} needs {n // qt.block_size * qt.type_size} bytes "
                          f"(blocks of {qt.block_size}), got {raw.size}")
    blocks = raw.reshape(-1, qt.type_size)
    out = np.empty((len(blocks), qt.block_size), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // qt.block_size)
    fn = DECODERS[qtype]
    with np.errstate(invalid="ignore", over="ignore"):  # inf/nan scales decode to inf/nan, as in ggml
        for i in range(0, len(blocks), step):
            chunk = np.ascontiguousarray(blocks[i:i + step])
            out[i:i + step] = fn(chunk).reshape(len(chunk), qt.block_size)
    return out.reshape(shape)
