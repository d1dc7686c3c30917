"""Integer dot products for the CPU matmul: x quantized per 32 inputs, times the weights' integers.

    q1, q2, dx, sx = quantize_as(x, X16)   # x (n, n_in) float32 -> two int8 (n, n_in), scales (n, n_in/32), sums
    q1, q2, dx, sx = quantize_rows_ref(x)  # its NumPy twin (bit-identical)
    tile_dot(qt, dt, mt, st, q1, q2, dx, sx, y, n_groups, KIND, N_TOK)   # a tile of 32 rows, 1 or 2 tokens (IR)

This is llama.cpp's recipe (its q8_0 x q4_x vec_dot) with twice the precision: each 32-block of x becomes a
16-bit integer X = 254 * q1 + q2 (two int8) times one float scale dx, so a group's dot product is a sum of integer
products, exact in int32, and costs two instructions per 64 weights where the CPU has AVX-512 VNNI (`vpdpbusd`:
16 lanes, each the sum of 4 uint8 x int8 products). With AVX2 only, vpmaddubsw and vpmaddwd do it in three
instructions per 32 bytes (dot_isa); elsewhere plain vector IR (16-bit products, pairwise sums) lets LLVM lower it
for any target (3.5x slower than VNNI here, about the speed of a float32 kernel). The weight integers are
unsigned bytes: nibbles 0..15 (q4 family), 6-bit values 0..63 (q6) or int8 + 128 (q8 family), so `vpdpbusd`'s
unsigned x signed shape fits them all.

For a group g of gs weights w[j] = d * (u[j] - off) (+ m) of one row, and x[j] ~= dx * X[j]:

    sum_j w[j] * x[j] ~= d * (dx * (sum_j u[j] * X[j] - off * sx)) (+ m * (dx * sx)),   sx = sum_j X[j]

and a row's result is these terms accumulated over groups in order, with the float operations of the code below:
t = float(isum - off * sx) * dx; acc = fma(d, t, acc); acc = fma(m, dx * float(sx), acc). The integer sums are
exact, so their order is free; the float operations run in this one order for every token, so a row's bits depend
only on its own x and W, whatever the batch (batch invariance) and the thread count.
"""

import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from minirs.kernels.cpu.bits import f32_from_bits

PREFETCH = 8192  # bytes of weights ahead of the group being multiplied that tile_dot asks the memory for
PREFETCH_LOCALITY = 1  # ... into L2, not L1 (llvm.prefetch's locality: 1 is prefetcht2), see tile_dot
LANES = 16  # int32 / float32 lanes of one vector; a tile is TILE rows = two vectors
TILE = 32
QMAX = np.float32(127.0)


# ---------------------------------------------------------------------------------------------------------------
# Quantizing x. Block b of row i holds inputs 32b .. 32b+31. One int8 per input would cost ~3% of the largest
# logit on SmolLM2 (its activations have outliers that coarsen whole blocks), so each input gets two:
#
#     d1 = max|x| / 127;  q1 = rint(x / d1);  r = x - q1 * d1;  dx = d1 / 254;  q2 = rint(r / dx)  (|q2| <= 127)
#
# and x ~= dx * X with the 16-bit integer X = 254 * q1 + q2 (error <= dx / 2, ~1/65000 of the block's largest
# value). A weight integer u then meets X as 254 * (u . q1) + (u . q2): two byte dot products per weight byte, the
# weights loaded once. Divisions are multiplications by the float32 reciprocal, in the same order in Numba and
# NumPy, so the twin is bit-identical. sx holds the sum of X per 16 inputs (the q8 family's K-quant groups are 16
# wide, the others two of them).
# ---------------------------------------------------------------------------------------------------------------

HI = 254  # X = HI * q1 + q2

# The form of x a matmul multiplies, chosen by the type of a marker array (so that each form compiles apart, and
# only where it is used): X16, the two int8 above (the default); or X8, one int8 per input with d1 its scale, as
# llama.cpp does with its q8 activations (q2 then has no columns). X8 puts SmolLM2's logits 5.1e-2 of the largest
# from transformers' where X16 puts them 2.6e-4, and takes half the byte products: prefill, bound by them, runs
# ~1.4x faster; decode, bound by memory, ~3%. $MINIRS_CPU_ACT_BITS=8 makes it every matmul's form (X_FORM) in this
# process; 16 (or unset) X16.
X16, X8 = np.zeros(0, np.int8), np.zeros(0, np.uint8)
_BITS = os.environ.get("MINIRS_CPU_ACT_BITS", "16")
if _BITS not in ("8", "16"):
    raise ValueError(f"MINIRS_CPU_ACT_BITS={_BITS}: the CPU matmul's activations are 16 (two int8) or 8 bits")
X_FORM = X8 if _BITS == "8" else X16


@njit(cache=True, inline="always")
def _block_max(bits, b):
    # max |x| over block b of x, from x's int32 view: |x| is ordered as its bits, so this is a vectorised integer
    # maximum, not a chain of 32 float ones
    top = 0
    for j in range(32 * b, 32 * b + 32):
        top = max(top, bits[j] & 0x7FFFFFFF)
    return f32_from_bits(top)


@njit(cache=True, inline="always")
def _block_scale(bits, b):
    # block b's first scale d1 = max|x| / 127 and its reciprocal (0 for an all-zero block): q1 = rint(x * inv1)
    d1 = _block_max(bits, b) / QMAX
    return d1, np.float32(1.0) / d1 if d1 > 0 else np.float32(0.0)


@njit(cache=True, inline="always")
def quantize_row(x, q1, q2, dx, sx):
    bits = x.view(np.int32)
    for b in range(x.shape[0] // 32):
        d1, inv1 = _block_scale(bits, b)
        d2 = d1 / np.float32(HI)
        inv2 = np.float32(1.0) / d2 if d2 > 0 else np.float32(0.0)
        dx[b] = d2
        for h in range(2):
            s = 0
            for j in range(32 * b + 16 * h, 32 * b + 16 * h + 16):
                a = min(max(np.rint(x[j] * inv1), -QMAX), QMAX)
                c = min(max(np.rint((x[j] - a * d1) * inv2), -QMAX), QMAX)
                q1[j] = np.int8(a)
                q2[j] = np.int8(c)
                s += HI * np.int32(a) + np.int32(c)
            sx[2 * b + h] = s


def x_arrays(n: int, n_in: int, form):
    """Empty (q1, q2, dx, sx) for n rows of x in this form (q2 (n, 0) uint8 for X8)."""


def quantize_row_as(x, q1, q2, dx, sx, form):
    """quantize_row, or quantize_row8 for X8 (q2 untouched)."""


@overload(x_arrays, inline="always")
def _x_arrays(n, n_in, form):
    if form.dtype == types.uint8:
        return lambda n, n_in, form: (np.empty((n, n_in), np.int8), np.empty((n, 0), np.uint8),
                                      np.empty((n, n_in // 32), np.float32), np.empty((n, n_in // 16), np.int32))
    return lambda n, n_in, form: (np.empty((n, n_in), np.int8), np.empty((n, n_in), np.int8),
                                  np.empty((n, n_in // 32), np.float32), np.empty((n, n_in // 16), np.int32))


@overload(quantize_row_as, inline="always")
def _quantize_row_as(x, q1, q2, dx, sx, form):
    if form.dtype == types.uint8:
        return lambda x, q1, q2, dx, sx, form: quantize_row8(x, q1, dx, sx)
    return lambda x, q1, q2, dx, sx, form: quantize_row(x, q1, q2, dx, sx)


@njit(cache=True, nogil=True)
def quantize_as(x, form):
    """x (n, n_in) quantized row by row in the given form: (q1, q2, dx, sx)."""
    n, n_in = x.shape
    q1, q2, dx, sx = x_arrays(n, n_in, form)
    for i in range(n):
        quantize_row_as(x[i], q1[i], q2[i], dx[i], sx[i], form)
    return q1, q2, dx, sx


@njit(cache=True, inline="always")
def quantize_row8(x, q1, dx, sx):
    # one int8 per input: d1 = max|x| / 127, q1 = rint(x / d1), dx = d1, sx = sum of q1 per 16 inputs
    bits = x.view(np.int32)
    for b in range(x.shape[0] // 32):
        d1, inv1 = _block_scale(bits, b)
        dx[b] = d1
        for h in range(2):
            s = 0
            for j in range(32 * b + 16 * h, 32 * b + 16 * h + 16):
                a = min(max(np.rint(x[j] * inv1), -QMAX), QMAX)
                q1[j] = np.int8(a)
                s += np.int32(a)
            sx[2 * b + h] = s


def _first_int8_ref(x: np.ndarray):
    """What both forms' twins start with: x's 32-blocks (n, n_in/32, 32), their scales d1 and q1 (as floats)."""
    n, n_in = x.shape
    blocks = x.reshape(n, n_in // 32, 32).astype(np.float32)
    d1 = (np.abs(blocks).max(axis=2) / QMAX).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv1 = np.where(d1 > 0, np.float32(1.0) / d1, np.float32(0.0)).astype(np.float32)[..., None]
    return blocks, d1, np.clip(np.rint(blocks * inv1), -QMAX, QMAX)


def quantize_rows8_ref(x: np.ndarray):
    """The NumPy twin of X8's quantization: (q1, dx, sx), bit-identical with quantize_row8."""
    n, n_in = x.shape
    _, d1, a = _first_int8_ref(x)
    sx = a.astype(np.int32).reshape(n, n_in // 16, 16).sum(axis=2, dtype=np.int32)
    return a.astype(np.int8).reshape(n, n_in), d1, sx


def quantize_rows_ref(x: np.ndarray):
    """The NumPy twin of quantize_as(x, X16): (q1, q2, dx, sx)."""
    n, n_in = x.shape
    blocks, d1, a = _first_int8_ref(x)
    d2 = (d1 / np.float32(HI)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv2 = np.where(d2 > 0, np.float32(1.0) / d2, np.float32(0.0)).astype(np.float32)[..., None]
    c = np.clip(np.rint((blocks - a * d1[..., None]) * inv2), -QMAX, QMAX)
    big = HI * a.astype(np.int32) + c.astype(np.int32)
    sx = big.reshape(n, n_in // 16, 16).sum(axis=2, dtype=np.int32)
    return a.astype(np.int8).reshape(n, n_in), c.astype(np.int8).reshape(n, n_in), d2, sx


# ---------------------------------------------------------------------------------------------------------------
# One tile (TILE rows) of y for one or two tokens, in LLVM IR so that it runs on whole vectors: the weights of a
# tile are (n_in / 4, TILE, 4) bytes, item [k, l, b] = integer 4k + b of row l (for the q4 family byte 4k + b of
# the row's packed nibbles: within a group of 32 the low nibble of byte j is input j, the high nibble input j + 16),
# so one 64-byte load gives 16 rows x 4 integers, the operand of two vpdpbusd against broadcast words of q1, q2.
# KIND (a literal at every call site) selects the family, the group size and the offsets; see KINDS.
# ---------------------------------------------------------------------------------------------------------------

KINDS = {  # kind: (family, group size, has m, off)
    0: ("q4", 32, False, 8),     # Q4_0
    1: ("q4", 32, True, 0),      # Q4_1, Q4_K
    2: ("q8", 32, False, 128),   # Q8_0, Q5_0, IQ4_NL, IQ4_XS
    3: ("q8", 32, True, 128),    # Q5_1, Q5_K
    4: ("q8", 16, False, 128),   # Q3_K
    5: ("q8", 16, True, 128),    # Q2_K
    6: ("q6", 16, False, 32),    # Q6_K
}
QUADS = {"q4": lambda gs: gs // 8, "q8": lambda gs: gs // 4, "q6": lambda gs: 3}  # weight words per group and row


def _unpack(builder, family: str, gs: int, words: list, n_vec: int) -> list:
    """A group's weight words (words[w * n_vec + c]: word w of row vector c) as (x word, c, integers) operands of
    the byte dot products: which word of the group's x (4 inputs each) they meet, and 4 unsigned bytes per row.
    q4: word w holds inputs 4w.. in its low nibbles and gs/2 + 4w.. in its high nibbles. q8: word w holds inputs
    4w... q6 (16-groups): words 0 and 1 hold the low 4 bits of inputs 0-7 (low nibbles) and 8-15 (high nibbles) as
    q4 does, word 2 their top 2 bits: bits 2s, 2s + 1 of its byte b belong to input 4s + b."""
    low4 = ir.Constant(_VI, [0x0F0F0F0F] * LANES)
    shift = lambda v, n: builder.lshr(v, ir.Constant(_VI, [n] * LANES))  # noqa: E731
    out = []
    for c in range(n_vec):
        w = [words[i * n_vec + c] for i in range(QUADS[family](gs))]
        if family == "q8":
            out += [(i, c, w[i]) for i in range(len(w))]
        elif family == "q4":
            for i, word in enumerate(w):
                out += [(i, c, builder.and_(word, low4)), (gs // 8 + i, c, builder.and_(shift(word, 4), low4))]
        else:
            nib = [builder.and_(w[0], low4), builder.and_(w[1], low4), builder.and_(shift(w[0], 4), low4),
                   builder.and_(shift(w[1], 4), low4)]
            top = ir.Constant(_VI, [0x30303030] * LANES)
            for s in range(4):  # inputs 4s .. 4s + 3
                high = builder.and_(builder.shl(w[2], ir.Constant(_VI, [4] * LANES)) if s == 0 else
                                    shift(w[2], 2 * s - 4) if s > 2 else
                                    builder.shl(w[2], ir.Constant(_VI, [4 - 2 * s] * LANES)), top)
                out.append((s, c, builder.or_(nib[s], high)))
    return out

# the forms of a group's scale d (and offset m), by the dtype of their arrays: float32 as they are; the f16 bits of
# the legacy types; or K-quant sub-scales (int8 / uint8) times the super-block's d (and -dmin, f16), so that
# d = D * sc and m = (-DMIN) * mn are the products gguf's dequantization forms, bit for bit
SCALES = {"float32": "f32", "uint16": "f16", "int8": "k8", "uint8": "ku8"}

_I32, _F32 = ir.IntType(32), ir.FloatType()
_VI, _VF, _VB = ir.VectorType(_I32, LANES), ir.VectorType(_F32, LANES), ir.VectorType(ir.IntType(8), 4 * LANES)


def dot_isa() -> str:
    """How tile_dot's byte dot products are spelled on this CPU (Numba compiles for the host): "vnni" (AVX-512
    VNNI), "avx2" (vpmaddubsw + vpmaddwd, as llama.cpp without VNNI) or "generic" (plain IR for any target).
    $MINIRS_CPU_DOT picks one by hand, to test or time them here (then set NUMBA_CACHE_DIR apart too: Numba's cache
    key holds the CPU, not the environment)."""
    features = llvm.get_host_cpu_features()
    have = {"vnni": features.get("avx512vnni", False) and features.get("avx512bw", False),
            "avx2": features.get("avx2", False), "generic": True}
    forced = os.environ.get("MINIRS_CPU_DOT")
    if forced:
        if not have.get(forced):
            raise ValueError(f"MINIRS_CPU_DOT={forced}: this CPU has only {[k for k, v in have.items() if v]}")
        return forced
    return next(k for k, v in have.items() if v)


def _dot4(builder, acc, w, x, isa: str, small: bool):
    """acc + (lane l: sum_b u8(w[l, b]) * i8(x[b])) for a <16 x i32> acc and w and a broadcast word x."""
    if isa == "vnni":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VI, [_VI, _VI, _VI]),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [acc, w, x])
    if isa == "avx2":
        return builder.add(acc, _avx2_dot4(builder, w, x, small))
    # products in 16 bits (255 * 127 fits), then pairs summed into 32 bits: the shape of pmaddwd / NEON's smlal
    h16 = ir.VectorType(ir.IntType(16), 4 * LANES)
    prod = builder.mul(builder.zext(builder.bitcast(w, _VB), h16), builder.sext(builder.bitcast(x, _VB), h16))
    even = builder.shuffle_vector(prod, ir.Constant(h16, ir.Undefined), ir.Constant(ir.VectorType(_I32, 2 * LANES),
                                                                                    list(range(0, 4 * LANES, 2))))
    odd = builder.shuffle_vector(prod, ir.Constant(h16, ir.Undefined), ir.Constant(ir.VectorType(_I32, 2 * LANES),
                                                                                   list(range(1, 4 * LANES, 2))))
    wide = ir.VectorType(_I32, 2 * LANES)
    pairs = builder.add(builder.sext(even, wide), builder.sext(odd, wide))  # pair p = bytes 2p, 2p + 1
    lo = builder.shuffle_vector(pairs, ir.Constant(wide, ir.Undefined), ir.Constant(_VI, list(range(0, 2 * LANES, 2))))
    hi = builder.shuffle_vector(pairs, ir.Constant(wide, ir.Undefined), ir.Constant(_VI, list(range(1, 2 * LANES, 2))))
    return builder.add(acc, builder.add(lo, hi))


def _avx2_dot4(builder, w, x, small: bool):
    """The 4-byte dot products on two 256-bit halves: vpmaddubsw (u8 x i8 pairs to i16, saturating) then vpmaddwd
    by 1. Small weights (q4, q6: < 64) cannot saturate; a q8 weight u = v + 128 is taken back to v, and |v| meets x
    with v's sign (vpsignb), as llama.cpp does, so each pair stays within 2 * 128 * 127; then 128 * (the sum of x's
    bytes) is added back, so that the result is u's dot product as with the other spellings."""
    b32, h16, i8 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16), ir.VectorType(_I32, 8)
    mod = builder.module
    maddubs = cgutils.get_or_insert_function(mod, ir.FunctionType(h16, [b32, b32]), "llvm.x86.avx2.pmadd.ub.sw")
    maddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(i8, [h16, h16]), "llvm.x86.avx2.pmadd.wd")
    sign = cgutils.get_or_insert_function(mod, ir.FunctionType(b32, [b32, b32]), "llvm.x86.avx2.psign.b")
    ones = ir.Constant(h16, [1] * 16)
    halves = []
    for h in range(2):
        idx = ir.Constant(ir.VectorType(_I32, 8), list(range(8 * h, 8 * h + 8)))
        wh = builder.bitcast(builder.shuffle_vector(w, ir.Constant(_VI, ir.Undefined), idx), b32)
        xh = builder.bitcast(builder.shuffle_vector(x, ir.Constant(_VI, ir.Undefined), idx), b32)
        if small:
            halves.append(builder.call(maddwd, [builder.call(maddubs, [wh, xh]), ones]))
            continue
        v = builder.xor(wh, ir.Constant(b32, [0x80] * 32))
        av = builder.select(builder.icmp_signed("<", v, ir.Constant(b32, [0] * 32)), builder.neg(v), v)
        vx = builder.call(maddwd, [builder.call(maddubs, [av, builder.call(sign, [xh, v])]), ones])
        bias = builder.call(maddwd, [builder.call(maddubs, [ir.Constant(b32, [0x80] * 32), xh]), ones])
        halves.append(builder.add(vx, bias))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_VI, list(range(16))))


def _splat(builder, value, vtype):
    v = builder.insert_element(ir.Constant(vtype, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined), ir.Constant(_VI, [0] * LANES))


def _vload(builder, ptr, index, vtype):
    p = builder.bitcast(builder.gep(ptr, [index]), vtype.as_pointer())
    return builder.load(p, align=1)


@intrinsic
def tile_dot(typingctx, qt, dt, mt, st, q1, q2, dx, sx, y, n_groups, kind, n_tok):
    """y[j, l] = row l of the tile times token j's x, for the N_TOK (a literal, 1 or 2) tokens of q1, q2, dx, sx
    (see the module docstring): two tokens share each weight load and its unpacking. qt (n_in/4, TILE, 4) uint8;
    dt and mt (n_groups, TILE) the group scales and offsets (mt ignored without m) in one of SCALES' forms, st
    (n_groups / (256 / gs), 2, TILE) the f16 bits of the super-block scales of the "k" form; q1 and q2 (N_TOK,
    n_in) int8, dx (N_TOK, n_in/32) float32, sx (N_TOK, n_in/16) int32, y (N_TOK, TILE) float32 (rows may be
    strided)."""
    if not isinstance(kind, types.IntegerLiteral) or not isinstance(n_tok, types.IntegerLiteral):
        return None
    family, gs, has_m, off = KINDS[kind.literal_value]
    tokens = range(n_tok.literal_value)
    isa = dot_isa()
    form = SCALES[str(dt.dtype)]
    streams = 2 if q2.dtype == types.int8 else 1  # X16: q1 and q2; X8: q1 alone (q2 has no columns)
    sig = types.void(qt, dt, mt, st, q1, q2, dx, sx, y, n_groups, kind, n_tok)

    def codegen(context, builder, signature, args):
        def data(i, t):
            a = context.make_array(signature.args[i])(context, builder, args[i])
            return builder.bitcast(a.data, t.as_pointer())

        def rows(i, t):
            """Pointers to row j of a 2-D argument, for each token j."""
            a = context.make_array(signature.args[i])(context, builder, args[i])
            stride = cgutils.unpack_tuple(builder, a.strides, 2)[0]
            base = builder.bitcast(a.data, ir.IntType(8).as_pointer())
            return [builder.bitcast(builder.gep(base, [builder.mul(stride, k(j))]), t.as_pointer()) for j in tokens]

        i64 = ir.IntType(64)
        k = lambda v: ir.Constant(i64, v)  # noqa: E731
        at = lambda p, *terms: builder.gep(p, [_sum(builder, terms)])  # noqa: E731
        pq, pst = data(0, _I32), data(3, ir.IntType(16))
        scale_elt = {"f32": _F32, "f16": ir.IntType(16), "k8": ir.IntType(8), "ku8": ir.IntType(8)}[form]
        pd, pm = data(1, scale_elt), data(2, scale_elt)
        px = list(zip(rows(4, _I32), rows(5 if streams == 2 else 4, _I32)))  # px[j] = (q1, q2) of token j
        pdx, psx, py = rows(6, _F32), rows(7, _I32), rows(8, _F32)
        n_vec = TILE // LANES
        quads = QUADS[family](gs)  # 4-byte words of weights per row and group
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF]), "llvm.fma.v16f32")
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer(), _I32, _I32, _I32]), "llvm.prefetch.p0")
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_VF, [0.0] * LANES)) for _ in range(n_vec)]
                for _ in tokens]
        zero = ir.Constant(_VI, [0] * LANES)
        n_groups_64 = args[9] if args[9].type == i64 else builder.sext(args[9], i64)

        def group_scale(ptr, which, g, c):
            """<16 x float> of the group scales (which 0) or offsets (which 1) of rows 16c.. of group g."""
            at_row = _sum(builder, [builder.mul(g, k(TILE)), k(LANES * c)])
            if form == "f32":
                return _vload(builder, ptr, at_row, _VF)
            if form == "f16":
                return builder.fpext(builder.bitcast(_vload(builder, ptr, at_row, ir.VectorType(ir.IntType(16), LANES)),
                                                     ir.VectorType(ir.HalfType(), LANES)), _VF)
            small = _vload(builder, ptr, at_row, ir.VectorType(ir.IntType(8), LANES))
            small = builder.sitofp(small, _VF) if form == "k8" else builder.uitofp(small, _VF)
            block = builder.udiv(g, k(256 // gs))
            big = _vload(builder, pst, _sum(builder, [builder.mul(block, k(2 * TILE)), k(which * TILE + LANES * c)]),
                         ir.VectorType(ir.IntType(16), LANES))
            big = builder.fpext(builder.bitcast(big, ir.VectorType(ir.HalfType(), LANES)), _VF)
            return builder.fmul(big, small)

        with cgutils.for_range(builder, n_groups_64) as loop:
            g = loop.index
            # ask for the weights PREFETCH bytes ahead, a cache line at a time (past the tile: the next tile; past
            # the array: harmless): more loads in flight than the hardware prefetcher keeps. Into L2 (locality 1),
            # not L1 (3), where (likely) they wait for L1's few miss buffers beside the loads being used. 1B Q4_K
            # decode, eight paired runs: 1 thread 26.3 -> 30.4 tok/s (all 8 faster), 2 threads 39.4 -> 40.2 (5 of 8)
            ahead = builder.mul(builder.add(g, k(max(1, PREFETCH // (quads * TILE * 4)))), k(quads * TILE))
            for line in range(quads * TILE * 4 // 64):
                p8 = builder.bitcast(builder.gep(pq, [builder.add(ahead, k(16 * line))]), ir.IntType(8).as_pointer())
                builder.call(prefetch, [p8, ir.Constant(_I32, 0), ir.Constant(_I32, PREFETCH_LOCALITY),
                                        ir.Constant(_I32, 1)])
            # sums[j][c][s][h]: token j, vector c of rows, x stream s (q1, q2), two independent sums (h) (four with
            # one stream measured no faster)
            halves = 2
            sums = [[[[zero] * halves for _ in range(streams)] for _ in range(n_vec)] for _ in tokens]
            words = [_vload(builder, pq, _sum(builder, [builder.mul(g, k(quads * TILE)), k(w * TILE + LANES * c)]),
                            _VI) for w in range(quads) for c in range(n_vec)]
            for p, (x_at, c, part) in enumerate(_unpack(builder, family, gs, words, n_vec)):
                for j in tokens:
                    for stream in range(streams):
                        x_word = _splat(builder, builder.load(at(px[j][stream], builder.mul(g, k(gs // 4)), k(x_at))),
                                        _VI)
                        h = p % halves
                        sums[j][c][stream][h] = _dot4(builder, sums[j][c][stream][h], part, x_word, isa, family != "q8")
            for j in tokens:
                if gs == 32:
                    sxg = builder.add(builder.load(at(psx[j], builder.mul(g, k(2)))),
                                      builder.load(at(psx[j], builder.mul(g, k(2)), k(1))))
                    dxg = builder.load(at(pdx[j], g))
                else:
                    sxg = builder.load(at(psx[j], g))
                    dxg = builder.load(at(pdx[j], builder.lshr(g, k(1))))
                corr = _splat(builder, builder.mul(sxg, ir.Constant(_I32, off)), _VI)
                dxv = _splat(builder, dxg, _VF)
                if has_m:
                    msx = _splat(builder, builder.fmul(dxg, builder.sitofp(sxg, _F32)), _VF)
                for c in range(n_vec):
                    a = _sum(builder, sums[j][c][0])
                    if streams == 2:  # X = HI * q1 + q2
                        a = builder.add(builder.mul(a, ir.Constant(_VI, [HI] * LANES)), _sum(builder, sums[j][c][1]))
                    total = builder.sub(a, corr)
                    t = builder.fmul(builder.sitofp(total, _VF), dxv)
                    acc = builder.call(fma, [group_scale(pd, 0, g, c), t, builder.load(accs[j][c])])
                    if has_m:
                        acc = builder.call(fma, [group_scale(pm, 1, g, c), msx, acc])
                    builder.store(acc, accs[j][c])
        for j in tokens:
            for c in range(n_vec):
                p = builder.bitcast(builder.gep(py[j], [k(LANES * c)]), _VF.as_pointer())
                builder.store(builder.load(accs[j][c]), p, align=1)
        return context.get_dummy_value()

    return sig, codegen


def _sum(builder, terms):
    total = terms[0]
    for t in terms[1:]:
        total = builder.add(total, t)
    return total
