"""Penalties and logit bias: the first stage of sampling, applied to the raw logits before temperature.

    z = logits + bias                                         # logit_bias {token id: added value}
    z[t] = z[t] / r if z[t] > 0 else z[t] * r                 # repetition penalty r, each t seen in the window
    z[t] -= count(t) * frequency + (count(t) > 0) * presence  # OpenAI's frequency / presence penalties

As in mistral.rs, all three penalties look at the same window: the last `repeat_last_n` tokens of the sequence
(prompt and generated tokens together).
"""

import numpy as np


def apply_logit_bias(z: np.ndarray, bias: dict[int, float] | None) -> np.ndarray:
    """z + bias, in place on a float64 copy the caller owns."""
    if bias:
        ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        z[ids] += np.fromiter(bias.values(), dtype=np.float64, count=len(bias))
    return z


def apply_penalties(z: np.ndarray, window: np.ndarray, repetition: float, frequency: float,
                    presence: float) -> np.ndarray:
    """Penalise the tokens of `window` (int ids), in place on float64 logits z (vocab,)."""
    if len(window) == 0 or (repetition == 1.0 and frequency == 0.0 and presence == 0.0):
        return z
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    if repetition != 1.0:
        v = z[ids]
        z[ids] = np.where(v > 0, v / repetition, v * repetition)
    if frequency != 0.0 or presence != 0.0:
        z[ids] -= counts * frequency + presence
    return z
