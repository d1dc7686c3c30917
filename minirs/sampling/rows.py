"""Per-row sampling parameters of a batch, as the samplers that run where the logits are read them.

    prm = pack(temperature, top_k, top_p, min_p, coin)     # (n, 5) float64, one row per token
    ids = finish(ids, undecided_logits, prm)                # the rows a device sampler left at -1, drawn here

A row with temperature > 0 draws as sample_plain does; the engine gives greedy rows top_k = 1.
"""

import numpy as np

from minirs.sampling import sample_plain


def pack(temperature, top_k, top_p, min_p, coin) -> np.ndarray:
    """(n, 5) float64: one upload per step; top_k is exact in float64."""
    return np.ascontiguousarray(np.stack([np.asarray(a, np.float64) for a in
                                          (temperature, top_k, top_p, min_p, coin)], axis=1))


def finish(ids: np.ndarray, rows: np.ndarray, prm: np.ndarray) -> np.ndarray:
    """ids with each -1 drawn on the host from its row's logits (rows: the logits of those rows, in order)."""
    ids = np.array(ids, np.int64)
    for z, i in zip(rows, np.flatnonzero(ids < 0)):
        ids[i] = sample_plain(z, *prm[i])
    return ids
