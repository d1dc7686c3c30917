"""Sampling: small pure functions over a logits vector, with the randomness passed in.

The order follows mistral.rs: logit bias and penalties adjust the raw logits (penalties.py), temperature
scales them, softmax gives probabilities, then top-k, top-p (nucleus) and min-p each remove candidates, and
one token is drawn from what remains, renormalised, with a uniform random number `coin` in [0, 1).
Temperature 0 means greedy (argmax of the penalised logits).

A grammar's allowed-token mask (minirs.sampling.mask; `mask=` below) comes before all of that: a disallowed token's
logit becomes -inf, so no bias or penalty brings it back, greedy picks the best allowed token, and the draw and the
logprobs are those of the masked distribution (renormalised over the allowed tokens).

Log-probabilities are those of the *processed* distribution: log_softmax of the logits after bias,
penalties and temperature (temperature 1 when greedy), before the top-k / top-p / min-p cut.

Extreme values. Any finite parameters SamplingParams accepts give a valid token and logprobs that are never NaN
(a logprob is -inf only for a token the model gave -inf, or where (z - max) / T overflows at a tiny temperature;
the sampled token's is always finite):
- bias and penalties are clamped to [-LIMIT, LIMIT] (penalties.py), so a bias of +1e308 makes its token win;
- temperature divides logits already shifted so that the largest is 0: (z - max z) / T lies in [-inf, 0], so a
  temperature so small that z / T would overflow (1e-310) gives the T -> 0 limit, the largest logit (ties
  share its probability), instead of inf - inf;
- log_softmax subtracts the largest before it exponentiates and never adds it back.
The model's logits: -inf means that token is impossible (bias and penalties cannot bring it back), +inf is taken
as the largest finite value (the token wins, as an argmax says), and a NaN, or a row that is all -inf, raises
LogitsError, a MinirsError that the engine confines to the request (the scheduler's sampling step ends that job
with it).

    params = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1)
    s = sample_token(logits, params, context_ids, coin=rng.random(), top_logprobs=5)
    s.token, s.logprob, s.top      # id, its logprob, [(id, logprob)] best first
"""

from dataclasses import dataclass, field

import numpy as np

from minirs.errors import MinirsError, RequestError
from minirs.sampling.mask import allowed
from minirs.sampling.penalties import LIMIT, apply_logit_bias, apply_penalties


class LogitsError(MinirsError, ValueError):
    """The model's logits cannot be sampled from: a NaN among them, or every one -inf."""


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
    """exp(x) normalised, for x with a finite largest entry (-inf entries get 0)."""
    e = np.exp(x - np.max(x))
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    """x - logsumexp(x) as (x - max) - log(sum(exp(x - max))), for x with a finite largest entry: the sum is >= 1,
    so the result is <= 0, -inf only where x is -inf or x - max overflows, and never NaN."""
    d = x - np.max(x)
    return d - np.log(np.sum(np.exp(d)))


def finite_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A float64 copy of the model's logits (vocab,) clamped to [-LIMIT, LIMIT], and the mask of those that were
    -inf (None if none were), which the caller makes -inf again after bias and penalties. LogitsError on a NaN or
    on a row of -inf."""
    z = np.array(logits, dtype=np.float64)
    lo, hi = z.min(), z.max()  # NaN if any is
    if -LIMIT <= lo and hi <= LIMIT:  # the usual case: all finite, nothing to clamp
        return z, None
    nan = np.isnan(z)
    if nan.any():
        raise LogitsError(f"the model's logits hold {int(nan.sum())} NaN of {len(z)} (the first at token id "
                          f"{int(np.argmax(nan))}): no token can be sampled")
    forbidden = z == -np.inf
    if forbidden.all():
        raise LogitsError(f"all {len(z)} of the model's logits are -inf: no token can be sampled")
    np.clip(z, -LIMIT, LIMIT, out=z)
    return z, forbidden if forbidden.any() else None


def shift_scale(z: np.ndarray, forbidden: np.ndarray | None, temperature: float) -> np.ndarray:
    """In place on finite float64 logits z: -inf where forbidden, then (z - max z) / temperature (temperature 0:
    no division). The largest becomes 0 and the rest lie in [-inf, 0], so no temperature > 0 can overflow them."""
    if forbidden is not None:
        np.putmask(z, forbidden, -np.inf)  # (4x faster than z[forbidden] = -inf at 49k tokens)
    z -= z.max()
    if temperature:
        with np.errstate(over="ignore"):  # (z - max) / 1e-310: -inf, the T -> 0 limit
            z /= temperature
    return z


def process_logits(logits: np.ndarray, params: SamplingParams, context=(), allowed: np.ndarray | None = None
                   ) -> np.ndarray:
    """Bias, penalties over the last repeat_last_n ids of `context`, temperature: float64 (vocab,), shifted so
    that the largest is 0 (the same distribution as z / T; see the module docstring for extreme values). Tokens
    outside `allowed` (a grammar's mask, bool (vocab,)) end -inf, like those the model gave -inf."""
    z, forbidden = finite_logits(logits)
    if allowed is not None:
        forbidden = ~allowed if forbidden is None else forbidden | ~allowed
        if forbidden.all():
            raise LogitsError(f"the grammar allows none of the {len(z)} tokens that the model gives a finite logit")
    apply_logit_bias(z, params.logit_bias)
    window = np.asarray(context[len(context) - params.repeat_last_n:] if params.repeat_last_n else [], np.int64)
    apply_penalties(z, window, params.repetition_penalty, params.frequency_penalty, params.presence_penalty)
    return shift_scale(z, forbidden, 0.0 if params.greedy else params.temperature)


def filter_probs(probs: np.ndarray, top_k: int, top_p: float, min_p: float, z: np.ndarray | None = None) -> np.ndarray:
    """Zero out the candidates that top-k, top-p and min-p remove; return renormalised probabilities.

    Top-k and top-p rank the candidates by z, the logits the probabilities came from (default: the probabilities),
    ties by lower index: at a huge temperature exp((z - max) / T) rounds to 1 for every token, so only the logits
    still tell the k best from the rest."""
    p = probs.astype(np.float64)
    key = p if z is None else z
    if 0 < top_k < len(p):
        kth = np.partition(key, len(p) - top_k)[len(p) - top_k]
        keep = np.flatnonzero(key >= kth)
        if len(keep) > top_k:  # ties at the k-th value keep a few more than k: drop the extra ones by index order
            p[keep[np.argsort(-key[keep], kind="stable")][top_k:]] = 0.0
        p[key < kth] = 0.0
    if top_p < 1.0:
        order = np.argsort(-key, kind="stable")
        cum = np.cumsum(p[order]) / p.sum()
        cut = int(np.searchsorted(cum, top_p)) + 1  # smallest prefix whose mass reaches top_p
        p[order[cut:]] = 0.0
    if min_p > 0.0:  # (min_p <= 1 keeps the largest whatever its value)
        p = np.where(p >= min(min_p, 1.0) * p.max(), p, 0.0)
    return p / p.sum()


def draw(probs: np.ndarray, coin: float) -> int:
    """The index where the cumulative probability first exceeds coin (in [0, 1)) times the total: always an index
    with probability > 0 (should rounding leave the target unpassed, the last such)."""
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, min(max(coin, 0.0), 1.0) * cdf[-1], side="right"))
    return i if i < len(probs) else int(np.flatnonzero(probs)[-1])


def sample_plain(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float, coin: float) -> int:
    """The draw of sample_token for raw logits (vocab,) with temperature > 0 and no bias or penalties: what the GPU's
    sampler (kernels/cuda/sample.py) computes, and its fallback. Probabilities are exp((z - max z) / T)."""
    z = shift_scale(*finite_logits(logits), float(temperature))
    return draw(filter_probs(softmax(z), int(top_k), float(top_p), float(min_p), z), float(coin))


def top_logprobs(lp: np.ndarray, n: int) -> list[tuple[int, float]]:
    if n <= 0:
        return []
    n = min(n, len(lp))
    idx = np.argpartition(-lp, n - 1)[:n]
    idx = idx[np.lexsort((idx, -lp[idx]))]  # by logprob, ties by id
    return [(int(i), float(lp[i])) for i in idx]


def sample_token(logits: np.ndarray, params: SamplingParams, context=(), coin: float = 0.0,
                 top_logprobs_n: int = 0, want_logprob: bool = True, mask: np.ndarray | None = None) -> Sampled:
    """One token from logits (vocab,), with its logprob under the processed distribution; `mask` (W,) uint32
    packed allowed-token bits (minirs.sampling.mask) is applied first."""
    z = process_logits(logits, params, context, allowed(mask, len(logits)) if mask is not None else None)
    if params.greedy:
        tok = int(np.argmax(z))
    else:
        tok = draw(filter_probs(softmax(z), params.top_k, params.top_p, params.min_p, z), coin)
    if not want_logprob and top_logprobs_n <= 0:
        return Sampled(tok, 0.0, [])
    lp = log_softmax(z)
    return Sampled(tok, float(lp[tok]), top_logprobs(lp, top_logprobs_n))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, context=()) -> int:
    """Draw one token id from a logits vector (vocab,)."""
    coin = 0.0 if params.greedy else float(rng.random())
    return sample_token(logits, params, context, coin, want_logprob=False).token
