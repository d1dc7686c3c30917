"""Sampling: small pure functions over a logits vector, with the randomness passed in.

The order follows mistral.rs: temperature scales the logits, softmax gives probabilities, then top-k, top-p
(nucleus) and min-p each remove candidates, and one token is drawn from what remains, renormalised.
Temperature 0 means greedy (argmax). Penalties and logit bias, applied before all of this, live in
penalties.py.
"""

from dataclasses import dataclass

import numpy as np

from minirs.errors import RequestError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    seed: int | None = None

    def __post_init__(self):
        checks = [("temperature", self.temperature, self.temperature >= 0 and np.isfinite(self.temperature)),
                  ("top_k", self.top_k, self.top_k >= 0),
                  ("top_p", self.top_p, 0.0 < self.top_p <= 1.0),
                  ("min_p", self.min_p, 0.0 <= self.min_p <= 1.0)]
        for name, value, ok in checks:
            if not ok:
                raise RequestError(f"invalid {name}: {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def filter_probs(probs: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Zero out the candidates that top-k, top-p and min-p remove; return renormalised probabilities."""
    p = probs.astype(np.float64)
    if 0 < top_k < len(p):
        kth = np.partition(p, len(p) - top_k)[len(p) - top_k]
        p = np.where(p >= kth, p, 0.0)
        # ties at the k-th value may keep a few more than k; drop the extra ones by index order
        keep = np.flatnonzero(p)
        if len(keep) > top_k:
            order = keep[np.argsort(-p[keep], kind="stable")]
            p[order[top_k:]] = 0.0
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order]) / p.sum()
        cut = int(np.searchsorted(cum, top_p)) + 1  # smallest prefix whose mass reaches top_p
        p[order[cut:]] = 0.0
    if min_p > 0.0:
        p = np.where(p >= min_p * p.max(), p, 0.0)
    return p / p.sum()


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Draw one token id from a logits vector (vocab,)."""
    if params.greedy:
        return int(np.argmax(logits))
    probs = softmax(logits.astype(np.float64) / params.temperature)
    probs = filter_probs(probs, params.top_k, params.top_p, params.min_p)
    return int(rng.choice(len(probs), p=probs))
