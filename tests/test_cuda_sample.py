"""GPU sampling (kernels/cuda/sample.py) against the host sampler it replaces (minirs.sampling.sample_plain): the
same token for the same logits, parameters and coin, or -1 (the host decides) only where the kernels may say so.
Runs in the CUDA simulator (small SLICE and C, no GPU needed) and, where there is one, on the GPU."""

import os
import subprocess
import sys

import pytest

PRELUDE = r"""
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
from minirs.sampling.rows import pack
from minirs.sampling import LogitsError, sample_plain

rng = np.random.default_rng(int(sys.argv[1]))
"""

SCRIPT = PRELUDE + r"""
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
    return pack(temp, top_k, top_p, min_p, coin)


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


# Extreme values (minirs.sampling's rules): each case is a row's logits, its parameters and whether the GPU may leave
# it to the host (-1). A row the host refuses (LogitsError) must get -1; any other gets the host's token, or -1 where
# allowed. Then the same rows in one batch with ordinary rows between them: a bad row changes no other row's id.
EXTREMES = PRELUDE + r"""
V = int(sys.argv[2])
base = (rng.standard_normal((1, V)) * 2).astype(np.float32)


def row(**at):
    z = base[0].copy()
    for i, v in at.items():
        z[int(i[1:])] = v
    return z


ninf = np.full(V, -np.inf, np.float32)
ninf[::7] = base[0, ::7]  # most forbidden, the rest finite
tie = row()
tie[[5, V - 9]] = tie.max() + 1  # two largest, equal
near = np.full(V, -5.0, np.float32)
near[100] = 1.0
near[[10, 70, 130]] = np.float32(2e-16) + np.float32(2 ** -75) * np.arange(3)  # distinct, 2 ulps apart
cases = [  # (logits, (temperature, top_k, top_p, min_p, coin), may be left to the host)
    (row(), (1e-310, 0, 1.0, 0.0, 0.3), False),  # (x - max) / T: the largest wins, no inf - inf
    (tie, (1e-310, 0, 1.0, 0.0, 0.2), False),  # ... ties at the largest share its mass: the coin picks one
    (tie, (1e-310, 0, 1.0, 0.0, 0.8), False),
    (row(), (1e-310, 5, 1.0, 0.0, 0.6), False),
    (row(), (1e-310, 0, 0.9, 0.0, 0.6), True),
    (row(), (1e-310, 0, 1.0, 0.1, 0.6), True),
    (row(i17=np.inf), (1.0, 5, 1.0, 0.0, 0.5), False),  # +inf is the largest: it wins
    (row(i17=np.inf), (0.7, 0, 1.0, 0.0, 0.99), False),
    (row(i17=np.inf, i90=np.inf), (1.0, 0, 1.0, 0.0, 0.7), False),  # +inf ties share the mass
    (row(i17=np.inf, i90=np.inf), (1.0, 1, 1.0, 0.0, 0.7), False),  # ... top_k 1 keeps the lower id
    (row(i17=np.inf, i90=np.inf), (2.0, 5, 0.4, 0.0, 0.9), False),
    (row(i17=np.inf), (1e306, 5, 1.0, 0.0, 0.5), True),  # finite logits keep mass, ranked by id on the host
    (row(i17=np.inf, i40=-np.inf), (1e-310, 0, 1.0, 0.0, 0.5), False),
    (ninf, (1.0, 5, 1.0, 0.0, 0.5), False),
    (ninf, (0.8, 0, 1.0, 0.0, 0.5), False),
    (row(i3=np.nan), (1.0, 5, 1.0, 0.0, 0.5), False),  # NaN: the host raises LogitsError, the GPU says -1
    (row(i140=np.nan), (1.0, 0, 1.0, 0.0, 0.5), False),
    (row(i60=np.nan, i17=np.inf), (1.0, 1, 1.0, 0.0, 0.0), False),
    (np.full(V, -np.inf, np.float32), (1.0, 0, 1.0, 0.0, 0.5), False),  # all -inf: LogitsError
    (np.full(V, -np.inf, np.float32), (1.0, 5, 0.9, 0.0, 0.5), False),
    (near, (1.0, 2, 1.0, 0.0, 0.1), True),  # x - 1 rounds the three to one z: the host keeps id 10, not 130
    (near, (1.0, 3, 1.0, 0.0, 0.1), True),
    (near, (1.0, 0, 0.5, 0.0, 0.1), True),
    (near, (1.0, 1, 1.0, 0.0, 0.1), False),  # the tie lies past the top-k cut: decided
]
x = np.stack([c[0] for c in cases])
prm = pack(*np.array([c[1] for c in cases]).T)
out = cs.sample_ids(x, prm)
for i, (z, p, may_defer) in enumerate(cases):
    try:
        want = sample_plain(z, *p)
    except LogitsError:
        want = -1  # the host refuses the row: the GPU must leave it to the host, which raises for it
    assert out[i] == want or (out[i] == -1 and may_defer), (i, int(out[i]), want, p)

ok = (rng.standard_normal((len(cases), V)) * 2).astype(np.float32)
ok_prm = pack(rng.choice([0.6, 1.0, 1.5], len(cases)), rng.choice([0, 1, 3, 5], len(cases)),
                 np.ones(len(cases)), np.zeros(len(cases)), rng.random(len(cases)))
alone = cs.sample_ids(ok, ok_prm)
both, both_prm = np.empty((2 * len(cases), V), np.float32), np.empty((2 * len(cases), 5))
both[0::2], both[1::2], both_prm[0::2], both_prm[1::2] = x, ok, prm, ok_prm  # extreme, ordinary, extreme, ...
mixed = cs.sample_ids(both, both_prm)
assert (mixed[1::2] == alone).all() and (mixed[0::2] == out).all(), (mixed, alone, out)
assert (alone == [sample_plain(z, *p) for z, p in zip(ok, ok_prm)]).all()
print("extremes ok")
"""


def _run(env_extra, seed, vocabs, n, ties=False, script=SCRIPT):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", script, str(seed), ",".join(map(str, vocabs)), str(n),
                        "ties" if ties else "-"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("seed,vocabs,ties", [(0, (1000, 37), False), (1, (300, 64), False), (2, (500, 130), True)])
def test_sample_in_simulator(seed, vocabs, ties):
    """Vocabularies of 16 slices (the most), of a partial last slice, of one slice and less (SLICE = 64, C = 8)."""
    _run({"NUMBA_ENABLE_CUDASIM": "1"}, seed, vocabs, 10, ties)


def test_sample_extremes_in_simulator():
    """Temperature 1e-310, +inf logits with top-k, NaN and all -inf rows (-1: the host's twin raises LogitsError), and
    the same rows mixed with ordinary ones in one batch (V = 150: three slices, the last one partial)."""
    _run({"NUMBA_ENABLE_CUDASIM": "1"}, 5, (150,), 0, script=EXTREMES)


@pytest.mark.gpu
@pytest.mark.parametrize("seed,vocabs,ties", [(3, (49152, 262144, 5000), False), (4, (49152, 4097), True)])
def test_sample_on_gpu(seed, vocabs, ties):
    from minirs.load import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    _run({}, seed, vocabs, 16, ties)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [5000, 49152])
def test_sample_extremes_on_gpu(vocab):
    from minirs.load import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    _run({}, 6, (vocab,), 0, script=EXTREMES)
