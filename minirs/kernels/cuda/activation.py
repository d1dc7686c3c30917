"""The MLP's activations: gated (SiLU or tanh-GELU of gate, times up), plain, and the linear layers' biases.

    launch_gated_act(gate, up, gelu, out, form, stream)  # form: the down GEMV's input form (gated_act_q), or None
    launch_act(x, gelu, out, stream)
    launch_add_bias(x, b, stream)                        # x[i] += b, in place

The NumPy twins are in ref.py (silu, gelu_tanh).
"""

import math

from numba import cuda, float32

from minirs.kernels.cuda.intrinsics import wait_prior_kernel
from minirs.kernels.cuda.launch import kernels
from minirs.kernels.cuda.quantize import FORM_SIG as _Q
from minirs.kernels.cuda.quantize import gemv_input


def _act(g, gelu):
    if gelu:
        return float32(0.5) * g * (float32(1.0) + math.tanh(float32(0.7978845608028654) * (g + float32(0.044715) * g * g * g)))
    return g / (float32(1.0) + math.exp(-g))


def gated_act(gate, up, gelu, out):
    """out = act(gate) * up, act = SiLU, or tanh-GELU when gelu.  gate, up, out: (n, f); a thread per element."""
    wait_prior_kernel()
    n, f = gate.shape
    e = cuda.grid(1)
    if e >= n * f:
        return
    i, j = e // f, e % f
    out[i, j] = _act(gate[i, j], gelu) * up[i, j]


def gated_act_q(gate, up, gelu, out, xq, xd, xs, xh, half):
    """gated_act, and out quantized per 32-block for the down-projection GEMV.  f % 32 == 0; a warp per 32-block.
    gate and up may be column views of one fused (n, 2f) gate_up output."""
    wait_prior_kernel()
    n, f = gate.shape
    nb = f >> 5
    gw = cuda.grid(1) >> 5
    t = gw // nb
    if t >= n:
        return
    b = gw - t * nb
    j = 32 * b + (cuda.threadIdx.x & 31)
    v = _act(gate[t, j], gelu) * up[t, j]
    out[t, j] = v
    gemv_input(v, t, b, xq, xd, xs, xh, half)


def add_bias_(x, b):
    """x[i, j] += b[j], in place.  A thread per element."""
    wait_prior_kernel()
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        x[e // f, e % f] += b[e % f]


def act(x, gelu, out):
    """out = act(x), act = SiLU, or tanh-GELU when gelu (the non-gated MLP).  A thread per element."""
    wait_prior_kernel()
    n, f = x.shape
    e = cuda.grid(1)
    if e < n * f:
        out[e // f, e % f] = _act(x[e // f, e % f], gelu)


_A2 = "[:, ::1]"
SIGS = {
    gated_act: [f"void(float32[:, :], float32[:, :], boolean, float32{_A2})"],
    gated_act_q: [f"void(float32[:, :], float32[:, :], boolean, float32{_A2}, {_Q})"],
    add_bias_: [f"void(float32{_A2}, float32[::1])"],
    act: [f"void(float32{_A2}, boolean, float32{_A2})"],
}
_act = cuda.jit(device=True, inline=True)(_act)
K = kernels(SIGS)


def _blocks(n: int, threads: int) -> int:
    return max(1, (n + threads - 1) // threads)


def launch_gated_act(gate, up, gelu: bool, out, form, stream) -> None:
    """out (n, f) = act(gate) * up; gate and up may be column views of one fused gate_up output. With form =
    (xq, xd, xs, xh, half), gated_act_q also writes out's GEMV form (f % 32 == 0)."""
    if form is not None:
        K["gated_act_q"][_blocks(gate.size, 256), 256, stream](gate, up, gelu, out, *form)
    else:
        K["gated_act"][_blocks(gate.size, 256), 256, stream](gate, up, gelu, out)


def launch_act(x, gelu: bool, out, stream) -> None:
    K["act"][_blocks(x.size, 256), 256, stream](x, gelu, out)


def launch_add_bias(x, b, stream) -> None:
    """x (n, f) += b, in place."""
    K["add_bias_"][_blocks(x.size, 256), 256, stream](x, b)
