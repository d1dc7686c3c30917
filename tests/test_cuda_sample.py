"""GPU sampling (kernels/cuda/sample.py) against the host sampler it replaces (minirs.sampling.sample_plain): the
same token for the same logits, parameters and coin, or -1 (the host decides) only where the kernels may say so.
Runs in the CUDA simulator (small SLICE and C, no GPU needed) and, where there is one, on the GPU."""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import os
import sys
import threading
sys.setswitchinterval(1e-6)  # the simulator's threads meet at every barrier: switch often
import numpy as np
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator makes a shared array at its first use in a launch (keyed by source line) without a lock: two
    # threads of a launch's first block can each make their own and miss each other's writes. That gave a rare
    # wrong token, always in row 0 (the first block), never reproduced on the GPU. Make them under a lock.
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    _lock, _array = threading.Lock(), kernelapi.FakeCUDAShared.array

    def _locked_array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return _array(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with _lock:
            if key not in self._allocations:
                dt = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                self._allocations[key] = np.empty(shape, dt)
            return self._allocations[key]
    kernelapi.FakeCUDAShared.array = _locked_array
from minirs.kernels.cuda import sample as cs
from minirs.sampling import sample_plain

rng = np.random.default_rng(int(sys.argv[1]))
C, decided, total = cs.C, 0, 0


def check(x, prm):
    global decided, total
    n, V = x.shape
    out = cs.sample_ids(x, prm)
    for i in range(n):
        t, k, p, mp, coin = prm[i]
        want = sample_plain(x[i], t, int(k), p, mp, coin)
        top_k_on = 0 < k < V
        may_defer = (top_k_on and k > C) or (not top_k_on and (p < 1 or mp > 0))
        assert out[i] == want or (out[i] == -1 and may_defer), (i, V, int(out[i]), want, prm[i])
        decided += out[i] == want
        total += 1


def params(n, V):
    temp = rng.choice([1.0, 0.7, 1.3, rng.uniform(0.2, 2.0)], n)
    top_k = rng.choice([0, 0, 1, 2, 5, C - 1, C, C + 1, V - 1, V, V + 3], n)
    top_p = rng.choice([1.0, 1.0, 0.9, 0.5, 0.05, 0.999], n)
    min_p = rng.choice([0.0, 0.0, 0.05, 0.3], n)
    coin = rng.random(n)
    coin[:2] = 0.0, 1 - 1e-12
    return cs.pack(temp, top_k, top_p, min_p, coin)


for V in [int(v) for v in sys.argv[2].split(",")]:
    n = int(sys.argv[3])
    x = (rng.standard_normal((n, V)) * rng.uniform(0.5, 4, (n, 1))).astype(np.float32)
    if sys.argv[4] == "ties":  # few distinct values: ties at every cut; a constant stretch over whole slices
        x = np.round(x * 2) / 2
        x[0, V // 4: 3 * V // 4] = 0.5
        x[1] = 1.0
    else:  # some tied logits anyway
        x[:, rng.integers(0, V, 5)] = x[:, :1]
    check(x, params(n, V))
print(f"{decided} of {total} rows decided on the device")
assert decided >= total // 3  # (in the simulator, C = 8: top-p alone is often left to the host)
"""


def _run(env_extra, seed, vocabs, n, ties=False):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(seed), ",".join(map(str, vocabs)), str(n),
                        "ties" if ties else "-"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("seed,vocabs,ties", [(0, (1000, 37), False), (1, (300, 64), False), (2, (500, 130), True)])
def test_sample_in_simulator(seed, vocabs, ties):
    """Vocabularies of 16 slices (the most), of a partial last slice, of one slice and less (SLICE = 64, C = 8)."""
    _run({"NUMBA_ENABLE_CUDASIM": "1"}, seed, vocabs, 10, ties)


@pytest.mark.gpu
@pytest.mark.parametrize("seed,vocabs,ties", [(3, (49152, 262144, 5000), False), (4, (49152, 4097), True)])
def test_sample_on_gpu(seed, vocabs, ties):
    from minirs.load import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    _run({}, seed, vocabs, 16, ties)
