"""NumPy twins of the transformer kernels: the plain statement of each op's math.

They are the specification, the fallback and the test oracle of the Numba CPU kernels (kernels/cpu/) and the
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


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """y = (x - mean(x)) / sqrt(var(x) + eps) * w + b, over the last axis (phi2)."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=-1, keepdims=True)
    return ((x64 - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)


def act(x: np.ndarray, activation: str) -> np.ndarray:
    """y = act(x), for the non-gated MLP (phi2: fc2(gelu(fc1 x)))."""
    x64 = x.astype(np.float64)
    return (silu(x64) if activation == "silu" else gelu_tanh(x64)).astype(np.float32)


def add_bias(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[i] = x[i] + b for every row i of x (n, d)."""
    return (x + b).astype(np.float32)


def topk_softmax(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """MoE routing (Mixtral): the k largest router logits of each row and their softmax over those k.

    logits (n, E) -> ids (n, k) int64, largest first; weights (n, k) float32 summing to 1 per row. The softmax
    over the chosen k equals a softmax over all E followed by renormalising the chosen k, as transformers does.
    """
    ids = np.argsort(-logits.astype(np.float64), axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(logits.astype(np.float64), ids, axis=-1)
    return ids.astype(np.int64), softmax(top).astype(np.float32)


def matmul_id(w: np.ndarray, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Expert matmul (llama.cpp's mul_mat_id): y[t, j] = W[ids[t, j]] @ x[t] (or x[t, j] when x is 3-D).

    w (E, n_out, n_in) float; x (n, n_in) or (n, k, n_in); ids (n, k) -> y (n, k, n_out).
    """
    n, k = ids.shape
    xs = x if x.ndim == 3 else np.broadcast_to(x[:, None, :], (n, k, x.shape[-1]))
    y = np.empty((n, k, w.shape[1]), dtype=np.float32)
    for t in range(n):
        for j in range(k):
            y[t, j] = w[ids[t, j]].astype(np.float64) @ xs[t, j].astype(np.float64)
    return y


def moe_sum(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """out[t] = sum_j weights[t, j] * y[t, j]   y (n, k, d), weights (n, k) -> (n, d)."""
    return np.einsum("nkd,nk->nd", y.astype(np.float64), weights.astype(np.float64)).astype(np.float32)


def lora_delta(x: np.ndarray, a: np.ndarray, bt: np.ndarray, key: np.ndarray, scale: np.ndarray,
               coef: np.ndarray) -> np.ndarray:
    """The LoRA delta of x (n, n_in) for adapters stacked as A (R, n_in) and B^T (R, n_out) (zero outside the
    output rows each rank column writes): delta = ((x A^T) * coef[:, key] * scale) B^T, in float64."""
    u = x.astype(np.float64) @ a.T.astype(np.float64) * coef[:, key] * scale
    return (u @ bt.astype(np.float64)).astype(np.float32)
