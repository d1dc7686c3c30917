"""Dequantization is bit-exact with the gguf package: every tensor of the two real models, and random blocks of
every type (random bytes with finite f16/f32 scales). Q8_1 and Q8_K, which gguf cannot decode, are checked
against a plain per-element loop over their documented layout."""

import gguf
import numpy as np
import pytest

from minirs.errors import FormatError
from minirs.formats import QTYPES, dequantize, load_model_file

GGUF_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
              "Q6_K", "IQ4_NL", "IQ4_XS"]

# Byte offsets of the f16 scales inside each block (they are made finite in random blocks).
F16_SCALES = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0],
              "IQ4_XS": [0]}


def random_blocks(qtype: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random valid blocks of `qtype` as (n_blocks, type_size) uint8: random bytes, finite scales."""
    qt = QTYPES[qtype]
    raw = rng.integers(0, 256, (n_blocks, qt.type_size), dtype=np.uint8)
    if qtype in ("F32", "F16", "BF16"):
        vals = rng.standard_normal(n_blocks).astype(np.float32)
        if qtype == "BF16":
            return (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, -1)
        return vals.astype(np.float16 if qtype == "F16" else np.float32).view(np.uint8).reshape(n_blocks, -1)
    for off in F16_SCALES.get(qtype, []):
        raw[:, off:off + 2] = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if qtype == "Q8_K":
        raw[:, :4] = (rng.standard_normal(n_blocks) * 0.05).astype(np.float32).view(np.uint8).reshape(-1, 4)
    return raw


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_random_blocks_bit_exact(qtype):
    rng = np.random.default_rng(sum(map(ord, qtype)))
    qt = QTYPES[qtype]
    n_rows, blocks_per_row = 8, 64 // qt.block_size if qt.block_size == 1 else 8
    raw = random_blocks(qtype, n_rows * blocks_per_row, rng).reshape(n_rows, -1)
    shape = (n_rows, blocks_per_row * qt.block_size)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape)
    got = dequantize(raw, qtype, shape)
    assert got.dtype == np.float32 and same_bits(got, ref)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q6_K", "Q2_K"])
def test_arbitrary_bytes_bit_exact(qtype):
    """Any bytes at all (nan/inf scales included) decode exactly as gguf does."""
    raw = np.random.default_rng(1).integers(0, 256, (4, 4 * QTYPES[qtype].type_size), dtype=np.uint8)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    with np.errstate(all="ignore"):
        assert same_bits(dequantize(raw, qtype, ref.shape), ref)


def test_q8_1_layout():
    # Q8_1: d f16 | s f16 | int8[32]; x = d * q
    raw = random_blocks("Q8_1", 16, np.random.default_rng(2))
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    want = raw[:, 4:].copy().view(np.int8).astype(np.float32) * d
    assert same_bits(dequantize(raw, "Q8_1", (16, 32)), want)


def test_q8_k_layout():
    # Q8_K: d f32 | int8[256] | int16 bsums[16]; x = d * q
    raw = random_blocks("Q8_K", 4, np.random.default_rng(3))
    d = raw[:, :4].copy().view(np.float32)
    want = raw[:, 4:260].copy().view(np.int8).astype(np.float32) * d
    assert same_bits(dequantize(raw, "Q8_K", (4, 256)), want)


def test_integer_types():
    a = np.arange(-8, 8, dtype=np.int32)
    assert np.array_equal(dequantize(a.view(np.uint8), "I32", (4, 4)), a.reshape(4, 4).astype(np.float32))


def test_wrong_size_and_unknown_type():
    with pytest.raises(FormatError, match="needs 36 bytes"):
        dequantize(np.zeros(35, np.uint8), "Q4_0", (64,))
    with pytest.raises(FormatError, match="no decoder"):
        dequantize(np.zeros(66, np.uint8), "IQ2_XXS", (256,))


def _check_model(path):
    mf = load_model_file(path)
    for name, t in mf.tensors.items():
        qtype = gguf.GGMLQuantizationType[t.qtype]
        raw = t.data if t.qtype in ("F32", "F16") else t.rows()
        ref = gguf.quants.dequantize(raw, qtype).reshape(t.shape)
        got = dequantize(t)
        assert same_bits(got, ref), f"{path.name}: {name} ({t.qtype}) differs from gguf"
    return mf


def test_smollm2_every_tensor_bit_exact(smollm2_path):
    mf = _check_model(smollm2_path)
    assert {t.qtype for t in mf.tensors.values()} >= {"Q4_1", "Q8_0", "F32"}


def test_gemma3_every_tensor_bit_exact(gemma3_path):
    mf = _check_model(gemma3_path)
    assert {t.qtype for t in mf.tensors.values()} >= {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"}
