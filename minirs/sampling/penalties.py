"""Penalties and logit bias: the first stage of sampling, applied to the raw logits before temperature.

    z = logits + bias                                         # logit_bias {token id: added value}
    z[t] = z[t] / r if z[t] > 0 else z[t] * r                 # repetition penalty r, each t seen in the window
    z[t] -= count(t) * frequency + (count(t) > 0) * presence  # OpenAI's frequency / presence penalties

As in mistral.rs, all three penalties look at the same window: the last `repeat_last_n` tokens of the sequence
(prompt and generated tokens together).

Extremes: every value a stage writes is clamped to [-LIMIT, LIMIT], half the largest float64, so that whatever
finite bias and penalties are given (1e308, 1e-308, subnormals) the logits stay finite and any difference of two
stays finite too: a bias of +1e308 makes its token the largest, and no later inf - inf can make a NaN. Given
finite z in that range and finite parameters (r > 0), the result is finite and in range.
"""

import numpy as np

LIMIT = float(np.finfo(np.float64).max) / 2  # processed logits lie in [-LIMIT, LIMIT] (-inf: a forbidden token)


def apply_logit_bias(z: np.ndarray, bias: dict[int, float] | None) -> np.ndarray:
    """z + bias, clamped to +-LIMIT, in place on a float64 copy the caller owns."""
    if bias:
        ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        with np.errstate(over="ignore"):  # 1e308 + 1e308 = inf, clamped
            z[ids] = np.clip(z[ids] + np.fromiter(bias.values(), dtype=np.float64, count=len(bias)), -LIMIT, LIMIT)
    return z


def apply_penalties(z: np.ndarray, window: np.ndarray, repetition: float, frequency: float,
                    presence: float) -> np.ndarray:
    """Penalise the tokens of `window` (int ids), in place on float64 logits z (vocab,) in [-LIMIT, LIMIT], each
    stage's result clamped to that range (repetition > 0)."""
    if len(window) == 0 or (repetition == 1.0 and frequency == 0.0 and presence == 0.0):
        return z
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    with np.errstate(over="ignore"):  # a product or quotient past the float64 range is +-inf, then clamped
        if repetition != 1.0:
            v = z[ids]
            z[ids] = np.clip(np.where(v > 0, v / repetition, v * repetition), -LIMIT, LIMIT)
        if frequency != 0.0 or presence != 0.0:
            # counts * frequency + presence: finite or +-inf, never NaN (both finite); z[ids] finite, so no inf - inf
            z[ids] = np.clip(z[ids] - (counts * frequency + presence), -LIMIT, LIMIT)
    return z
