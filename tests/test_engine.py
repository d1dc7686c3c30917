"""Engine invariants on tiny random-weight models (made by minirs.models.synthetic, no network).

As mistral-inference's test_generate: feeding a sequence token by token through the KV cache must give the
same logits as one full prefill, and chunked prefill must equal unchunked.
"""

import numpy as np
import pytest

from minirs.engine.kv_cache import KVCache
from minirs.generate import Generator
from minirs.load import load_model
from minirs.models.synthetic import PRESETS, Preset, write_random_gguf
from minirs.sampling import SamplingParams

TINY_GEMMA3 = Preset("gemma3", 64, 6, 4, 2, 128, 256, "Q8_0", "Q8_0", None, head_dim=32, context=256,
                     extra={"attention.sliding_window": 4})


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def tiny_model(request, tmp_path_factory):
    preset = PRESETS["tiny-llama"] if request.param == "tiny-llama" else TINY_GEMMA3
    path = write_random_gguf(tmp_path_factory.mktemp("m") / f"{request.param}.gguf", preset, seed=1)
    return load_model(path, device="cpu")


def run_all_logits(model, ids, chunk):
    cache = KVCache(model.config, model.backend, 1, 64, chunk)
    out = []
    for c in range(0, len(ids), chunk):
        part = np.asarray(ids[c:c + chunk])
        pos = np.arange(c, c + len(part))
        out.append(model.forward(part, np.zeros(len(part), np.int64), pos, cache))
    return np.concatenate(out)


def test_incremental_decode_equals_full_prefill(tiny_model):
    ids = list(np.random.default_rng(0).integers(0, 256, 24))
    full = run_all_logits(tiny_model, ids, 24)
    step = run_all_logits(tiny_model, ids, 1)
    chunked = run_all_logits(tiny_model, ids, 5)
    scale = np.abs(full).max()
    assert np.abs(step - full).max() / scale < 1e-4
    assert np.abs(chunked - full).max() / scale < 1e-4


def test_batched_rows_equal_single_sequences(tiny_model):
    """Two sequences in one forward (different slots and positions) give each one's own logits."""
    rng = np.random.default_rng(1)
    a, b = list(rng.integers(0, 256, 7)), list(rng.integers(0, 256, 4))
    want_a, want_b = run_all_logits(tiny_model, a, 7), run_all_logits(tiny_model, b, 4)
    cache = KVCache(tiny_model.config, tiny_model.backend, 2, 64, 16)
    tokens = np.array(a + b)
    slots = np.array([0] * 7 + [1] * 4)
    pos = np.concatenate([np.arange(7), np.arange(4)])
    got = tiny_model.forward(tokens, slots, pos, cache)
    np.testing.assert_allclose(got[:7], want_a, rtol=0, atol=1e-4 * np.abs(want_a).max())
    np.testing.assert_allclose(got[7:], want_b, rtol=0, atol=1e-4 * np.abs(want_b).max())


def test_generator_reuses_prefix_and_matches_fresh_run(tiny_model):
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 256, 10)]
    g = Generator(tiny_model, ctx_len=64, max_chunk=8)
    first = list(g.generate(ids, SamplingParams(), 6))
    follow = ids + first + [5, 6]
    cont = list(g.generate(follow, SamplingParams(), 6))
    assert g.stats.prompt_tokens <= len(follow) - len(ids)  # the shared prefix came from the cache
    fresh = list(Generator(tiny_model, ctx_len=64, max_chunk=8).generate(follow, SamplingParams(), 6))
    assert cont == fresh


def test_seeded_sampling_repeats(tiny_model):
    ids = [1, 2, 3]
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    runs = [list(Generator(tiny_model, ctx_len=64).generate(ids, p, 12)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_prefill_replayed_in_the_spare_slot_equals_eager(tiny_model):
    """A chunk that starts a sequence goes through the runner's captured prefill where graphs are on (here the CPU's
    eager stand-in for a graph): padded to its bucket, run in the spare slot, then moved to the sequence's slot.
    On the CPU every row is computed alone, so the logits and the sequence's KV rows equal an eager forward's bit
    for bit; a later chunk and a chunk that does not start at 0 stay eager."""
    from minirs.engine.runner import PREFILL_BUCKETS, ModelRunner
    cfg = tiny_model.config
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 21)
    eager = KVCache(cfg, tiny_model.backend, 3, 64, 32)
    want = tiny_model.forward(ids, np.full(21, 1), np.arange(21), eager, logit_rows=[20])
    cache = KVCache(cfg, tiny_model.backend, 3, 64, 32)
    runner = ModelRunner(tiny_model, cache, graphs=True, spare_slot=2)
    assert runner._prefill_bucket(np.full(21, 1), np.arange(21), [20], None) == 32 in PREFILL_BUCKETS
    assert runner._prefill_bucket(np.full(21, 1), np.arange(3, 24), [20], None) is None  # not from position 0
    assert runner._prefill_bucket(np.full(21, 1), np.arange(21), [19, 20], None) is None
    got = runner.forward(ids, np.full(21, 1), np.arange(21), [20])
    assert np.array_equal(got, want)
    for i in range(cfg.n_layers):
        for a, b in zip(cache.layer(i), eager.layer(i)):
            assert np.array_equal(a[1, :, :21], b[1, :, :21])
            assert not a[0].any()  # no other slot was written
    nxt = [7]  # the next token decodes the same from either cache
    assert np.array_equal(runner.decode(nxt, [1], [21]),
                          tiny_model.forward(np.array(nxt), np.array([1]), np.array([21]), eager))


def test_prefill_that_cannot_be_captured_runs_eagerly(tiny_model, monkeypatch):
    """A bucket whose capture fails warns once and runs its chunks eagerly from then on: same logits."""
    from minirs.engine.runner import ModelRunner
    cfg = tiny_model.config
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, 10)
    want = tiny_model.forward(ids, np.zeros(10, np.int64), np.arange(10),
                              KVCache(cfg, tiny_model.backend, 2, 64, 32), logit_rows=[9])
    runner = ModelRunner(tiny_model, KVCache(cfg, tiny_model.backend, 2, 64, 32), graphs=True, spare_slot=1)

    def refuse(*args):
        raise RuntimeError("not capturable here")
    monkeypatch.setattr(runner.backend, "move_prefill", refuse)
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        assert np.array_equal(runner.forward(ids, np.zeros(10, np.int64), np.arange(10), [9]), want)
    assert runner._prefills[16, None] is False
    assert np.array_equal(runner.forward(ids, np.zeros(10, np.int64), np.arange(10), [9]), want)  # no warning


def test_a_failing_forward_does_not_turn_capture_off(tiny_model, monkeypatch):
    """An error the eager forward raises too is the request's own: it reaches the caller, and the bucket keeps
    being captured for the next chunks."""
    from minirs.engine.runner import ModelRunner
    runner = ModelRunner(tiny_model, KVCache(tiny_model.config, tiny_model.backend, 2, 64, 32), graphs=True,
                         spare_slot=1)

    def broken(*args, **kw):
        raise ValueError("bad input")
    monkeypatch.setattr(tiny_model, "forward", broken)
    with pytest.raises(ValueError, match="bad input"):
        runner.forward(np.arange(10), np.zeros(10, np.int64), np.arange(10), [9])
    assert (16, None) not in runner._prefills
