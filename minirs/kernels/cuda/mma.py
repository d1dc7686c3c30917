"""Batched decode GEMVs on the float16 tensor cores: y = x @ W.T for 2 to GEMV_MAX_N tokens, W quantized (the q4 / q5
and q8 families of matmul.py), x in float16 (written by the op before the GEMV, quantize.gemv_input, or else
by half_x).

The dp4a GEMVs (mmvq) pay ~15 instructions per (row, 32-block, token), so 16 tokens cost ~5-15x one token.
`mma.sync.aligned.m16n8k16` (intrinsics.mma_f16) multiplies a 16 x 16 float16 tile of W by a 16 x 8 tile of
x and adds it to 16 x 8 float32 sums in one warp instruction. Each lane dequantizes its share of W to float16 once,
     w = d * (q - off) + m       (d, m: the block's scale and offset; off: 8 / 16 for Q4_0 / Q5_0, else 0)
and the accumulators stay in the tensor cores' float32 across all of K: the work per 32-block of 16 rows is fixed
(~30 instructions a lane) plus 2 mmas per 8 tokens. (An int8 form, mma.m16n8k32 on int8 x, needed a float
scaling of every (row, token) sum per 32-block instead, ~4 instructions per slot: 2x slower at 32 tokens, 1.2x at
16, BENCHMARKS.md.)

Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), lane = 4g + c: the lane gives
A's rows g and g + 8 at k = 2c, 2c + 1 and 2c + 8, 2c + 9, and B's token g at the same k, and gets D's rows g, g + 8
for tokens 2c, 2c + 1. The order of k inside a 16-element step is free as long as W and x agree, so lane c takes
elements 4c..4c+3 of each half of a 32-block: k = 2c, 2c + 1, 2c + 8, 2c + 9 <-> elements 4c, 4c + 2, 4c + 1, 4c + 3.
- q4 / q5: word c of a block holds elements 4c..4c+3 (low nibbles) and 16+4c.. (high nibbles). Masking nibbles
  0 and 2 (or 1 and 3, or 4 and 6, ...) into the mantissa of the float16 1024 (0x6400) gives 1024 + q for two
  elements at once, exact; subtracting 1024 + off and one fma with (d, d) and (m, m) finish the pair.
- q8: words c and 4 + c of a block, one per half (each with its own scale in the 16-groups of Q6_K / Q3_K /
  Q2_K); bytes 0 and 2 (or 1 and 3) of the word, offset by 128 into unsigned, go into the mantissa of 1024.
- x: its float16 form stores each 4 elements as (x0, x2, x1, x3), so a lane's B words for a half are one 8-byte
  load.

Memory: a block of MW = 4 warps owns 64 rows (16 per warp) and walks K in chunks of U 32-blocks of each row (8
q4 blocks for up to 16 tokens, else 4; 4 q8 blocks). Each chunk of W, of x (every token's same elements, shared by
the four warps) and of the scales is copied to shared memory with cp.async (no registers held), in two stages:
chunk k + 1 is in flight while chunk k is multiplied. Each thread works out its copies' addresses once (copies);
per chunk it only adds offsets (index arithmetic redone per chunk was a third of the loop's instructions). Rows
and tokens are padded so that a fragment read hits distinct banks, and shared-memory offsets are uint64, so that
base + constant folds into each load. Small matrices split K over gridDim.y blocks (mma_splits, up to one wave of
MMA_WAVE blocks per SM), each summing a contiguous span of whole chunks (split_span) and writing its partial sums;
the last block of a row group to finish (a threadfence and an atomic count, as attention.py's split attention) adds them
in split order and writes y. The order never depends on which block finishes last.

A row's value depends only on its row of W and its token of x, never on n, on the other tokens or on the row's
place in the block: each (row, token) sum goes through the same mmas with the same operands in the same order.
So batched rows are bit-identical to the row computed alone by this kernel. They differ from the dp4a GEMV (x in
int8 there, float16 here), which is why the scheduler's row_invariant mode keeps dp4a for every n
(CudaBackend.batch_invariant). Needs an even number of 32-blocks per row (the 4- and 8-byte copies of scales).

On an H100 at 16 tokens it is 2.3-4.2x the dp4a GEMVs on 7B shapes (bench/gpu_check.py --mma; BENCHMARKS.md,
session 7, has the table).
"""

from numba import cuda, float32, int32, uint16, uint32, uint64

from minirs.kernels.cuda.intrinsics import (
    addr_of,
    cp_async,
    cp_async_commit,
    cp_async_wait0,
    cp_async_wait1,
    h2fma,
    h2sub,
    ld_volatile,
    mma_f16,
    shared_addr,
    wait_prior_kernel,
)
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.mmvq import Q8_FLAVOURS, Q45_FLAVOURS, _put
from minirs.kernels.cuda.quantize import to_half
from minirs.kernels.cuda.rope import EP_SIG, attn_put

MW = 4  # warps per block
BR = 16 * MW  # rows per block
NT = 128  # threads per block
MMA_GROUPS = (2, 4)  # token groups of 8 per kernel: n <= 16, n <= 32 (= quantize.GEMV_MAX_N)
SMEM_MAX = 48 * 1024  # static shared memory per block
MMA_WAVE = 4  # resident blocks per SM (shared memory; bench/gpu_check.py --mma times other values)

LO2 = uint32(0x000F000F)  # nibble 0 of each 16-bit half of a word
BYTE2 = uint32(0x00FF00FF)  # byte 0 of each half
F1024 = uint32(0x64006400)  # float16 1024 in both halves: OR-ing an integer v < 1024 into it gives 1024 + v
SIGN8 = uint32(0x80808080)  # flips int8 b to the unsigned b + 128
F1152 = uint32(0x64806480)  # 1024 + 128
BIT4 = uint32(0x10)  # bit 4 of the low half (a q5 fifth bit)
BIT20 = uint32(0x100000)  # bit 4 of the high half


def chunk_blocks(family: str, mg: int) -> int:
    """32-blocks per staged chunk of a row: 128 bytes of q4 (64 for 32 tokens, whose x fills the shared memory),
    128 of q8."""
    return 8 if family == "q45" and mg <= MMA_GROUPS[0] else 4


def mma_splits(n_out: int, n_in: int, sms: int) -> int:
    """Blocks along K (gridDim.y), each taking a contiguous span of whole chunks (split_span): double while the
    grid stays within one wave of MMA_WAVE blocks per SM and each block keeps at least two chunks of 8 32-blocks
    (the pipeline's two stages). The same for every flavour and token count, so a row's sums never depend on
    them."""
    row_blocks = -(-n_out // BR)
    chunks = -(-(n_in // 32) // 8)
    s = 1
    while row_blocks * 2 * s <= MMA_WAVE * sms and chunks >= 4 * s:
        s *= 2
    return s


def split_span(nb: int, S: int) -> int:
    """32-blocks per K split: split s sums blocks [s * span, (s + 1) * span) of a row in order, span a multiple of
    8 (so of every chunk size)."""
    return (nb + 8 * S - 1) // (8 * S) * 8


def _layout(mg: int, q45: bool, f1: bool, has_m: bool) -> dict:
    """Shared-memory pitches and sizes (per stage) of a kernel variant: W rows (WP words), x tokens (XP uint64),
    scales and offsets (SP halves per row), fifth bits (HP words per row)."""
    U = chunk_blocks("q45" if q45 else "q8", mg)
    ww = (4 if q45 else 8) * U  # words of a row's chunk
    spc = 2 * U if (not q45 and f1) else U  # scales per row per chunk
    lay = dict(U=U, WW=ww, WP=ww + 4, SPC=spc, SP=spc + 2, XP=8 * U + 4, HP=U + 2, NTOK=8 * mg)
    lay["bytes"] = 2 * (4 * BR * lay["WP"] + 8 * lay["NTOK"] * lay["XP"] + 2 * BR * lay["SP"] * (1 + has_m)
                        + (4 * BR * lay["HP"] if q45 and f1 else 0))
    return lay


def _pair(v):
    """A float16's bits (uint16) in both halves of a word."""
    u = uint32(v)
    return u | (u << uint32(16))


def _deq(p, c, d2, m2):
    """Two elements 1024 + v (float16 pairs, exact) -> d * (v - (c - 1024)) + m, each."""
    return h2fma(h2sub(p, c), d2, m2)


def _q4_pairs(w, hv, has_h):
    """Word w of a q4 block (nibbles: elements 4c..4c+3 low, 16+4c.. high) and hv = the block's fifth bits >> 4c
    -> 1024 + element pairs (4c, 4c+2), (4c+1, 4c+3), (16+4c, 16+4c+2), (16+4c+1, 16+4c+3)."""
    p0 = (w & LO2) | F1024
    p1 = ((w >> uint32(8)) & LO2) | F1024
    p2 = ((w >> uint32(4)) & LO2) | F1024
    p3 = ((w >> uint32(12)) & LO2) | F1024
    if has_h:
        p0 |= ((hv << uint32(4)) & BIT4) | ((hv << uint32(18)) & BIT20)
        p1 |= ((hv << uint32(3)) & BIT4) | ((hv << uint32(17)) & BIT20)
        p2 |= ((hv >> uint32(12)) & BIT4) | ((hv << uint32(2)) & BIT20)
        p3 |= ((hv >> uint32(13)) & BIT4) | ((hv << uint32(1)) & BIT20)
    return p0, p1, p2, p3


def _q8_pairs(w):
    """Word w of a q8 half block (int8 elements 4c..4c+3) -> 1152 + element pairs (4c, 4c+2), (4c+1, 4c+3)."""
    u = w ^ SIGN8
    return (u & BYTE2) | F1024, ((u >> uint32(8)) & BYTE2) | F1024


for _f in (_pair, _deq, _q4_pairs, _q8_pairs, split_span):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)


def mma_kernel(mg: int, q45: bool, f1: bool, has_m: bool):
    """The tensor-core GEMV for up to 8 * mg tokens and one weight flavour: q45 (f1: has_h, q5 fifth bits) or q8
    (f1: g16, groups of 16); has_m: group offsets. Flags are compile-time (as mmvq.gemv_kernels). Returns
    a plain Python kernel."""
    has_h = q45 and f1
    g16 = (not q45) and f1
    lay = _layout(mg, q45, f1, has_m)
    U, WW, WP, SPC, SP, XP, HP, NTOK = (lay[k] for k in ("U", "WW", "WP", "SPC", "SP", "XP", "HP", "NTOK"))
    nacc = 4 * mg
    n_ws, n_xs, n_d = BR * WP, NTOK * XP, BR * SP
    n_m = n_d if has_m else 2
    n_h = BR * HP if has_h else 2
    WPIECES = WW // 4  # 16-byte pieces of a row's chunk
    XPIECES = 4 * U  # 16-byte pieces of a token's chunk of x (32 U halves)
    DPAIRS = SPC // 2  # 4-byte pieces of a row's scales
    HPAIRS = U // 2  # 8-byte pieces of a row's fifth bits
    # a thread's copies of a chunk: piece p & (PIECES - 1) of rows (or tokens) (p >> SH) + i * (NT >> SH), i < slots
    WSH, XSH, DSH, HSH = (v.bit_length() - 1 for v in (WPIECES, XPIECES, DPAIRS, HPAIRS))
    WROWS, XTOK, DROWS, HROWS = NT >> WSH, NT >> XSH, NT >> DSH, NT >> HSH
    IW, IX, ID, IH = BR * WPIECES // NT, -(-NTOK * XPIECES // NT), BR * DPAIRS // NT, BR * HPAIRS // NT
    assert all(1 << sh == v for sh, v in zip((WSH, XSH, DSH, HSH), (WPIECES, XPIECES, DPAIRS, HPAIRS)))
    assert min(IW, ID, IH) >= 1 and BR * WPIECES % NT == 0 and BR * DPAIRS % NT == 0 and BR * HPAIRS % NT == 0

    def copies(q, h, d, m, xh, ws, xsm, dsm, msm, hsm, n):
        """This thread's copies of chunk 0 into stage 0, as raw addresses worked out once (issue adds the chunk's
        and the stage's offsets): for W, x, the scales (offsets) and the fifth bits, the first slot's source and
        destination, the source stride between slots, how many rows (tokens) are left from the first slot, and
        the bound of the chunk number (past a row's end, a piece is left out and compute skips its blocks)."""
        tid = cuda.threadIdx.x
        r0 = cuda.blockIdx.x * BR
        last = q.shape[0] - 1
        wr, wk = tid >> WSH, tid & (WPIECES - 1)
        w = (addr_of(q, (min(r0 + wr, last), 2 * wk)), shared_addr(ws, (wr * WP + 4 * wk,)), WROWS * q.shape[1] * 8,
             q.shape[0] - r0 - wr, q.shape[1] - 2 * wk)
        xt, xk = tid >> XSH, tid & (XPIECES - 1)
        x = (addr_of(xh, (min(xt, n - 1), 2 * xk)), shared_addr(xsm, (xt * XP + 2 * xk,)), XTOK * xh.shape[1] * 8,
             n - xt, xh.shape[1] - 2 * xk)
        dr, dk = tid >> DSH, tid & (DPAIRS - 1)
        dd = (addr_of(d, (min(r0 + dr, last), 2 * dk)), shared_addr(dsm, (dr * SP + 2 * dk,)), DROWS * d.shape[1] * 2,
              q.shape[0] - r0 - dr, d.shape[1] - 2 * dk)
        mm = (addr_of(m, (min(r0 + dr, last), 2 * dk)) if has_m else 0, shared_addr(msm, (dr * SP + 2 * dk,)))
        hr, hk = tid >> HSH, tid & (HPAIRS - 1)
        hh = (addr_of(h, (min(r0 + hr, last), 2 * hk)) if has_h else 0, shared_addr(hsm, (hr * HP + 2 * hk,)),
              HROWS * h.shape[1] * 4, q.shape[0] - r0 - hr, h.shape[1] - 2 * hk)
        return w, x, dd, mm, hh

    def issue(st, ch, w, x, dd, mm, hh):
        """Start the copies of chunk ch into stage st (copies' addresses): W (64 rows), x (n tokens), the rows'
        scales (offsets, fifth bits); then close the group."""
        for i in range(IW):
            if i * WROWS < w[3] and ch * (WW // 2) < w[4]:
                cp_async(w[1] + 4 * (st * n_ws + i * WROWS * WP), w[0] + i * w[2] + ch * (4 * WW), 16)
        for i in range(IX):
            if i * XTOK < x[3] and ch * (8 * U) < x[4]:
                cp_async(x[1] + 8 * (st * n_xs + i * XTOK * XP), x[0] + i * x[2] + ch * (64 * U), 16)
        for i in range(ID):
            if i * DROWS < dd[3] and ch * SPC < dd[4]:
                off = 2 * (st * n_d + i * DROWS * SP)
                src = i * dd[2] + ch * (2 * SPC)
                cp_async(dd[1] + off, dd[0] + src, 4)
                if has_m:
                    cp_async(mm[1] + off, mm[0] + src, 4)
        if has_h:
            for i in range(IH):
                if i * HROWS < hh[3] and ch * U < hh[4]:
                    cp_async(hh[1] + 4 * (st * n_h + i * HROWS * HP), hh[0] + i * hh[2] + ch * (4 * U), 8)
        cp_async_commit()

    def blk(acc, b, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf):
        """acc += this lane's D fragments of staged 32-block b for every token group (compute's offsets; b is a
        constant where compute calls it, so every shared-memory offset below folds into the load)."""
        k0 = 2 * b if g16 else b  # the scales of the block's first half; k1: of its second half
        k1 = 2 * b + 1 if g16 else b
        da, db = _pair(dsm[so + uint64(k0)]), _pair(dsm[so + uint64(8 * SP + k0)])
        ea, eb = _pair(dsm[so + uint64(k1)]), _pair(dsm[so + uint64(8 * SP + k1)])
        ma = mb = na = nb_ = uint32(0)
        if has_m:
            ma, mb = _pair(msm[so + uint64(k0)]), _pair(msm[so + uint64(8 * SP + k0)])
            na, nb_ = _pair(msm[so + uint64(k1)]), _pair(msm[so + uint64(8 * SP + k1)])
        if q45:
            wa = uint32(ws[wo + uint64(4 * b)])
            wb = uint32(ws[wo + uint64(8 * WP + 4 * b)])
            ha = hb = uint32(0)
            if has_h:
                ha = uint32(hsm[ho + uint64(b)]) >> hs
                hb = uint32(hsm[ho + uint64(8 * HP + b)]) >> hs
            pa0, pa1, pa2, pa3 = _q4_pairs(wa, ha, has_h)
            pb0, pb1, pb2, pb3 = _q4_pairs(wb, hb, has_h)
        else:
            pa0, pa1 = _q8_pairs(uint32(ws[wo + uint64(8 * b)]))
            pb0, pb1 = _q8_pairs(uint32(ws[wo + uint64(8 * WP + 8 * b)]))
            pa2, pa3 = _q8_pairs(uint32(ws[wo + uint64(8 * b + 4)]))
            pb2, pb3 = _q8_pairs(uint32(ws[wo + uint64(8 * WP + 8 * b + 4)]))
        a0, a1 = _deq(pa0, cf, da, ma), _deq(pb0, cf, db, mb)  # first half: rows g, g + 8
        a2, a3 = _deq(pa1, cf, da, ma), _deq(pb1, cf, db, mb)
        e0, e1 = _deq(pa2, cf, ea, na), _deq(pb2, cf, eb, nb_)  # second half
        e2, e3 = _deq(pa3, cf, ea, na), _deq(pb3, cf, eb, nb_)
        for gr in range(mg):
            if 8 * gr < n:  # tokens past n hold stale data: their sums are never stored
                x0 = xsm[xo + uint64(8 * gr * XP + 8 * b)]
                x1 = xsm[xo + uint64(8 * gr * XP + 8 * b + 4)]
                i = 4 * gr
                r0, r1, r2, r3 = mma_f16(a0, a1, a2, a3, uint32(x0), uint32(x0 >> uint64(32)),
                                         acc[i], acc[i + 1], acc[i + 2], acc[i + 3])
                r0, r1, r2, r3 = mma_f16(e0, e1, e2, e3, uint32(x1), uint32(x1 >> uint64(32)), r0, r1, r2, r3)
                acc[i], acc[i + 1], acc[i + 2], acc[i + 3] = r0, r1, r2, r3

    def compute(acc, st, ch, ws, xsm, dsm, msm, hsm, n, nb, cf):
        """acc += this lane's D fragments of the staged chunk ch (stage st) for every token group: blk for each
        of its 32-blocks, unrolled by hand. Offsets are uint64: no negative-index fix-up, and base + constant
        folds into the load (a uint32 offset's wrap-around would not)."""
        lane = cuda.threadIdx.x & 31
        lr = (cuda.threadIdx.x >> 5) * 16 + (lane >> 2)  # this lane's row g within the block (and lr + 8)
        c = lane & 3
        g = lane >> 2
        wo = uint64(st * n_ws + lr * WP + c)  # row lr's word c of block 0 (row lr + 8: + 8 WP)
        so = uint64(st * n_d + lr * SP)  # row lr's scales
        ho = uint64(st * n_h + lr * HP)
        xo = uint64(st * n_xs + g * XP + c)  # token g's first-half B words of block 0 (token group gr: + 8 gr XP)
        hs = uint32(4 * c)  # this lane's fifth bits start at bit 4c of a block's word
        left = nb - ch * U  # 32-blocks of this chunk inside the row
        if left >= U:
            blk(acc, 0, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
            blk(acc, 1, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
            blk(acc, 2, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
            blk(acc, 3, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
            if U == 8:
                blk(acc, 4, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
                blk(acc, 5, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
                blk(acc, 6, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
                blk(acc, 7, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)
        else:  # the row's last, partial chunk
            for b in range(left):
                blk(acc, b, wo, so, ho, xo, hs, ws, xsm, dsm, msm, hsm, n, cf)


    def finish(acc, y, scratch, count, n, add, ep):
        """With one split, acc is the result; with several, write acc to scratch[s], and the row group's last
        block adds scratch[0..S-1] in order. Then y (+)= it, or the q/k/v epilogue (rope.attn_put) with
        the RoPE partner row r ^ 1 from lane ^ 4."""
        lane = cuda.threadIdx.x & 31
        row0 = cuda.blockIdx.x * BR + (cuda.threadIdx.x >> 5) * 16 + (lane >> 2)
        c = lane & 3
        nk = ep[5]
        rows = y.shape[1] + 2 * nk
        S = cuda.gridDim.y
        if S > 1:
            s = cuda.blockIdx.y
            for gr in range(mg):
                for i in range(4):
                    t = 8 * gr + 2 * c + (i & 1)
                    r = row0 + 8 * (i >> 1)
                    if t < n and r < rows:
                        scratch[s, t, r] = acc[4 * gr + i]
            cuda.threadfence()
            cuda.syncthreads()
            last = cuda.shared.array(1, int32)
            if cuda.threadIdx.x == 0:
                last[0] = int32(cuda.atomic.add(count, cuda.blockIdx.x, 1) == S - 1)
            cuda.syncthreads()
            if last[0] == 0:
                return
            if cuda.threadIdx.x == 0:
                count[cuda.blockIdx.x] = 0  # ready for the next launch
            for gr in range(mg):
                for i in range(4):
                    t = 8 * gr + 2 * c + (i & 1)
                    r = row0 + 8 * (i >> 1)
                    v = float32(0.0)
                    if t < n and r < rows:
                        for k in range(S):
                            v += ld_volatile(scratch, (k, t, r))
                    acc[4 * gr + i] = v
        for gr in range(mg):
            for i in range(4):
                v = acc[4 * gr + i]
                vp = cuda.shfl_xor_sync(0xFFFFFFFF, v, 4)
                t = 8 * gr + 2 * c + (i & 1)
                r = row0 + 8 * (i >> 1)
                if t < n and r < rows:
                    if nk > 0:
                        attn_put(y, t, r, v, vp, ep)
                    else:
                        _put(y, t, r, v, add)

    copies = cuda.jit(device=True, inline=True)(copies)
    issue = cuda.jit(device=True, inline=True)(issue)
    blk = cuda.jit(device=True, inline=True)(blk)
    compute = cuda.jit(device=True, inline=True)(compute)
    finish = cuda.jit(device=True, inline=True)(finish)
    s_ws, s_xs, s_d, s_m, s_h = 2 * n_ws, 2 * n_xs, 2 * n_d, 2 * n_m, 2 * n_h

    def gemv_mma(q, h, d, m, xh, y, off, add, scratch, count, pos, slots, inv_freq, kc, vc, nk):
        """y[t, r] (+)= sum_k W[r, k] x[t, k] for t < n = y.shape[0] <= 8 * mg. q: the rows read as int64; h (q5
        fifth bits), d, m: per row and group; xh: x (n, n_in) as half_x wrote it, read as int64. Grid (row groups
        of 64, K splits); scratch (splits, 32, rows) and count (row groups, zeros) serve the splits. With nk > 0:
        the fused q/k/v projection (y is q, W has y.shape[1] + 2 nk rows)."""
        wait_prior_kernel()
        ws = cuda.shared.array(s_ws, int32, alignment=16)  # two stages each
        xsm = cuda.shared.array(s_xs, uint64, alignment=16)
        dsm = cuda.shared.array(s_d, uint16, alignment=16)  # float16 bits
        msm = cuda.shared.array(s_m, uint16, alignment=16)
        hsm = cuda.shared.array(s_h, int32, alignment=16)
        acc = cuda.local.array(nacc, float32)
        for i in range(nacc):
            acc[i] = float32(0.0)
        n = y.shape[0]
        nb = xh.shape[1] // 8  # 32-blocks per row
        cf = uint32(0x10001 * (0x6400 + off)) if q45 else F1152  # 1024 + off: what the pairs hold above w / d
        span = split_span(nb, cuda.gridDim.y)
        first = cuda.blockIdx.y * span // U  # this split's chunks: first, first + 1, ...
        mine = (min(nb, (cuda.blockIdx.y + 1) * span) - cuda.blockIdx.y * span + U - 1) // U
        w, x, dd, mm, hh = copies(q, h, d, m, xh, ws, xsm, dsm, msm, hsm, n)
        if mine > 0:
            issue(0, first, w, x, dd, mm, hh)
        for k in range(mine):
            if k + 1 < mine:  # the next chunk's copies fly while this one is multiplied
                issue((k + 1) & 1, first + k + 1, w, x, dd, mm, hh)
                cp_async_wait1()
            else:
                cp_async_wait0()
            cuda.syncthreads()
            compute(acc, k & 1, first + k, ws, xsm, dsm, msm, hsm, n, nb, cf)
            cuda.syncthreads()
        finish(acc, y, scratch, count, n, add, (pos, slots, inv_freq, kc, vc, nk))

    flav = f"h{int(f1)}m{int(has_m)}" if q45 else f"g{16 if f1 else 32}m{int(has_m)}"
    gemv_mma.__name__ = f"gemv_mma_{'q45' if q45 else 'q8'}_g{mg}_{flav}"
    return gemv_mma


def mma_name(w, mg: int) -> str:
    flav = f"h{int(w.has_h)}m{int(w.has_m)}" if w.family == "q45" else f"g{16 if w.g == 16 else 32}m{int(w.has_m)}"
    return f"gemv_mma_{w.family}_g{mg}_{flav}"


_A = "[:, ::1]"
SIG = (f"void(int64{_A}, uint32{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32, boolean, "
       f"float32[:, :, ::1], int32[::1], {EP_SIG})")
SIGS = {mma_kernel(mg, q45, f1, hm): [SIG] for mg in MMA_GROUPS
        for q45, flavours in ((True, Q45_FLAVOURS), (False, Q8_FLAVOURS)) for f1, hm in flavours}
assert all(_layout(mg, q45, f1, hm)["bytes"] <= SMEM_MAX for mg in MMA_GROUPS
           for q45, flavours in ((True, Q45_FLAVOURS), (False, Q8_FLAVOURS)) for f1, hm in flavours)
K = kernels(SIGS)

_SCRATCH = {}  # (stream, rows, splits) -> (scratch, count): the split-K partial sums and the row groups' counters
_SMS = []


def gemv_mma(w, x, xh, y, stream, add: bool, ep) -> None:
    """y (n, rows) (+)= x @ W.T on the tensor cores, x (n, n_in) float32 and xh its float16 form (None: made here
    by half_x); ep: the q/k/v epilogue's arguments, as matmul._gemv. For the shapes of
    matmul.on_tensor_cores (an even number of 32-blocks per row)."""
    import cupy as cp
    n = y.shape[0]
    assert (w.n_in // 32) % 2 == 0, w.n_in
    mg = next(g for g in MMA_GROUPS if 8 * g >= n)
    if xh is None:
        xh = to_half(x, stream)
    if not _SMS:
        _SMS.append(cp.cuda.Device().attributes["MultiProcessorCount"])
    S = mma_splits(w.n_out, w.n_in, _SMS[0])
    key = (id(stream), w.n_out, S)  # one set per stream: a stream's kernels touch memory one after another
    if key not in _SCRATCH:
        _SCRATCH[key] = (cp.empty((S, 8 * MMA_GROUPS[-1], w.n_out), cp.float32),
                         cp.zeros(-(-w.n_out // BR), cp.int32))
    scratch, count = _SCRATCH[key]
    K[mma_name(w, mg)][(-(-w.n_out // BR), S), NT, stream](w.q.view(cp.int64), w.h, w.d, w.m, xh.view(cp.int64), y,
                                                           w.off, add, scratch, count, *ep)
