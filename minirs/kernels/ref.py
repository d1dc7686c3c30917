"""NumPy twins of the transformer kernels: the plain statement of each op's math.

They are the specification, the fallback and the test oracle of the Numba CPU kernels (cpu_ops.py) and the
CUDA kernels. Shapes: n = tokens in the batch, h = heads, d = head_dim.
"""

import numpy as np


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """y = x / sqrt(mean(x^2) + eps) * w, over the last axis."""
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate the first 2*len(inv_freq) dims of each head of x (n, h, d) by angle pos * inv_freq.

    normal layout: pairs (2i, 2i+1); NeoX layout: pairs (i, i + rope_dim/2).
    """
    half = len(inv_freq)
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # (n, half)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = x.astype(np.float64).copy()
    if neox:
        a, b = x[..., :half], x[..., half:2 * half]
        y[..., :half], y[..., half:2 * half] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
        y[..., 0:2 * half:2], y[..., 1:2 * half:2] = a * cos - b * sin, a * sin + b * cos
    return y.astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gated_act(gate: np.ndarray, up: np.ndarray, activation: str) -> np.ndarray:
    """y = act(gate) * up, act = SiLU (SwiGLU) or tanh-GELU (GeGLU)."""
    g = gate.astype(np.float64)
    act = silu(g) if activation == "silu" else gelu_tanh(g)
    return (act * up).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, slots: np.ndarray, pos: np.ndarray,
              window: int, scale: float, softcap: float) -> np.ndarray:
    """Causal grouped-query attention of each token over its own sequence's ring-buffer cache.

    q: (n, h, d); k_cache, v_cache: (n_slots, h_kv, L, d) where key j of a sequence lives at row j % L.
    Token t (slot s, position p) attends to keys j in [max(0, p - window + 1), p] (window 0 = no limit):
        o[t, h] = sum_j softmax_j(scale * q[t, h] . k[s, h // g, j]) * v[s, h // g, j],   g = h / h_kv
    """
    n, h, d = q.shape
    h_kv, L = k_cache.shape[1], k_cache.shape[2]
    out = np.zeros((n, h, d), dtype=np.float32)
    for t in range(n):
        p = int(pos[t])
        lo = max(0, p - window + 1) if window > 0 else 0
        rows = np.arange(lo, p + 1) % L
        for head in range(h):
            kv = head // (h // h_kv)
            keys = k_cache[slots[t], kv, rows].astype(np.float64)  # (m, d)
            scores = keys @ q[t, head].astype(np.float64) * scale
            if softcap > 0:
                scores = softcap * np.tanh(scores / softcap)
            out[t, head] = softmax(scores) @ v_cache[slots[t], kv, rows].astype(np.float64)
    return out
