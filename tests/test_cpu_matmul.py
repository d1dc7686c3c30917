"""The CPU quantized matmul against its NumPy twin `x @ gguf.quants.dequantize(W).T` (gguf is the independent
reference), on random valid blocks of every type and on the real SmolLM2 / Gemma-3 matrices.

Tolerance: the kernels accumulate in float32 in a different order than BLAS (per-group partial sums, offsets folded
in through group sums of x), so outputs differ by float32 rounding only: we require
max|y - y_ref| <= RTOL * max|y_ref| with RTOL = 1e-5 (about 100 ulps of the largest output, far below the
engine's 1e-3 logits target and far above float32 noise for dot products of length <= 2048).
Embedding rows (pure decoding) must be bit-exact, and every row of qmatmul must be batch-invariant: bit-identical
whether it is computed alone or with any number of other rows (the batching scheduler relies on it).
"""

import gguf
import numpy as np
import pytest

from minirs.formats import Tensor
from minirs.formats.types import QTYPES
from minirs.kernels.cpu.dequant import embedding_rows
from minirs.kernels.cpu.matmul import qmatmul, qmatmul_ref, set_threads
from minirs.kernels.cpu.weights import QMatrix

RTOL = 1e-5

# byte offsets of the f16 scale fields in one block, overwritten with small finite values in random blocks
SCALE_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0], "IQ4_XS": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
QUANT_TYPES = list(SCALE_FIELDS)
ALL_TYPES = QUANT_TYPES + ["F32", "F16", "BF16"]


def random_rows(qtype: str, n_out: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    """(n_out, row_bytes) uint8 of valid blocks: random bytes with finite f16 scales around 1e-2."""
    if qtype == "F32":
        return rng.standard_normal((n_out, n_in), dtype=np.float32).view(np.uint8)
    if qtype == "F16":
        return rng.standard_normal((n_out, n_in)).astype(np.float16).view(np.uint8)
    if qtype == "BF16":
        return gguf.quants.quantize(rng.standard_normal((n_out, n_in), dtype=np.float32), gguf.GGMLQuantizationType.BF16)
    qt = QTYPES[qtype]
    nb = n_in // qt.block_size
    blk = rng.integers(0, 256, (n_out, nb, qt.type_size), dtype=np.uint8)
    for o in SCALE_FIELDS[qtype]:
        s = (rng.uniform(0.5, 1.5, (n_out, nb)) * 1e-2 * rng.choice([-1, 1], (n_out, nb))).astype(np.float16)
        blk[..., o:o + 2] = s[..., None].view(np.uint8)
    return blk.reshape(n_out, -1)


def as_tensor(qtype: str, n_out: int, n_in: int, raw: np.ndarray) -> Tensor:
    return Tensor("w", qtype, (n_out, n_in), raw.reshape(-1))


def check(w: QMatrix, raw: np.ndarray, x: np.ndarray, rtol: float = RTOL) -> float:
    y = qmatmul(w, x)
    ref = qmatmul_ref(raw, x, w.qtype).astype(np.float32)
    assert y.shape == ref.shape and y.dtype == np.float32
    err = float(np.abs(y - ref).max())
    scale = float(np.abs(ref).max())
    assert err <= rtol * scale, f"{w.qtype} {w.n_out}x{w.n_in} n={x.shape[0]}: max abs err {err:.3g}, " \
                                f"relative {err / scale:.3g} > {rtol}"
    return err / scale


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_random_blocks(qtype):
    rng = np.random.default_rng(QTYPES[qtype].id)
    n_out, n_in = 37, 512
    raw = random_rows(qtype, n_out, n_in, rng)
    w = QMatrix.from_tensor(as_tensor(qtype, n_out, n_in, raw))
    assert (w.n_out, w.n_in, w.qtype) == (n_out, n_in, qtype)
    for n in (1, 3, 67):
        check(w, raw, rng.standard_normal((n, n_in), dtype=np.float32))
    ids = np.array([0, 5, 36, 5])
    want = gguf.quants.dequantize(raw[ids], gguf.GGMLQuantizationType[qtype]).astype(np.float32)
    assert np.array_equal(embedding_rows(w, ids), want)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_quantized_gaussian(qtype):
    """Blocks made by gguf's own quantizer from Gaussian weights (typical scales and offsets)."""
    rng = np.random.default_rng(7)
    n_out, n_in = 48, 256
    raw = gguf.quants.quantize(rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.05,
                               gguf.GGMLQuantizationType[qtype])
    w = QMatrix.from_tensor(as_tensor(qtype, n_out, n_in, raw))
    for n in (1, 65):
        check(w, raw, rng.standard_normal((n, n_in), dtype=np.float32))


def _real(path, names):
    from minirs.formats import load_model_file
    mf = load_model_file(path)
    return [mf.tensors[n] for n in names]


def _check_real(tensors, rows_limit=4096):
    rng = np.random.default_rng(0)
    for t in tensors:
        w = QMatrix.from_tensor(t)
        raw = t.rows()[:rows_limit] if t.shape[0] > rows_limit else t.rows()
        for n in (1, 3, 129):
            x = rng.standard_normal((n, t.shape[1]), dtype=np.float32)
            y = qmatmul(w, x)[:, :raw.shape[0]]
            ref = qmatmul_ref(raw, x, t.qtype)
            err = float(np.abs(y - ref).max() / np.abs(ref).max())
            assert err <= RTOL, f"{t.name} ({t.qtype} {t.shape}) n={n}: relative err {err:.3g}"
        ids = np.array([0, 1, raw.shape[0] - 1, 7])
        want = gguf.quants.dequantize(raw[ids], gguf.GGMLQuantizationType[t.qtype])
        assert np.array_equal(embedding_rows(w, ids), want), f"{t.name}: embedding rows differ from gguf"


def test_smollm2_matrices(smollm2_path):
    _check_real(_real(smollm2_path, ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_gate.weight",
                                     "blk.0.ffn_down.weight", "token_embd.weight"]))


def test_gemma3_matrices(gemma3_path):
    _check_real(_real(gemma3_path, ["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight",
                                    "blk.0.ffn_down.weight", "blk.2.ffn_down.weight"]))


BATCH_SIZES = (2, 3, 4, 5, 7, 16, 33, 128)


def check_batch_invariant(w: QMatrix, name: str, rng: np.random.Generator) -> None:
    """qmatmul(w, x)[i] == qmatmul(w, x[i:i+1])[0] bit for bit, for every batch size n and row i < n."""
    x = rng.standard_normal((max(BATCH_SIZES), w.n_in), dtype=np.float32)
    alone = np.concatenate([qmatmul(w, x[i:i + 1]) for i in range(x.shape[0])])
    for n in BATCH_SIZES:
        y = qmatmul(w, x[:n])
        bad = np.flatnonzero(~np.all(y == alone[:n], axis=1))
        assert bad.size == 0, f"{name} ({w.qtype} {w.n_out}x{w.n_in}): n={n}, rows {bad[:5]} differ from the row alone"


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_batch_invariant_random_blocks(qtype):
    rng = np.random.default_rng(QTYPES[qtype].id + 100)
    n_out, n_in = 100, 512  # 100: a partial last tile
    raw = random_rows(qtype, n_out, n_in, rng)
    check_batch_invariant(QMatrix.from_tensor(as_tensor(qtype, n_out, n_in, raw)), "random", rng)


def test_batch_invariant_real(smollm2_path, gemma3_path):
    """SmolLM2 Q4_1 and Gemma-3 Q5_0 / Q4_K / Q6_K / Q8_0 matrices; also across thread counts."""
    rng = np.random.default_rng(3)
    ts = _real(smollm2_path, ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"])
    ts += _real(gemma3_path, ["blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight",
                              "blk.0.attn_v.weight"])
    assert {t.qtype for t in ts} == {"Q4_1", "Q5_0", "Q4_K", "Q6_K", "Q8_0"}
    for t in ts:
        w = QMatrix.from_tensor(t)
        check_batch_invariant(w, t.name, rng)
        x = rng.standard_normal((7, t.shape[1]), dtype=np.float32)
        y = qmatmul(w, x)
        set_threads(1)
        try:
            assert np.array_equal(qmatmul(w, x), y), f"{t.name}: 1 thread differs from the default"
        finally:
            import numba
            set_threads(numba.config.NUMBA_NUM_THREADS)


def test_shape_errors():
    raw = random_rows("Q8_0", 4, 64, np.random.default_rng(0))
    w = QMatrix.from_tensor(as_tensor("Q8_0", 4, 64, raw))
    with pytest.raises(ValueError, match="expected"):
        qmatmul(w, np.zeros((1, 32), np.float32))
    with pytest.raises(IndexError):
        embedding_rows(w, [4])


@pytest.mark.parametrize("qtype,dtype", [("F32", np.float32), ("F16", np.float16)])
@pytest.mark.parametrize("n_in", [5, 48, 70])
def test_float_rows_of_any_length(qtype, dtype, n_in):
    """Float weights (HF folders) may have rows that are not whole groups of 32."""
    rng = np.random.default_rng(n_in)
    w = rng.standard_normal((70, n_in)).astype(dtype)
    qm = QMatrix.from_tensor(Tensor("w", qtype, (70, n_in), w.view(np.uint8).reshape(-1)))
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    y = qmatmul(qm, x)
    ref = x @ w.astype(np.float32).T
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.array_equal(qmatmul(qm, x[3:4])[0], y[3])
