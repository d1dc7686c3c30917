"""Sampling: small pure functions over a logits vector, with the randomness passed in.

The order follows mistral.rs: logit bias and penalties adjust the raw logits (penalties.py), temperature
scales them, softmax gives probabilities, then top-k, top-p (nucleus) and min-p each remove candidates, and
one token is drawn from what remains, renormalised, with a uniform random number `coin` in [0, 1).
Temperature 0 means greedy (argmax of the penalised logits).

Log-probabilities are those of the *processed* distribution: log_softmax of the logits after bias,
penalties and temperature (temperature 1 when greedy), before the top-k / top-p / min-p cut.

    params = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    s = sample_token(logits, params, context_ids, coin=rng.random(), top_logprobs=5)
    s.token, s.logprob, s.top      # id, its logprob, [(id, logprob)] best first
"""

from dataclasses import dataclass, field

import numpy as np

from minirs.errors import RequestError
from minirs.sampling.penalties import apply_logit_bias, apply_penalties


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    seed: int | None = None
    repetition_penalty: float = 1.0  # 1 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64  # the penalties' window over the latest tokens
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self):
        checks = [("temperature", self.temperature, self.temperature >= 0 and np.isfinite(self.temperature)),
                  ("top_k", self.top_k, self.top_k >= 0),
                  ("top_p", self.top_p, 0.0 < self.top_p <= 1.0),
                  ("min_p", self.min_p, 0.0 <= self.min_p <= 1.0),
                  ("repetition_penalty", self.repetition_penalty,
                   self.repetition_penalty > 0 and np.isfinite(self.repetition_penalty)),
                  ("frequency_penalty", self.frequency_penalty, bool(np.isfinite(self.frequency_penalty))),
                  ("presence_penalty", self.presence_penalty, bool(np.isfinite(self.presence_penalty))),
                  ("repeat_last_n", self.repeat_last_n, self.repeat_last_n >= 0)]
        for name, value, ok in checks:
            if not ok:
                raise RequestError(f"invalid {name}: {value!r}")
        for k, v in self.logit_bias.items():
            if not np.isfinite(v):
                raise RequestError(f"invalid logit_bias[{k}]: {v!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class Sampled:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the top_logprobs most likely (id, logprob), best first


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def process_logits(logits: np.ndarray, params: SamplingParams, context=()) -> np.ndarray:
    """Bias, penalties over the last repeat_last_n ids of `context`, temperature: float64 (vocab,)."""
    z = np.array(logits, dtype=np.float64)
    apply_logit_bias(z, params.logit_bias)
    window = np.asarray(context[len(context) - params.repeat_last_n:] if params.repeat_last_n else [], np.int64)
    apply_penalties(z, window, params.repetition_penalty, params.frequency_penalty, params.presence_penalty)
    if not params.greedy:
        z /= params.temperature
    return z


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


def draw(probs: np.ndarray, coin: float) -> int:
    """The index where the cumulative probability first exceeds coin (in [0, 1))."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, coin * cdf[-1], side="right"), len(probs) - 1))


def sample_plain(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float, coin: float) -> int:
    """The draw of sample_token for raw logits (vocab,) with temperature > 0 and no bias or penalties: what the GPU's
    sampler (kernels/cuda/sample.py) computes, and its fallback."""
    z = np.asarray(logits, np.float64) / float(temperature)
    return draw(filter_probs(softmax(z), int(top_k), float(top_p), float(min_p)), float(coin))


def top_logprobs(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    if n <= 0:
        return []
    n = min(n, len(lp))
    idx = np.argpartition(-lp, n - 1)[:n]
    idx = idx[np.lexsort((idx, -lp[idx]))]  # by logprob, ties by id
    return [(int(i), float(lp[i])) for i in idx]


def sample_token(logits: np.ndarray, params: SamplingParams, context=(), coin: float = 0.0,
                 top_logprobs_n: int = 0, want_logprob: bool = True) -> Sampled:
    """One token from logits (vocab,), with its logprob under the processed distribution."""
    z = process_logits(logits, params, context)
    if params.greedy:
        tok = int(np.argmax(z))
    else:
        tok = draw(filter_probs(softmax(z), params.top_k, params.top_p, params.min_p), coin)
    if not want_logprob and top_logprobs_n <= 0:
        return Sampled(tok, 0.0, [])
    lp = log_softmax(z)
    return Sampled(tok, float(lp[tok]), top_logprobs(lp, top_logprobs_n))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, context=()) -> int:
    """Draw one token id from a logits vector (vocab,)."""
    coin = 0.0 if params.greedy else float(rng.random())
    return sample_token(logits, params, context, coin, want_logprob=False).token
