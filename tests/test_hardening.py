"""Issue 20's engine and API defects, each as a regression test, and a fuzz of every request field.

On the real SmolLM2-135M (one Numba thread, as test_api.py): bad fields and Runner arguments raise RequestError;
cancellation frees the slot in every state (a stream never started, closed, dropped, timed out; a blocking call
timed out or interrupted); a request that breaks the forward ends alone while a stream beside it finishes; a
tokenizer larger than the embedding is refused at load.
"""

import _thread
import gc
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minirs import ChatCompletionRequest, CompletionRequest, MinirsError, RequestError, Runner, Which
from minirs.errors import ModelError, RequestTimeout

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared

T = 300
Q = [{"role": "user", "content": "Tell me a long story about a dragon."}]


@pytest.fixture(scope="module")
def which(smollm2_path):
    return Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name)


@pytest.fixture(scope="module")
def runner(which):
    r = Runner(which, device="cpu", seed=1, max_seqs=2)
    yield r
    r.shutdown()


def all_free(runner, wait: float = 30.0) -> bool:
    end = time.time() + wait
    while time.time() < end:
        if len(runner.engine.slots.free) == runner.max_seqs and not runner.engine.active \
                and not runner.engine.waiting and runner.engine.inbox.empty():
            return True
        time.sleep(0.02)
    return False


def chat(**kw):
    return ChatCompletionRequest(messages=kw.pop("messages", Q), **kw)


# ----- 6 and 10: fields and arguments that escaped validation --------------------------------------------------

@pytest.mark.parametrize("kw", [{"seed": -1}, {"seed": "abc"}, {"seed": 1.5}, {"seed": True},
                                {"presence_penalty": "1"}, {"frequency_penalty": "0.5"},
                                {"repetition_penalty": "1.1"}, {"logit_bias": [1, 2]}, {"stop_token_ids": 5},
                                {"temperature": float("nan")}, {"temperature": "0.7"}, {"top_k": 2.0},
                                {"max_tokens": True}, {"n_choices": None}, {"stop_seqs": 5},
                                {"logit_bias": {1: float("inf")}}, {"logit_bias": {"x": 1.0}}])
def test_bad_fields_raise_request_error_naming_them(runner, kw):
    field = next(iter(kw))
    with pytest.raises(RequestError, match=field):
        runner.send_chat_completion_request(chat(max_tokens=kw.pop("max_tokens", 2), **kw), T)
    assert all_free(runner)


def test_completion_fields_are_checked_before_generation(runner):
    for kw, field in (({"best_of": 2, "n_choices": None}, "n_choices"), ({"suffix": 5}, "suffix"),
                      ({"echo_prompt": "yes"}, "echo_prompt")):
        t = time.perf_counter()
        with pytest.raises(RequestError, match=field):
            runner.send_completion_request(CompletionRequest(prompt="Hi", max_tokens=200, **kw), T)
        assert time.perf_counter() - t < 1.0  # raised before anything ran
    assert all_free(runner)


@pytest.mark.parametrize("kw, field", [({"seed": -1}, "seed"), ({"prefill_chunk": 0}, "prefill_chunk"),
                                       ({"prefill_chunk": -5}, "prefill_chunk"), ({"max_seqs": 10 ** 6}, "max_seqs"),
                                       ({"max_seq_len": -1}, "max_seq_len"), ({"max_seqs": 0}, "max_seqs")])
def test_bad_runner_arguments_fail_at_once(which, kw, field):
    t = time.perf_counter()
    with pytest.raises(RequestError, match=field):
        Runner(which, device="cpu", **kw)
    assert time.perf_counter() - t < 1.0  # before the model loads


# ----- 5: cancellation in every state --------------------------------------------------------------------------

def test_a_stream_never_started_is_cancelled_by_close_and_by_gc(runner):
    it = runner.send_chat_completion_request(chat(max_tokens=400, stream=True), T)
    it.close()
    assert all_free(runner)
    it = runner.send_chat_completion_request(chat(max_tokens=400, stream=True), T)
    del it
    gc.collect()
    assert all_free(runner)


def test_blocking_timeout_raises_a_minirs_error_and_cancels(runner):
    with pytest.raises(RequestTimeout) as e:
        runner.send_chat_completion_request(chat(max_tokens=400), timeout=0.3)
    assert isinstance(e.value, MinirsError) and isinstance(e.value, TimeoutError)
    assert all_free(runner)


def test_keyboard_interrupt_in_a_blocking_call_cancels(runner):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        runner.send_chat_completion_request(chat(max_tokens=400), T)
    timer.cancel()
    assert all_free(runner)


def test_stream_timeout_while_slots_are_busy(runner):
    busy = [runner.send_chat_completion_request(chat(max_tokens=400, stream=True), T) for _ in range(2)]
    for b in busy:
        next(b)
    waiting = runner.send_chat_completion_request(chat(max_tokens=5, stream=True), timeout=0.3)
    with pytest.raises(RequestTimeout):
        next(waiting)
    for b in busy:
        b.close()
    assert all_free(runner)


def test_closed_stream_still_logs_its_response(which, tmp_path):
    log = tmp_path / "log.jsonl"
    r = Runner(which, device="cpu", seed=1, max_seqs=1, logfile=str(log))
    try:
        it = r.send_chat_completion_request(chat(max_tokens=50, stream=True), T)
        next(it)
        it.close()
    finally:
        r.shutdown()
    kinds = [line.split('"kind": "')[1].split('"')[0] for line in log.read_text().splitlines()]
    assert kinds == ["request", "response"]


# ----- 4: one request's failure ends only that request ---------------------------------------------------------

def test_a_request_that_breaks_the_forward_ends_alone(runner):
    alone = runner.send_chat_completion_request(chat(max_tokens=12), T).choices[0].message.content
    be = runner.model.backend
    embed = be.embed
    zebra = [{"role": "user", "content": "a zebra"}]
    ids = {str(m): runner._chat_ids(chat(messages=m)) for m in (Q, zebra)}
    poison = next(t for t in ids[str(zebra)] if t not in ids[str(Q)])

    def broken(w, ids, scale=1.0):  # a kernel failure that only this request's tokens trigger
        if poison in np.asarray(ids).tolist():
            raise RuntimeError("poisoned")
        return embed(w, ids, scale)
    be.embed = broken
    try:
        stream = runner.send_chat_completion_request(chat(max_tokens=12, stream=True), T)
        first = next(stream).choices[0].delta.content
        with pytest.raises(MinirsError, match="poisoned"):
            runner.send_chat_completion_request(chat(messages=zebra, max_tokens=5), T)
        rest = "".join(c.choices[0].delta.content for c in stream)
    finally:
        del be.embed
    assert first + rest == alone
    assert all_free(runner)


def test_token_ids_past_the_vocabulary_are_refused(runner):
    with pytest.raises(RequestError, match="outside the vocabulary"):
        runner.send_completion_request(CompletionRequest(prompt=[1, runner.model.config.vocab_size], max_tokens=2), T)


def test_a_tokenizer_larger_than_the_embedding_is_refused(smollm2_path):
    from minirs.load import check_vocab, load
    loaded = load(smollm2_path, device="cpu")
    check_vocab(loaded.tokenizer, loaded.model)  # the real pair fits
    loaded.tokenizer.tokens = loaded.tokenizer.tokens + ["<extra>"]  # a user-defined token id 49152
    with pytest.raises(ModelError, match="49152"):
        check_vocab(loaded.tokenizer, loaded.model)
    loaded.tokenizer.tokens.pop()
    loaded.tokenizer.bos_id = loaded.model.config.vocab_size
    with pytest.raises(ModelError, match="embedding"):
        check_vocab(loaded.tokenizer, loaded.model)


# ----- a fuzz of every request field: a RequestError or a served request ---------------------------------------

ANY = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                st.text(max_size=5), st.lists(st.integers(-5, 60000), max_size=3),
                st.dictionaries(st.one_of(st.integers(-5, 60000), st.text(max_size=3)),
                                st.one_of(st.floats(), st.integers(-5, 5), st.text(max_size=2)), max_size=2))
FIELDS = ["logit_bias", "presence_penalty", "frequency_penalty", "repetition_penalty", "stop_token_ids", "stop_seqs",
          "temperature", "top_p", "top_k", "min_p", "seed", "n_choices", "logprobs", "top_logprobs"]


@settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(FIELDS), ANY, max_size=4), st.booleans())
def test_fuzzed_fields_give_a_request_error_or_a_response(runner, fields, completion):
    try:
        if completion:
            fields.pop("top_logprobs", None) if fields.get("logprobs") is not True else None
            res = runner.send_completion_request(CompletionRequest(prompt="Hi", max_tokens=2, **fields), T)
        else:
            res = runner.send_chat_completion_request(chat(max_tokens=2, **fields), T)
    except RequestError:
        return
    assert 1 <= len(res.choices) and all(c.finish_reason in ("stop", "length") for c in res.choices)


# ----- 9: a literal chat template that looks like a long file name -----------------------------------------------

def test_a_long_literal_template_is_a_template_not_a_path(which, runner):
    template = runner.tokenizer.chat_template  # SmolLM2's own: 368 characters without a '/'
    assert len(template) > 255 and "/" not in template
    r = Runner(which, device="cpu", max_seqs=1, chat_template=template)
    try:
        assert r.tokenizer.chat_template == template
        assert r.send_chat_completion_request(chat(max_tokens=2), T).choices[0].finish_reason in ("stop", "length")
    finally:
        r.shutdown()
