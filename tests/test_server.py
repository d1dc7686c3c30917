"""The HTTP server (minirs/server) with the real SmolLM2-135M-Instruct on the CPU, talked to through the official
`openai` client (and httpx where raw HTTP matters: status codes, headers, disconnects). One server for the module,
on 127.0.0.1, max_seqs 16 and no queue beyond them (so the 17th request in flight gets 503).

Numba runs single-threaded, as in test_api.py: the tests share two cores with other test runs.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numba
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from minirs import Runner, Which
from minirs.server.app import create_app

T = 120  # seconds: nothing may hang
KEY = "test-key"
NAME = "smollm2"
MAX_SEQS = 16
CTX = 256
Q = [{"role": "user", "content": "What is the capital of France?"}]
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    url: str
    runner: Runner
    api: object

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", KEY), max_retries=0, timeout=T,
                             **kw)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=T)


@pytest.fixture(scope="module")
def served(smollm2_path):
    old = numba.get_num_threads()
    numba.set_num_threads(1)  # the engine thread takes the thread count of the thread that made it
    runner = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
                    device="cpu", seed=1, max_seqs=MAX_SEQS, max_seq_len=CTX)
    app = create_app(runner, served_model_name=NAME, api_key=KEY, max_queue=0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(T * 10):
        if server.started:
            break
        time.sleep(0.1)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(f"http://127.0.0.1:{port}", runner, app.state.api)
    server.should_exit = True
    thread.join(T)
    runner.close()
    numba.set_num_threads(old)


def chat(client, **kw):
    return client.chat.completions.create(model=kw.pop("model", NAME), messages=kw.pop("messages", Q), **kw)


def test_models_chat_and_completion(served):
    client = served.client()
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    res = chat(client, max_tokens=12, temperature=0)
    c = res.choices[0]
    assert "Paris" in c.message.content and c.message.role == "assistant" and c.finish_reason in ("stop", "length")
    assert res.object == "chat.completion" and res.model == NAME
    assert res.usage.prompt_tokens > 10 and res.usage.total_tokens == res.usage.prompt_tokens + \
        res.usage.completion_tokens
    done = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=8, temperature=0,
                                     stop=["."], echo=True)
    text = done.choices[0].text
    assert text.startswith("The capital of France is") and "Paris" in text and "." not in text
    assert done.choices[0].finish_reason == "stop" and done.object == "text_completion"


def test_streaming_equals_whole_and_reports_usage(served):
    client = served.client()
    whole = chat(client, max_tokens=10, temperature=0).choices[0]
    chunks = list(chat(client, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1  # OpenAI's usage chunk
    body = chunks[:-1]
    assert "".join(ch.choices[0].delta.content for ch in body) == whole.message.content
    assert body[-1].choices[0].finish_reason == whole.finish_reason
    assert all(ch.choices[0].finish_reason is None for ch in body[:-1]) and body[0].object == "chat.completion.chunk"
    plain = list(chat(client, max_tokens=3, temperature=0, stream=True))  # without include_usage: no usage at all
    assert all(ch.usage is None and ch.choices for ch in plain)
    texts = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=6, temperature=0,
                                      stream=True)
    assert "Paris" in "".join(ch.choices[0].text for ch in texts)
    with served.http() as http, http.stream("POST", "/v1/chat/completions", json={
            "model": NAME, "messages": Q, "max_tokens": 3, "stream": True}) as r:  # the raw events
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: {") for line in lines[:-1])


def test_n_choices_logprobs_and_seed(served):
    client = served.client()
    res = chat(client, max_tokens=6, temperature=1.0, n=2, seed=7, logprobs=True, top_logprobs=3)
    again = chat(client, max_tokens=6, temperature=1.0, n=2, seed=7, logprobs=True, top_logprobs=3)
    assert [c.index for c in res.choices] == [0, 1]
    assert [c.message.content for c in res.choices] == [c.message.content for c in again.choices]
    for c in res.choices:
        assert len(c.logprobs.content) == res.usage.completion_tokens // 2 or c.finish_reason == "stop"
        for e in c.logprobs.content:
            assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
            tops = [t.logprob for t in e.top_logprobs]
            assert len(tops) == 3 and tops == sorted(tops, reverse=True) and sum(2.718281828 ** t for t in tops) <= 1
            assert all(isinstance(t.token, str) and isinstance(t.bytes, list) for t in e.top_logprobs)
            assert e.logprob <= tops[0] + 1e-9
    done = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=4, temperature=0,
                                     logprobs=2)  # the completions API's legacy logprobs
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == done.choices[0].text
    assert all(len(top) == 2 and max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs,
                                                                                        lp.token_logprobs))


def test_structured_output_fields_pass_through(served):
    """mistral.rs's grammar fields and OpenAI's response_format reach the Runner as they are (extra_body: the
    openai client has no grammar parameter); the text obeys them (checked with re and json)."""
    client = served.client()
    res = chat(client, max_tokens=8, temperature=0, extra_body={"grammar": "(yes|no)", "grammar_type": "regex"},
               messages=[{"role": "user", "content": "Is Paris in France?"}])
    assert re.fullmatch("(yes|no)", res.choices[0].message.content), res.choices[0].message.content
    res = chat(client, max_tokens=48, temperature=0, response_format={"type": "json_object"},
               messages=[{"role": "user", "content": "A cat as JSON."}])
    text = res.choices[0].message.content
    assert res.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict), text
    assert text.lstrip().startswith("{")
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=2, extra_body={"grammar": "(", "grammar_type": "regex"})
    assert "grammar" in e.value.message


def test_sixteen_concurrent_clients_equal_their_solo_runs(served):
    client = served.client()
    topics = ["France", "the sea", "cats", "Python"]
    reqs = [("chat", f"Tell me about {t}.", 6 + i % 3) for i, t in enumerate(topics)] + \
           [("text", f"Here is a fact about {t}:", 7 - i % 3) for i, t in enumerate(topics)]

    def run(kind, prompt, n):
        if kind == "chat":
            return chat(client, messages=[{"role": "user", "content": prompt}], max_tokens=n,
                        temperature=0).choices[0].message.content
        return client.completions.create(model=NAME, prompt=prompt, max_tokens=n, temperature=0).choices[0].text
    solo = [run(*r) for r in reqs]
    out = [None] * 16  # each request twice, all at once
    start = threading.Barrier(16)

    def go(i):
        start.wait()
        out[i] = run(*reqs[i % len(reqs)])
    threads = [threading.Thread(target=go, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert out == solo + solo


def _first_event(http, body):
    """A streaming request whose first event has arrived, and its line iterator (dropping that would close the
    response)."""
    r = http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    assert r.status_code == 200, r.read()
    lines = r.iter_lines()
    assert next(line for line in lines if line).startswith("data: {")
    return r, lines


def test_disconnects_free_slots_and_a_full_server_says_503(served):
    engine = served.runner.engine
    canceled = served.api.metrics.requests.value(endpoint="chat", outcome="canceled")
    steps = engine.steps
    no_end = {str(t): -100 for t in served.runner.tokenizer.eos_ids}  # never an end token: on to the context's end
    long = {"model": NAME, "messages": Q, "stream": True, "logit_bias": no_end}  # ~219 tokens to go
    with served.http() as http:
        with ThreadPoolExecutor(MAX_SEQS) as pool:  # opened together: their prompts prefill in one batch
            open_ = list(pool.map(lambda _: _first_event(http, long), range(MAX_SEQS)))
        full = http.post("/v1/chat/completions", json={"model": NAME, "messages": Q, "max_tokens": 2})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        assert served.api.admission.in_flight == MAX_SEQS and engine.load() == (0, MAX_SEQS)
        for r, _ in open_:  # the clients go away mid-stream
            r.close()
    for _ in range(T * 20):
        if engine.load() == (0, 0) and len(engine.slots.free) == MAX_SEQS:
            break
        time.sleep(0.05)
    assert engine.load() == (0, 0) and len(engine.slots.free) == MAX_SEQS
    assert engine.steps - steps < 200  # every one of them needed over 200 more steps to end by itself
    for _ in range(T * 20):  # the last handler may still be unwinding
        if served.api.metrics.requests.value(endpoint="chat", outcome="canceled") == canceled + MAX_SEQS:
            break
        time.sleep(0.05)
    assert served.api.metrics.requests.value(endpoint="chat", outcome="canceled") == canceled + MAX_SEQS
    assert served.api.admission.in_flight == 0

    # the next max_seqs requests run at once: each one's first token comes before any of them ends
    client = served.client()
    first, last = [None] * MAX_SEQS, [None] * MAX_SEQS

    def go(i):
        for ch in chat(client, messages=[{"role": "user", "content": f"Say a word about {i}."}], max_tokens=8,
                       temperature=0, stream=True):
            first[i] = first[i] or time.perf_counter()
            last[i] = time.perf_counter()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(MAX_SEQS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert max(first) < min(last)


def test_bad_requests_name_the_field(served):
    client = served.client()
    cases = [({"temperature": -1}, "temperature"), ({"n": 0}, "n"), ({"top_logprobs": 99, "logprobs": True},
             "top_logprobs"), ({"logit_bias": {"999999": 1}}, "logit_bias"), ({"stop": 5}, "stop"),
             ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
             ({"messages": [{"role": "wizard", "content": "hi"}]}, "role")]
    for kw, field in cases:
        with pytest.raises(openai.BadRequestError) as e:
            chat(client, max_tokens=2, **kw)
        assert field in e.value.message, (kw, e.value.message)
        assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="x", max_tokens=2, best_of=1, n=2)
    assert "best_of" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, model="gpt-4", max_tokens=2)
    assert "gpt-4" in e.value.message and e.value.body["code"] == "model_not_found"
    with served.http() as http:
        for raw in (b"{not json", b"[1, 2]"):
            r = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        r = http.post("/v1/completions", content=b"x" * (17 << 20))
        assert r.status_code == 413
    assert chat(client, max_tokens=2, temperature=0, user="someone").choices[0].message.content  # ignored field


def test_api_key_is_enforced(served):
    with pytest.raises(openai.AuthenticationError):
        chat(served.client(api_key="wrong"), max_tokens=2)
    with httpx.Client(base_url=served.url, timeout=T) as bare:
        assert bare.get("/v1/models").status_code == 401
        assert bare.post("/tokenize", json={"prompt": "hi"}).status_code == 401
        assert bare.get("/health").json() == {"status": "ok"}  # open, as /metrics


def test_tokenize_detokenize(served):
    with served.http() as http:
        ids = http.post("/tokenize", json={"prompt": "Hello, world!", "add_special_tokens": False}).json()
        assert ids["count"] == len(ids["tokens"]) > 1 and ids["max_model_len"] == CTX
        assert http.post("/detokenize", json={"tokens": ids["tokens"]}).json() == {"prompt": "Hello, world!"}
        bad = http.post("/detokenize", json={"tokens": [10 ** 9]})
        assert bad.status_code == 400 and "tokens" in bad.json()["error"]["message"]
        assert http.post("/tokenize", json={"prompt": "x", "oops": 1}).status_code == 400


def _scrape(served) -> dict:
    """/metrics parsed by prometheus-client: {family name: family}."""
    with httpx.Client(base_url=served.url, timeout=T) as bare:
        r = bare.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fam, suffix="", **labels) -> float:
    return sum(s.value for s in fam.samples if s.name == fam.name + suffix and labels.items() <= s.labels.items())


def test_metrics_parse_as_prometheus_text(served):
    before = _scrape(served)
    client = served.client()
    streamed = list(chat(client, max_tokens=3, temperature=0, stream=True, stream_options={"include_usage": True}))
    whole = chat(client, max_tokens=3, temperature=0)
    after = _scrape(served)
    assert after["minirs_requests"].type == "counter" and after["minirs_queue_depth"].type == "gauge"
    assert _value(after["minirs_requests"], "_total", endpoint="chat", outcome="ok") == \
        _value(before["minirs_requests"], "_total", endpoint="chat", outcome="ok") + 2
    made = streamed[-1].usage.completion_tokens + whole.usage.completion_tokens
    assert _value(after["minirs_generation_tokens"], "_total") == _value(before["minirs_generation_tokens"], "_total") \
        + made
    assert _value(after["minirs_prompt_tokens"], "_total") == _value(before["minirs_prompt_tokens"], "_total") + \
        streamed[-1].usage.prompt_tokens + whole.usage.prompt_tokens
    for name in ("minirs_time_to_first_token_seconds", "minirs_inter_token_latency_seconds"):
        h = after[name]
        assert h.type == "histogram"
        buckets = [s.value for s in h.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == _value(h, "_count")
    assert _value(after["minirs_time_to_first_token_seconds"], "_count") == \
        _value(before["minirs_time_to_first_token_seconds"], "_count") + 2
    assert _value(after["minirs_running_sequences"]) == 0 and _value(after["minirs_queue_depth"]) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_drains_on_sigterm(smollm2_path):
    """`python -m minirs.server` (the key from the environment): SIGTERM during a stream lets it finish, then the
    server exits."""
    port = _free_port()
    env = {**os.environ, "MINIRS_API_KEY": KEY, "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "minirs.server", "--gguf", str(smollm2_path), "--port", str(port),
                          "--ctx-size", "128", "--max-seqs", "2", "--device", "cpu", "--log-level", "warning"],
                         env=env, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=T,
                          headers={"Authorization": f"Bearer {KEY}"}) as http:
            for _ in range(T * 10):
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert http.get("/v1/models").json()["data"][0]["id"] == smollm2_path.name
            with http.stream("POST", "/v1/chat/completions", json={"model": smollm2_path.name, "messages": Q,
                                                                    "max_tokens": 12, "stream": True}) as r:
                lines = r.iter_lines()
                got = [next(line for line in lines if line)]
                p.send_signal(signal.SIGTERM)
                got += [line for line in lines if line]
        assert got[-1] == "data: [DONE]"
        finish = json.loads(got[-2][len("data: "):])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")
        # drained, the process ends by the signal it was sent, as uvicorn (since 0.29) re-raises it; 0 before
        assert p.wait(T) in (0, -signal.SIGTERM)
    finally:
        p.kill()
        err = p.communicate()[1]
    assert "serving" in err and "Traceback" not in err


def test_serve_flags_are_checked():
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", "--port", "70000"], capture_output=True,
                       text=True, timeout=T)
    assert r.returncode == 2
    assert r.stderr.strip() == "minirs: error: --port must be an integer in [0, 65535] (got 70000)"
