"""Sampling under a grammar's allowed-token mask: the packed-bit twin (minirs.sampling.mask), the host sampler
(greedy, draws, logprobs of the masked distribution, bias that cannot bring a token back), llguidance's masks for
a byte tokenizer against Python's re, and the GPU's mask kernel against the twin, in the CUDA simulator and (marked
gpu) on a GPU, with argmax, the GPU sampler and the captured decode step reading the masked logits.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from grammar_helpers import ByteTokenizer

from minirs.grammar import Constraint, compile_grammar, fill_masks
from minirs.sampling import LogitsError, SamplingParams, sample_token
from minirs.sampling.mask import allowed, mask_logits, mask_words


def pack(keep: np.ndarray) -> np.ndarray:
    """Bits (n, V) -> words (n, ceil(V / 32)) uint32, written out bit by bit."""
    n, V = keep.shape
    words = np.zeros((n, mask_words(V)), np.uint32)
    for i, j in zip(*np.nonzero(keep)):
        words[i, j // 32] |= np.uint32(1 << (j % 32))
    return words


def test_twin_unpacks_bit_j_of_word_j_over_32():
    rng = np.random.default_rng(0)
    keep = rng.random((3, 100)) < 0.3
    words = pack(keep)
    assert np.array_equal(allowed(words, 100), keep)
    x = rng.standard_normal((3, 100)).astype(np.float32)
    y = mask_logits(x.copy(), words)
    assert np.array_equal(np.isinf(y), ~keep) and np.array_equal(y[keep], x[keep])
    assert not allowed(words[:, :2], 100)[:, 64:].any()  # a narrower mask allows nothing past its bits
    assert np.array_equal(allowed(words, 70), keep[:, :70])  # a wider one is cut


def test_sampling_under_the_mask():
    rng = np.random.default_rng(1)
    z = rng.standard_normal(200).astype(np.float32)
    keep = np.zeros(200, bool)
    keep[[3, 50, 51, 199]] = True
    words = pack(keep[None])[0]
    best_allowed = int(np.flatnonzero(keep)[np.argmax(z[keep])])
    s = sample_token(z, SamplingParams(), mask=words, top_logprobs_n=10)
    assert s.token == best_allowed
    lse = np.log(np.sum(np.exp(z[keep].astype(np.float64))))  # log-softmax over the allowed tokens alone
    assert np.isclose(s.logprob, z[best_allowed] - lse, atol=1e-6)
    assert {t for t, lp in s.top if lp > -np.inf} == set(np.flatnonzero(keep))
    bias = {int(np.argmax(np.where(keep, -np.inf, z))): 100.0}  # the best disallowed token, pushed up
    assert sample_token(z, SamplingParams(logit_bias=bias), mask=words).token == best_allowed
    draws = {sample_token(z, SamplingParams(temperature=2.0), coin=c, mask=words).token for c in rng.random(200)}
    assert draws <= set(np.flatnonzero(keep)) and len(draws) > 1
    assert np.isfinite(z).all()  # the caller's logits are not touched
    dead = z.copy()
    dead[keep] = -np.inf  # the model rules out every token the grammar allows
    with pytest.raises(LogitsError, match="grammar allows none"):
        sample_token(dead, SamplingParams(), mask=words)


def test_llguidance_masks_against_re():
    """For a byte tokenizer the tokens a regex allows next are the bytes b for which prefix + b can still be
    completed to a full match: here checked by brute force over short completions with Python's re."""
    tok = ByteTokenizer()
    pattern = r"(ab|ac)d?[0-9]"
    c = Constraint(compile_grammar("regex", pattern, tok))
    words = {"a", "b", "c", "d"} | {str(i) for i in range(10)}
    prefix = ""
    for ch in "ac":
        got = set(np.flatnonzero(allowed(fill_masks([c, None], 256)[0], 256)))
        want = {ord(b) for b in words if any(re.fullmatch(pattern, prefix + b + rest)
                                            for rest in ("", "0", "d0", "c", "cd0", "c0", "b0"))}
        assert got == want, (prefix, sorted(map(chr, got)))
        assert not c.advance(ord(ch))
        prefix += ch
    assert (fill_masks([None], 256) == np.uint32(0xFFFFFFFF)).all()
    c.advance(ord("7"))
    assert c.accepting
    only = np.flatnonzero(allowed(c.mask(256), 256))
    assert list(only) == [0]  # complete: the end of sequence alone


SIM_SCRIPT = r"""
import sys
import numpy as np
from minirs.kernels.cuda import mask as cm
from minirs.kernels.cuda import sample as cs
from minirs.sampling import sample_plain
from minirs.sampling.mask import mask_logits, mask_words
from minirs.sampling.rows import pack
rng = np.random.default_rng(int(sys.argv[1]))
on_gpu = sys.argv[2] == "gpu"
if on_gpu:
    import cupy as cp
    from minirs.kernels.cuda.argmax import argmax
for V in map(int, sys.argv[3].split(",")):
    n = 6
    x = rng.standard_normal((n, V)).astype(np.float32)
    words = rng.integers(0, 2 ** 32, (n, mask_words(V)), dtype=np.uint64).astype(np.uint32)
    words[0] = 0xFFFFFFFF  # a free row
    words[1] &= np.uint32(0x00010001)  # few allowed
    want = mask_logits(x.copy(), words)
    dev = cp.asarray(x) if on_gpu else x.copy()
    got = cm.mask_logits(dev, cp.asarray(words) if on_gpu else words)
    got = cp.asnumpy(got) if on_gpu else got
    assert np.array_equal(got, want), V
    prm = pack(np.array([0.7, 1.0, 1.3, 1.0, 0.9, 1.0]), np.array([0, 1, 5, 0, 0, 3]),
               np.array([1.0, 1.0, 0.9, 1.0, 1.0, 1.0]), np.zeros(n), rng.random(n))
    ids = cs.sample_ids(cp.asarray(want) if on_gpu else want, cp.asarray(prm) if on_gpu else prm)
    ids = cp.asnumpy(ids) if on_gpu else ids
    for i in range(n):
        t, k, p, mp, coin = prm[i]
        h = sample_plain(want[i], t, int(k), p, mp, coin)
        assert ids[i] in (h, -1) and np.isfinite(want[i, h]), (V, i, ids[i], h)
    if on_gpu:
        assert np.array_equal(cp.asnumpy(argmax(cp.asarray(want), 0)), want.argmax(-1))
print("ok")
"""


def _run(env_extra, where, vocabs):
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", SIM_SCRIPT, "3", where, ",".join(map(str, vocabs))],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_mask_kernel_in_simulator():
    """The mask kernel equals its twin; the GPU sampler then draws only allowed tokens, as the host does."""
    _run({"NUMBA_ENABLE_CUDASIM": "1"}, "sim", (70, 300))


def _need_gpu():
    from minirs.load import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")


@pytest.mark.gpu
def test_mask_kernel_on_gpu():
    """On the GPU: the mask kernel against the twin, then argmax and the sampler on the masked logits against the
    host (vocabularies of SmolLM2, Gemma-3 and one with a partial last word)."""
    _need_gpu()
    _run({}, "gpu", (49152, 262144, 5001))


@pytest.mark.gpu
def test_captured_step_honours_masks(tmp_path):
    """ModelRunner.decode with masks on the GPU (captured argmax and sampler steps, padded to a bucket): each row's
    token is the host's draw from the same logits under the same mask."""
    _need_gpu()
    from minirs.engine import ModelRunner
    from minirs.engine.kv_cache import KVCache
    from minirs.kernels.cuda.backend import CudaBackend
    from minirs.load import load_model
    from minirs.models.synthetic import write_random_gguf
    from minirs.sampling import sample_plain
    be = CudaBackend()
    model = load_model(write_random_gguf(tmp_path / "s.gguf", "smollm2-135m"), backend=be)
    V = model.config.vocab_size
    runner = ModelRunner(model, KVCache(model.config, be, 7, 64, 8), spare_slot=6)
    rng = np.random.default_rng(5)
    toks, slots, pos = rng.integers(0, V, 6), np.arange(6), np.zeros(6, np.int64)
    logits = runner.decode(toks, slots, pos)
    keep = rng.random((6, V)) < 0.01
    keep[0] = True  # a free row
    words = pack(keep)
    masked = mask_logits(logits.copy(), words)
    greedy = [(0.0, 1, 1.0, 0.0, 0.0)] * 6
    for _ in range(2):  # capture, then replay
        assert list(runner.decode(toks, slots, pos, greedy, words)) == list(masked.argmax(-1))
    picks = [(0.8, 0, 1.0, 0.0, c) for c in rng.random(6)]
    want = [sample_plain(masked[i], *picks[i]) for i in range(6)]
    for _ in range(2):
        assert list(runner.decode(toks, slots, pos, picks, words)) == want


@pytest.mark.gpu
def test_structured_output_on_gpu(smollm2_path):
    """The real SmolLM2 on the GPU: a JSON schema and a regex constrain greedy (argmax step) and sampled (device
    sampler) requests in one batch with a free one, which equals its run alone."""
    _need_gpu()
    import json

    import jsonschema

    from minirs import ChatCompletionRequest, Runner, Which
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "lives"],
              "properties": {"name": {"type": "string", "maxLength": 12},
                             "lives": {"type": "integer", "minimum": 1, "maximum": 9}}}
    r = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
               device="cuda", seed=1)
    try:
        def req(content, **kw):
            return ChatCompletionRequest(messages=[{"role": "user", "content": content}], max_tokens=48, **kw)
        alone = r.send_chat_completion_request(req("Name a color.", temperature=0.0)).choices[0].message.content
        import threading
        out = {}
        reqs = {"free": req("Name a color.", temperature=0.0),
                "json": req("A cat as JSON.", temperature=0.0, response_format={
                    "type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}),
                "json_t": req("A cat as JSON.", temperature=0.8, response_format={
                    "type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}),
                "phone": req("A phone number.", temperature=0.7, grammar=r"\(\d{3}\) \d{3}-\d{4}",
                             grammar_type="regex")}
        ts = [threading.Thread(target=lambda k=k: out.__setitem__(k, r.send_chat_completion_request(reqs[k])))
              for k in reqs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out["free"].choices[0].message.content == alone
        for k in ("json", "json_t"):
            jsonschema.validate(json.loads(out[k].choices[0].message.content), schema)
        assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", out["phone"].choices[0].message.content)
    finally:
        r.shutdown()
