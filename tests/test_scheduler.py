"""The batching engine on a tiny random-weight model (no tokenizer needed: a stub decodes ids to letters).

The central property: a request's greedy tokens are the same when it runs alone and when it runs batched
with others (on the CPU one forward per step is exact: every kernel computes each row on its own), and seeded
sampling repeats exactly.
"""

import threading

import numpy as np
import pytest

from minirs.engine import Engine, GenParams, Job
from minirs.errors import RequestError
from minirs.load import load_model
from minirs.models.synthetic import write_random_gguf
from minirs.sampling import SamplingParams

TIMEOUT = 120


class StubTokenizer:
    """Token id t decodes to one letter; enough for the engine's text handling."""

    eos_ids = ()

    def stream_decoder(self, skip_special_tokens=False, keep=frozenset()):
        class D:
            def feed(self, t):
                return chr(97 + t % 26)

            def flush(self):
                return ""
        return D()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_random_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", "tiny-llama", seed=3)
    return load_model(path, device="cpu")


def prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, 256, int(rng.integers(3, 40)))) for _ in range(n)]


def run(engine, prompt, max_tokens=12, **kw):
    job = engine.submit(Job(prompt, GenParams(max_tokens=max_tokens, **kw), StubTokenizer()))
    return job.wait(TIMEOUT)


def test_alone_equals_batched(tiny):
    """Tokens and their logprobs (so the logits too) are bit-identical alone and in a batch of 16."""
    ps = prompts(16)
    alone = [run(Engine(tiny, StubTokenizer(), max_seqs=16, max_chunk=8), p, logprobs=True).seqs[0] for p in ps]
    eng = Engine(tiny, StubTokenizer(), max_seqs=16, max_chunk=8)
    jobs = [eng.submit(Job(p, GenParams(max_tokens=12, logprobs=True), StubTokenizer())) for p in ps]
    batched = [j.wait(TIMEOUT).seqs[0] for j in jobs]
    assert [s.generated for s in batched] == [s.generated for s in alone]
    assert [s.logprobs for s in batched] == [s.logprobs for s in alone]
    assert all(len(s.generated) == 12 for s in batched)


def test_fewer_slots_than_requests_queue_up(tiny):
    ps = prompts(7, seed=1)
    alone = [run(Engine(tiny, StubTokenizer(), max_seqs=1), p).seqs[0].generated for p in ps]
    eng = Engine(tiny, StubTokenizer(), max_seqs=3)
    jobs = [eng.submit(Job(p, GenParams(max_tokens=12), StubTokenizer())) for p in ps]
    assert [j.wait(TIMEOUT).seqs[0].generated for j in jobs] == alone
    assert sorted(eng.slots.free) == [0, 1, 2]


def test_threads_share_one_engine(tiny):
    ps = prompts(8, seed=2)
    alone = [run(Engine(tiny, StubTokenizer()), p).seqs[0].generated for p in ps]
    eng = Engine(tiny, StubTokenizer(), max_seqs=8)
    out = [None] * len(ps)

    def worker(i):
        out[i] = run(eng, ps[i]).seqs[0].generated
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert out == alone


def test_seeded_sampling_repeats_and_n_choices_differ(tiny):
    sp = SamplingParams(temperature=1.0, top_p=0.95, seed=7)
    eng = Engine(tiny, StubTokenizer())
    a = run(eng, prompts(1)[0], sampling=sp, n=3)
    b = run(eng, prompts(1)[0], sampling=sp, n=3)
    ga, gb = [s.generated for s in a.seqs], [s.generated for s in b.seqs]
    assert ga == gb
    assert len({tuple(g) for g in ga}) > 1  # the choices draw from their own streams


def test_n_choices_greedy_equal_single(tiny):
    p = prompts(1, seed=4)[0]
    one = run(Engine(tiny, StubTokenizer()), p).seqs[0].generated
    many = run(Engine(tiny, StubTokenizer()), p, n=4)
    assert all(s.generated == one for s in many.seqs)


def test_stop_ids_and_stop_seqs(tiny):
    p = prompts(1, seed=5)[0]
    full = run(Engine(tiny, StubTokenizer()), p, max_tokens=12).seqs[0]
    text = "".join(full.text)
    eng = Engine(tiny, StubTokenizer())
    s = run(eng, p, stop_ids=frozenset([full.generated[4]])).seqs[0]
    k = full.generated.index(full.generated[4])
    assert s.generated == full.generated[:k] and s.finish_reason == "stop"
    stop = text[5:8]
    s = run(eng, p, stop_seqs=(stop,)).seqs[0]
    assert "".join(s.text) == text[:text.index(stop)] and s.finish_reason == "stop"


def test_cancel_frees_the_slot(tiny):
    eng = Engine(tiny, StubTokenizer(), max_seqs=2)
    job = eng.submit(Job(prompts(1)[0], GenParams(max_tokens=200), StubTokenizer(), stream=True))
    events = job.stream_events(TIMEOUT)
    next(events)
    events.close()
    job.finished.wait(TIMEOUT)
    assert job.seqs[0].finish_reason == "canceled"
    assert sorted(eng.slots.free) == [0, 1]
    assert run(eng, prompts(1)[0]).seqs[0].finish_reason == "length"


def test_engine_refuses_what_cannot_fit(tiny):
    eng = Engine(tiny, StubTokenizer(), max_seqs=2, ctx_len=64)
    with pytest.raises(RequestError, match="context"):
        eng.submit(Job(list(range(64)), GenParams(), StubTokenizer()))
    with pytest.raises(RequestError, match="max_seqs"):
        eng.submit(Job([1, 2], GenParams(n=3), StubTokenizer()))


def test_a_failing_job_does_not_stop_the_loop(tiny):
    eng = Engine(tiny, StubTokenizer(), max_seqs=4)
    good = eng.submit(Job(prompts(1)[0], GenParams(max_tokens=30), StubTokenizer()))
    bad = eng.submit(Job([1, 2, 3], GenParams(max_tokens=5, sampling=SamplingParams(logit_bias={10**6: 1.0})),
                         StubTokenizer()))
    with pytest.raises(Exception, match="sampling failed"):
        bad.wait(TIMEOUT)
    assert len(good.wait(TIMEOUT).seqs[0].generated) == 30


class _CountRows:
    """Wraps a model's forward to count the token rows it runs."""

    def __init__(self, model):
        self.model, self.rows = model, 0
        self._forward = model.forward

    def __enter__(self):
        def counted(tokens, *a, **k):
            self.rows += len(tokens)
            return self._forward(tokens, *a, **k)
        self.model.forward = counted
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class's method


def test_prefix_reuse_skips_cached_tokens_and_changes_nothing(tiny):
    """A follow-up prompt that starts with an earlier request's prompt and answer (a chat's next turn) runs only
    its new tokens, and gives exactly the tokens and logprobs of a fresh engine; prefix_reuse=False reruns it."""
    p1 = prompts(1, seed=5)[0]
    eng = Engine(tiny, StubTokenizer(), max_seqs=2, max_chunk=8)
    first = run(eng, p1, logprobs=True).seqs[0]
    p2 = p1 + first.generated[:-1] + [7, 8, 9]  # history (the last answer token was never fed) + a new turn
    with _CountRows(tiny) as c:
        second = run(eng, p2, logprobs=True)
    assert second.cached_tokens == len(p1) + len(first.generated) - 1
    assert c.rows == len(p2) - second.cached_tokens + 11  # the new prompt tokens, then 11 decode rows
    fresh_eng = Engine(tiny, StubTokenizer(), max_seqs=2, max_chunk=8, prefix_reuse=False)
    with _CountRows(tiny) as c:
        fresh = run(fresh_eng, p2, logprobs=True)
    assert fresh.cached_tokens == 0 and c.rows == len(p2) + 11
    assert second.seqs[0].generated == fresh.seqs[0].generated
    assert second.seqs[0].logprobs == fresh.seqs[0].logprobs
    eng.shutdown()
    fresh_eng.shutdown()


def test_prefix_reuse_row_invariant_takes_whole_chunks_only(tiny):
    """With row_invariant (the GPU's exact mode) only whole max_chunk-aligned chunks that the earlier request
    prefilled are reused: rows computed in a shorter chunk or as decode steps are recomputed."""
    p1 = prompts(1, seed=6)[0] + prompts(1, seed=7)[0]
    eng = Engine(tiny, StubTokenizer(), max_seqs=1, max_chunk=8, row_invariant=True)
    first = run(eng, p1).seqs[0]
    p2 = p1 + first.generated[:-1] + [3]
    second = run(eng, p2)
    assert second.cached_tokens == len(p1) // 8 * 8
    assert second.seqs[0].generated == run(Engine(tiny, StubTokenizer(), max_seqs=1, max_chunk=8,
                                                  row_invariant=True, prefix_reuse=False), p2).seqs[0].generated
    unrelated = run(eng, [int(t) + 1 for t in p2])  # no common prefix: nothing reused
    assert unrelated.cached_tokens == 0


def test_engine_tells_the_backend_its_row_invariance(tiny):
    """A backend with batch_invariant (CUDA: dp4a GEMVs for every n, or tensor cores for batches) is told the
    engine's mode before each step, so two engines of different modes can share one backend."""
    seen = []
    tiny.backend.batch_invariant = seen.append
    try:
        for exact in (True, False):
            eng = Engine(tiny, StubTokenizer(), max_seqs=2, row_invariant=exact)
            run(eng, prompts(1)[0], max_tokens=3)
            eng.shutdown()
            assert seen and set(seen) == {exact}, exact
            seen.clear()
    finally:
        del tiny.backend.batch_invariant
