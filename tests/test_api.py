"""The mistral.rs-shaped API on the real SmolLM2-135M-Instruct GGUF: responses, streaming, sampling fields,
logprobs against a direct computation, seeds, concurrency, and bad input that never disturbs other requests.

Numba and OpenBLAS run single-threaded here: the tests share two cores with other test runs, and there
OpenBLAS's spinning threads slow prefill by ~30x. Results do not depend on the thread count.
"""

import json
import re
import threading

import numpy as np
import pytest

from minirs import ChatCompletionRequest, CompletionRequest, RequestError, Runner, Which
from minirs.engine.kv_cache import KVCache
from minirs.sampling import SamplingParams, log_softmax, process_logits

T = 300  # seconds: nothing may hang
Q = [{"role": "user", "content": "What is the capital of France?"}]


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared


@pytest.fixture(scope="module")
def runner(smollm2_path):
    r = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
               device="cpu", seed=1)
    yield r
    r.shutdown()


def chat(runner, **kw):
    return runner.send_chat_completion_request(ChatCompletionRequest(messages=kw.pop("messages", Q), **kw), T)


def test_chat_response_has_openai_shape(runner):
    res = chat(runner, max_tokens=12)
    c = res.choices[0]
    assert "Paris" in c.message.content and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    u = res.usage
    assert u.prompt_tokens > 10 and u.completion_tokens >= 1 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.avg_prompt_tok_per_sec > 0
    d = json.loads(res.to_json())
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["content"] == c.message.content


def test_stream_equals_whole_response(runner):
    whole = chat(runner, max_tokens=12).choices[0]
    chunks = list(chat(runner, max_tokens=12, stream=True))
    assert "".join(ch.choices[0].delta.content for ch in chunks) == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    assert chunks[0].object == "chat.completion.chunk"
    usage = chunks[-1].usage  # the last chunk carries the usage, as mistral.rs's stream does
    assert usage is not None and all(ch.usage is None for ch in chunks[:-1])
    assert usage.completion_tokens == len(chunks) - (whole.finish_reason == "stop")  # a stop token is not a chunk
    assert usage.prompt_tokens > 0 and usage.total_time_sec > 0 and '"usage"' in chunks[-1].to_json()


def test_closing_a_stream_cancels_it(runner):
    it = chat(runner, max_tokens=200, stream=True)
    next(it)
    it.close()
    for _ in range(200):
        if len(runner.engine.slots.free) == runner.max_seqs:
            break
        threading.Event().wait(0.05)
    assert len(runner.engine.slots.free) == runner.max_seqs


def test_completion_echo_suffix_stop_seqs(runner):
    req = {"prompt": "The capital of France is", "max_tokens": 10}
    plain = runner.send_completion_request(CompletionRequest(**req), T).choices[0].text
    res = runner.send_completion_request(CompletionRequest(**req, echo_prompt=True, suffix="!"), T)
    assert res.choices[0].text == req["prompt"] + plain + "!" and res.object == "text_completion"
    stop = plain[3:6]
    cut = runner.send_completion_request(CompletionRequest(**req, stop_seqs=[stop]), T).choices[0]
    assert cut.text == plain[:plain.index(stop)] and cut.finish_reason == "stop"


def test_logprobs_are_log_softmax_of_processed_logits(runner, smollm2_path):
    """Recompute every step's logits with a fresh full forward and the same processing (bias, penalties)."""
    bias = {7042: -2.0, 260: 1.5}
    res = runner.send_completion_request(CompletionRequest(
        prompt="The capital of France is", max_tokens=6, logprobs=True, top_logprobs=3, logit_bias=bias,
        repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2), T)
    entries = res.choices[0].logprobs.content
    prompt = runner.tokenize_text("The capital of France is")
    gen = [runner.tokenize_text(e.token, add_special_tokens=False)[0] for e in entries]
    ids = prompt + gen
    m = runner.model
    cache = KVCache(m.config, m.backend, 1, 64, 64)
    logits = m.forward(np.array(ids), np.zeros(len(ids), np.int64), np.arange(len(ids)), cache)
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, logit_bias=bias)
    for k, e in enumerate(entries):
        lp = log_softmax(process_logits(logits[len(prompt) - 1 + k], params, ids[:len(prompt) + k]))
        assert gen[k] == int(np.argmax(lp))
        assert abs(e.logprob - lp[gen[k]]) < 2e-3  # prefill (sgemm) vs decode (fused dot) rounding
        assert [t.token for t in e.top_logprobs] == list(np.argsort(-lp)[:3])
        assert e.top_logprobs[0].logprob == e.logprob


def test_seed_repeats_and_choices(runner):
    kw = {"max_tokens": 10, "temperature": 0.9, "top_k": 40, "min_p": 0.05, "seed": 123}
    a = [c.message.content for c in chat(runner, n_choices=3, **kw).choices]
    b = [c.message.content for c in chat(runner, n_choices=3, **kw).choices]
    assert a == b and len(set(a)) > 1
    res = runner.send_completion_request(CompletionRequest(prompt="Once upon a time", max_tokens=6, best_of=3,
                                                           n_choices=2, temperature=1.0, seed=5), T)
    assert len(res.choices) == 2 and res.usage.completion_tokens >= 6 * 2


def test_bad_requests_name_field_and_value_and_spare_others(runner):
    want = chat(runner, max_tokens=16).choices[0].message.content
    it = chat(runner, max_tokens=16, stream=True)
    first = next(it).choices[0].delta.content
    bad = [({"temperature": -1.0}, "temperature: -1.0"), ({"top_p": 0.0}, "top_p: 0.0"),
           ({"top_p": 1.5}, "top_p: 1.5"), ({"max_tokens": 0}, "max_tokens: 0"),
           ({"messages": [{"role": "wizard", "content": "x"}]}, "role: 'wizard'"),
           ({"messages": []}, "messages: []"), ({"logit_bias": {10**6: 1.0}}, "logit_bias: token id 1000000"),
           ({"top_logprobs": 99, "logprobs": True}, "top_logprobs: 99"), ({"n_choices": 0}, "n_choices: 0")]
    for kw, msg in bad:
        with pytest.raises(RequestError, match=re.escape(msg)):
            chat(runner, **kw)
    with pytest.raises(RequestError, match="best_of"):
        runner.send_completion_request(CompletionRequest(prompt="x", best_of=1, n_choices=2))
    with pytest.raises(RequestError, match="prompt"):
        runner.send_completion_request(CompletionRequest(prompt="x " * 5000))
    assert first + "".join(ch.choices[0].delta.content for ch in it) == want


def test_sixteen_threads_equal_alone(runner):
    qs = [[{"role": "user", "content": f"Name a color. Number {i}."}] for i in range(16)]
    alone = [chat(runner, messages=q, max_tokens=6).choices[0].message.content for q in qs[:4]]
    out = [None] * 16

    def go(i):
        out[i] = chat(runner, messages=qs[i], max_tokens=6).choices[0].message.content
    ths = [threading.Thread(target=go, args=(i,)) for i in range(16)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(T)
    assert out[:4] == alone and all(o for o in out)


def test_truncate_sequence_and_logfile(smollm2_path, tmp_path):
    log = tmp_path / "log.jsonl"
    w = Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name)
    with Runner(w, device="cpu", max_seq_len=48, truncate_sequence=True, logfile=str(log)) as r:
        res = r.send_completion_request(CompletionRequest(prompt="one two three " * 30, max_tokens=4), T)
        assert res.usage.prompt_tokens < 48 and res.choices[0].text
        assert r.detokenize_text(r.tokenize_text("Hello world", add_special_tokens=False)) == "Hello world"
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert kinds == ["request", "response"]
    with Runner(w, device="cpu", max_seq_len=48) as r, pytest.raises(RequestError, match="truncate_sequence"):
        r.send_completion_request(CompletionRequest(prompt="one two three " * 30, max_tokens=4))


def test_in_situ_quant_names():
    from minirs.api.runner import _isq_name
    assert [_isq_name(x) for x in ("Q4K", "q8_0", "Q6K", "Q4_K", None)] == ["Q4_K", "Q8_0", "Q6_K", "Q4_K", None]
    with pytest.raises(RequestError, match="in_situ_quant"):
        _isq_name("Q9")
