"""Grammars in the engine, on a tiny random model with a byte-level tokenizer (no network, seconds): what the
grammar allows is all that comes out (checked with Python's re and the jsonschema package, independently of
llguidance), free requests in the same batch are bit-identical to their runs alone, the end of sequence comes only
where the grammar accepts, and max_tokens cuts an unfinishable grammar with "length". The captured-step path
(masks to the device with the step's inputs) runs through a CPU backend that claims graphs and device sampling.
"""

import json
import re

import jsonschema
import numpy as np
import pytest
from grammar_helpers import ByteTokenizer

from minirs.engine import Engine, GenParams, Job
from minirs.errors import RequestError
from minirs.kernels.cpu import CpuBackend
from minirs.load import load_model
from minirs.models.synthetic import write_random_gguf
from minirs.sampling import SamplingParams

TIMEOUT = 120
TOK = ByteTokenizer()
SCHEMA = {"type": "object", "properties": {"k": {"type": "string", "enum": ["ab", "cd"]},
                                           "n": {"type": "integer", "minimum": 3, "maximum": 7}},
          "required": ["k", "n"], "additionalProperties": False}


class GraphCpu(CpuBackend):
    """A CpuBackend with the CUDA backend's capabilities (graphs, device sampling): the engine sends decode rows
    through ModelRunner's captured steps, masks included; `masked` records which steps carried a mask input."""
    graphs = True
    device_sampling = True

    def __init__(self):
        super().__init__()
        self.masked = []

    def capture(self, fn, finish, inputs):
        masked = inputs[-1].dtype == np.uint32
        step = super().capture(fn, finish, inputs)

        def recording(*host_inputs):
            self.masked.append(masked)
            return step(*host_inputs)
        return recording


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_random_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", "tiny-llama", seed=3)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_model(tiny_path, device="cpu")


def prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, 256, int(rng.integers(3, 20)))] for _ in range(n)]


def params(grammar=None, max_tokens=24, temperature=0.0, **kw):
    return GenParams(sampling=SamplingParams(temperature=temperature, seed=7), max_tokens=max_tokens,
                     stop_ids=frozenset(TOK.eos_ids), grammar=grammar, **kw)


def text(job):
    return ["".join(s.text) for s in job.seqs]


def test_constrained_and_free_share_a_batch(tiny):
    """8 free and 8 constrained requests in one batch: every free one equals its run alone (tokens and logprobs),
    every constrained one matches its grammar and ends with "stop"."""
    ps = prompts(16)
    alone = [Engine(tiny, TOK, max_seqs=4, max_chunk=8).submit(Job(p, params(logprobs=True), TOK)).wait(TIMEOUT)
             for p in ps[:8]]
    grammars = [("regex", r"[a-c]{2,4}-[0-9]{1,3}"), ("json_schema", json.dumps(SCHEMA))] * 4
    eng = Engine(tiny, TOK, max_seqs=16, max_chunk=8)
    free = [eng.submit(Job(p, params(logprobs=True), TOK)) for p in ps[:8]]
    temps = [0.0, 0.9] * 4
    bound = [eng.submit(Job(p, params(g, max_tokens=64, temperature=t), TOK))
             for p, g, t in zip(ps[8:], grammars, temps)]
    for a, b in zip(alone, free):
        b.wait(TIMEOUT)
        assert (b.seqs[0].generated, b.seqs[0].logprobs) == (a.seqs[0].generated, a.seqs[0].logprobs)
    for job, (kind, g) in zip(bound, grammars):
        job.wait(TIMEOUT)
        out = text(job)[0]
        assert job.seqs[0].finish_reason == "stop", out
        if kind == "regex":
            assert re.fullmatch(g, out), out
        else:
            jsonschema.validate(json.loads(out), SCHEMA)


def test_unfinishable_grammar_ends_with_length(tiny):
    """A grammar that needs 40 letters cannot finish in 5 tokens: "length", a prefix the grammar allows, and the
    free request beside it is untouched."""
    p_free, p_bound = prompts(2, seed=4)
    alone = Engine(tiny, TOK, max_seqs=2).submit(Job(p_free, params(), TOK)).wait(TIMEOUT).seqs[0].generated
    eng = Engine(tiny, TOK, max_seqs=2)
    bound = eng.submit(Job(p_bound, params(("regex", "[xyz]{40}"), max_tokens=5), TOK))
    free = eng.submit(Job(p_free, params(), TOK))
    assert free.wait(TIMEOUT).seqs[0].generated == alone
    s = bound.wait(TIMEOUT).seqs[0]
    assert s.finish_reason == "length" and re.fullmatch("[xyz]{5}", "".join(s.text))


def test_end_of_sequence_only_where_the_grammar_accepts(tiny):
    """With a bias of +100 on EOS the model wants to stop at once; the grammar holds it back until the text is
    complete, then the sequence ends with "stop" (EOS drawn where "a+" may also go on)."""
    p = GenParams(sampling=SamplingParams(logit_bias={0: 100.0}), max_tokens=20, stop_ids=frozenset([0]),
                  grammar=("regex", "b{3}a+"))
    s = Engine(tiny, TOK, max_seqs=1).submit(Job(prompts(1)[0], p, TOK)).wait(TIMEOUT).seqs[0]
    assert s.finish_reason == "stop" and "".join(s.text) == "bbba"


def test_every_choice_follows_the_grammar(tiny):
    """n sequences of one prompt each get their own matcher (sampled, so they differ)."""
    g = r"(red|green|blue)-[0-9]{2}"
    job = Engine(tiny, TOK, max_seqs=4).submit(Job(prompts(1)[0], params(("regex", g), temperature=1.0, n=4),
                                                   TOK)).wait(TIMEOUT)
    assert all(re.fullmatch(g, t) for t in text(job)), text(job)
    assert all(s.finish_reason == "stop" for s in job.seqs)


def test_masks_go_to_the_captured_step(tiny_path):
    """Through the captured-step path (GraphCpu): greedy and sampled constrained rows take their masks as a step
    input, and a free request's tokens do not change."""
    be = GraphCpu()
    model = load_model(tiny_path, backend=be)
    ps = prompts(3, seed=9)
    alone = Engine(load_model(tiny_path, device="cpu"), TOK, max_seqs=1).submit(Job(ps[0], params(), TOK))
    alone = alone.wait(TIMEOUT).seqs[0].generated
    eng = Engine(model, TOK, max_seqs=4)
    assert eng.graphs and eng.runner.device_sampling
    g = r"[0-9]{3}\.[a-f]{2,5}"
    free = eng.submit(Job(ps[0], params(), TOK))
    greedy = eng.submit(Job(ps[1], params(("regex", g)), TOK))
    sampled = eng.submit(Job(ps[2], params(("regex", g), temperature=0.8), TOK))
    assert free.wait(TIMEOUT).seqs[0].generated == alone
    for job in (greedy, sampled):
        assert re.fullmatch(g, text(job.wait(TIMEOUT))[0]), text(job)
    assert any(be.masked)


def test_bad_grammar_raises_in_the_callers_thread(tiny):
    eng = Engine(tiny, TOK, max_seqs=1)
    for g, words in ((("regex", "a(b"), "unclosed group"), (("lark", "start: foo"), "foo"),
                     (("json_schema", '{"type": "foo"}'), "foo"), (("xml", "<a/>"), "grammar_type"),
                     (("json_schema", "{bad"), "not valid JSON")):
        with pytest.raises(RequestError, match="grammar") as e:
            eng.submit(Job(prompts(1)[0], params(g), TOK))
        assert words in str(e.value)
    assert eng.steps == 0 and not eng.active


def test_llguidance_and_lark_grammars(tiny):
    """grammar_type "llguidance" (its own JSON grammar) and "lark" (the output checked with the lark package)."""
    import lark
    ll = json.dumps({"grammars": [{"lark_grammar": 'start: /[0-9]{4}/ "-" /[a-z]{2}/'}]})
    lk = 'start: word "," word "," word\nword: /[a-d]{1,3}/\n'
    for g, check in ((("llguidance", ll), lambda t: re.fullmatch("[0-9]{4}-[a-z]{2}", t)),
                     (("lark", lk), lambda t: lark.Lark(lk).parse(t))):
        job = Engine(tiny, TOK, max_seqs=1).submit(Job(prompts(1)[0], params(g, max_tokens=40), TOK)).wait(TIMEOUT)
        out = text(job)[0]
        assert job.seqs[0].finish_reason == "stop" and check(out), out
