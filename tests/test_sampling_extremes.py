"""Sampling at the edges of float64 (issue 20, defect 7): any finite parameters give a valid token and logprobs
that are never NaN."""

import numpy as np

from minirs.sampling import draw, filter_probs, softmax


def test_draw_never_lands_on_a_token_without_mass():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert [draw(p, c) for c in (0.0, 1 - 1e-16, 1.0, 2.0, -1.0)] == [0, 1, 1, 1, 0]


def test_min_p_above_one_keeps_the_largest():
    probs = softmax(np.array([0.0, 1.0, 0.5]))
    assert np.array_equal(filter_probs(probs, 0, 1.0, 1e308), [0.0, 1.0, 0.0])
    assert np.array_equal(filter_probs(probs, 0, 5e-324, 1.0), [0.0, 1.0, 0.0])
