"""The Numba CPU kernels against their NumPy twins (kernels/ref.py) on fresh random inputs."""

import numpy as np
import pytest

from minirs.kernels import cpu_ops, ref

RTOL = 1e-5  # fp32 kernels vs float64 twins: only rounding differs


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rmsnorm(rng):
    x = rng.standard_normal((7, 576)).astype(np.float32) * 3
    w = rng.standard_normal(576).astype(np.float32)
    got = cpu_ops.rmsnorm(x, w, 1e-5, np.empty_like(x))
    assert rel_err(got, ref.rmsnorm(x, w, 1e-5)) < RTOL


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("rope_dim", [64, 32])
def test_rope(rng, neox, rope_dim):
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    pos = np.array([0, 1, 17, 300, 8191], dtype=np.int64)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, rope_dim, 2) / rope_dim)
    want = ref.rope(x, pos, inv_freq, neox)
    got = cpu_ops.rope_(x.copy(), pos, inv_freq, neox)
    assert rel_err(got, want) < RTOL
    np.testing.assert_array_equal(got[..., rope_dim:], x[..., rope_dim:])


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_gated_act(rng, act):
    g, u = rng.standard_normal((2, 3, 1536)).astype(np.float32) * 4
    got = cpu_ops.gated_act(g, u, act == "gelu", np.empty_like(g))
    assert rel_err(got, ref.gated_act(g, u, act)) < RTOL


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (5, 0.0), (0, 50.0)])
def test_attention_ring_buffer(rng, window, softcap):
    n_slots, h, h_kv, d, L = 3, 6, 2, 16, 12
    kc = rng.standard_normal((n_slots, h_kv, L, d)).astype(np.float32)
    vc = rng.standard_normal((n_slots, h_kv, L, d)).astype(np.float32)
    # positions beyond L wrap around the ring; with a window the keys needed are still present
    slots = np.array([0, 2, 1, 2], dtype=np.int64)
    pos = np.array([3, 11, 0, 7], dtype=np.int64) if window == 0 else np.array([3, 20, 0, 13], dtype=np.int64)
    q = rng.standard_normal((4, h, d)).astype(np.float32)
    want = ref.attention(q, kc, vc, slots, pos, window, 0.25, softcap)
    got = cpu_ops.attention(q, kc, vc, slots, pos, window, 0.25, softcap, np.empty_like(q))
    assert rel_err(got, want) < RTOL


def test_kv_write(rng):
    kc, vc = np.zeros((2, 2, 4, 3), np.float32), np.zeros((2, 2, 4, 3), np.float32)
    k, v = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    cpu_ops.kv_write(kc, vc, np.array([1, 0]), np.array([5, 2]), k, v)
    np.testing.assert_array_equal(kc[1, :, 1], k[0])
    np.testing.assert_array_equal(vc[0, :, 2], v[1])
