"""Sampling at the edges of float64 (issue 20, defect 7): any finite parameters give a valid token and logprobs
that are never NaN. Regression tests for the reported cases, the model's own NaN / inf logits, and a hypothesis
test over extreme finite values checked against the documented rule written as a plain loop."""

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from minirs.sampling.penalties import LIMIT

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
    from minirs.engine import Engine, GenParams, Job
    from test_scheduler import StubTokenizer
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf

    model = load_model(write_random_gguf(tmp_path / "tiny.gguf", "tiny-llama", seed=3), device="cpu")
    forward = model.forward

    def poisoned(tokens, slots, pos, cache, logit_rows=None, **kw):
        out = np.array(forward(tokens, slots, pos, cache, logit_rows=logit_rows, **kw))
        rows = range(len(tokens)) if logit_rows is None else logit_rows
        for k, r in enumerate(rows):
            if tokens[r] == 255 and pos[r] == 2:  # the last prompt token of the bad request only
                out[k] = np.nan
        return out
    model.forward = poisoned
    eng = Engine(model, StubTokenizer(), max_seqs=4, graphs=False)
    good = eng.submit(Job([1, 2, 3, 4, 5], GenParams(max_tokens=20), StubTokenizer()))
    bad = eng.submit(Job([255, 255, 255], GenParams(max_tokens=5, sampling=SamplingParams(temperature=1.0)),
                         StubTokenizer()))
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


def test_huge_temperature_top_k_and_top_p_keep_the_largest_logits():
    """At T = 1e308 every probability rounds to the same value; top-k and top-p must still keep the best logits
    (they kept the first ids of the vocabulary), as the GPU sampler does."""
    z = np.array([0.0, -1.0, 5.0, 2.0, 4.0, -3.0, 3.0, 1.0], np.float32)  # best first: 2, 4, 6, 3
    for coin in np.linspace(0, 0.999, 23):
        assert sample_plain(z, 1e308, 3, 1.0, 0.0, coin) in (2, 4, 6)
        assert sample_plain(z, 1e308, 0, 0.5, 0.0, coin) in (2, 4, 6, 3)
        assert sample_token(z, SamplingParams(temperature=1e308, top_k=2), coin=coin).token in (2, 4)


# ----- hypothesis: any finite parameters --------------------------------------------------------------------------

V = 6
EXTREMES = [0.0, 5e-324, 1e-320, 2.2250738585072014e-308, 1e-308, 1e-300, 1e-30, 1e-5, 0.5, 1.0, 2.0, 1e5, 1e30,
            1e300, 1e308, LIMIT, float(np.finfo(np.float64).max)]


def magnitudes(lo=0.0, hi=1e308):
    """Floats in [lo, hi] with the float64 extremes (subnormals, 1e+-308) drawn often."""
    return st.one_of(st.sampled_from([x for x in EXTREMES if lo <= x <= hi]),
                     st.floats(lo, hi, allow_subnormal=True))


def signed(bound=1e308):
    return st.one_of(magnitudes(0.0, bound), magnitudes(0.0, bound).map(lambda x: -x))


def logit_rows():
    """Model logits: ordinary float32 rows, or float64 rows of extremes with some -inf (never all) and +inf."""
    ordinary = st.lists(st.floats(-30, 30, width=32), min_size=V, max_size=V)
    wild = st.lists(st.one_of(signed(float(np.finfo(np.float64).max)), st.sampled_from([-np.inf, np.inf])),
                    min_size=V, max_size=V).filter(lambda r: any(x != -np.inf for x in r))
    return st.one_of(ordinary.map(lambda r: np.array(r, np.float32)), wild.map(lambda r: np.array(r, np.float64)))


def reference(logits, p: SamplingParams, context) -> list[float]:
    """The documented rule for bias and penalties as a plain loop over Python floats: each stage's result clamped
    to [-LIMIT, LIMIT], the model's -inf kept impossible, its +inf taken as LIMIT."""
    def clamp(v):
        return min(max(v, -LIMIT), LIMIT)
    z = [clamp(float(v)) for v in logits]
    for t, b in p.logit_bias.items():
        z[t] = clamp(z[t] + b)
    window = list(context[len(context) - p.repeat_last_n:]) if p.repeat_last_n else []
    counts = Counter(window)
    r = p.repetition_penalty
    for t, c in counts.items():
        z[t] = clamp(z[t] / r if z[t] > 0 else z[t] * r)
        z[t] = clamp(z[t] - (c * p.frequency_penalty + p.presence_penalty))
    return [-math.inf if math.isinf(x) and x < 0 else v for x, v in zip(logits, z)]


@st.composite
def cases(draw_):
    logit_bias = draw_(st.dictionaries(st.integers(0, V - 1), signed(), max_size=3))
    p = SamplingParams(temperature=draw_(magnitudes()), top_k=draw_(st.one_of(st.integers(0, V + 1),
                                                                              st.integers(0, 2 ** 70))),
                       top_p=draw_(magnitudes(0.0, 1.0).filter(lambda x: x > 0)), min_p=draw_(magnitudes(0.0, 1.0)),
                       repetition_penalty=draw_(magnitudes().filter(lambda x: x > 0)),
                       frequency_penalty=draw_(signed()), presence_penalty=draw_(signed()),
                       repeat_last_n=draw_(st.integers(0, 8)), logit_bias=logit_bias)
    context = draw_(st.lists(st.integers(0, V - 1), max_size=10))
    coin = draw_(st.floats(0.0, 1.0, exclude_max=True))
    return draw_(logit_rows()), p, context, coin


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_any_finite_parameters_give_a_valid_token(case):
    logits, p, context, coin = case
    ref = reference(logits, p, context)
    top = max(ref)
    s = sample_token(logits, p, context, coin, top_logprobs_n=V)
    assert_sane(s, V)
    assert ref[s.token] > -math.inf  # never a token the model forbade
    assert len(s.top) == V and not any(math.isnan(lp) for _, lp in s.top)
    if p.greedy:  # temperature 0 or top-k 1: the first argmax of the biased, penalised logits
        assert s.token == ref.index(top)
    else:
        # greedy-equivalent: every other token's (z - max) / T below -1000, so exp gives exactly 0
        gaps = [top - v for v in ref if v < top]
        if all(g / p.temperature > 1000 for g in gaps):
            assert ref[s.token] == top
    g = sample_token(logits, dataclasses.replace(p, temperature=0.0), context)
    assert g.token == ref.index(top)
    assert_sane(g, V)

