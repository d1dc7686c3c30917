"""The CPU matmul's integer core (minirs/kernels/cpu/qdot.py): the activation quantizer against its NumPy twin, and
the three spellings of the byte dot products (AVX-512 VNNI, AVX2, portable IR) against each other. Integer sums
are exact, so every spelling must give the same bits; each runs in a subprocess of its own (the spelling is chosen
when Numba compiles, and Numba's cache must not hand one process another's code)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirs.kernels.cpu.qdot import (
    HI,
    X8,
    X16,
    dot_isa,
    quantize_as,
    quantize_rows8_ref,
    quantize_rows_ref,
)

# what every spelling computes: small matrices of each kernel kind, x with a zero block and an outlier
_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from test_cpu_matmul import as_tensor, random_rows
from minirs.kernels.cpu.matmul import qmatmul
from minirs.kernels.cpu.qdot import dot_isa
from minirs.kernels.cpu.weights import QMatrix
rng = np.random.default_rng(7)
out = {"isa": np.array(dot_isa())}
for qtype in ("Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q5_1", "Q6_K", "Q2_K", "IQ4_XS"):
    raw = random_rows(qtype, 40, 512, rng)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[1, 32:64] = 0
    x[2, 5] = 300.0
    out[qtype] = qmatmul(QMatrix.from_tensor(as_tensor(qtype, 40, 512, raw)), x)
np.savez(sys.argv[1], **out)
"""


def test_quantize_rows_matches_its_twin_and_bound():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 256)) * rng.uniform(1e-3, 1e3, (5, 1))).astype(np.float32)
    x[1, :32] = 0  # an all-zero block: scale 0, integers 0
    x[2, 40] = 1e4  # an outlier that coarsens its block
    x[3, 64:96] = -x[3, 64:96].max()  # ties of the largest magnitude
    got, want = quantize_as(x, X16), quantize_rows_ref(x)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    q1, q2, dx, sx = got
    big = HI * q1.astype(np.int64) + q2
    assert np.array_equal(sx, big.reshape(5, -1, 16).sum(axis=2))
    err = np.abs(big.reshape(5, -1, 32) * dx[..., None].astype(np.float64) - x.reshape(5, -1, 32))
    amax = np.abs(x.reshape(5, -1, 32)).max(axis=2, keepdims=True)
    assert (err <= amax / 60000).all()  # 16-bit: dx / 2 = amax / (2 * 127 * 254), plus float32 rounding
    assert not big[1, :32].any() and dx[1, 0] == 0


def test_every_dot_spelling_gives_the_same_bits(tmp_path):
    here = os.path.dirname(__file__)
    runs = {}
    for isa in ("vnni", "avx2", "generic"):
        env = dict(os.environ, MINIRS_CPU_DOT=isa, NUMBA_CACHE_DIR=str(tmp_path / f"cache-{isa}"),
                   NUMBA_NUM_THREADS="1")
        out = tmp_path / f"{isa}.npz"
        r = subprocess.run([sys.executable, "-c", _SCRIPT, str(out), here], env=env, capture_output=True, text=True)
        if r.returncode and "this CPU has only" in r.stderr:
            continue  # a spelling this CPU cannot run
        assert r.returncode == 0, r.stderr[-2000:]
        runs[isa] = np.load(out)
    assert "generic" in runs and dot_isa() in runs, json.dumps(list(runs))
    base = runs["generic"]
    for isa, got in runs.items():
        for k in base.files:
            if k != "isa":
                assert np.array_equal(got[k], base[k]), f"{isa} differs from generic on {k}"


@pytest.mark.parametrize("n", [1, 2, 5])
def test_rows_do_not_depend_on_the_batch_or_threads(n):
    import numba
    from test_cpu_matmul import random_rows

    from minirs.formats import Tensor
    from minirs.kernels.cpu.matmul import qmatmul
    from minirs.kernels.cpu.weights import QMatrix

    rng = np.random.default_rng(n)
    raw = random_rows("Q4_K", 2048, 256, rng)  # large enough for the parallel kernel
    w = QMatrix.from_tensor(Tensor("w", "Q4_K", (2048, 256), raw.reshape(-1)))
    x = rng.standard_normal((n, 256)).astype(np.float32)
    whole = qmatmul(w, x)
    top = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        for i in range(n):
            assert np.array_equal(qmatmul(w, x[i:i + 1])[0], whole[i])
    finally:
        numba.set_num_threads(top)


def test_the_8_bit_form_matches_its_twins_and_keeps_rows_apart():
    """X8 (MINIRS_CPU_ACT_BITS=8): one int8 per input, as llama.cpp does; its quantization is bit-identical with
    the twin, its matmuls follow the twin for every family (and the all-zero and outlier blocks), and a row's bits
    do not depend on the batch."""
    from test_cpu_matmul import as_tensor, random_rows

    from minirs.kernels.cpu.matmul import qmatmul, qmatmul_ref
    from minirs.kernels.cpu.weights import QMatrix
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((20, 512)) * rng.uniform(1e-3, 1e3, (20, 1))).astype(np.float32)
    x[1, :32] = 0
    x[2, 40] = 1e4
    q1, q2, dx, sx = quantize_as(x, X8)
    r1, rd, rs = quantize_rows8_ref(x)
    assert q2.shape == (20, 0) and np.array_equal(q1, r1) and np.array_equal(dx, rd) and np.array_equal(sx, rs)
    err = np.abs(q1.reshape(20, -1, 32) * dx[..., None].astype(np.float64) - x.reshape(20, -1, 32))
    assert (err <= np.abs(x.reshape(20, -1, 32)).max(axis=2, keepdims=True) / 250).all()  # d1 / 2, and rounding
    for qtype in ("Q4_1", "Q4_K", "Q6_K", "Q8_0", "Q2_K"):
        raw = random_rows(qtype, 512, 512, rng)  # one row: 512 * 512 products, the parallel kernel (one compile)
        w = QMatrix.from_tensor(as_tensor(qtype, 512, 512, raw))
        got = qmatmul(w, x, form=X8)
        want = qmatmul_ref(raw, x, qtype, form=X8)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), qtype
        solo = np.concatenate([qmatmul(w, x[i:i + 1], form=X8) for i in range(3)])
        assert np.array_equal(solo, got[:3]), qtype
        assert not np.array_equal(got, qmatmul(w, x, form=X16))  # the two forms are not the same numbers
