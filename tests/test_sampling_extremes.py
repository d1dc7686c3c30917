"""Sampling at the edges of float64 (issue 20, defect 7): any finite parameters give a valid token and logprobs
that are never NaN. Regression tests for the reported cases and for the model's own NaN / inf logits."""

import math

import numpy as np
import pytest

from minirs.errors import MinirsError
from minirs.sampling import (
    LogitsError,
    SamplingParams,
    draw,
    filter_probs,
    sample,
    sample_plain,
    sample_token,
    softmax,
)

Z = np.array([1.0, 3.0, 2.0, 0.5], np.float32)  # greedy: token 1
COINS = (0.0, 0.1, 0.5, 0.9, 1 - 1e-12)


def draws(z, p, context=(), n_top=3):
    return [sample_token(z, p, list(context), coin=c, top_logprobs_n=n_top) for c in COINS]


def assert_sane(s, vocab):
    assert 0 <= s.token < vocab
    assert math.isfinite(s.logprob) and s.logprob <= 0.0  # the drawn token has mass, so a finite logprob
    assert not any(math.isnan(lp) or lp > 0.0 for _, lp in s.top)


# ----- the reported cases ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1e-310, 5e-324])
def test_tiny_temperature_is_greedy(temperature):
    """z / 1e-310 overflowed to inf, then inf - inf: NaN probabilities and a garbage token."""
    for s in draws(Z, SamplingParams(temperature=temperature)):
        assert s.token == 1 and s.logprob == 0.0
        assert_sane(s, len(Z))


def test_tiny_temperature_shares_among_tied_maxima():
    z = np.array([3.0, 1.0, 3.0, 2.0])
    got = {s.token for s in draws(z, SamplingParams(temperature=1e-310))}
    assert got == {0, 2}


@pytest.mark.parametrize("temperature,context,penalty", [(0.5, (), 1.0), (0.1, (), 1.0), (1.0, (0,), 0.5),
                                                         (1e-310, (), 1.0)])
def test_huge_logit_bias_always_wins(temperature, context, penalty):
    """bias 1e308 / T (or / a repetition penalty < 1) overflowed: garbage tokens and NaN logprobs."""
    p = SamplingParams(temperature=temperature, logit_bias={0: 1e308}, repetition_penalty=penalty)
    for s in draws(Z, p, context):
        assert s.token == 0 and s.logprob == 0.0
        assert_sane(s, len(Z))


def test_huge_negative_bias_never_wins():
    p = SamplingParams(temperature=0.5, logit_bias={1: -1e308, 2: -1e308})
    for s in draws(Z, p):
        assert s.token in (0, 3)
        assert_sane(s, len(Z))


def test_huge_negative_frequency_penalty():
    """-count * -1e308 = +inf for a token seen twice: NaN logprobs. Clamped, that token wins."""
    for temperature in (0.0, 1.0, 0.3):
        p = SamplingParams(temperature=temperature, frequency_penalty=-1e308)
        for s in draws(Z, p, context=[3, 3, 3]):
            assert s.token == 3 and s.logprob == 0.0
            assert_sane(s, len(Z))


def test_huge_penalties_of_both_signs():
    p = SamplingParams(temperature=1.0, frequency_penalty=1e308, presence_penalty=-1e308)
    for s in draws(Z, p, context=[1, 1, 2]):
        assert_sane(s, len(Z))


def test_tiny_repetition_penalty():
    """Positive logits / 1e-308 overflowed to inf: NaN logprobs. Both seen tokens reach the clamp and tie."""
    p = SamplingParams(temperature=1.0, repetition_penalty=1e-308)
    got = draws(Z, p, context=[1, 2])
    assert {s.token for s in got} == {1, 2}
    for s in got:
        assert s.logprob == pytest.approx(-math.log(2))
        assert_sane(s, len(Z))
    assert sample_token(Z, SamplingParams(repetition_penalty=1e-308), [1, 2]).token == 1  # greedy: the first tie


def test_huge_repetition_penalty_pushes_seen_tokens_down():
    p = SamplingParams(temperature=1.0, repetition_penalty=1e308)
    for s in draws(-Z, p, context=[3]):  # -0.5 * 1e308: far below the rest
        assert s.token != 3
        assert_sane(s, len(Z))


# ----- the model's own logits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_raise_a_minirs_error(temperature):
    p = SamplingParams(temperature=temperature)
    with pytest.raises(LogitsError, match="4 NaN of 4"):
        sample_token(np.full(4, np.nan, np.float32), p, coin=0.5)
    with pytest.raises(LogitsError, match=r"1 NaN of 4 \(the first at token id 2\)"):
        sample_token(np.array([1.0, 2.0, np.nan, 0.0]), p, coin=0.5, top_logprobs_n=2)
    with pytest.raises(LogitsError, match="all 3 of the model's logits are -inf"):
        sample_token(np.full(3, -np.inf), p, coin=0.5)
    with pytest.raises(LogitsError):
        sample_plain(np.full(4, np.nan), 1.0, 0, 1.0, 0.0, 0.5)
    assert issubclass(LogitsError, MinirsError)


def test_nan_logits_end_only_their_request(tmp_path):
    """The engine confines a LogitsError to the request whose logits were NaN; the batch goes on."""
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
    from minirs.scheduler import Engine, GenParams, Job

    class Letters:
        eos_ids = ()

        def stream_decoder(self, skip_special_tokens=False):
            class D:
                def feed(self, t):
                    return chr(97 + t % 26)

                def flush(self):
                    return ""
            return D()

    model = load_model(write_random_gguf(tmp_path / "tiny.gguf", "tiny-llama", seed=3), device="cpu")
    forward = model.forward

    def poisoned(tokens, slots, pos, cache, logit_rows=None):
        out = np.array(forward(tokens, slots, pos, cache, logit_rows=logit_rows))
        rows = range(len(tokens)) if logit_rows is None else logit_rows
        for k, r in enumerate(rows):
            if tokens[r] == 255 and pos[r] == 2:  # the last prompt token of the bad request only
                out[k] = np.nan
        return out
    model.forward = poisoned
    eng = Engine(model, Letters(), max_seqs=4, graphs=False)
    good = eng.submit(Job([1, 2, 3, 4, 5], GenParams(max_tokens=20), Letters()))
    bad = eng.submit(Job([255, 255, 255], GenParams(max_tokens=5, sampling=SamplingParams(temperature=1.0)),
                         Letters()))
    with pytest.raises(LogitsError, match="NaN"):
        bad.wait(120)
    assert len(good.wait(120).seqs[0].generated) == 20


def test_minus_inf_logits_stay_impossible():
    z = np.array([-np.inf, 0.0, -np.inf, 1.0])
    p = SamplingParams(temperature=1.0, logit_bias={0: 1e308}, frequency_penalty=-1e308)
    for s in draws(z, p, context=[2, 2]):
        assert s.token in (1, 3)
        assert_sane(s, len(z))
        assert all(t in (1, 3) for t, lp in s.top if lp > -np.inf)


def test_plus_inf_logit_wins():
    z = np.array([0.0, np.inf, 1.0, np.inf])
    for temperature in (0.0, 0.5):
        for s in draws(z, SamplingParams(temperature=temperature)):
            assert s.token in (1, 3)
            assert_sane(s, len(z))


def test_gpu_fallback_twin_takes_the_same_rules():
    """sample_plain (kernels/cuda_sample.py's host twin) with extreme temperatures and +-inf logits."""
    for coin in COINS:
        assert sample_plain(Z, 1e-310, 0, 1.0, 0.0, coin) == 1
        assert sample_plain(np.array([-np.inf, 0.0, np.inf]), 0.5, 0, 0.9, 0.1, coin) == 2
        assert 0 <= sample_plain(Z, 1e308, 0, 1.0, 0.0, coin) < len(Z)


# ----- the pieces -----------------------------------------------------------------------------------------------

def test_draw_never_lands_on_a_token_without_mass():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert [draw(p, c) for c in (0.0, 1 - 1e-16, 1.0, 2.0, -1.0)] == [0, 1, 1, 1, 0]


def test_min_p_above_one_keeps_the_largest():
    probs = softmax(np.array([0.0, 1.0, 0.5]))
    assert np.array_equal(filter_probs(probs, 0, 1.0, 1e308), [0.0, 1.0, 0.0])
    assert np.array_equal(filter_probs(probs, 0, 5e-324, 1.0), [0.0, 1.0, 0.0])


def test_sample_with_extremes_through_the_rng():
    rng = np.random.default_rng(0)
    for p in (SamplingParams(temperature=1e-310), SamplingParams(temperature=1e308, logit_bias={2: 1e308})):
        assert all(0 <= sample(Z, p, rng) < len(Z) for _ in range(20))
