"""The GPU's LoRA kernels (kernels/cuda/lora.py) against their NumPy twin (kernels/ref.py lora_delta) in the CUDA
simulator: random stacked adapters with column ranges, rows with and without coefficients. No GPU needed;
tests/test_cuda.py runs them and the whole adapted model on one."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import numpy as np
from minirs.kernels import ref
from minirs.kernels.cuda.lora import launch_lora_add

rng = np.random.default_rng(int(__import__("sys").argv[1]))
for n, R, n_in, n_out, K in ((1, 5, 40, 24, 4), (3, 7, 33, 20, 6)):
    a = rng.standard_normal((R, n_in)).astype(np.float32)
    bt = rng.standard_normal((R, n_out)).astype(np.float32)
    lo, hi = rng.integers(0, n_out // 2, R), rng.integers(n_out // 2, n_out + 1, R)
    for j in range(R):
        bt[j, :lo[j]] = bt[j, hi[j]:] = 0
    key, scale = rng.integers(0, K, R), rng.random(R).astype(np.float32)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    coef = (rng.random((n, K)) * (rng.random((n, 1)) > 0.3)).astype(np.float32)
    coef[0, :] = 0  # a row without adapters adds nothing
    y0 = rng.standard_normal((n, n_out)).astype(np.float32)
    y = y0.copy()
    launch_lora_add(y, x, a, bt, key, scale, lo, hi, coef, np.empty((n, R), np.float32), 0)
    want = y0 + ref.lora_delta(x, a, bt, key, scale, coef)
    assert np.abs(y - want).max() < 1e-4, np.abs(y - want).max()
    assert np.array_equal(y[0], y0[0])
print("ok")
"""


def test_lora_kernels_in_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", SCRIPT, "3"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


# ----- on a GPU (skipped without one) ----------------------------------------------------------------------------

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def _gpu():
    from minirs.load import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    from minirs.kernels.cuda.backend import CudaBackend
    return CudaBackend()


def _rel(a, b):
    import numpy as np
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.gpu
def test_lora_kernels_on_gpu():
    """lora_add_ on the GPU against the twin, for decode and prefill batch sizes."""
    import numpy as np

    from minirs.kernels import ref
    be = _gpu()
    import cupy as cp
    rng = np.random.default_rng(0)
    R, n_in, n_out, K = 48, 4096, 6144, 8
    a, bt = rng.standard_normal((R, n_in)).astype(np.float32), rng.standard_normal((R, n_out)).astype(np.float32)
    lo = np.repeat([0, 4096, 5120], 16)
    hi = np.repeat([4096, 5120, 6144], 16)
    for j in range(R):
        bt[j, :lo[j]] = bt[j, hi[j]:] = 0
    key, scale = rng.integers(0, K, R), rng.random(R).astype(np.float32)
    stack = be.lora_stack(a, bt, key, scale, lo, hi)
    for n in (1, 16, 200):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        coef = (rng.random((n, K)) * (rng.random((n, 1)) > 0.3)).astype(np.float32)
        y0 = rng.standard_normal((n, n_out)).astype(np.float32)
        y = cp.asarray(y0)
        be.lora_add_(y, cp.asarray(x), stack, cp.asarray(coef))
        assert _rel(cp.asnumpy(y), y0 + ref.lora_delta(x, a, bt, key, scale, coef)) < 1e-5, n


@pytest.mark.gpu
def test_lora_model_on_gpu_matches_peft():
    """The tiny llama with PEFT adapters (tests/golden/lora_llama) on the GPU: every case's logits within 1e-2 of
    PEFT's, X-LoRA's too (the GPU's KV cache and its cuBLAS prefill inputs are float16, as in test_arch's GPU test;
    measured on an H100: up to 6.0e-3, with both adapters on)."""
    import numpy as np

    from minirs.engine.kv_cache import KVCache
    from minirs.load import load_model
    from minirs.models.lora import load_adapters
    from minirs.models.xlora import load_xlora
    be = _gpu()
    g = np.load(os.path.join(GOLDEN, "lora_llama", "logits.npz"))
    m = load_model(os.path.join(GOLDEN, "arch_llama"), backend=be)
    load_adapters(m, [os.path.join(GOLDEN, "lora_llama", n) for n in ("a1", "a2", "rs")])
    for case, names in {"a1": ["a1"], "a2": ["a2"], "both": ["a1", "a2"], "rs": ["rs"]}.items():
        for i in range(2):
            ids = g[f"prompts_{i}"]
            n = len(ids)
            cache = KVCache(m.config, be, 1, 64, 64)
            coef = be.array(np.tile(m.lora.row(names), (n, 1)))
            got = be.to_numpy(m.forward(ids, np.zeros(n, np.int64), np.arange(n), cache, coef=coef))
            assert _rel(got, g[f"{case}_logits_{i}"]) < 1e-2, (case, i)
    m = load_model(os.path.join(GOLDEN, "arch_llama"), backend=be)
    xdir = os.path.join(GOLDEN, "lora_llama", "xlora")
    xl = load_xlora(m, xdir, os.path.join(xdir, "ordering.json"))
    ids = g["prompts_0"]
    n = len(ids)
    cache = KVCache(m.config, be, 2, 64, 64)
    hidden = m.forward(ids, np.ones(n, np.int64), np.arange(n), cache, coef=be.array(xl.dummy(n)), hidden=True)
    coef = xl.coefs(be, hidden)
    got = be.to_numpy(m.forward(ids, np.zeros(n, np.int64), np.arange(n), cache, coef=be.array(coef)))
    assert _rel(got, g["xlora_logits_0"]) < 1e-2


@pytest.mark.gpu
def test_lora_mixed_batch_in_the_decode_graph():
    """Through the engine on the GPU (decode in captured graphs, coef a graph input): a batch mixing a1, a2, both
    and none gives each request the tokens it gets alone, and a1 changes them."""
    import numpy as np
    from test_lora import StubTokenizer

    from minirs.engine import Engine, GenParams, Job
    from minirs.load import load_model
    from minirs.models.lora import load_adapters
    be = _gpu()
    m = load_model(os.path.join(GOLDEN, "arch_llama"), backend=be)
    load_adapters(m, [os.path.join(GOLDEN, "lora_llama", n) for n in ("a1", "a2")])
    rng = np.random.default_rng(5)
    ps = [list(rng.integers(3, 256, int(rng.integers(4, 20)))) for _ in range(8)]
    which = [["a1"], ["a2"], [], ["a1", "a2"], ["a2"], ["a1"], [], ["a1"]]

    def job(p, w):
        return Job(p, GenParams(max_tokens=10), StubTokenizer(), adapters=w)
    alone = [Engine(m, StubTokenizer(), max_seqs=2).submit(job(p, w)).wait(300).seqs[0].generated
             for p, w in zip(ps, which)]
    eng = Engine(m, StubTokenizer(), max_seqs=8)
    assert eng.graphs
    jobs = [eng.submit(job(p, w)) for p, w in zip(ps, which)]
    assert [j.wait(300).seqs[0].generated for j in jobs] == alone
    plain = Engine(m, StubTokenizer(), max_seqs=2).submit(job(ps[0], [])).wait(300).seqs[0].generated
    assert plain != alone[0]
    eng.shutdown()
