"""Sampling on the GPU: temperature, top-k, top-p and min-p, then one draw, so that only token ids come back.

The host twin is minirs.sampling.sample_plain, `draw(filter_probs(softmax((x - max) / T), top_k, top_p, min_p), coin)`,
and the rules are its rules. Probabilities are e_i = exp((x_i - max_j x_j) / T) in float64, the host's formula
(shift_scale; CUDA's exp and NumPy's may differ in the last ulp): the largest is 0 before the division, so no T
overflows it (T = 1e-310 gives the T -> 0 limit, the largest logit, where x / T - max / T was inf - inf = NaN).
Extreme logits follow finite_logits: +inf counts as LIMIT (the largest value: it wins, ties by index), -inf has no
mass, and a row with a NaN or with every logit -inf gets -1, so that the host's twin raises LogitsError for it (the
engine ends that request alone). Order is by logit, ties by lower index: top-k keeps the k first, top-p the shortest
prefix whose mass reaches top_p of the mass left by top-k (of the row when top-k is off), min-p those with
e_i >= min_p (e of the largest is 1), and the draw takes the first index in vocabulary order whose cumulative kept
mass exceeds coin * (kept mass). The host ranks by z_i = (x_i - max) / T, which is the logit order unless rounding
gives two distinct logits one z (a logit 2^-30 of the largest, T past ~1e300, finite logits beside a +inf at T past
~1e305): where the kernels see such a tie with mass before a cut, the row gets -1.

Two kernels and no full sort:

1. `sample_slices`, grid (rows, slices of SLICE logits): a slice's C best elements, sorted (candidates), and its
   mass relative to its own largest logit. The threshold t0 = the C-th largest of the threads' maxima leaves at
   least C elements at or above it and few above it (~C + C/PER for random logits); those above it and the first
   ties at it (by index, through a prefix scan of per-thread counts) are ranked by counting, which is exact
   whatever the ties.
2. `sample_pick`, one block per row: merges the slices' sorted lists (merge path: an element's place is its place
   in its own list plus a binary search in the other), takes the cuts on the merged order, then draws in
   vocabulary order: the slice where the cumulative kept mass passes coin * total, then the element within it.

The candidates hold the row's exact order only down to the exact bound, the largest C-th value of any slice: all
elements above it are candidates. Top-k (k <= C) is always decided: a row's k best are each among their slice's
k best. Top-p without top-k, or min-p alone, is decided when its cut lies above the bound; otherwise the row gets
-1 and the caller draws it on the host (CudaBackend.sample_rows), as it does for top_k > C. With no filter at all
the draw needs no order: the slices' masses locate the slice, one pass over that slice the element.

Masses are float64 and every sum has a fixed order (thread order, then block prefix scans; the only atomics are
minima and maxima of positions), so a row and a coin always give the same token. No warp shuffles, so the CUDA
simulator runs the kernels as they are (tests/test_cuda_sample.py), with small sizes.
"""

import math
import os

import numpy as np
from numba import cuda, float32, float64, int32

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.sampling.penalties import LIMIT

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
TH = 16 if SIM else 256  # threads of sample_slices (>= C)
PER = 4 if SIM else 16  # logits per thread of sample_slices: a contiguous chunk of the slice
SLICE = TH * PER  # logits per slice: 4096
PADDED = SLICE + TH  # sample_slices' copy of a slice, a gap after each thread's chunk
C = 8 if SIM else 64  # candidates per slice: top_k up to C is decided on the GPU
CAP = C * PER  # sample_slices' candidate buffer: above t0 at most (C - 1) * PER, or C with the ties
MAXS = 16 if SIM else 64  # slices a row may have: vocabularies up to MAXS * SLICE (262,144)
MAXM = MAXS * C  # merged candidates of a row
PT = 32 if SIM else 512  # threads of sample_pick
EPT = MAXM // PT  # merged candidates per thread of sample_pick
EPS = SLICE // PT  # logits per thread when sample_pick walks one slice
TEMP, TOP_K, TOP_P, MIN_P, COIN = range(5)  # the columns of the per-row parameters prm (n, 5) float64
NONE = 1 << 30  # "no position yet" for the atomic minima


def sample_ids(x, prm, stream=0):
    """Token ids (n,) int64 for logits x (n, V) float32 and parameters prm (n, 5) float64 (sampling.rows.pack): the two kernels,
    -1 in the rows the host must draw (minirs.sampling.rows.finish). NumPy arrays (simulator, tests) or CuPy arrays (the ids
    stay on the device). Vocabularies past MAXS * SLICE are all left to the host."""
    n, V = x.shape
    S = -(-V // SLICE)
    xp = np if isinstance(x, np.ndarray) else __import__("cupy")
    out = xp.full(n, -1, xp.int64)
    if S > MAXS:
        return out
    cv, ci = xp.empty((n, S, C), xp.float32), xp.empty((n, S, C), xp.int32)  # candidates (n, S, C)
    ssum = xp.empty((n, S), xp.float64)
    K["sample_slices"][(n, S), TH, stream](x, prm, cv, ci, ssum)
    K["sample_pick"][n, PT, stream](x, prm, cv, ci, ssum, out)
    return out


def _wide(v):
    """float64(v), +inf as LIMIT: the host's clamp (finite_logits), so a +inf logit is the largest and
    (v - top) / T is never inf - inf."""
    return LIMIT if v == math.inf else float64(v)


def _before(v1, i1, v2, i2):
    """Whether element (logit v1, index i1) comes before (v2, i2): larger logit, or equal and lower index."""
    return v1 > v2 or (v1 == v2 and i1 < i2)


def _scan(a, tid, n):
    """a[0..n) <- its inclusive prefix sums (Hillis-Steele, a fixed order of additions). Block-wide: every thread
    calls it; n <= threads."""
    s = 1
    while s < n:
        cuda.syncthreads()
        v = a[max(tid - s, 0)]
        cuda.syncthreads()
        if s <= tid < n:
            a[tid] += v
        s *= 2
    cuda.syncthreads()


def sample_slices(x, prm, cv, ci, ssum):
    """For slice s of row r (x[r, s*SLICE : (s+1)*SLICE] of logits x (n, V)): its C best elements in order,
    cv[r, s, j] (logit) and ci[r, s, j] (index), sentinels (-inf, index >= V) where the slice is shorter; and
    ssum[r, s] = sum_i exp((x_i - top) / T), top the slice's largest logit, T = prm[r, TEMP] (NaN if the slice
    holds a NaN, which counts as -inf in its candidates)."""
    wait_prior_kernel()
    r, s = cuda.blockIdx.x, cuda.blockIdx.y
    tid = cuda.threadIdx.x
    V = x.shape[1]
    base = s * SLICE
    sv = cuda.shared.array(PADDED, float32)  # the slice, thread t's chunk at t * (PER + 1): no bank conflicts
    tm = cuda.shared.array(TH, float32)  # the threads' maxima
    cnt = cuda.shared.array(TH, int32)  # per thread: 65536 * (elements above t0) + (elements at t0)
    fs = cuda.shared.array(TH, float64)
    bv = cuda.shared.array(CAP, float32)  # the candidate buffer: above t0 first, then the first ties at t0
    bi = cuda.shared.array(CAP, int32)
    res = cuda.shared.array(2, float32)
    vals = cuda.local.array(PER, float32)
    for j in range(PER):  # coalesced loads, all issued before any is used (clamped to the row: no branch)
        vals[j] = x[r, min(base + j * TH + tid, V - 1)]
    bad = False  # a NaN in my chunk
    for j in range(PER):
        i = j * TH + tid
        v = vals[j] if base + i < V else float32(-math.inf)
        if v != v:
            bad, v = True, float32(-math.inf)
        sv[i + i // PER] = v
    cuda.syncthreads()
    own = tid * (PER + 1)
    first = base + tid * PER  # the row index of my chunk's first logit
    best = float32(-math.inf)
    for j in range(PER):
        if first + j < V:
            best = max(best, sv[own + j])
    tm[tid] = best
    cuda.syncthreads()
    rank = 0  # my maximum's place among the threads' (ties by thread)
    for u in range(TH):
        rank += _before(tm[u], u, best, tid)
    if rank == C - 1:
        res[0] = best  # t0: C threads hold an element >= t0, fewer than C one above it
    if rank == 0:
        res[1] = best
    cuda.syncthreads()
    t0, top = res[0], res[1]
    tmp = prm[r, TEMP]
    wtop = _wide(top)
    above, ties, mass = 0, 0, 0.0
    for j in range(PER):
        if first + j < V:
            v = sv[own + j]
            above += v > t0
            ties += v == t0
            mass += math.exp((_wide(v) - wtop) / tmp) if top > -math.inf else 0.0
    cnt[tid] = above * 65536 + ties
    fs[tid] = math.nan if bad else mass  # the scan carries a NaN to ssum: sample_pick leaves the row to the host
    _scan(cnt, tid, TH)
    _scan(fs, tid, TH)
    if tid == 0:
        ssum[r, s] = fs[TH - 1]
    n_above, n_ties = cnt[TH - 1] >> 16, cnt[TH - 1] & 0xFFFF
    mine = cnt[tid] - (above * 65536 + ties)  # exclusive: the elements of lower threads, i.e. of lower index
    ga, gt = mine >> 16, mine & 0xFFFF
    want = C - n_above  # ties at t0 needed (<= 0: none)
    for j in range(PER):
        if first + j < V:
            v = sv[own + j]
            if v > t0:
                bv[ga], bi[ga] = v, first + j
                ga += 1
            elif v == t0:
                if gt < want:
                    bv[n_above + gt], bi[n_above + gt] = v, first + j
                gt += 1
    m = n_above + min(n_ties, max(want, 0))
    cuda.syncthreads()
    for c in range(tid, m, TH):  # rank by counting: exact, and each rank < C has one owner
        v, i = bv[c], bi[c]
        rank = 0
        for u in range(m):
            rank += _before(bv[u], bi[u], v, i)
        if rank < C:
            cv[r, s, rank], ci[r, s, rank] = v, i
    for j in range(m + tid, C, TH):  # a short slice
        cv[r, s, j], ci[r, s, j] = -math.inf, V + s * C + j


def _merge(mv, mi, M, tid):
    """Sort mv/mi[0..M) (sorted runs of C, M / C a power of two) by rounds of pairwise merges, in place: each
    element's new place is its place in its run plus the count of the other run's elements before it."""
    dv = cuda.local.array(EPT, float32)
    di = cuda.local.array(EPT, int32)
    dp = cuda.local.array(EPT, int32)
    w = C
    while w < M:
        for e in range(EPT):
            p = tid + e * PT
            dp[e] = -1
            if p < M:
                v, i = mv[p], mi[p]
                pair = p - p % (2 * w)
                mine = p - pair
                other = pair + w if mine < w else pair
                lo, hi = 0, w  # the other run's elements before (v, i): a prefix of it
                while lo < hi:
                    mid = (lo + hi) // 2
                    if _before(mv[other + mid], mi[other + mid], v, i):
                        lo = mid + 1
                    else:
                        hi = mid
                dv[e], di[e], dp[e] = v, i, pair + mine % w + lo
        cuda.syncthreads()
        for e in range(EPT):
            if dp[e] >= 0:
                mv[dp[e]], mi[dp[e]] = dv[e], di[e]
        cuda.syncthreads()
        w *= 2


def _draw_slice(x, r, s, tmp, m, target, fsc, iv, tid):
    """The first index of slice s of row r whose cumulative mass exp((x_i - m) / tmp), added to the masses of the
    slices before it, exceeds target (those are already in target: it is relative to the slice's start)."""
    V = x.shape[1]
    first = s * SLICE + tid * EPS
    vals = cuda.local.array(EPS, float32)
    for e in range(EPS):
        vals[e] = x[r, min(first + e, V - 1)]
    run = 0.0
    for e in range(EPS):
        if first + e < V:
            run += math.exp((_wide(vals[e]) - m) / tmp)
    fsc[tid] = run
    if tid == 0:
        iv[0], iv[1] = NONE, -1
    _scan(fsc, tid, PT)
    acc = fsc[tid - 1] if tid > 0 else 0.0
    for e in range(EPS):
        if first + e < V:
            w = math.exp((_wide(vals[e]) - m) / tmp)
            acc += w
            if acc > target:
                cuda.atomic.min(iv, 0, int32(first + e))
            if w > 0:
                cuda.atomic.max(iv, 1, int32(first + e))
    cuda.syncthreads()
    return iv[0] if iv[0] != NONE else iv[1]  # (none passes target only by rounding: the last with mass)


def sample_pick(x, prm, cv, ci, ssum, out):
    """out[r] = the token drawn from row r of logits x (n, V) with prm[r] = (temperature > 0, top_k (<= 0 or >= V:
    off), top_p (>= 1: off), min_p (<= 0: off), coin in [0, 1)), from sample_slices' candidates cv/ci (n, S, C)
    and slice masses ssum (n, S); -1 where the candidates cannot decide the row, and in a row the host refuses (a
    NaN, or every logit -inf: sample_plain raises LogitsError there)."""
    wait_prior_kernel()
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    V = x.shape[1]
    S = cv.shape[1]
    mv = cuda.shared.array(MAXM, float32)  # the merged candidates: logits, indices
    mi = cuda.shared.array(MAXM, int32)
    fsc = cuda.shared.array(PT, float64)  # prefix scans
    sm = cuda.shared.array(MAXS, float64)  # the slices' masses relative to the row's largest
    fv = cuda.shared.array(4, float64)  # row scalars: largest logit, exact bound, total mass, mass before a slice
    iv = cuda.shared.array(4, int32)  # positions found by atomic min/max
    lv = cuda.shared.array(C, float32)  # the candidates of the slice the draw lands in
    li = cuda.shared.array(C, int32)
    lw = cuda.shared.array(C, float64)
    tmp = prm[r, TEMP]
    k = int(prm[r, TOP_K])
    top_p, min_p, coin = prm[r, TOP_P], prm[r, MIN_P], prm[r, COIN]
    top_k_on, top_p_on = 0 < k < V, top_p < 1.0
    if top_k_on and k > C:
        if tid == 0:
            out[r] = -1
        return
    if tid == 0:  # the row's largest logit, the exact bound, then each slice's mass and the row's
        hi, bound, nan = float32(-math.inf), float32(-math.inf), False
        for s in range(S):
            hi, bound = max(hi, cv[r, s, 0]), max(bound, cv[r, s, C - 1])
            nan = nan or ssum[r, s] != ssum[r, s]
        fv[0], fv[1] = hi, bound
        iv[0] = nan or hi == -math.inf
    cuda.syncthreads()
    if iv[0]:  # a NaN or a row of -inf: the host's twin raises LogitsError for it
        if tid == 0:
            out[r] = -1
        return
    m = _wide(fv[0])  # probabilities are exp((x_i - m) / T), as the host's: never inf - inf, whatever T
    if fv[0] == math.inf and (top_k_on or top_p_on) and math.exp(-LIMIT / tmp) > 0.0:
        # +inf at a temperature past ~1e305: the finite logits keep mass but share one (x - LIMIT) / T, which the
        # host ranks by id, not by logit
        if tid == 0:
            out[r] = -1
        return
    for s in range(tid, S, PT):
        sm[s] = ssum[r, s] * math.exp((_wide(cv[r, s, 0]) - m) / tmp) if cv[r, s, 0] > -math.inf else 0.0
    cuda.syncthreads()
    if tid == 0:
        total = 0.0
        for s in range(S):
            total += sm[s]
        fv[2] = total
    cuda.syncthreads()

    if not top_k_on and not top_p_on and min_p <= 0.0:  # no filter: the slice where coin * total falls, then in it
        if tid == 0:
            target, acc, at, last, before_last = coin * fv[2], 0.0, -1, 0, 0.0
            for s in range(S):
                if sm[s] > 0:
                    if at < 0 and acc + sm[s] > target:
                        at, fv[3] = s, acc
                    last, before_last = s, acc
                acc += sm[s]
            if at < 0:  # coin * total not passed, by rounding: the last slice with mass
                at, fv[3] = last, before_last
            iv[2] = at
        cuda.syncthreads()
        s, before = iv[2], fv[3]
        cuda.syncthreads()
        pick = _draw_slice(x, r, s, tmp, m, coin * fv[2] - before, fsc, iv, tid)
        if tid == 0:
            out[r] = pick
        return

    # the merged order of the candidates (sentinels for absent slices)
    n_runs = 1
    while n_runs < S:
        n_runs *= 2
    M = n_runs * C
    for e in range(EPT):
        p = tid + e * PT
        if p < M:
            s, j = p // C, p % C
            if s < S:
                mv[p], mi[p] = cv[r, s, j], ci[r, s, j]
            else:
                mv[p], mi[p] = -math.inf, V + p
    if tid == 0:
        iv[1] = 0  # (set before _merge's barriers: the flag below is raised after them)
    cuda.syncthreads()
    _merge(mv, mi, M, tid)

    # the cumulative mass in merged order; the cuts. The host ranks by z = (x - max) / T, ties by id, and z can tie
    # where the logits do not (x - max rounds away a logit 2^-30 of the largest; (x - max) / T goes subnormal past
    # T ~ 1e300): two neighbours of the merged order with distinct logits, one z and some mass, before the top-k
    # cut (top-p: anywhere), leave the row to the host. (A tie with a logit below the exact bound goes unseen.)
    ranked = k if top_k_on else M if top_p_on else 0  # the merged prefix whose order decides the cuts
    cum = cuda.local.array(EPT, float64)
    run = 0.0
    for e in range(EPT):
        p = tid * EPT + e
        if p < M and mi[p] < V:
            z = (_wide(mv[p]) - m) / tmp
            w = math.exp(z)
            run += w
            if p < ranked and w > 0.0 and p + 1 < M and mi[p + 1] < V and mv[p + 1] != mv[p]:
                if (_wide(mv[p + 1]) - m) / tmp == z:
                    iv[1] = 1
        cum[e] = run
    fsc[tid] = run
    if tid == 0:
        iv[0] = NONE
    _scan(fsc, tid, PT)
    z_ties = iv[1] != 0
    before = fsc[tid - 1] if tid > 0 else 0.0
    if top_k_on and tid * EPT <= k - 1 < tid * EPT + EPT:
        fv[2] = before + cum[k - 1 - tid * EPT]  # the mass left by top-k
    cuda.syncthreads()
    if z_ties:
        if tid == 0:
            out[r] = -1
        return
    keep = k if top_k_on else M  # the kept prefix of the merged order
    if top_p_on:
        need = top_p * fv[2]
        for e in range(EPT):
            p = tid * EPT + e
            if p < keep and mi[p] < V and before + cum[e] >= need:
                cuda.atomic.min(iv, 0, int32(p))
        cuda.syncthreads()
        cut = iv[0]
        undecided = cut == NONE or (not top_k_on and mv[cut] <= fv[1])
        cuda.syncthreads()
        if undecided:
            if tid == 0:
                out[r] = -1
            return
        keep = cut + 1
    elif not top_k_on and math.exp((_wide(fv[1]) - m) / tmp) >= min_p:  # min-p alone, reaching below the exact bound
        if tid == 0:
            out[r] = -1
        return
    last_v, last_i = mv[keep - 1], mi[keep - 1]

    # the draw: the kept mass in slice order (each slice's list in merged order), then by index in the slice
    run = 0.0
    for e in range(EPT):
        q = tid * EPT + e
        s, j = q // C, q % C
        w = 0.0
        if s < S:
            v, i = cv[r, s, j], ci[r, s, j]
            if i < V and (keep == M or not _before(last_v, last_i, v, i)):
                w = math.exp((_wide(v) - m) / tmp)
                if w < min_p:
                    w = 0.0
        run += w
        cum[e] = run
    fsc[tid] = run
    if tid == 0:
        iv[0], iv[1] = NONE, 0
    _scan(fsc, tid, PT)
    before = fsc[tid - 1] if tid > 0 else 0.0
    target = coin * fsc[PT - 1]
    for e in range(EPT):
        q = tid * EPT + e
        if q < S * C:
            if before + cum[e] > target:
                cuda.atomic.min(iv, 0, int32(q))
            if cum[e] > (cum[e - 1] if e > 0 else 0.0):
                cuda.atomic.max(iv, 1, int32(q))  # the last with mass, should rounding leave target unpassed
    cuda.syncthreads()
    s = (iv[0] if iv[0] != NONE else iv[1]) // C
    for e in range(EPT):  # the kept mass of the slices before s
        q = tid * EPT + e
        if q == s * C - 1:
            fv[3] = before + cum[e]
    if s == 0 and tid == 0:
        fv[3] = 0.0
    if tid < C:
        v, i = cv[r, s, tid], ci[r, s, tid]
        w = -1.0  # not kept
        if i < V and (keep == M or not _before(last_v, last_i, v, i)):
            w = math.exp((_wide(v) - m) / tmp)
            if w < min_p:
                w = -1.0
        lv[tid], li[tid], lw[tid] = v, i, w
    if tid == 0:
        iv[2], iv[3] = NONE, -1
    cuda.syncthreads()
    if tid < C and lw[tid] >= 0:
        i = li[tid]
        acc = fv[3]
        for u in range(C):  # the kept mass of this slice at indices up to mine
            if lw[u] >= 0 and li[u] <= i:
                acc += lw[u]
        if acc > target:
            cuda.atomic.min(iv, 2, i)
        cuda.atomic.max(iv, 3, i)
    cuda.syncthreads()
    if tid == 0:
        out[r] = iv[2] if iv[2] != NONE else iv[3]


SIGS = {
    sample_slices: ["void(float32[:, ::1], float64[:, ::1], float32[:, :, ::1], int32[:, :, ::1], float64[:, ::1])"],
    sample_pick: ["void(float32[:, ::1], float64[:, ::1], float32[:, :, ::1], int32[:, :, ::1], float64[:, ::1], "
                  "int64[::1])"],
}
for _f in (_wide, _before, _scan, _merge, _draw_slice):
    globals()[_f.__name__] = cuda.jit(device=True, inline=True)(_f)
K = kernels(SIGS)
