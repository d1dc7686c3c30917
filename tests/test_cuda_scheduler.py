"""The engine's CUDA-graph decode path, on the CPU: a CpuBackend that claims graphs and device sampling (its
"captured" step is a plain forward that records the batch size and mode it was given) stands in for the GPU, so
the padding to GRAPH_BUCKETS, the spare KV slot, the captured prefill of a prompt's first chunk, the prefill/decode
split and the argmax / device-sampler choice run in CI. The CPU matmul is batch-invariant, as the GPU's GEMVs are,
so padded and batched rows must give each request exactly its tokens alone.
"""

import numpy as np
import pytest
from test_scheduler import StubTokenizer

from minirs.engine import GRAPH_BUCKETS, Engine, GenParams, Job
from minirs.kernels.cpu import CpuBackend
from minirs.load import load_model
from minirs.models.synthetic import write_random_gguf

TIMEOUT = 120


class GraphCpu(CpuBackend):
    """CpuBackend with the CUDA backend's capabilities: capture (no graph: the step runs each call, recording its
    batch size and mode) and device sampling (sample_ids draws every row as the GPU's sampler does)."""
    graphs = True
    device_sampling = True

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.prefills = []
        self.greedy = []
        self.sampled = []

    def capture(self, fn, finish, inputs):
        if inputs[0].ndim == 1:  # a prefill chunk that starts a prompt (runner.py): record its bucket
            def prefill(inputs):
                self.prefills.append(inputs.shape[0] - 2)
                return fn(inputs)
            return super().capture(prefill, finish, inputs)

        def recording(inputs, prm=None):
            ids, logits = fn(inputs, prm)
            self.sizes.append(inputs.shape[1])
            self.greedy.append(ids is not None and prm is None)  # the argmax step
            self.sampled.append(prm is not None)  # the device sampler's step
            return ids, logits
        return super().capture(recording, finish, inputs)

    def sample_ids(self, logits, params):
        """What the GPU's sampler computes (tests/test_cuda_sample.py holds it to this very function)."""
        from minirs.sampling import sample_plain
        return np.array([sample_plain(z, *p) for z, p in zip(logits, params)], np.int64)


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
    be.prefills.clear()
    eng = engine()
    jobs = [eng.submit(Job(p, GenParams(max_tokens=10, logprobs=True), StubTokenizer())) for p in ps]
    batched = [j.wait(TIMEOUT).seqs[0] for j in jobs]
    eng.shutdown()
    assert [s.generated for s in batched] == [s.generated for s in alone]
    assert [s.logprobs for s in batched] == [s.logprobs for s in alone]
    assert set(be.sizes) <= set(GRAPH_BUCKETS) and max(be.sizes) >= 8  # rows padded to the bucket sizes
    assert len(be.prefills) == len(ps) and set(be.prefills) == {16}  # each prompt's first chunk, padded
    assert sorted(eng.slots.free) == list(range(16))


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
