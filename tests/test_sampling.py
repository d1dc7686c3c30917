"""Sampling as pure functions: penalties, bias, the mistral.rs order, logprobs, seeded draws, stop strings."""

import numpy as np
import pytest

from minirs.errors import RequestError
from minirs.sampling import (
    SamplingParams,
    draw,
    filter_probs,
    log_softmax,
    process_logits,
    sample,
    sample_token,
    softmax,
)
from minirs.sampling.penalties import apply_penalties
from minirs.sampling.stop import StopText


def test_penalties_follow_their_formulas():
    z = np.array([2.0, -2.0, 1.0, 0.5])
    got = apply_penalties(z.copy(), np.array([0, 1, 1]), repetition=2.0, frequency=0.5, presence=0.25)
    want = np.array([2.0 / 2 - 0.5 - 0.25, -2.0 * 2 - 1.0 - 0.25, 1.0, 0.5])
    np.testing.assert_array_equal(got, want)


def test_process_logits_order_and_window():
    z = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
    p = SamplingParams(temperature=2.0, repetition_penalty=3.0, repeat_last_n=2, logit_bias={3: 4.0})
    # context [1, 2, 2]: window is the last two ids, {2}; token 1 is outside it. The result is shifted: largest 0.
    want = np.array([1.0, 3.0, 2.0 / 3.0, 4.0]) / 2.0
    np.testing.assert_allclose(process_logits(z, p, [1, 2, 2]), want - want.max())


def test_logprob_is_log_softmax_of_processed_logits():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(50).astype(np.float32)
    p = SamplingParams(temperature=0.7, top_k=5, presence_penalty=0.3, logit_bias={4: 2.0})
    s = sample_token(z, p, [1, 2, 3], coin=0.37, top_logprobs_n=4)
    lp = log_softmax(process_logits(z, p, [1, 2, 3]))
    assert s.logprob == lp[s.token]
    assert [t for t, _ in s.top] == list(np.argsort(-lp)[:4])
    assert np.isclose(np.exp(lp).sum(), 1.0)


def test_greedy_and_filters():
    z = np.array([0.1, 2.0, 1.9, -5.0])
    assert sample(z, SamplingParams(), np.random.default_rng(0)) == 1
    assert sample(z, SamplingParams(logit_bias={2: 1.0}), np.random.default_rng(0)) == 2
    probs = softmax(z)
    assert np.count_nonzero(filter_probs(probs, 2, 1.0, 0.0)) == 2
    assert np.count_nonzero(filter_probs(probs, 0, 0.4, 0.0)) == 1
    assert np.count_nonzero(filter_probs(probs, 0, 1.0, 0.5)) == 2


def test_draw_uses_the_coin():
    p = np.array([0.25, 0.25, 0.5])
    assert [draw(p, c) for c in (0.0, 0.2, 0.3, 0.6, 0.999)] == [0, 0, 1, 2, 2]


def test_seeded_sampling_repeats():
    z = np.random.default_rng(1).standard_normal(100)
    p = SamplingParams(temperature=1.0, top_p=0.9)
    a = [sample(z, p, rng) for rng in [np.random.default_rng(5)] for _ in range(20)]
    b = [sample(z, p, rng) for rng in [np.random.default_rng(5)] for _ in range(20)]
    assert a == b and len(set(a)) > 1


@pytest.mark.parametrize("field,value", [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.1), ("min_p", 2.0),
                                         ("top_k", -1), ("repetition_penalty", 0.0), ("repeat_last_n", -1)])
def test_invalid_params_name_field_and_value(field, value):
    with pytest.raises(RequestError, match=f"{field}: {value!r}"):
        SamplingParams(**{field: value})


def test_stop_strings_span_pieces_and_are_cut():
    st = StopText(["<end>", "\n\n"])
    shown = []
    for piece in ["Hel", "lo <e", "n", "d> more"]:
        s, hit = st.push(piece)
        shown.append(s)
        if hit:
            break
    assert hit and "".join(shown) == "Hello "
    st = StopText(["xyz"])
    text = "".join(st.push(p)[0] for p in ["ab", "cx", "y"]) + st.flush()
    assert text == "abcxy"
