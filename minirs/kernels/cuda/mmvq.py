"""The quantized GEMVs on dp4a: y = x @ W.T for 1 to GEMV_MAX_N tokens, W in the q4 / q5 / q8 families (the table
in matmul.py), x in the int8 form of quantize.quantize_x (llama.cpp's mmvq.cu does the same).

    launch_gemv(w, xq, xd, xs, y, add, ep, stream)            # y (n, n_out) (+)= x @ W.T, or the q/k/v epilogue
    launch_gemv_id(w, ids, xdiv, xq, xd, xs, y, stream)       # the expert GEMV (mul_mat_id): W = expert ids[t, j]

Each lane takes one 32-block at a time (weights and x read with 8-byte loads), dp4a (PTX, emitted inline) does 4
int8 MACs, and each warp owns 4 rows so each x word loaded serves 4 rows; a block's 1 to 4 warps split K
(gemv_warps, by the matrix's shape). A block serves one token (n = 1) or up to TT = 4 tokens from the same
unpacked weight words (batched decode), and each token's result is bit-identical whatever the batch. Each thread
prefetches its first weights into L1 before it waits for the kernel before it (PREFETCH_BLOCKS). The weight
flavour (q5 fifth bits, group offsets, q8 groups of 16) is compiled in, not tested at run time: a GEMV's registers
bound its occupancy (one Q4_0 token: 80 registers, 72 before the weight prefetch; 14336 x 4096 in 18.9 us under
Nsight, 25.9 us with the old 168-register kernel). With add, the result is added into y (the residual stream) as
it is written; with ep (rope.attn_put's arguments, nk > 0) the rows go through the fused q/k/v epilogue instead.
"""

import math

from numba import cuda, float32, int32

from minirs.kernels.cuda.intrinsics import dp4a, prefetch_line, wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.rope import EP_SIG, attn_put
from minirs.kernels.cuda.weights import GMatrix

R = 4  # rows per warp in the GEMVs
TT = 4  # tokens per block in the quantized GEMVs: each weight word loaded and unpacked feeds TT tokens' dots
NW = 4  # warps per block in the float and expert GEMVs: they split K of the block's R rows
NWS = (1, 2, 3, 4)  # warps per block of the quantized GEMVs, chosen per matrix by gemv_warps
# The weights a quantized GEMV thread prefetches into L1 before it waits for the kernel before it (programmatic
# dependent launch, intrinsics.wait_prior_kernel): its first PREFETCH_BLOCKS 32-blocks of each row. H100
# tg128 (SmolLM2 / 7B Q4_0): 1 block 1,154 / 400, none 1,073 / 382, 2 blocks 1,158 / 395, all 1,155 / 386; into
# L2 instead of L1 1,137 / 399 (BENCHMARKS.md)
PREFETCH_BLOCKS = 1


def gemv_warps(w: "GMatrix") -> int:
    """Warps per block (each block owns R rows, its warps split K) for the quantized GEMV of w.

    A small matrix in one warp per row group leaves the GPU short of loads in flight (4096 x 4096 Q4_0: 1,024
    warps, 7.4 us), so the warps double until there are ~2,048 of them (5.1 us), then grow one at a time while the
    whole grid still fits in one wave of resident warps (wave: the kernel's registers decide how many an SM holds),
    as long as every lane of the block has two 32-blocks of a row to read (H100 timings of each shape: BENCHMARKS.md,
    session 5, bench/gpu_check.py --sweep). It depends on the matrix (and the GPU) only, never on the batch: the
    split-K sum order is part of a row's result, and a row must not change with the rows batched with it."""
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


M4 = int32(0x0F0F0F0F)  # the low nibble of each byte of an int32 word


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


# Signatures: compiled eagerly (fast dispatch, nothing compiles during graph capture) and by the CI test
# (tests/test_cuda_compile.py) with compile_ptx, which needs no GPU.
_A = "[:, ::1]"
_GEMV_SIGS = {
    "gemv_q45": f"void(int64{_A}, uint32{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32{_A}, "
                f"float32{_A}, int32, boolean, {EP_SIG})",
    "gemv_q8": f"void(int64{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32{_A}, float32{_A}, boolean, "
               f"{EP_SIG})",
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


SIGS = _gemv_sigs()
for _f in (_spread4, _w45, _prefetch_rows, _blk45, _words8, _dot, _acc45, _v8, _acc8, _put, _rows4, _expert_rows):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)


def launch_gemv(w: GMatrix, xq, xd, xs, y, add: bool, ep, stream) -> None:
    """y (n, rows) (+)= x @ W.T on dp4a, x in its int8 form (xq, xd, xs); ep: the q/k/v epilogue's arguments
    (matmul._no_ep() for a plain GEMV)."""
    import cupy as cp
    n = y.shape[0]
    tt = 1 if n == 1 else TT  # one token: a kernel with TT - 1 fewer token slots (fewer registers)
    grid = math.ceil(w.n_out / R) * math.ceil(n / tt)  # row groups x token tiles (tile)
    nw = gemv_warps(w)
    kernel = K[gemv_name(f"gemv_{w.family}", w, nw, tt)][grid, 32 * nw, stream]
    if w.family == "q45":
        kernel(w.q.view(cp.int64), w.h, w.d, w.m, xq.view(cp.int64), xd, xs, y, w.off, add, *ep)
    else:
        kernel(w.q.view(cp.int64), w.d, w.m, xq.view(cp.int64), xd, xs, y, add, *ep)


def launch_gemv_id(w: GMatrix, ids, xdiv: int, xq, xd, xs, y, stream) -> None:
    """The expert GEMV: y[p] = x[p // xdiv] @ W_e.T, e = ids[p // K, p % K], for every (token, slot) pair p of ids
    (n, K); w: the stacked experts' rows (GExperts.w), y (n * K, n_out)."""
    import cupy as cp
    n_out = y.shape[1]
    grid = (math.ceil(n_out / R), y.shape[0])
    kernel = K[gemv_name(f"gemv_id_{w.family}", w)][grid, 32 * NW, stream]
    if w.family == "q45":
        kernel(w.q.view(cp.int64), w.h, w.d, w.m, ids, xdiv, xq.view(cp.int64), xd, xs, y, w.off)
    else:
        kernel(w.q.view(cp.int64), w.d, w.m, ids, xdiv, xq.view(cp.int64), xd, xs, y)
