"""CPU activations (Numba): gated act(gate) * up, and plain act; twins in kernels/ref.py.

Both activations are one form, g * sigmoid(a(g)) = g / (1 + exp(-a(g))): SiLU with a(g) = g, tanh-GELU with
a(g) = 2 sqrt(2/pi) (g + 0.044715 g^3) (because 0.5 (1 + tanh(z)) = sigmoid(2z)). The exponential is written out
(`exp32`: Cody-Waite reduction to r in [-ln2/2, ln2/2], Cephes' degree-6 polynomial for e^r, 2^k set in the
exponent bits) instead of math.exp, which Numba calls once per element (~3.5 ns); written out, LLVM runs 16 at a
time. No fastmath: every element takes the same operations in the same order wherever it sits in a vector, so a
row's bits do not depend on the batch. The row kernels are serial: waking Numba's thread pool costs more than
they take at decode sizes; prefill batches use the parallel gated_act_rows.
"""

import math

import numpy as np
from numba import njit, prange

from minirs.kernels.cpu.bits import f32_from_bits

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = HI + LO, HI exact in 10 bits
_X_MIN, _X_MAX = np.float32(-87.0), np.float32(88.0)  # where 2^k is a normal float32 (k in -126..127)
_GELU_A = np.float32(2.0 * math.sqrt(2.0 / math.pi))


@njit(cache=True, inline="always", error_model="numpy")
def exp32(x):
    """e^x in float32 within 1 ulp (measured over [-87, 88]); 0 below -87, inf above 88 (no subnormals), NaN for
    NaN."""
    xc = min(max(x, _X_MIN), _X_MAX)  # 2^k below stays a normal float32
    k = np.rint(xc * _LOG2E)
    r = (xc - k * _LN2_HI) - k * _LN2_LO  # k * HI is exact, so r carries no error from ln 2's rounding
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    er = p * (r * r) + r + np.float32(1.0)  # e^r
    e = er * f32_from_bits((np.int64(k) + 127) << 23)  # times 2^k
    return np.float32(np.inf) if x > _X_MAX else np.float32(0.0) if x < _X_MIN else x if x != x else e  # NaN: NaN


@njit(cache=True, inline="always", error_model="numpy")
def _act(g, gelu):
    # g * sigmoid(a(g)), a(g) = g (SiLU) or the tanh-GELU argument doubled (see the module docstring)
    a = _GELU_A * (g + np.float32(0.044715) * g * g * g) if gelu else g
    return g / (np.float32(1.0) + exp32(-a))


@njit(cache=True, inline="always", error_model="numpy")
def _gated_row(gate, up, gelu, out, i):
    for j in range(gate.shape[1]):
        out[i, j] = _act(gate[i, j], gelu) * up[i, j]


@njit(cache=True, nogil=True, error_model="numpy")
def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu is True.  gate, up, out: (n, f) float32."""
    for i in range(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def gated_act_rows(gate, up, gelu, out):
    """gated_act with the rows spread over the threads: for prefill-sized batches (the same per-row math)."""
    for i in prange(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def gated_halves(gu, f, gelu, out):
    """out = act(gu[:, :f]) * gu[:, f:] (gate|up from one matmul, no copies of its halves).  out: (n, f)."""
    for i in range(gu.shape[0]):
        for j in range(f):
            out[i, j] = _act(gu[i, j], gelu) * gu[i, f + j]
    return out


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def gated_halves_rows(gu, f, gelu, out):
    """gated_halves with the rows spread over the threads (the same per-element math)."""
    for i in prange(gu.shape[0]):
        for j in range(f):
            out[i, j] = _act(gu[i, j], gelu) * gu[i, f + j]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu is True.  x, out: (n, f) float32."""
    n, f = x.shape
    for i in range(n):
        for j in range(f):
            out[i, j] = _act(x[i, j], gelu)
    return out
