"""The scheduler's CUDA-graph decode path, on the CPU: a CpuBackend with a `decode_step` (a plain forward that
records the batch sizes it was given) stands in for the GPU, so the padding to GRAPH_BUCKETS, the spare KV slot
and the prefill/decode split run in CI. The CPU matmul is batch-invariant, as the GPU's GEMVs are, so padded and
batched rows must give each request exactly its tokens alone.
"""

import numpy as np
import pytest

from minirs.kernels.cpu import CpuBackend
from minirs.load import load_model
from minirs.models.synthetic import write_random_gguf
from minirs.scheduler import GRAPH_BUCKETS, Engine, GenParams, Job
from test_scheduler import StubTokenizer

TIMEOUT = 120


class GraphCpu(CpuBackend):
    """CpuBackend with the CUDA backend's decode_step interface (no graph: a forward), recording batch sizes."""

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.greedy = []
        self.sampled = []

    def decode_step(self, model, cache, tokens, slots, pos, greedy=False, sample=None):
        self.sizes.append(len(tokens))
        self.greedy.append(greedy)
        self.sampled.append(sample is not None)
        logits = model.forward(tokens, slots, pos, cache)
        if sample is not None:  # ids drawn by the device, as the GPU returns them
            return self.sample_rows(logits, *sample)
        return np.argmax(logits, axis=-1) if greedy else logits  # greedy: ids only, as the GPU returns them

    def sample_rows(self, logits, temperature, top_k, top_p, min_p, coin):
        """What the GPU's sample_rows computes (tests/test_cuda_sample.py holds it to this very function)."""
        from minirs.sampling import sample_plain
        return np.array([sample_plain(*a) for a in zip(logits, temperature, top_k, top_p, min_p, coin)])


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_random_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", "tiny-llama", seed=3)


def test_graph_buckets_alone_equals_batched(path):
    be = GraphCpu()
    model = load_model(path, backend=be)
    rng = np.random.default_rng(0)
    ps = [list(rng.integers(0, 256, int(rng.integers(3, 40)))) for _ in range(11)]

    def engine():
        return Engine(model, StubTokenizer(), max_seqs=16, max_chunk=8, row_invariant=True)
    assert engine().graphs and engine().cache.n_slots == 17  # one spare slot for the dummy rows
    alone = []
    for p in ps:
        eng = engine()
        alone.append(eng.submit(Job(p, GenParams(max_tokens=10, logprobs=True), StubTokenizer()))
                     .wait(TIMEOUT).seqs[0])
        eng.shutdown()
    be.sizes.clear()
    eng = engine()
    jobs = [eng.submit(Job(p, GenParams(max_tokens=10, logprobs=True), StubTokenizer())) for p in ps]
    batched = [j.wait(TIMEOUT).seqs[0] for j in jobs]
    eng.shutdown()
    assert [s.generated for s in batched] == [s.generated for s in alone]
    assert [s.logprobs for s in batched] == [s.logprobs for s in alone]
    assert set(be.sizes) <= set(GRAPH_BUCKETS) and max(be.sizes) >= 8  # rows padded to the bucket sizes
    assert sorted(eng.free_slots) == list(range(16))


def test_plain_greedy_takes_ids_from_the_step(path):
    """Greedy requests without logprobs, penalties or bias get their tokens from the step's argmax (only ids
    come back from the GPU); the tokens equal the full-logits path's, alone and batched; a request that asks for
    logprobs in the same batch makes the step return logits."""
    be = GraphCpu()
    model = load_model(path, backend=be)
    rng = np.random.default_rng(1)
    ps = [list(rng.integers(0, 256, int(rng.integers(3, 30)))) for _ in range(6)]

    def run(prompts, **kw):
        eng = Engine(model, StubTokenizer(), max_seqs=8, max_chunk=8, row_invariant=True)
        jobs = [eng.submit(Job(p, GenParams(max_tokens=8, **kw), StubTokenizer())) for p in prompts]
        out = [j.wait(TIMEOUT).seqs[0].generated for j in jobs]
        eng.shutdown()
        return out
    be.greedy.clear()
    fast = run(ps)
    assert be.greedy and all(be.greedy)
    be.greedy.clear()
    full = run(ps, logprobs=True)
    assert not any(be.greedy)
    assert fast == full
    assert [run([p])[0] for p in ps[:2]] == fast[:2]


def test_plain_sampling_draws_on_the_device(path):
    """Sampled requests without logprobs, penalties or bias are drawn by the backend's sample_rows (ids only come
    back); with the same seeds they give exactly the tokens of the host sampler, alone and batched with greedy
    rows; requests with penalties get host logits."""
    from dataclasses import replace

    from minirs.sampling import SamplingParams
    be = GraphCpu()
    model = load_model(path, backend=be)
    rng = np.random.default_rng(2)
    ps = [list(rng.integers(0, 256, int(rng.integers(3, 30)))) for _ in range(6)]
    sps = [SamplingParams(temperature=0.9, top_k=k, top_p=p, min_p=m, seed=i)
           for i, (k, p, m) in enumerate([(0, 1.0, 0.0), (20, 1.0, 0.0), (0, 0.8, 0.0), (5, 0.9, 0.1),
                                          (0, 1.0, 0.2), (0, 1.0, 0.0)])]
    sps[5] = SamplingParams()  # a greedy row in the batch

    def run(params):
        e = Engine(model, StubTokenizer(), max_seqs=8, max_chunk=8, row_invariant=True)
        jobs = [e.submit(Job(p, GenParams(sampling=sp, max_tokens=8), StubTokenizer())) for p, sp in zip(ps, params)]
        out = [j.wait(TIMEOUT).seqs[0].generated for j in jobs]
        e.shutdown()
        return out
    be.sampled.clear()
    on_device = run(sps)
    assert any(be.sampled)  # (the last steps, with only the greedy row left, take the argmax path)
    penalised = [sp if sp.greedy else replace(sp, repetition_penalty=1.3) for sp in sps]
    be.sampled.clear()
    run(penalised)
    assert not any(be.sampled)
    host = []
    for p, sp in zip(ps, sps):  # alone, through the plain forward path (no graphs, host sampling)
        e = Engine(model, StubTokenizer(), max_seqs=8, max_chunk=8, graphs=False)
        host.append(e.submit(Job(p, GenParams(sampling=sp, max_tokens=8), StubTokenizer())).wait(TIMEOUT)
                    .seqs[0].generated)
        e.shutdown()
    assert on_device == host
