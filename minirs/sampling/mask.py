"""Allowed-token masks: one bit per token id, packed little-endian into uint32 words (llguidance's layout).

    words = np.full((n, mask_words(V)), ALL, np.uint32)    # every token allowed
    mask_logits(logits, words)                              # in place: logits[i, j] = -inf where bit j of row i is 0

Token j of row i is allowed where (words[i, j >> 5] >> (j & 31)) & 1. A mask narrower than the logits allows none
of the ids past its last bit (a model whose embedding has more rows than its tokenizer has tokens); a wider one is
cut. This is the NumPy twin of the GPU's kernels/cuda/mask.py.
"""

import numpy as np

ALL = np.uint32(0xFFFFFFFF)  # a row with no grammar


def mask_words(vocab: int) -> int:
    """uint32 words per row of a mask over `vocab` token ids."""
    return (vocab + 31) // 32


def allowed(words: np.ndarray, vocab: int) -> np.ndarray:
    """The boolean allowed-token vector(s) (..., vocab) of packed words (..., W)."""
    words = np.ascontiguousarray(words, np.uint32)
    have = min(vocab, 32 * words.shape[-1])
    bits = np.unpackbits(words.view(np.uint8), axis=-1, count=have, bitorder="little").view(bool)
    if have < vocab:
        bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (vocab - have,), bool)], axis=-1)
    return bits


def mask_logits(logits: np.ndarray, words: np.ndarray) -> np.ndarray:
    """logits (V,) or (n, V) with -inf where words (W,) or (n, W) disallow the token; in place, and returned."""
    np.putmask(logits, ~allowed(words, logits.shape[-1]), -np.inf)
    return logits
