"""The Numba CPU kernels against their NumPy twins (kernels/ref.py) on fresh random inputs."""

import numpy as np
import pytest

from minirs.kernels import ref
from minirs.kernels.cpu import activation, attention, moe, norm, rope

RTOL = 1e-5  # fp32 kernels vs float64 twins: only rounding differs


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rmsnorm(rng):
    x = rng.standard_normal((7, 576)).astype(np.float32) * 3
    w = rng.standard_normal(576).astype(np.float32)
    got = norm.rmsnorm(x, w, 1e-5, np.empty_like(x))
    assert rel_err(got, ref.rmsnorm(x, w, 1e-5)) < RTOL


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("rope_dim", [64, 32])
def test_rope(rng, neox, rope_dim):
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    pos = np.array([0, 1, 17, 300, 8191], dtype=np.int64)
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, rope_dim, 2) / rope_dim)
    want = ref.rope(x, pos, inv_freq, neox)
    got = rope.rope_(x.copy(), pos, inv_freq, neox)
    assert rel_err(got, want) < RTOL
    np.testing.assert_array_equal(got[..., rope_dim:], x[..., rope_dim:])


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_gated_act(rng, act):
    g, u = rng.standard_normal((2, 3, 1536)).astype(np.float32) * 4
    got = activation.gated_act(g, u, act == "gelu", np.empty_like(g))
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
    got = attention.attention(q, kc, vc, slots, pos, window, 0.25, softcap, np.empty_like(q))
    assert rel_err(got, want) < RTOL


def test_kv_write(rng):
    kc, vc = np.zeros((2, 2, 4, 3), np.float32), np.zeros((2, 2, 4, 3), np.float32)
    k, v = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    attention.kv_write(kc, vc, np.array([1, 0]), np.array([5, 2]), k, v)
    np.testing.assert_array_equal(kc[1, :, 1], k[0])
    np.testing.assert_array_equal(vc[0, :, 2], v[1])


def test_layernorm(rng):
    x = rng.standard_normal((7, 96)).astype(np.float32) * 3 + 1
    w, b = rng.standard_normal((2, 96)).astype(np.float32)
    got = norm.layernorm(x, w, b, 1e-5, np.empty_like(x))
    assert rel_err(got, ref.layernorm(x, w, b, 1e-5)) < RTOL


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_act(rng, act):
    x = rng.standard_normal((3, 257)).astype(np.float32) * 4
    assert rel_err(activation.act(x, act == "gelu", np.empty_like(x)), ref.act(x, act)) < RTOL


def test_topk_softmax(rng):
    logits = rng.standard_normal((9, 8)).astype(np.float32)
    ids, w = moe.topk_softmax(logits, 2, np.empty((9, 2), np.int64), np.empty((9, 2), np.float32))
    want_ids, want_w = ref.topk_softmax(logits, 2)
    np.testing.assert_array_equal(ids, want_ids)
    assert rel_err(w, want_w) < RTOL


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_matmul_id_and_moe_sum(rng, qtype):
    """The CPU backend's expert matmul against the twin, on shared (n, n_in) and per-slot (n, k, n_in) inputs."""
    from minirs.formats import Tensor, dequantize, quantize
    from minirs.kernels.cpu import CpuBackend
    be = CpuBackend()
    w = rng.standard_normal((4, 48, 64)).astype(np.float32)
    raw = w.reshape(-1).view(np.uint8) if qtype == "F32" else quantize(w.reshape(-1, 64), qtype).reshape(-1)
    t = Tensor("exps", qtype, (4, 48, 64), raw)
    wd = dequantize(t).reshape(4, 48, 64)
    ids = rng.integers(0, 4, (5, 2))
    x2, x3 = rng.standard_normal((5, 64)).astype(np.float32), rng.standard_normal((5, 2, 64)).astype(np.float32)
    experts = be.expert_matrix(t)
    tol = 1e-5 if qtype == "F32" else 1e-2  # Q8_0 kernels quantize the activations to 8 bits too
    for x in (x2, x3):
        assert rel_err(be.matmul_id(experts, x, ids), ref.matmul_id(wd, x, ids)) < tol
    y, wts = rng.standard_normal((5, 2, 48)).astype(np.float32), rng.random((5, 2)).astype(np.float32)
    assert rel_err(be.moe_sum(y, wts), ref.moe_sum(y, wts)) < RTOL


def test_gated_act_rows_equals_serial(rng):
    g, u = rng.standard_normal((2, 40, 256)).astype(np.float32)
    for gelu in (False, True):
        a = activation.gated_act(g, u, gelu, np.empty_like(g))
        b = activation.gated_act_rows(g, u, gelu, np.empty_like(g))
        np.testing.assert_array_equal(a, b)


def test_gated_halves_equal_the_gated_act_of_the_halves(rng):
    """gate|up from one matmul, read in place: the same bits as gated_act on copies of the halves, alone or in rows."""
    gu = (rng.standard_normal((20, 2 * 96)) * 6).astype(np.float32)
    gate, up = np.ascontiguousarray(gu[:, :96]), np.ascontiguousarray(gu[:, 96:])
    for gelu in (False, True):
        want = activation.gated_act(gate, up, gelu, np.empty_like(gate))
        np.testing.assert_array_equal(activation.gated_halves(gu, 96, gelu, np.empty_like(gate)), want)
        np.testing.assert_array_equal(activation.gated_halves_rows(gu, 96, gelu, np.empty_like(gate)), want)
        assert rel_err(want, ref.gated_act(gate, up, "gelu" if gelu else "silu")) < RTOL


def test_exp32_is_within_an_ulp_and_saturates(rng):
    x = np.concatenate([np.linspace(-87, 88, 100_001), rng.uniform(-20, 20, 10_000)]).astype(np.float32)
    got = activation.act(x[None, :] * 0 + x[None, :], False, np.empty((1, x.size), np.float32))[0]  # silu(x)
    want = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)) < 1e-6
    ext = np.array([[-1e30, -100.0, -87.5, 88.5, 100.0, 1e30, np.inf]], np.float32)
    out = activation.act(ext, False, np.empty_like(ext))
    assert np.all(np.abs(out[0, :3]) < 1e-30) and np.array_equal(out[0, 3:], ext[0, 3:])  # no NaN, no overflow
    nan = np.full((1, 40), np.nan, np.float32)
    assert np.isnan(activation.act(nan, False, np.empty_like(nan))).all()  # NaN stays NaN, on vectors and alone
    q, kc = np.ones((1, 2, 8), np.float32), np.ones((1, 1, 4, 8), np.float32)
    kc[0, 0, 1] = np.nan  # one NaN key: every output of its heads is NaN, not a finite mix
    out = attention.attention(q, kc, kc.copy(), np.array([0]), np.array([3]), 0, 0.35, 0.0, np.empty_like(q))
    assert np.isnan(out).all()


@pytest.mark.parametrize("extras", ["plain", "biases and q/k norms"])
@pytest.mark.parametrize("neox", [False, True])
def test_attention_inputs_in_one_call_equal_the_ops_one_by_one(rng, extras, neox):
    from minirs.kernels.cpu import CpuBackend
    be, n, h, h_kv, d = CpuBackend(), 3, 4, 2, 32
    qkv = rng.standard_normal((n, (h + 2 * h_kv) * d)).astype(np.float32)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    biases, norms = ((f32(h * d), f32(h_kv * d), f32(h_kv * d)), (f32(d), f32(d))) if extras != "plain" \
        else ((None,) * 3, None)
    inv_freq = (10000.0 ** (-np.arange(0, 24, 2) / 24)).astype(np.float32)  # a partial rotary (24 of 32 dims)
    slots, pos = np.array([1, 0, 1]), np.array([5, 9, 6])
    outs = []
    for post in (be.qkv_post, be.qkv_post_composed):
        kc, vc = np.zeros((2, h_kv, 16, d), np.float32), np.zeros((2, h_kv, 16, d), np.float32)
        q = post(qkv.copy(), h * d, h_kv * d, biases, norms, 1e-6, pos, inv_freq, neox, kc, vc, slots)
        outs.append((q, kc, vc))
    for got, want in zip(*outs):
        assert got.shape == want.shape and rel_err(got, want) < 1e-6
    assert outs[0][0].shape == (n, h, d) and np.count_nonzero(outs[0][1][1, :, 5]) == h_kv * d
