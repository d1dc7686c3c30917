"""CPU activations (Numba): gated act(gate) * up, and plain act; twins in kernels/ref.py.

The row kernels are serial: waking Numba's thread pool costs more than they take at decode sizes; prefill
batches use the parallel gated_act_rows.
"""

import math

from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _gated_row(gate, up, gelu, out, i):
    k = math.sqrt(2.0 / math.pi)
    for j in range(gate.shape[1]):
        g = gate[i, j]
        if gelu:
            a = 0.5 * g * (1.0 + math.tanh(k * (g + 0.044715 * g * g * g)))
        else:
            a = g / (1.0 + math.exp(-g))
        out[i, j] = a * up[i, j]


@njit(cache=True, fastmath=True, nogil=True)
def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu is True.  gate, up, out: (n, f)."""
    for i in range(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out


@njit(cache=True, fastmath=True, parallel=True, nogil=True)
def gated_act_rows(gate, up, gelu, out):
    """gated_act with the rows spread over the threads: for prefill-sized batches (the same per-row math)."""
    for i in prange(gate.shape[0]):
        _gated_row(gate, up, gelu, out, i)
    return out




@njit(cache=True, fastmath=True, nogil=True)
def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu is True.  x, out: (n, f)."""
    n, f = x.shape
    k = math.sqrt(2.0 / math.pi)
    for i in range(n):
        for j in range(f):
            g = x[i, j]
            if gelu:
                out[i, j] = 0.5 * g * (1.0 + math.tanh(k * (g + 0.044715 * g * g * g)))
            else:
                out[i, j] = g / (1.0 + math.exp(-g))
    return out
