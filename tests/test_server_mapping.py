"""The server's pieces that need no model: OpenAI request JSON to the Runner's dataclasses (renames, pass-through of
every dataclass field, nulls, refused fields, the RequestError text in the client's names) and the hand-written
Prometheus text, read back by prometheus-client's parser."""

from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from minirs import ChatCompletionRequest, CompletionRequest, RequestError
from minirs.api import validation
from minirs.server import mapping
from minirs.server.metrics import Metrics

LIMITS = validation.Limits(vocab=100, max_seqs=4)


def test_openai_names_map_to_ours():
    p = mapping.chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2, "stop": "\n",
                              "max_completion_tokens": 5, "seed": 3, "logit_bias": {"7": -1.5}, "top_k": 4,
                              "user": "ignored", "temperature": None, "stream": True,
                              "stream_options": {"include_usage": True}})
    r = p.request
    assert isinstance(r, ChatCompletionRequest) and r.model == "m" and r.n_choices == 2 and r.stop_seqs == ["\n"]
    assert r.max_tokens == 5 and r.seed == 3 and r.top_k == 4 and r.temperature is None and r.stream
    assert p.include_usage and p.names == {"n_choices": "n", "stop_seqs": "stop", "max_tokens": "max_completion_tokens"}
    params = validation.gen_params(r, r.n_choices, r.logprobs, LIMITS)  # string keys of logit_bias are token ids
    assert params.sampling.logit_bias == {7: -1.5} and params.stop_seqs == ("\n",) and params.n == 2

    c = mapping.completion_request({"prompt": ["Once"], "logprobs": 3, "echo": True, "best_of": 2, "suffix": "!"})
    r = c.request
    assert isinstance(r, CompletionRequest) and r.prompt == "Once" and r.logprobs is True and r.top_logprobs == 3
    assert r.echo_prompt and r.best_of == 2 and r.suffix == "!" and not c.include_usage
    assert mapping.completion_request({"prompt": [1, 2, 3]}).request.prompt == [1, 2, 3]


def test_a_new_request_field_flows_through():
    @dataclass
    class Extended(ChatCompletionRequest):
        adapter: dict | None = None

    p = mapping.parse_request({"messages": "x", "adapter": {"name": "a", "scale": 0.5}, "n": 1}, Extended,
                              mapping.RENAMES)
    assert p.request.adapter == {"name": "a", "scale": 0.5} and p.request.n_choices == 1
    with pytest.raises(RequestError, match="adapter"):
        mapping.chat_request({"messages": "x", "adapter": {}})  # not a field of the plain request
    g = mapping.chat_request({"messages": "x", "grammar": "a+", "grammar_type": "regex",
                              "response_format": {"type": "text"}}).request  # fields that came after the server
    assert (g.grammar, g.grammar_type, g.response_format) == ("a+", "regex", {"type": "text"})


@pytest.mark.parametrize("body, words", [
    ({"messages": "x", "frobnicate": 1, "wibble": 2}, ["unsupported fields", "'frobnicate'", "'wibble'"]),
    ({"messages": "x", "n": 2, "n_choices": 2}, ["invalid n_choices", "n"]),
    ({"messages": "x", "stream_options": {"include_usage": "yes"}}, ["stream_options"]),
    ({"messages": "x", "stream_options": {"other": True}}, ["stream_options"]),
    ([1, 2], ["request body"]),
])
def test_refused_requests_name_the_field(body, words):
    with pytest.raises(RequestError) as e:
        mapping.chat_request(body)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_completion_prompt_and_logprobs_forms():
    with pytest.raises(RequestError, match="one string"):
        mapping.completion_request({"prompt": ["a", "b"]})
    with pytest.raises(RequestError, match="top_logprobs"):
        mapping.completion_request({"prompt": "a", "logprobs": 2, "top_logprobs": 2})


def test_errors_use_the_clients_names():
    p = mapping.chat_request({"messages": "x", "n": 0})
    with pytest.raises(RequestError) as e:
        validation.gen_params(p.request, p.request.n_choices, False, LIMITS)
    message, param = mapping.client_error(e.value, p.names)
    assert message.startswith("invalid n: 0") and param == "n"
    p = mapping.chat_request({"messages": "x", "temperature": -1})
    with pytest.raises(RequestError) as e:
        validation.gen_params(p.request, 1, False, LIMITS)
    assert mapping.client_error(e.value, p.names) == (str(e.value), "temperature")
    assert mapping.client_error(RequestError("the prompt is empty"), {}) == ("the prompt is empty", None)


def test_metrics_text_reads_back():
    m = Metrics({"minirs_queue_depth": ("waiting", lambda: 3)})
    m.requests.inc(endpoint='we"ird\\name\n', outcome="ok")
    m.requests.inc(2, endpoint="chat", outcome="ok")
    for v in (0.003, 0.2, 0.2, 100.0):
        m.ttft.observe(v)
    m.itl.observe(0.01, times=5)
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    reqs = {(s.labels["endpoint"], s.labels["outcome"]): s.value for s in fams["minirs_requests"].samples}
    assert reqs == {('we"ird\\name\n', "ok"): 1.0, ("chat", "ok"): 2.0}
    assert fams["minirs_queue_depth"].samples[0].value == 3
    ttft = {s.labels.get("le"): s.value for s in fams["minirs_time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket")}
    assert ttft["0.005"] == 1 and ttft["0.25"] == 3 and ttft["60.0"] == 3 and ttft["+Inf"] == 4
    sums = {s.name: s.value for s in fams["minirs_inter_token_latency_seconds"].samples}
    assert sums["minirs_inter_token_latency_seconds_count"] == 5
    assert sums["minirs_inter_token_latency_seconds_sum"] == pytest.approx(0.05)
    assert fams["minirs_prompt_tokens"].samples[0].value == 0  # present before any request
