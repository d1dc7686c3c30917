"""CUDA quantized matmul: y = x @ W.T on the quantized blocks, Numba CUDA kernels over CuPy memory.

    w = GMatrix.from_tensor(tensor)       # once per weight (cuda_weights): upload, re-lay the blocks out
    y = gmatmul(w, x, stream)             # x (n, n_in) float32 CuPy -> y (n, n_out) float32 CuPy
    ex = GExperts.from_tensor(t3)         # MoE: the stacked experts (n_exp, n_out, n_in), one GMatrix of rows
    y = gmatmul_id(ex, x, ids, stream)    # y[t, j] = x[t] @ W[ids[t, j]].T   (n, K, n_out)
    e = gembed(w, ids, scale, stream)     # rows `ids` of W as float32 (token embedding lookup)

Weights keep the families of the CPU matmul (cpu_matmul.py), with f16 group scales so that a Q4_0 matrix takes
exactly its file size on the GPU:

| family | weight element                        | arrays on the GPU (per row)                                  | types               |
| ------ | ------------------------------------- | ------------------------------------------------------------ | ------------------- |
| q4     | d[g] * (q - off) (+ m[g])             | q: n_in/8 uint32, per 32-block 4 words: byte j = el. j, j+16 | Q4_0, Q4_1, Q4_K    |
| q5     | as q4, q += 16 * hbit                 | q as q4; h: one uint32 per 32-block, bit j = element j       | Q5_0, Q5_1, Q5_K    |
| q8     | d[g] * q (+ m[g]), g = 32 or 16       | q: int8 per element (read as int32 words)                    | Q8_0, Q6_K, Q3_K, Q2_K |
| float  | w                                     | float16 (F16) or float32 (F32, BF16 widened)                 | F16, BF16, F32      |

Decode and small batches (n <= GEMV_MAX_N) run a GEMV: x is quantized to int8 per 32-block (scale + per-16 sums,
as llama.cpp's q8_1), each lane takes one 32-block at a time (weights and x read with 8-byte loads), dp4a (PTX,
emitted inline) does 4 int8 MACs, and each warp owns 4 rows so each x word loaded serves 4 rows; a block's 1
to 4 warps split K (gemv_warps, by the matrix's shape). A block serves one token (n = 1) or up to TT = 4 tokens
from the same unpacked weight words (batched decode), and each token's result is bit-identical whatever the batch.
Each thread prefetches its first weights into L1 before it waits for the kernel before it (PREFETCH_BLOCKS).
The weight flavour (q5 fifth bits, group offsets, q8 groups of 16) is compiled in, not tested at run time: a
GEMV's registers bound its occupancy (one Q4_0 token: 80 registers, 72 before the weight prefetch; 14336 x
4096 in 18.9 us under Nsight, 25.9 us with the old 168-register kernel). With `out`, the result is added into out
(the residual stream) as it is written. With mma_min_n (CudaBackend: batches of 2 or more tokens unless the
engine asks for row-invariant results) the batched GEMVs run on the float16 tensor cores instead (cuda_mma).
Larger n dequantize W to float16 (dequant_f16) and multiply with cuBLAS (cuda_blas.gemm_nt: float16 in, float32
accumulation and out, adding into out in the same call). Decode has its own kernels because at a few tokens a
GEMV that reads the quantized blocks once beats dequantizing the whole matrix first.
"""

import math

import numpy as np
from numba import cuda, float32, float64, int8, int32, int64
from numba.core.types import float16
from numba.cuda import libdevice

from minirs.kernels.cuda_blas import gemm_nt
from minirs.kernels.cuda_intrinsics import dp4a, prefetch_line, wait_prior_kernel
from minirs.kernels.cuda_launch import kernels
from minirs.kernels.cuda_weights import GExperts, GMatrix

GEMV_MAX_N = 32  # n <= this: GEMV kernels (graph-capturable, so batched decode too); larger n: dequantize + cuBLAS
R = 4  # rows per warp in the GEMVs
TT = 4  # tokens per block in the quantized GEMVs: each weight word loaded and unpacked feeds TT tokens' dots
NW = 4  # warps per block in the float and expert GEMVs: they split K of the block's R rows
NWS = (1, 2, 3, 4)  # warps per block of the quantized GEMVs, chosen per matrix by gemv_warps
# The weights a quantized GEMV thread prefetches into L1 before it waits for the kernel before it (programmatic
# dependent launch, cuda_intrinsics.wait_prior_kernel): its first PREFETCH_BLOCKS 32-blocks of each row. H100
# tg128 (SmolLM2 / 7B Q4_0): 1 block 1,154 / 400, none 1,073 / 382, 2 blocks 1,158 / 395, all 1,155 / 386; into
# L2 instead of L1 1,137 / 399 (BENCHMARKS.md)
PREFETCH_BLOCKS = 1


def gemv_warps(w: "GMatrix") -> int:
    """Warps per block (each block owns R rows, its warps split K) for the quantized GEMV of w.

    A small matrix in one warp per row group leaves the GPU short of loads in flight (4096 x 4096 Q4_0: 1,024
    warps, 7.4 us), so the warps double until there are ~2,048 of them (5.1 us), then grow one at a time while the
    whole grid still fits in one wave of resident warps (wave: the kernel's registers decide how many an SM holds),
    as long as every lane of the block has two 32-blocks of a row to read. Timed on an H100 (bench/gpu_check.py
    --sweep, one token, us): 6144 x 4096 Q4_0 10.1 -> 7.2 (2 warps), 4096 x 14336 Q4_0 30.7 -> 19.3 (2) -> 16.9 (3:
    3,072 warps of 72 registers, one wave of 3,696), Q4_K 18.5 -> 15.7 (2; 3 would take two waves of its 96-register
    warps: 17.7), 28672 x 4096 stays at one warp (29.0 us). It depends on the matrix (and the GPU) only, never on
    the batch: the split-K sum order is part of a row's result, and a row must not change with the rows batched
    with it."""
    groups, nb = -(-w.n_out // R), w.n_in // 32
    nw = 1
    while nw < 4 and groups * nw < 2048 and 64 * nw <= nb:
        nw *= 2
    while nw < NWS[-1] and 64 * (nw + 1) <= nb and \
            groups * (nw + 1) <= _wave(gemv_name(f"gemv_{w.family}", w, nw + 1), nw + 1):
        nw += 1
    return nw


_WAVES = {}


def _wave(kernel: str, nw: int) -> int:
    """How many warps of a compiled GEMV kernel (blocks of nw warps) the GPU holds at once: its occupancy (CUDA's
    blocks per SM for its registers and shared memory) x SMs x nw."""
    if kernel not in _WAVES:
        compiled = next(iter(K[kernel].compiled.dispatcher.overloads.values()))
        _WAVES[kernel] = compiled.max_cooperative_grid_blocks(32 * nw) * nw
    return _WAVES[kernel]


DQ_THREADS = 256

M4 = int32(0x0F0F0F0F)  # the low nibble of each byte of an int32 word


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------

def quant32(v, t, b, xq, xd, xs):
    """Warp-wide: the 32 lanes hold elements 32*b + lane of row t; write their int8 codes round(v / d) to xq,
    d = max|v| / 127 to xd[t, b] and the sums of the codes of each half to xs[t, 2b], xs[t, 2b + 1]."""
    lane = cuda.threadIdx.x & 31
    a = abs(v)
    for o in (16, 8, 4, 2, 1):
        a = max(a, cuda.shfl_xor_sync(0xFFFFFFFF, a, o))
    d = a / float32(127.0)
    qv = int32(0)
    if a > 0:
        qv = int32(libdevice.rintf(v / d))
    xq[t, 32 * b + lane] = qv
    s = qv
    for o in (8, 4, 2, 1):
        s += cuda.shfl_xor_sync(0xFFFFFFFF, s, o)
    if lane == 0:
        xd[t, b] = d
        xs[t, 2 * b] = s
    if lane == 16:
        xs[t, 2 * b + 1] = s


def half_clamped(v):
    """v as float16, clamped to its range (+-65504) instead of overflowing to inf."""
    return float16(min(max(v, float32(-65504.0)), float32(65504.0)))


def half_pos(j):
    """Where element j of a row goes in the tensor-core GEMV's float16 form (cuda_mma): each 4 elements stored as
    (x0, x2, x1, x3), the order of an mma fragment."""
    return (j & ~3) | ((j & 1) << 1) | ((j >> 1) & 1)


def gemv_input(v, t, b, xq, xd, xs, xh, half):
    """Warp-wide: the 32 lanes hold elements 32*b + lane of row t of a GEMV's input; write them in the form that
    GEMV reads: float16 in fragment order for the tensor cores (half; cuda_mma), else the int8 form (quant32)."""
    if half:
        xh[t, half_pos(32 * b + (cuda.threadIdx.x & 31))] = half_clamped(v)
    else:
        quant32(v, t, b, xq, xd, xs)


def quantize_x(x, xq, xd, xs):
    """x (n, k) f32 -> xq (n, k) int8 = round(x / d), xd (n, k/32) f32 d = max|x| / 127, xs (n, k/16) int32 sums of xq.

    One warp per 32-block (llama.cpp's q8_1; cuda_numerics.quantize_x is the NumPy twin).
    """
    wait_prior_kernel()
    gw = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) >> 5
    lane = cuda.threadIdx.x & 31
    nb = xd.shape[1]
    t = gw // nb
    b = gw - t * nb
    if t >= x.shape[0]:
        return
    quant32(x[t, 32 * b + lane], t, b, xq, xd, xs)


def _spread4(hb):
    """Bits 0..3 of hb -> bit 4 of bytes 0..3 (the fifth bits of four q5 elements)."""
    return ((hb & 1) << 4) | ((hb & 2) << 11) | ((hb & 4) << 18) | ((hb & 8) << 25)


def _w45(q, h, r, b, has_h):
    """Row r's 32-block b of the q4 / q5 family as 8 int32 words of 4 codes each (elements 4i.. and 16+4i..).

    q is read as int64 (two 8-byte loads per 32-block), each split into two int32 words at once (32-bit
    registers: the GEMVs' occupancy is bound by registers)."""
    a = q[r, 2 * b]
    c = q[r, 2 * b + 1]
    a0, a1, c0, c1 = int32(a), int32(a >> 32), int32(c), int32(c >> 32)
    l0, l1, l2, l3 = a0 & M4, a1 & M4, c0 & M4, c1 & M4
    h0, h1, h2, h3 = (a0 >> 4) & M4, (a1 >> 4) & M4, (c0 >> 4) & M4, (c1 >> 4) & M4
    if has_h:
        hb = int32(h[r, b])
        l0 |= _spread4(hb)
        l1 |= _spread4(hb >> 4)
        l2 |= _spread4(hb >> 8)
        l3 |= _spread4(hb >> 12)
        h0 |= _spread4(hb >> 16)
        h1 |= _spread4(hb >> 20)
        h2 |= _spread4(hb >> 24)
        h3 |= _spread4(hb >> 28)
    return l0, l1, l2, l3, h0, h1, h2, h3


def _words8(a, r, b):
    """32 int8 values (row r, 32-block b of an int8 array read as int64) as 8 int32 words of 4: four 8-byte loads."""
    o = 4 * b
    w0, w1, w2, w3 = a[r, o], a[r, o + 1], a[r, o + 2], a[r, o + 3]
    return int32(w0), int32(w0 >> 32), int32(w1), int32(w1 >> 32), int32(w2), int32(w2 >> 32), int32(w3), \
        int32(w3 >> 32)


def _prefetch_rows(q, h, d, m, ra, rb, rc, rd, nb, stride, qi, di, has_h, has_m):
    """Prefetch into L1 the first PREFETCH_BLOCKS 32-blocks that this thread reads of 4 rows: blocks threadIdx.x,
    + stride, ..; block b's words start at q[r, qi * b], its scales at d[r, di * b] (and m), its fifth bits at
    h[r, b]. Weights only: no kernel writes them, so this may run before the wait, while the kernel before still
    runs; the loads after the wait then find them in L1 instead of device memory."""
    for b in range(cuda.threadIdx.x, min(nb, PREFETCH_BLOCKS * stride), stride):
        for r in (ra, rb, rc, rd):
            prefetch_line(q, (r, qi * b), 1)
            prefetch_line(d, (r, di * b), 1)
            if has_m:
                prefetch_line(m, (r, di * b), 1)
            if has_h:
                prefetch_line(h, (r, b), 1)


def _blk45(q, h, d, m, ra, rb, rc, rd, b, has_h, has_m):
    """32-block b of 4 rows of the q4 / q5 family: their words (_w45), scales and offsets."""
    z = float32(0.0)
    mv = (z, z, z, z)
    if has_m:
        mv = (float32(m[ra, b]), float32(m[rb, b]), float32(m[rc, b]), float32(m[rd, b]))
    return _w45(q, h, ra, b, has_h), _w45(q, h, rb, b, has_h), _w45(q, h, rc, b, has_h), _w45(q, h, rd, b, has_h), \
        (float32(d[ra, b]), float32(d[rb, b]), float32(d[rc, b]), float32(d[rd, b])), mv


def _dot(w, x):
    """The int8 dot products of a 32-block (w, x: 8 words each): its two halves' sums."""
    sa = dp4a(w[0], x[0], 0)
    sa = dp4a(w[1], x[1], sa)
    sa = dp4a(w[2], x[2], sa)
    sa = dp4a(w[3], x[3], sa)
    sc = dp4a(w[4], x[4], 0)
    sc = dp4a(w[5], x[5], sc)
    sc = dp4a(w[6], x[6], sc)
    sc = dp4a(w[7], x[7], sc)
    return sa, sc


def _acc45(acc, i, xq, xd, xs, t, b, wa, wb, wc, wd, dv, mv, off):
    """acc[i, j] += token t's 32-block b for 4 rows: xd * (d_j * (sum q*xq - off * sum xq) + m_j * sum xq)."""
    x = _words8(xq, t, b)
    xdb = xd[t, b]
    sb = xs[t, 2 * b] + xs[t, 2 * b + 1]
    fb = float32(sb)
    sa, sc = _dot(wa, x)
    acc[R * i + 0] += xdb * (dv[0] * float32(sa + sc - off * sb) + mv[0] * fb)
    sa, sc = _dot(wb, x)
    acc[R * i + 1] += xdb * (dv[1] * float32(sa + sc - off * sb) + mv[1] * fb)
    sa, sc = _dot(wc, x)
    acc[R * i + 2] += xdb * (dv[2] * float32(sa + sc - off * sb) + mv[2] * fb)
    sa, sc = _dot(wd, x)
    acc[R * i + 3] += xdb * (dv[3] * float32(sa + sc - off * sb) + mv[3] * fb)


def _v8(d, m, r, b, sa, sc, s0, s1, g16, has_m):
    """A q8-family row's 32-block value from its two half sums (xq's scale left out)."""
    if g16:
        v = float32(d[r, 2 * b]) * float32(sa) + float32(d[r, 2 * b + 1]) * float32(sc)
        if has_m:
            v += float32(m[r, 2 * b]) * float32(s0) + float32(m[r, 2 * b + 1]) * float32(s1)
    else:
        v = float32(d[r, b]) * float32(sa + sc)
        if has_m:
            v += float32(m[r, b]) * float32(s0 + s1)
    return v


def _acc8(acc, i, xq, xd, xs, t, b, wa, wb, wc, wd, d, m, ra, rb, rc, rd, g16, has_m):
    """acc[i, j] += token t's 32-block b for 4 rows of the q8 family."""
    x = _words8(xq, t, b)
    xdb = xd[t, b]
    s0, s1 = xs[t, 2 * b], xs[t, 2 * b + 1]
    sa, sc = _dot(wa, x)
    acc[R * i + 0] += xdb * _v8(d, m, ra, b, sa, sc, s0, s1, g16, has_m)
    sa, sc = _dot(wb, x)
    acc[R * i + 1] += xdb * _v8(d, m, rb, b, sa, sc, s0, s1, g16, has_m)
    sa, sc = _dot(wc, x)
    acc[R * i + 2] += xdb * _v8(d, m, rc, b, sa, sc, s0, s1, g16, has_m)
    sa, sc = _dot(wd, x)
    acc[R * i + 3] += xdb * _v8(d, m, rd, b, sa, sc, s0, s1, g16, has_m)


def _put(y, t, r, v, add):
    """y[t, r] = v, or y[t, r] += v (add: the matmul's result goes straight into the residual stream)."""
    if add:
        y[t, r] += v
    else:
        y[t, r] = v


TWO_PI = 2 * math.pi


def rope_cos_sin(p, f):
    """cos and sin of the RoPE angle p * f as float32: the product and its reduction modulo 2 pi in float64
    (positions reach 10^5), the trigonometry in float32 on the reduced angle (float64 sin/cos of large angles
    are slow software routines)."""
    ang = float64(p) * f
    ang -= TWO_PI * math.floor(ang / TWO_PI)
    a = float32(ang)
    return math.cos(a), math.sin(a)


def attn_put(qo, t, r, v, vp, ep):
    """The fused q/k/v projection's epilogue for row r of token t (v; vp: its RoPE partner row r ^ 1): q rows
    (r < h * d = qo.shape[1]) are rotated and written to qo, k rows rotated and written to the key cache, v rows
    to the value cache, at row pos[t] % L of slot slots[t] (as cuda_ops.attn_inputs does for adjacent-pair RoPE
    without biases or q/k norms). ep = (pos, slots, inv_freq, k cache, v cache, nk = hkv * d)."""
    pos, slots, inv_freq, kc, vc, nk = ep
    nq = qo.shape[1]
    d = kc.shape[3]
    p = pos[t]
    if r < nq + nk:  # q or k: rotate the pair (2i, 2i + 1), i < len(inv_freq)
        c = (r if r < nq else r - nq) % d
        if c < 2 * inv_freq.shape[0]:
            cs, sn = rope_cos_sin(p, inv_freq[c >> 1])
            if (c & 1) == 0:
                v = v * cs - vp * sn
            else:
                v = vp * sn + v * cs
    if r < nq:
        qo[t, r] = v
    elif r < nq + nk:
        kc[slots[t], (r - nq) // d, p % kc.shape[2], (r - nq) % d] = v
    else:
        vc[slots[t], (r - nq - nk) // d, p % vc.shape[2], (r - nq - nk) % d] = v


Q45_FLAVOURS = ((False, False), (False, True), (True, False), (True, True))  # (has_h, has_m): Q4_0; Q4_1, Q4_K; ..
Q8_FLAVOURS = ((False, False), (True, False), (True, True))  # (g16, has_m): Q8_0; Q6_K, Q3_K; Q2_K


def gemv_name(kind: str, w: "GMatrix", nw: int = NW, tt: int = 1) -> str:
    """The compiled kernel of `kind` (gemv_q45, gemv_id_q8, ..) for w's flavour, nw warps and tt tokens per block."""
    flav = f"h{int(w.has_h)}m{int(w.has_m)}" if w.family == "q45" else f"g{16 if w.g == 16 else 32}m{int(w.has_m)}"
    return f"{kind}_w{nw}_{flav}" if kind.startswith("gemv_id") else f"{kind}_w{nw}_t{tt}_{flav}"


def gemv_kernels(nw: int, tt: int, has_h: bool = False, has_m: bool = False, g16: bool = False) -> dict:
    """The quantized GEMV kernels for blocks of nw warps and up to tt tokens (gemv_warps and TT for the model;
    bench/gpu_check.py --sweep times other shapes), for one weight flavour: has_h (q5: fifth bits), has_m (group
    offsets), g16 (q8 groups of 16). The flags are compile-time constants, so a Q4_0 GEMV carries no registers
    for the paths it never takes (72 instead of 128 per thread: occupancy). Returns plain Python kernels."""
    nacc = tt * R  # accumulators per thread: (token slot, row), flat so that they live in registers

    def tile(n):
        """This block's first row and first token, and its number of tokens. Grid: ceil(n_out / R) * ceil(n / tt)
        blocks, the token tiles of one row group adjacent (they read the same weights: the later ones find them
        in L2)."""
        ntile = (n + tt - 1) // tt
        t0 = (cuda.blockIdx.x % ntile) * tt
        return (cuda.blockIdx.x // ntile) * R, t0, min(tt, n - t0)

    def block_rows(y, nk):
        """This block's first row, first token and token count (tile), and its 4 rows (clamped) of a matrix of
        y.shape[1] + 2 * nk rows (nk > 0: the fused q/k/v projection, where y holds q alone)."""
        n = y.shape[0]
        n_out = y.shape[1] + 2 * nk
        r0, t0, nt = tile(n)
        ra, rb, rc, rd = _rows4(0, r0, n_out)
        return r0, t0, nt, ra, rb, rc, rd

    def row_sums(acc, k):
        """Sum token slot k's 4 row accumulators over the warp, then over the block's nw warps (split K, fixed
        order). Thread i < R gets its row's sum v and that of its RoPE partner row i ^ 1 (summed alike)."""
        a0, a1, a2, a3 = acc[R * k], acc[R * k + 1], acc[R * k + 2], acc[R * k + 3]
        for o in (16, 8, 4, 2, 1):
            a0 += cuda.shfl_xor_sync(0xFFFFFFFF, a0, o)
            a1 += cuda.shfl_xor_sync(0xFFFFFFFF, a1, o)
            a2 += cuda.shfl_xor_sync(0xFFFFFFFF, a2, o)
            a3 += cuda.shfl_xor_sync(0xFFFFFFFF, a3, o)
        i = cuda.threadIdx.x
        if nw == 1:  # every lane holds the 4 sums
            v = a0 if i == 0 else (a1 if i == 1 else (a2 if i == 2 else a3))
            vp = a1 if i == 0 else (a0 if i == 1 else (a3 if i == 2 else a2))
        else:
            part = cuda.shared.array((tt, nw, R), float32)
            if (i & 31) == 0:
                part[k, i >> 5, 0] = a0
                part[k, i >> 5, 1] = a1
                part[k, i >> 5, 2] = a2
                part[k, i >> 5, 3] = a3
            cuda.syncthreads()
            v = vp = float32(0.0)
            if i < R:
                for w in range(nw):
                    v += part[k, w, i]
                for w in range(nw):
                    vp += part[k, w, i ^ 1]
        return v, vp

    def store(y, t, k, r0, acc, add):
        """Thread i < R writes (or adds to) y[t, r0 + i], token slot k's sum for that row, if the row exists."""
        v, vp = row_sums(acc, k)
        i = cuda.threadIdx.x
        if i < R and r0 + i < y.shape[1]:
            _put(y, t, r0 + i, v, add)

    def store_all(y, t0, nt, r0, acc, add, ep):
        """store for each of the block's nt tokens, or with ep[5] = nk > 0 the attention epilogue (attn_put)."""
        for k in range(tt):
            if k < nt:
                if ep[5] > 0:
                    v, vp = row_sums(acc, k)
                    i = cuda.threadIdx.x
                    if i < R and r0 + i < y.shape[1] + 2 * ep[5]:
                        attn_put(y, t0 + k, r0 + i, v, vp, ep)
                else:
                    store(y, t0 + k, k, r0, acc, add)

    def gemv_q45(q, h, d, m, xq, xd, xs, y, off, add, pos, slots, inv_freq, kc, vc, nk):
        """y[t, r] (+)= sum_k W[r, k] * x[t, k], W in the q4 / q5 family, x from quantize_x (xq read as int64).

        Per 32-block: xd * d * (sum q*xq - off * sum xq) (+ xd * m * sum xq). A block owns R = 4 rows and up to
        tt tokens (tile); lane l of each of its nw warps takes the 32-blocks w*32 + l, + 32*nw, ... (the warps
        split K), unpacks the 4 rows' words once and feeds them to its tokens' dot products (accumulators in
        registers). Every (row, token) value is computed by the same instructions in the same order whatever n
        is, so a token's result does not depend on the other rows of its batch (batched decode = decode alone).
        With nk > 0 this is the fused q/k/v projection (attn_put): y is q (n, h * d), W has h * d + 2 * nk rows.
        """
        r0, t0, nt, ra, rb, rc, rd = block_rows(y, nk)
        _prefetch_rows(q, h, d, m, ra, rb, rc, rd, d.shape[1], 32 * nw, 2, 1, has_h, has_m)
        wait_prior_kernel()
        acc = cuda.local.array(nacc, float32)
        for i in range(nacc):
            acc[i] = float32(0.0)
        for b in range(cuda.threadIdx.x, d.shape[1], 32 * nw):
            wa, wb, wc, wd, dv, mv = _blk45(q, h, d, m, ra, rb, rc, rd, b, has_h, has_m)
            for i in range(tt):
                if i < nt:
                    _acc45(acc, i, xq, xd, xs, t0 + i, b, wa, wb, wc, wd, dv, mv, off)
        store_all(y, t0, nt, r0, acc, add, (pos, slots, inv_freq, kc, vc, nk))

    def gemv_q8(q, d, m, xq, xd, xs, y, add, pos, slots, inv_freq, kc, vc, nk):
        """gemv_q45 for the q8 family (int8 weights read as int64, groups of 32 or 16)."""
        r0, t0, nt, ra, rb, rc, rd = block_rows(y, nk)
        _prefetch_rows(q, q, d, m, ra, rb, rc, rd, q.shape[1] // 4, 32 * nw, 4, 2 if g16 else 1, False, has_m)
        wait_prior_kernel()
        acc = cuda.local.array(nacc, float32)
        for i in range(nacc):
            acc[i] = float32(0.0)
        for b in range(cuda.threadIdx.x, xd.shape[1], 32 * nw):
            wa, wb, wc, wd = _words8(q, ra, b), _words8(q, rb, b), _words8(q, rc, b), _words8(q, rd, b)
            for i in range(tt):
                if i < nt:
                    _acc8(acc, i, xq, xd, xs, t0 + i, b, wa, wb, wc, wd, d, m, ra, rb, rc, rd, g16, has_m)
        store_all(y, t0, nt, r0, acc, add, (pos, slots, inv_freq, kc, vc, nk))

    def gemv_id_q45(q, h, d, m, ids, xdiv, xq, xd, xs, y, off):
        """Expert GEMV (llama.cpp's mul_mat_id): y[p, r] = sum_k W_e[r, k] * x[p // xdiv, k], e = ids[p // K, p % K],
        for each (token, slot) pair p = t * K + j, W the stacked experts (GExperts: expert e owns rows e * n_out ..).
        The expert ids are read from device memory (a CUDA graph stays right as routing changes). Block (row
        group, p) as gemv_q45 with one token per block."""
        wait_prior_kernel()
        p, r0, ra, rb, rc, rd = _expert_rows(ids, y.shape[1])
        acc = cuda.local.array(R, float32)
        for j in range(R):
            acc[j] = float32(0.0)
        for b in range(cuda.threadIdx.x, d.shape[1], 32 * nw):
            wa, wb, wc, wd, dv, mv = _blk45(q, h, d, m, ra, rb, rc, rd, b, has_h, has_m)
            _acc45(acc, 0, xq, xd, xs, p // xdiv, b, wa, wb, wc, wd, dv, mv, off)
        store(y, p, 0, r0, acc, False)

    def gemv_id_q8(q, d, m, ids, xdiv, xq, xd, xs, y):
        """gemv_id_q45 for the q8 family."""
        wait_prior_kernel()
        p, r0, ra, rb, rc, rd = _expert_rows(ids, y.shape[1])
        acc = cuda.local.array(R, float32)
        for j in range(R):
            acc[j] = float32(0.0)
        for b in range(cuda.threadIdx.x, xd.shape[1], 32 * nw):
            wa, wb, wc, wd = _words8(q, ra, b), _words8(q, rb, b), _words8(q, rc, b), _words8(q, rd, b)
            _acc8(acc, 0, xq, xd, xs, p // xdiv, b, wa, wb, wc, wd, d, m, ra, rb, rc, rd, g16, has_m)
        store(y, p, 0, r0, acc, False)

    tile = cuda.jit(device=True, inline=True)(tile)
    block_rows = cuda.jit(device=True, inline=True)(block_rows)
    row_sums = cuda.jit(device=True, inline=True)(row_sums)
    store = cuda.jit(device=True, inline=True)(store)
    store_all = cuda.jit(device=True, inline=True)(store_all)
    kernels = {"gemv_q45": gemv_q45, "gemv_q8": gemv_q8, "gemv_id_q45": gemv_id_q45, "gemv_id_q8": gemv_id_q8}
    for name, f in kernels.items():  # one compiled kernel per block shape and flavour
        flav = f"h{int(has_h)}m{int(has_m)}" if "q45" in name else f"g{16 if g16 else 32}m{int(has_m)}"
        f.__name__ = f"{name}_w{nw}_{flav}" if name.startswith("gemv_id") else f"{name}_w{nw}_t{tt}_{flav}"
    return kernels


def _store4(y, t, r0, n_out, a0, a1, a2, a3, add):
    """Sum each of 4 row accumulators over the warp, then over the block's NW warps (split K); thread i < R
    writes (or adds to) row r0 + i if it exists."""
    for o in (16, 8, 4, 2, 1):
        a0 += cuda.shfl_xor_sync(0xFFFFFFFF, a0, o)
        a1 += cuda.shfl_xor_sync(0xFFFFFFFF, a1, o)
        a2 += cuda.shfl_xor_sync(0xFFFFFFFF, a2, o)
        a3 += cuda.shfl_xor_sync(0xFFFFFFFF, a3, o)
    part = cuda.shared.array((NW, R), float32)
    warp = cuda.threadIdx.x >> 5
    if (cuda.threadIdx.x & 31) == 0:
        part[warp, 0] = a0
        part[warp, 1] = a1
        part[warp, 2] = a2
        part[warp, 3] = a3
    cuda.syncthreads()
    i = cuda.threadIdx.x
    if i < R and r0 + i < n_out:
        acc = float32(0.0)
        for w in range(NW):
            acc += part[w, i]
        _put(y, t, r0 + i, acc, add)


def gemv_float(w, x, y, add):
    """y[t, r] (+)= sum_k w[r, k] * x[t, k] for float16 / float32 weights, float32 x."""
    wait_prior_kernel()
    n_out, n_in = w.shape
    t = cuda.blockIdx.y
    r0 = cuda.blockIdx.x * R
    ra, rb, rc, rd = _rows4(0, r0, n_out)
    a0 = a1 = a2 = a3 = float32(0.0)
    for k in range(cuda.threadIdx.x, n_in, 32 * NW):
        xv = x[t, k]
        a0 += float32(w[ra, k]) * xv
        a1 += float32(w[rb, k]) * xv
        a2 += float32(w[rc, k]) * xv
        a3 += float32(w[rd, k]) * xv
    _store4(y, t, r0, n_out, a0, a1, a2, a3, add)


def _rows4(base, r0, n_out):
    """The 4 rows base + r0 .. base + r0 + 3 of a block, clamped to the matrix's last row (the clamped ones are
    computed and not stored)."""
    return base + min(r0, n_out - 1), base + min(r0 + 1, n_out - 1), base + min(r0 + 2, n_out - 1), \
        base + min(r0 + 3, n_out - 1)


def _expert_rows(ids, n_out):
    """An expert GEMV block's (token, slot) pair p = blockIdx.y, its first row r0 within the expert, and the
    4 rows it reads in the stacked matrix (expert ids[p // K, p % K] owns rows e * n_out ..; clamped)."""
    kk = ids.shape[1]
    p = cuda.blockIdx.y
    base = ids[p // kk, p % kk] * n_out
    r0 = cuda.blockIdx.x * R
    ra, rb, rc, rd = _rows4(base, r0, n_out)
    return p, r0, ra, rb, rc, rd


def gemv_id_float(w, ids, xdiv, x, y):
    """gemv_id_q45 for float16 / float32 experts and float32 x."""
    wait_prior_kernel()
    n_out = y.shape[1]
    p, r0, ra, rb, rc, rd = _expert_rows(ids, n_out)
    tx = p // xdiv
    a0 = a1 = a2 = a3 = float32(0.0)
    for k in range(cuda.threadIdx.x, w.shape[1], 32 * NW):
        xv = x[tx, k]
        a0 += float32(w[ra, k]) * xv
        a1 += float32(w[rb, k]) * xv
        a2 += float32(w[rc, k]) * xv
        a3 += float32(w[rd, k]) * xv
    _store4(y, p, r0, n_out, a0, a1, a2, a3, False)


def _h4(v0, v1, v2, v3):
    """Four float32 values rounded to float16 and packed into one int64 (element 0 in the low bits)."""
    return (int64(libdevice.float2half_rn(v0)) & 0xFFFF) | ((int64(libdevice.float2half_rn(v1)) & 0xFFFF) << 16) | \
        ((int64(libdevice.float2half_rn(v2)) & 0xFFFF) << 32) | ((int64(libdevice.float2half_rn(v3)) & 0xFFFF) << 48)


def _thread_word(q):
    """The (row, word) of q that this thread of a one-thread-per-word grid owns (row past the end: no word)."""
    e = cuda.grid(1)
    r = e // q.shape[1]
    return r, e - r * q.shape[1]


def dequant_h_q45(q, h, d, m, off, has_h, has_m, out):
    """out = W as float16 (out read as int64: 4 halves per word) for the q4 / q5 family: the prefill's cuBLAS
    input. A thread per uint32 word of q: its low nibbles are elements 4j..4j+3 of a 32-block and its high
    nibbles 16+4j.., two 8-byte stores; a warp writes 512 consecutive bytes."""
    wait_prior_kernel()
    r, wi = _thread_word(q)
    if r >= q.shape[0]:
        return
    b = wi >> 2
    j = wi & 3
    word = int64(q[r, wi])
    hb = int64(h[r, b] >> (4 * j)) if has_h else int64(0)
    dd = float32(d[r, b])
    mm = float32(m[r, b]) if has_m else float32(0.0)
    v = cuda.local.array(8, float32)
    for k in range(4):
        lo = (word >> (8 * k)) & 15
        hi = (word >> (8 * k + 4)) & 15
        if has_h:
            lo |= ((hb >> k) & 1) << 4
            hi |= ((hb >> (16 + k)) & 1) << 4
        v[k] = dd * float32(lo - off) + mm
        v[4 + k] = dd * float32(hi - off) + mm
    out[r, 8 * b + j] = _h4(v[0], v[1], v[2], v[3])
    out[r, 8 * b + 4 + j] = _h4(v[4], v[5], v[6], v[7])


def dequant_h_q8(q, d, m, g, has_m, out):
    """out = W as float16 (read as int64) for the q8 family (q read as int64: 8 elements per thread, one group)."""
    wait_prior_kernel()
    r, wi = _thread_word(q)
    if r >= q.shape[0]:
        return
    gi = (8 * wi) // g
    dd = float32(d[r, gi])
    mm = float32(m[r, gi]) if has_m else float32(0.0)
    word = q[r, wi]
    v = cuda.local.array(8, float32)
    for k in range(8):
        v[k] = dd * float32(int8(word >> (8 * k))) + mm
    out[r, 2 * wi] = _h4(v[0], v[1], v[2], v[3])
    out[r, 2 * wi + 1] = _h4(v[4], v[5], v[6], v[7])


def dequant_q45(q, h, d, m, off, has_h, has_m, rows, scale, out):
    """out[i, :] = W[rows[i], :] * scale as float32 for the q4 / q5 family (the embedding lookup).  One block per
    output row; a thread per byte of q (elements j and j + 16 of a 32-block)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, 4 * q.shape[1], cuda.blockDim.x):
        b = e >> 4
        j = e & 15
        byte = (q[r, 4 * b + (j >> 2)] >> (8 * (j & 3))) & 255
        lo = byte & 15
        hi = byte >> 4
        if has_h:
            hb = h[r, b]
            lo |= ((hb >> j) & 1) << 4
            hi |= ((hb >> (16 + j)) & 1) << 4
        dd = float32(d[r, b])
        mm = float32(m[r, b]) if has_m else float32(0.0)
        out[i, 32 * b + j] = (dd * float32(lo - off) + mm) * scale
        out[i, 32 * b + 16 + j] = (dd * float32(hi - off) + mm) * scale


def dequant_q8(q, d, m, g, has_m, rows, scale, out):
    """out[i, :] = W[rows[i], :] * scale as float32 for the q8 family (q: int8 elements, groups of g)."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, q.shape[1], cuda.blockDim.x):
        gi = e // g
        v = float32(d[r, gi]) * float32(q[r, e])
        if has_m:
            v += float32(m[r, gi])
        out[i, e] = v * scale


def dequant_float(w, rows, scale, out):
    """out[i, :] = w[rows[i], :] * scale."""
    wait_prior_kernel()
    i = cuda.blockIdx.x
    r = rows[i]
    for e in range(cuda.threadIdx.x, w.shape[1], cuda.blockDim.x):
        out[i, e] = float32(w[r, e]) * scale


# Signatures: compiled eagerly (fast dispatch, nothing compiles during graph capture) and by the CI test
# (tests/test_cuda_compile.py) with compile_ptx, which needs no GPU.
_A = "[:, ::1]"
_EP = "int64[::1], int64[::1], float64[::1], float16[:, :, :, ::1], float16[:, :, :, ::1], int32"  # attn_put's
_GEMV_SIGS = {
    "gemv_q45": f"void(int64{_A}, uint32{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32{_A}, "
                f"float32{_A}, int32, boolean, {_EP})",
    "gemv_q8": f"void(int64{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32{_A}, float32{_A}, boolean, "
               f"{_EP})",
    "gemv_id_q45": f"void(int64{_A}, uint32{_A}, float16{_A}, float16{_A}, int64{_A}, int64, int64{_A}, "
                   f"float32{_A}, int32{_A}, float32{_A}, int32)",
    "gemv_id_q8": f"void(int64{_A}, float16{_A}, float16{_A}, int64{_A}, int64, int64{_A}, float32{_A}, "
                  f"int32{_A}, float32{_A})",
}


def _gemv_sigs() -> dict:
    """{kernel: [signature]} for every GEMV the model may launch: each block shape, token tile and flavour."""
    out = {}
    for fam, flavours in (("q45", Q45_FLAVOURS), ("q8", Q8_FLAVOURS)):
        for a, b in flavours:
            flags = dict(has_h=a, has_m=b) if fam == "q45" else dict(g16=a, has_m=b)
            for nw in NWS:
                for tt in (1, TT):
                    ks = gemv_kernels(nw, tt, **flags)
                    out[ks[f"gemv_{fam}"]] = [_GEMV_SIGS[f"gemv_{fam}"]]
                    if (nw, tt) == (NW, 1):  # the expert GEMVs: one token per block, NW warps
                        out[ks[f"gemv_id_{fam}"]] = [_GEMV_SIGS[f"gemv_id_{fam}"]]
    return out


SIGS = {
    quantize_x: [f"void(float32{_A}, int8{_A}, float32{_A}, int32{_A})"],
    **_gemv_sigs(),
    gemv_float: [f"void({w}{_A}, float32{_A}, float32{_A}, boolean)" for w in ("float16", "float32")],
    gemv_id_float: [f"void({w}{_A}, int64{_A}, int64, float32{_A}, float32{_A})" for w in ("float16", "float32")],
    dequant_h_q45: [f"void(uint32{_A}, uint32{_A}, float16{_A}, float16{_A}, int32, boolean, boolean, int64{_A})"],
    dequant_h_q8: [f"void(int64{_A}, float16{_A}, float16{_A}, int32, boolean, int64{_A})"],
    dequant_q45: [f"void(uint32{_A}, uint32{_A}, float16{_A}, float16{_A}, int32, boolean, boolean, int64[::1], "
                  f"float32, float32{_A})"],
    dequant_q8: [f"void(int8{_A}, float16{_A}, float16{_A}, int32, boolean, int64[::1], float32, float32{_A})"],
    dequant_float: [f"void({w}{_A}, int64[::1], float32, float32{_A})" for w in ("float16", "float32")],
}
for _f in (quant32, half_clamped, half_pos, gemv_input, _spread4, _w45, _prefetch_rows, _blk45, _words8,
           _dot, _acc45, _v8, _acc8, _put, rope_cos_sin, attn_put, _store4, _h4, _thread_word, _rows4, _expert_rows):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


# ---------------------------------------------------------------------------------------------------------------
# Launchers (all on the backend's stream; CuPy arrays are passed to Numba through __cuda_array_interface__)
# ---------------------------------------------------------------------------------------------------------------

def quantize(x, stream):
    """x (n, k) float32 -> (xq int8 (n, k), xd (n, k/32), xs (n, k/16)), the int8 form the GEMVs read."""
    import cupy as cp
    n, k = x.shape
    xq = cp.empty((n, k), cp.int8)
    xd = cp.empty((n, k // 32), cp.float32)
    xs = cp.empty((n, k // 16), cp.int32)
    warps = n * (k // 32)
    K["quantize_x"][math.ceil(warps / 8), 256, stream](x, xq, xd, xs)
    return xq, xd, xs


_NO_EP = []  # the epilogue arguments of a plain GEMV: (1,)-sized dummies, made once


def _no_ep():
    import cupy as cp
    if not _NO_EP:
        i, f, h = cp.zeros(1, cp.int64), cp.zeros(1, cp.float64), cp.zeros((1, 1, 1, 1), cp.float16)
        _NO_EP.append((i, i, f, h, h, 0))
    return _NO_EP[0]


def gmatmul(w: GMatrix, x, stream, xform=None, out=None, mma_min_n: int = 0):
    """y = x @ W.T   x: (n, n_in) float32 -> (n, n_out) float32; with out, out += x @ W.T instead (returns out).

    xform: x in the form its GEMV reads, when the op that produced x already wrote it (gemv_input): the int8 form
    (xq, xd, xs) of quantize, or the tensor cores' float16 array. mma_min_n > 0: quantized GEMVs of at least that
    many tokens run on the tensor cores (cuda_mma), the others on dp4a."""
    import cupy as cp
    n = x.shape[0]
    add = out is not None
    y = out if add else cp.empty((n, w.n_out), cp.float32)
    if n > GEMV_MAX_N:
        gemm_nt(x.astype(cp.float16), dequant_f16(w, stream), y, add)
    elif w.family == "float":
        K["gemv_float"][(math.ceil(w.n_out / R), n), 32 * NW, stream](w.q, x, y, add)
    else:
        _gemv(w, x, xform, y, stream, add, _no_ep(), mma_min_n)
    return y


def on_tensor_cores(n: int, n_in: int, mma_min_n: int) -> bool:
    """Whether a quantized GEMV of n tokens over rows of n_in runs on the tensor cores (cuda_mma, x in float16):
    from mma_min_n tokens on (0: never), for rows of an even number of 32-blocks (its 4- and 8-byte copies of
    scales). The op before the GEMV asks the same, to write the form the GEMV reads."""
    return 0 < mma_min_n <= n and (n_in // 32) % 2 == 0


def _gemv(w: GMatrix, x, xform, y, stream, add: bool, ep, mma_min_n: int = 0) -> None:
    """The quantized GEMV kernel for w's flavour and shape: y (n, rows) (+)= x @ W.T, or with ep the fused
    attention epilogue (gmatmul_qkv_rope). On the tensor cores (cuda_mma.gemv_mma: x in float16) where
    on_tensor_cores says so, else on dp4a with x's int8 form. xform: either form if written already (gmatmul); the
    one needed is made here otherwise."""
    import cupy as cp
    n = y.shape[0]
    quant = xform if isinstance(xform, tuple) else None
    if on_tensor_cores(n, w.n_in, mma_min_n):
        from minirs.kernels.cuda_mma import gemv_mma
        gemv_mma(w, x, None if quant is not None else xform, y, stream, add, ep)
        return
    xq, xd, xs = quant if quant is not None else quantize(x, stream)
    tt = 1 if n == 1 else TT  # one token: a kernel with TT - 1 fewer token slots (fewer registers)
    grid = math.ceil(w.n_out / R) * math.ceil(n / tt)  # row groups x token tiles (tile)
    nw = gemv_warps(w)
    kernel = K[gemv_name(f"gemv_{w.family}", w, nw, tt)][grid, 32 * nw, stream]
    if w.family == "q45":
        kernel(w.q.view(cp.int64), w.h, w.d, w.m, xq.view(cp.int64), xd, xs, y, w.off, add, *ep)
    else:
        kernel(w.q.view(cp.int64), w.d, w.m, xq.view(cp.int64), xd, xs, y, add, *ep)


def gmatmul_qkv_rope(w: GMatrix, x, stream, xform, pos, slots, inv_freq, kc, vc, mma_min_n: int = 0):
    """The fused q/k/v projection for decode (n <= GEMV_MAX_N, w quantized, its rows q (h * d) then k and v
    (hkv * d each)): returns q (n, h * d) rotated, and writes k (rotated) and v into the caches at row pos % L of
    each token's slot. RoPE on adjacent pairs (2i, 2i + 1) only, no biases, no q/k norms: the llama family
    (cuda_ops.attn_inputs covers the rest). One kernel instead of the GEMV and attn_inputs. xform: as gmatmul."""
    import cupy as cp
    n = x.shape[0]
    nk = kc.shape[1] * kc.shape[3]
    qo = cp.empty((n, w.n_out - 2 * nk), cp.float32)
    _gemv(w, x, xform, qo, stream, False, (pos, slots, inv_freq, kc, vc, nk), mma_min_n)
    return qo


def dequant_f16(w: GMatrix, stream):
    """The whole of W as a float16 (n_out, n_in) array (F16 weights as they are)."""
    import cupy as cp
    if w.family == "float":
        return w.q if w.q.dtype == cp.float16 else w.q.astype(cp.float16)
    out = cp.empty((w.n_out, w.n_in // 4), cp.int64)  # 4 halves per int64
    if w.family == "q45":
        grid = math.ceil(w.q.size / DQ_THREADS)  # a thread per uint32 word
        K["dequant_h_q45"][grid, DQ_THREADS, stream](w.q, w.h, w.d, w.m, w.off, w.has_h, w.has_m, out)
    else:
        q = w.q.view(cp.int64)
        K["dequant_h_q8"][math.ceil(q.size / DQ_THREADS), DQ_THREADS, stream](q, w.d, w.m, w.g, w.has_m, out)
    return out.view(cp.float16)


def dequant(w: GMatrix, rows, scale: float, stream):
    """Rows `rows` (int64 CuPy) of W, times scale, as a float32 (len(rows), n_in) array (embedding lookups)."""
    import cupy as cp
    out = cp.empty((rows.shape[0], w.n_in), cp.float32)
    grid = (rows.shape[0],)
    if w.family == "q45":
        K["dequant_q45"][grid, DQ_THREADS, stream](w.q, w.h, w.d, w.m, w.off, w.has_h, w.has_m, rows, scale, out)
    elif w.family == "q8":
        K["dequant_q8"][grid, DQ_THREADS, stream](w.q, w.d, w.m, w.g, w.has_m, rows, scale, out)
    else:
        K["dequant_float"][grid, DQ_THREADS, stream](w.q, rows, scale, out)
    return out


def gmatmul_id(ex: GExperts, x, ids, stream, xquant=None):
    """y[t, j] = x[t] (x (n, n_in)) or x[t, j] (x (n, K, n_in)) @ W[ids[t, j]].T -> y (n, K, n_out) float32.

    n <= GEMV_MAX_N: one expert-GEMV launch over every (token, slot) pair, ids read on the GPU (graph-capturable).
    Larger n (prefill): the ids come to the host, and each expert used multiplies the rows routed to it (its rows
    dequantized to float16, cuBLAS), as the CPU backend does.
    """
    import cupy as cp
    n, kk = ids.shape
    x2 = x.reshape(-1, x.shape[-1])  # (n or n * K, n_in)
    xdiv = kk if x.ndim == 2 else 1  # pair p reads x2 row p // xdiv
    w, n_out = ex.w, ex.n_out
    y = cp.empty((n * kk, n_out), cp.float32)
    if n <= GEMV_MAX_N:
        grid = (math.ceil(n_out / R), n * kk)
        if w.family == "float":
            K["gemv_id_float"][grid, 32 * NW, stream](w.q, ids, xdiv, x2, y)
            return y.reshape(n, kk, n_out)
        xq, xd, xs = xquant if xquant is not None else quantize(x2, stream)
        xq = xq.view(cp.int64)
        kernel = K[gemv_name(f"gemv_id_{w.family}", w)][grid, 32 * NW, stream]
        if w.family == "q45":
            kernel(w.q.view(cp.int64), w.h, w.d, w.m, ids, xdiv, xq, xd, xs, y, w.off)
        else:
            kernel(w.q.view(cp.int64), w.d, w.m, ids, xdiv, xq, xd, xs, y)
        return y.reshape(n, kk, n_out)
    cp.cuda.get_current_stream().synchronize()
    flat = cp.asnumpy(ids).reshape(-1)
    for e in np.unique(flat):
        sel = np.nonzero(flat == e)[0]  # flat (t, j) pairs routed to expert e
        ye = cp.empty((len(sel), n_out), cp.float32)
        gemm_nt(x2[cp.asarray(sel // xdiv)].astype(cp.float16), dequant_f16(ex.expert(int(e)), stream), ye, False)
        y[cp.asarray(sel)] = ye
    return y.reshape(n, kk, n_out)
