"""Batched decode GEMVs on the int8 tensor cores: y = x @ W.T for up to GEMV_MAX_N tokens, W quantized (q4 / q5
and q8 families of cuda_matmul), x in its int8 form (cuda_matmul.quantize).

The dp4a GEMVs (cuda_matmul) do 4 multiply-adds per instruction and pay ~15 instructions per (row, 32-block,
token), so 16 tokens cost ~5-15x one token. `mma.sync.aligned.m16n8k32` (cuda_intrinsics.mma_s8) multiplies a
16 x 32 int8 tile of W by a 32 x 8 int8 tile of x into 16 x 8 exact int32 sums in one warp instruction: one
32-block of 16 rows against 8 tokens. What is left per output is the block's scaling, the dp4a GEMV's formula:

    y[t, r] += xd[t, b] * (d[r, b] * (sum_k q[r, k] * xq[t, k] - off * sum_k xq[t, k]) + m[r, b] * sum_k xq[t, k])

(q8 with groups of 16: two mmas per 32-block, one per half, each with its own d and m.)

Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k32"), lane = 4g + c: the lane gives A's rows g and g + 8 at
k = 4c..4c+3 and 16+4c..16+4c+3, and B's token g at the same k, and gets D's rows g, g + 8 for tokens 2c, 2c + 1.
The q4 layout keeps elements j and j + 16 of a block in one byte, so a lane's A words are word c of its two rows
split by nibble; in the q8 layout they are words c and 4 + c; B's are words c and 4 + c of the token's block.

Memory (a first form that loaded fragments straight from global memory, and a second that staged W through
registers, were latency-bound: BENCHMARKS.md):
- A block of MW = 4 warps owns 64 rows (16 per warp) and walks K in chunks of 128 bytes of each row (8 q4 or 4 q8
  32-blocks). Each chunk of W, of x (every token's same 32-blocks, shared by the four warps) and of their scales
  is copied to shared memory with cp.async (no registers held), in two stages: chunk k + 1 is in flight while
  chunk k is multiplied. Rows are padded so a fragment read of 8 rows (or tokens) hits 32 distinct banks.
- Small matrices split K over gridDim.y blocks (mma_splits): each writes its partial sums, and the last block of
  a row group to finish (a threadfence and an atomic count, as cuda_ops' split attention) adds them in split
  order and writes y. The order never depends on which block finishes last.

A row's value depends only on its row of W and its token of x, never on n, on the other tokens or on the row's
place in the block: integer sums are exact, and every (row, token) slot goes through the same float operations
in the same order, written as explicit fmas (left to the compiler, the four slots of a lane were contracted
differently: a Q5_1 row stacked into q/k/v differed by 1 ulp from the same row alone). So batched rows are
bit-identical to the row computed alone by this kernel. They differ from the dp4a GEMV in the last bits (another
summation order), which is why the scheduler's row_invariant mode keeps dp4a for every n
(CudaBackend.batch_invariant). Needs an even number of 32-blocks per row (the 4- and 8-byte copies of scales).

Replayed on an H100 (bench/gpu_check.py --mma, us, dp4a -> tensor cores, 16 tokens): 7B Q4_0 q/k/v 6144x4096
48.8 -> 29.7, 4096x4096 35.5 -> 19.4, gate/up 28672x4096 168.3 -> 76.4, down 4096x14336 97.0 -> 55.2, Q6_K output
32000x4096 208.4 -> 87.3. One token stays on dp4a (7.2 vs 19.8 us for 6144x4096): this kernel is still bound by
its instruction count (Nsight: ~0.6 instructions issued per cycle per scheduler), not by memory.
"""

from numba import cuda, float32, int32, uint32
from numba.core.types import float16
from numba.cuda.libdevice import fmaf as fma

from minirs.kernels import cuda_matmul as cm
from minirs.kernels.cuda_intrinsics import cp_async, cp_async_commit, cp_async_wait0, cp_async_wait1, ld_volatile, \
    mma_s8
from minirs.kernels.cuda_launch import kernels

MW = 4  # warps per block
BR = 16 * MW  # rows per block
NT = 128  # threads per block
WP = 36  # int32 pitch of a staged W row: 32 words + 4, so rows g = 0..7 start 4 banks apart
MMA_GROUPS = (2, 4)  # token groups of 8 per kernel: n <= 16, n <= 32 (= cuda_matmul.GEMV_MAX_N)
SMEM_MAX = 48 * 1024  # static shared memory per block


def chunk_blocks(family: str) -> int:
    """32-blocks per chunk: 128 bytes of a row."""
    return 8 if family == "q45" else 4


def mma_splits(n_out: int, n_in: int, family: str, sms: int) -> int:
    """Blocks along K (gridDim.y): double while the grid has fewer than ~4 blocks per SM and each block keeps at
    least two chunks (the pipeline's two stages)."""
    row_blocks = -(-n_out // BR)
    chunks = -(-(n_in // 32) // chunk_blocks(family))
    s = 1
    while row_blocks * s < 4 * sms and chunks >= 4 * s:
        s *= 2
    return s


def _layout(mg: int, q45: bool, f1: bool, has_m: bool) -> dict:
    """Shared-memory pitches and sizes (per stage) of a kernel variant."""
    U = chunk_blocks("q45" if q45 else "q8")
    spc = 2 * U if (not q45 and f1) else U  # scales per row per chunk
    lay = dict(U=U, WPB=4 if q45 else 8, SPC=spc, SP=spc + 2, XP=8 * U + 4, HP=U + 2, NTOK=8 * mg)
    lay["bytes"] = 2 * (4 * BR * WP + 4 * lay["NTOK"] * (lay["XP"] + 3 * U) + 2 * BR * lay["SP"] * (1 + has_m)
                        + (4 * BR * lay["HP"] if q45 and f1 else 0))
    return lay


def mma_kernel(mg: int, q45: bool, f1: bool, has_m: bool):
    """The tensor-core GEMV for up to 8 * mg tokens and one weight flavour: q45 (f1: has_h, q5 fifth bits) or q8
    (f1: g16, groups of 16); has_m: group offsets. Flags are compile-time (as cuda_matmul.gemv_kernels). Returns
    a plain Python kernel."""
    has_h = q45 and f1
    g16 = (not q45) and f1
    lay = _layout(mg, q45, f1, has_m)
    U, WPB, SPC, SP, XP, HP, NTOK = (lay[k] for k in ("U", "WPB", "SPC", "SP", "XP", "HP", "NTOK"))
    nacc = 4 * mg
    n_ws, n_xs, n_xd, n_xss, n_d = BR * WP, NTOK * XP, NTOK * U, NTOK * 2 * U, BR * SP
    n_m = n_d if has_m else 2
    n_h = BR * HP if has_h else 2
    s_ws, s_xs, s_xd, s_xss, s_d, s_m, s_h = 2 * n_ws, 2 * n_xs, 2 * n_xd, 2 * n_xss, 2 * n_d, 2 * n_m, 2 * n_h
    XPIECES = 2 * U  # 16-byte pieces of a token's chunk of x

    def issue(st, ch, q, h, d, m, xq, xd, xs, ws, xsm, xds, xss, dsm, msm, hsm, n, nb):
        """Start the copies of chunk ch into stage st: W (64 rows x 128 bytes), x and its scales (n tokens), the
        rows' scales (offsets, fifth bits); then close the group. Pieces past a row's end are left out (their
        32-blocks are skipped by compute). Shared arrays are flat, indexed with uint32 (no negative-index fix-up)."""
        tid = cuda.threadIdx.x
        r_base = cuda.blockIdx.x * BR
        n_out = q.shape[0]
        row_words = q.shape[1]  # int64 words of a row
        for i in range(BR * 8 // NT):
            p = tid + NT * i
            row, k = p >> 3, p & 7
            col = ch * 16 + 2 * k
            if col < row_words:
                cp_async(ws, (uint32(st * n_ws + row * WP + 4 * k),), q, (min(r_base + row, n_out - 1), col), 16)
        for i in range((NTOK * XPIECES + NT - 1) // NT):
            p = tid + NT * i
            t, k = p // XPIECES, p % XPIECES
            col = ch * 4 * U + 2 * k
            if t < n and col < xq.shape[1]:
                cp_async(xsm, (uint32(st * n_xs + t * XP + 4 * k),), xq, (t, col), 16)
        for i in range((NTOK * U // 2 + NT - 1) // NT):
            p = tid + NT * i
            t, k = p // (U // 2), p % (U // 2)
            b = ch * U + 2 * k  # the pair of 32-blocks b, b + 1
            if t < n and b < nb:
                cp_async(xds, (uint32(st * n_xd + t * U + 2 * k),), xd, (t, b), 8)
                cp_async(xss, (uint32(st * n_xss + t * 2 * U + 4 * k),), xs, (t, 2 * b), 16)
        for i in range(BR * SPC // 2 // NT):
            p = tid + NT * i
            row, k = p // (SPC // 2), p % (SPC // 2)
            j = ch * SPC + 2 * k
            if j < d.shape[1]:
                r = min(r_base + row, n_out - 1)
                cp_async(dsm, (uint32(st * n_d + row * SP + 2 * k),), d, (r, j), 4)
                if has_m:
                    cp_async(msm, (uint32(st * n_d + row * SP + 2 * k),), m, (r, j), 4)
        if has_h:
            for i in range(BR * U // 2 // NT):
                p = tid + NT * i
                row, k = p // (U // 2), p % (U // 2)
                b = ch * U + 2 * k
                if b < nb:
                    cp_async(hsm, (uint32(st * n_h + row * HP + 2 * k),), h, (min(r_base + row, n_out - 1), b), 8)
        cp_async_commit()

    def blk(acc, b, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi):
        """acc += this lane's D fragments of staged 32-block b for every token group (compute's offsets; b is a
        constant where compute calls it, so every shared-memory offset below folds into the load)."""
        wa = ws[uint32(wo + WPB * b)]
        wb = ws[uint32(wo + 8 * WP + WPB * b)]
        if q45:
            a0, a1 = wa & cm.M4, wb & cm.M4
            a2, a3 = (wa >> 4) & cm.M4, (wb >> 4) & cm.M4
            if has_h:
                ha, hb = hsm[uint32(ho + b)], hsm[uint32(ho + 8 * HP + b)]
                a0 |= cm._spread4(ha >> (4 * c))
                a1 |= cm._spread4(hb >> (4 * c))
                a2 |= cm._spread4(ha >> (16 + 4 * c))
                a3 |= cm._spread4(hb >> (16 + 4 * c))
        else:
            a0, a1 = wa, wb
            a2, a3 = ws[uint32(wo + WPB * b + 4)], ws[uint32(wo + 8 * WP + WPB * b + 4)]
        k = 2 * b if g16 else b
        da, db = float32(dsm[uint32(so + k)]), float32(dsm[uint32(so + 8 * SP + k)])
        for gr in range(mg):
            if 8 * gr < n:  # tokens past n hold stale data: their sums are never stored
                b0 = xsm[uint32(xo + 8 * gr * XP + 8 * b)]
                b1 = xsm[uint32(xo + 8 * gr * XP + 8 * b + 4)]
                x0 = xds[uint32(do + 8 * gr * U + b)]
                x1 = xds[uint32(do + 8 * gr * U + U + b)]
                e0 = uint32(eo + 16 * gr * U + 2 * b)  # token 8gr + 2c's two half sums; + 2U: 8gr + 2c + 1
                u00, u01 = xss[e0], xss[uint32(e0 + 1)]
                u10, u11 = xss[uint32(e0 + 2 * U)], xss[uint32(e0 + 2 * U + 1)]
                # every product and sum spelled out with fma: left to the compiler, the four slots of a lane
                # could be contracted differently, and a row's bits would depend on its place in the block
                if g16:  # one mma per half, each with its own scale and offset
                    p0, p1, p2, p3 = mma_s8(a0, a1, int32(0), int32(0), b0, b1)
                    q0, q1, q2, q3 = mma_s8(int32(0), int32(0), a2, a3, b0, b1)
                    da2, db2 = float32(dsm[uint32(so + k + 1)]), float32(dsm[uint32(so + 8 * SP + k + 1)])
                    v0 = fma(da2, float32(q0), da * float32(p0))
                    v1 = fma(da2, float32(q1), da * float32(p1))
                    v2 = fma(db2, float32(q2), db * float32(p2))
                    v3 = fma(db2, float32(q3), db * float32(p3))
                    if has_m:
                        ma, mb = float32(msm[uint32(so + k)]), float32(msm[uint32(so + 8 * SP + k)])
                        ma2 = float32(msm[uint32(so + k + 1)])
                        mb2 = float32(msm[uint32(so + 8 * SP + k + 1)])
                        v0 = fma(ma2, float32(u01), fma(ma, float32(u00), v0))
                        v1 = fma(ma2, float32(u11), fma(ma, float32(u10), v1))
                        v2 = fma(mb2, float32(u01), fma(mb, float32(u00), v2))
                        v3 = fma(mb2, float32(u11), fma(mb, float32(u10), v3))
                else:
                    s0, s1, s2, s3 = mma_s8(a0, a1, a2, a3, b0, b1)
                    u0, u1 = int32(u00 + u01), int32(u10 + u11)
                    v0 = da * float32(int32(s0 - offi * u0))
                    v1 = da * float32(int32(s1 - offi * u1))
                    v2 = db * float32(int32(s2 - offi * u0))
                    v3 = db * float32(int32(s3 - offi * u1))
                    if has_m:
                        ma, mb = float32(msm[uint32(so + k)]), float32(msm[uint32(so + 8 * SP + k)])
                        v0 = fma(ma, float32(u0), v0)
                        v1 = fma(ma, float32(u1), v1)
                        v2 = fma(mb, float32(u0), v2)
                        v3 = fma(mb, float32(u1), v3)
                acc[4 * gr + 0] = fma(x0, v0, acc[4 * gr + 0])
                acc[4 * gr + 1] = fma(x1, v1, acc[4 * gr + 1])
                acc[4 * gr + 2] = fma(x0, v2, acc[4 * gr + 2])
                acc[4 * gr + 3] = fma(x1, v3, acc[4 * gr + 3])

    def compute(acc, st, ch, ws, xsm, xds, xss, dsm, msm, hsm, n, nb, off):
        """acc += this lane's D fragments of the staged chunk ch (stage st) for every token group: blk for each
        of its 32-blocks, unrolled by hand. Offsets are uint32 and sums int32 (Numba would widen both to int64
        and check indices for negatives)."""
        lane = cuda.threadIdx.x & 31
        lr = (cuda.threadIdx.x >> 5) * 16 + (lane >> 2)  # this lane's row g within the block (and lr + 8)
        c = lane & 3
        g = lane >> 2
        wo = uint32(st * n_ws + lr * WP + c)  # row lr's word c of block 0 (row lr + 8: + 8 WP)
        so = uint32(st * n_d + lr * SP)  # row lr's scales
        ho = uint32(st * n_h + lr * HP)
        xo = uint32(st * n_xs + g * XP + c)  # token g's word c of block 0 (token group gr: + 8 gr XP)
        do = uint32(st * n_xd + 2 * c * U)  # token 2c's scales (token 2c + 1: + U)
        eo = uint32(st * n_xss + 4 * c * U)  # token 2c's half sums (token 2c + 1: + 2U)
        offi = int32(off)
        left = nb - ch * U  # 32-blocks of this chunk inside the row
        if left >= U:
            blk(acc, 0, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
            blk(acc, 1, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
            blk(acc, 2, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
            blk(acc, 3, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
            if U == 8:
                blk(acc, 4, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
                blk(acc, 5, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
                blk(acc, 6, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
                blk(acc, 7, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)
        else:  # the row's last, partial chunk
            for b in range(left):
                blk(acc, b, wo, so, ho, xo, do, eo, c, ws, xsm, xds, xss, dsm, msm, hsm, n, offi)

    def finish(acc, y, scratch, count, n, add, ep):
        """With one split, acc is the result; with several, write acc to scratch[s], and the row group's last
        block adds scratch[0..S-1] in order. Then y (+)= it, or the q/k/v epilogue (cuda_matmul.attn_put) with
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
                        cm.attn_put(y, t, r, v, vp, ep)
                    else:
                        cm._put(y, t, r, v, add)

    issue = cuda.jit(device=True, inline=True)(issue)
    blk = cuda.jit(device=True, inline=True)(blk)
    compute = cuda.jit(device=True, inline=True)(compute)
    finish = cuda.jit(device=True, inline=True)(finish)

    def gemv_mma(q, h, d, m, xq, xd, xs, y, off, add, scratch, count, pos, slots, inv_freq, kc, vc, nk):
        """y[t, r] (+)= sum_k W[r, k] x[t, k] for t < n = y.shape[0] <= 8 * mg. q: the rows read as int64; h (q5
        fifth bits), d, m: per row and group; xq (n, n_in / 8) int64, xd, xs: x's int8 form (cuda_matmul.quantize).
        Grid (row groups of 64, K splits); scratch (splits, 32, rows) and count (row groups, zeros) serve the
        splits. With nk > 0: the fused q/k/v projection (y is q, W has y.shape[1] + 2 nk rows)."""
        ws = cuda.shared.array(s_ws, int32, alignment=16)  # two stages each
        xsm = cuda.shared.array(s_xs, int32, alignment=16)
        xds = cuda.shared.array(s_xd, float32, alignment=16)
        xss = cuda.shared.array(s_xss, int32, alignment=16)
        dsm = cuda.shared.array(s_d, float16, alignment=16)
        msm = cuda.shared.array(s_m, float16, alignment=16)
        hsm = cuda.shared.array(s_h, int32, alignment=16)
        acc = cuda.local.array(nacc, float32)
        for i in range(nacc):
            acc[i] = float32(0.0)
        n = y.shape[0]
        nb = xd.shape[1]
        nch = (nb + U - 1) // U
        s, S = cuda.blockIdx.y, cuda.gridDim.y
        mine = (nch - s + S - 1) // S  # chunks s, s + S, ...
        if mine > 0:
            issue(0, s, q, h, d, m, xq, xd, xs, ws, xsm, xds, xss, dsm, msm, hsm, n, nb)
        for k in range(mine):
            if k + 1 < mine:  # the next chunk's copies fly while this one is multiplied
                issue((k + 1) & 1, s + (k + 1) * S, q, h, d, m, xq, xd, xs, ws, xsm, xds, xss, dsm, msm, hsm, n, nb)
                cp_async_wait1()
            else:
                cp_async_wait0()
            cuda.syncthreads()
            compute(acc, k & 1, s + k * S, ws, xsm, xds, xss, dsm, msm, hsm, n, nb, off)
            cuda.syncthreads()
        finish(acc, y, scratch, count, n, add, (pos, slots, inv_freq, kc, vc, nk))

    flav = f"h{int(f1)}m{int(has_m)}" if q45 else f"g{16 if f1 else 32}m{int(has_m)}"
    gemv_mma.__name__ = f"gemv_mma_{'q45' if q45 else 'q8'}_g{mg}_{flav}"
    return gemv_mma


def mma_name(w, mg: int) -> str:
    flav = f"h{int(w.has_h)}m{int(w.has_m)}" if w.family == "q45" else f"g{16 if w.g == 16 else 32}m{int(w.has_m)}"
    return f"gemv_mma_{w.family}_g{mg}_{flav}"


_A = "[:, ::1]"
SIG = (f"void(int64{_A}, uint32{_A}, float16{_A}, float16{_A}, int64{_A}, float32{_A}, int32{_A}, float32{_A}, "
       f"int32, boolean, float32[:, :, ::1], int32[::1], {cm._EP})")
SIGS = {mma_kernel(mg, q45, f1, hm): [SIG] for mg in MMA_GROUPS
        for q45, flavours in ((True, cm.Q45_FLAVOURS), (False, cm.Q8_FLAVOURS)) for f1, hm in flavours
        if _layout(mg, q45, f1, hm)["bytes"] <= SMEM_MAX}
K = kernels(SIGS)

_SCRATCH = {}  # (stream, rows, splits) -> (scratch, count): the split-K partial sums and the row groups' counters
_SMS = []


def gemv_mma(w, xquant, y, stream, add: bool, ep) -> bool:
    """y (n, rows) (+)= x @ W.T on the tensor cores, x given as its int8 form (cuda_matmul.quantize); ep: the q/k/v
    epilogue's arguments, as cuda_matmul._gemv. False (nothing launched) for an odd number of 32-blocks per row."""
    import cupy as cp
    n = y.shape[0]
    if (w.n_in // 32) % 2:
        return False
    mg = next(g for g in MMA_GROUPS if 8 * g >= n)
    name = mma_name(w, mg)
    if name not in K:  # too much shared memory for 32 tokens: two launches of <= 16 (rows stay the same)
        h = 8 * MMA_GROUPS[0]
        xq, xd, xs = xquant
        for t in (slice(0, h), slice(h, n)):
            e = ep if ep[5] == 0 else (ep[0][t], ep[1][t], *ep[2:])
            gemv_mma(w, (xq[t], xd[t], xs[t]), y[t], stream, add, e)
        return True
    if not _SMS:
        _SMS.append(cp.cuda.Device().attributes["MultiProcessorCount"])
    S = mma_splits(w.n_out, w.n_in, w.family, _SMS[0])
    key = (id(stream), w.n_out, S)  # one set per stream: kernels of one stream never overlap
    if key not in _SCRATCH:
        _SCRATCH[key] = (cp.empty((S, 8 * MMA_GROUPS[-1], w.n_out), cp.float32),
                         cp.zeros(-(-w.n_out // BR), cp.int32))
    scratch, count = _SCRATCH[key]
    xq, xd, xs = xquant
    K[name][(-(-w.n_out // BR), S), NT, stream](w.q.view(cp.int64), w.h, w.d, w.m, xq.view(cp.int64), xd, xs, y,
                                                 w.off, add, scratch, count, *ep)
    return True
