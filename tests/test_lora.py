"""LoRA adapters against PEFT, on the tiny random llama and mistral models (tests/golden/lora_<family>/).

Reference: tests/golden/make_lora_goldens.py makes PEFT adapters of different ranks and targets on the
arch_<family> bases (B overwritten with non-zero values), an rsLoRA adapter with all seven projections, and records
PEFT's float64 logits for each adapter alone and for two active together (and, on tiny phi3, one adapter on the
fused qkv_proj and gate_up_proj). Ours: the same folders read by
minirs.models.lora on the safetensors base and on the GGUFs our converter writes from it (F32, and Q8_0 within
the quantization's tolerance as in test_arch.py). Tolerance: 1e-4 relative to the largest |logit|.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_scheduler import StubTokenizer

from minirs.engine import Engine, GenParams, Job
from minirs.engine.kv_cache import KVCache
from minirs.errors import MinirsError, RequestError
from minirs.kernels import ref
from minirs.kernels.cpu import CpuBackend
from minirs.load import load_model
from minirs.models.convert import convert
from minirs.models.lora import attach, load_adapters, read_adapter

GOLDEN = Path(__file__).parent / "golden"
CASES = {"base": [], "a1": ["a1"], "a2": ["a2"], "both": ["a1", "a2"], "rs": ["rs"]}
TOL = {"safetensors": 1e-4, "F32": 1e-4, "Q8_0": 0.1}
TIMEOUT = 120




def logits(model, ids, names, cache=None):
    n = len(ids)
    cache = cache or KVCache(model.config, model.backend, 1, 64, 64)
    coef = np.tile(model.lora.row(names), (n, 1)) if names else None
    return model.forward(np.asarray(ids), np.zeros(n, np.int64), np.arange(n), cache, coef=coef)


def greedy(model, ids, names, steps):
    cache = KVCache(model.config, model.backend, 1, 64, 64)
    out = [int(np.argmax(logits(model, ids, names, cache)[-1]))]
    for _ in range(steps - 1):
        coef = model.lora.row(names)[None] if names else None
        lg = model.forward(np.array([out[-1]]), np.zeros(1, np.int64), np.array([len(ids) + len(out) - 1]), cache,
                           coef=coef)
        out.append(int(np.argmax(lg[-1])))
    return out


def rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lora_gguf")


@pytest.fixture(scope="module", params=[("llama", "safetensors"), ("llama", "F32"), ("llama", "Q8_0"),
                                        ("mistral", "safetensors"), ("mistral", "F32"), ("phi3", "safetensors")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def adapted(request, gguf_dir):
    family, source = request.param
    folder = GOLDEN / f"arch_{family}"
    path = folder if source == "safetensors" else convert(folder, gguf_dir / f"{family}-{source}.gguf", source)
    m = load_model(path, device="cpu")
    load_adapters(m, [p for n in ("a1", "a2", "rs") if (p := GOLDEN / f"lora_{family}" / n).is_dir()])
    return family, source, m


def test_logits_and_greedy_match_peft(adapted):
    family, source, m = adapted
    g = np.load(GOLDEN / f"lora_{family}" / "logits.npz")
    for case, names in CASES.items():
        if f"{case}_greedy" not in g:  # phi3: a1 only (on its fused qkv_proj and gate_up_proj)
            continue
        for i in range(2):
            got, want = logits(m, g[f"prompts_{i}"], names), g[f"{case}_logits_{i}"]
            assert rel(got, want) < TOL[source], f"{family} {source} {case} prompt {i}: {rel(got, want):.2e}"
            if source == "Q8_0":
                assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.8
        if source != "Q8_0":  # incremental decode through the cache gives PEFT's full-forward greedy tokens
            assert greedy(m, g["prompts_0"], names, 8) == list(g[f"{case}_greedy"]), f"{family} {case}"
    if source != "Q8_0":  # the adapters change the answer: the test could fail
        assert rel(logits(m, g["prompts_0"], ["a1"]), g["base_logits_0"]) > 0.05


def test_kernel_matches_its_twin():
    rng = np.random.default_rng(0)
    be = CpuBackend()
    R, n_in, n_out, K = 12, 40, 24, 6
    a, bt = rng.standard_normal((R, n_in)), rng.standard_normal((R, n_out))
    lo, hi = rng.integers(0, 10, R), rng.integers(12, n_out + 1, R)
    for j in range(R):
        bt[j, :lo[j]] = bt[j, hi[j]:] = 0
    key, scale = rng.integers(0, K, R), rng.random(R)
    stack = be.lora_stack(a, bt, key, scale, lo, hi)
    for n in (1, 5, 20):  # serial and row-parallel kernels
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        coef = rng.random((n, K)).astype(np.float32) * (rng.random((n, 1)) > 0.3)  # some rows without adapters
        y0 = rng.standard_normal((n, n_out)).astype(np.float32)
        y = y0.copy()
        be.lora_add_(y, x, stack, coef)
        want = y0 + ref.lora_delta(x, a, bt, key, scale, coef)
        assert rel(y, want) < 1e-5
        alone = y0.copy()  # each row alone: the same bits (the engine's batches are exact on the CPU)
        for r in range(n):
            be.lora_add_(alone[r:r + 1], x[r:r + 1], stack, coef[r:r + 1])
        assert np.array_equal(alone, y)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q6_K", "F16"])
@pytest.mark.parametrize("parts", ["ragged", "stacked"])
def test_matmul_with_the_delta_inside(qtype, parts):
    """A quantized projection adds the delta inside its own kernel (matmul.py _mm_q_lora), from a float16 copy of
    the adapter: the product plus the twin's delta, and each row's bits the same alone or batched, serial (n < 16)
    or row-parallel. Columns reach ragged output ranges, or a stack's parts (q | k | v: whole tiles of 32 outputs
    but the last, which the tiled epilogue takes through its vector path)."""
    import gguf
    from test_cpu_matmul import as_tensor, random_rows

    from minirs.kernels.cpu.matmul import qmatmul
    from minirs.kernels.cpu.weights import QMatrix
    rng = np.random.default_rng(1)
    be = CpuBackend()
    R, n_in, n_out, K = 20, 256, 200, 4
    raw = random_rows(qtype, n_out, n_in, rng)
    w = QMatrix.from_tensor(as_tensor(qtype, n_out, n_in, raw))
    a, bt = rng.standard_normal((R, n_in)) * 0.1, rng.standard_normal((R, n_out))
    if parts == "ragged":
        lo, hi = rng.integers(0, 70, R), rng.integers(90, n_out + 1, R)
    else:  # parts [0, 64), [64, 160), [160, 200), rank 8, 8, 4
        lo, hi = np.repeat([0, 64, 160], [8, 8, 4]), np.repeat([64, 160, 200], [8, 8, 4])
    for j in range(R):
        bt[j, :lo[j]] = bt[j, hi[j]:] = 0
    key, scale = rng.integers(0, K, R), rng.random(R)
    x = rng.standard_normal((20, n_in)).astype(np.float32)
    coef = rng.random((20, K)).astype(np.float32) * (rng.random((20, 1)) > 0.3)
    base = x @ gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).T
    bt *= 0.3 * np.abs(base).max() / np.abs(ref.lora_delta(x, a, bt, key, scale, coef)).max()  # a delta that shows
    stack = be.lora_stack(a, bt, key, scale, lo, hi, base=w)
    assert stack.tj[:, 3].any() == (parts == "stacked")  # whole tiles take the vector path
    if w.family != "float":  # beside a quantized base the adapter is kept in float16
        assert stack.a.dtype == np.uint16
        a, bt = (v.astype(np.float16).astype(np.float64) for v in (a, bt))
    y = qmatmul(w, x, (stack, coef))
    want = qmatmul(w, x) + ref.lora_delta(x, a, bt, key, scale, coef)
    assert np.abs(y - want).max() < 1e-5 * np.abs(want).max()
    for n in (1, 5):
        assert np.array_equal(qmatmul(w, x[:n], (stack, coef[:n])), y[:n])


def test_adapter_precision_follows_the_base():
    """float16 beside a quantized base, float32 beside a float one or where float16 would overflow."""
    from minirs.kernels.cpu.lora import CpuLora
    a, bt = np.ones((2, 32), np.float32), np.ones((2, 32), np.float32)
    args = (np.zeros(2, np.int64), np.ones(2, np.float32), np.zeros(2, np.int64), np.full(2, 32))
    assert CpuLora.of(a, bt, *args, half=True).a.dtype == np.uint16
    assert CpuLora.of(a, bt, *args, half=False).a.dtype == np.float32
    assert CpuLora.of(a, bt * 1e5, *args, half=True).bt.dtype == np.float32


def test_mixed_batch_gives_each_its_own_tokens():
    m = load_model(GOLDEN / "arch_llama", device="cpu")
    load_adapters(m, [GOLDEN / "lora_llama" / n for n in ("a1", "a2")])
    g = np.load(GOLDEN / "lora_llama" / "logits.npz")
    rng = np.random.default_rng(5)
    ps = [list(rng.integers(3, 256, int(rng.integers(4, 20)))) for _ in range(6)]
    which = [["a1"], ["a2"], [], ["a1", "a2"], ["a2"], ["a1"]]

    def job(p, names):
        return Job(p, GenParams(max_tokens=8), StubTokenizer(), adapters=names)
    alone = [Engine(m, StubTokenizer(), max_seqs=4, max_chunk=8).submit(job(p, w)).wait(TIMEOUT).seqs[0].generated
             for p, w in zip(ps, which)]
    eng = Engine(m, StubTokenizer(), max_seqs=8, max_chunk=8)
    jobs = [eng.submit(job(p, w)) for p, w in zip(ps, which)]
    assert [j.wait(TIMEOUT).seqs[0].generated for j in jobs] == alone
    assert len({tuple(t) for t in alone}) > 3  # the adapters make a difference
    # and the engine's tokens are PEFT's
    first = Engine(m, StubTokenizer(), max_seqs=2).submit(job(list(g["prompts_0"]), ["a1", "a2"])).wait(TIMEOUT)
    assert first.seqs[0].generated == list(g["both_greedy"])
    with pytest.raises(RequestError, match="unknown adapter 'nope'"):
        eng.submit(job(ps[0], ["nope"]))
    eng.shutdown()


def test_prefix_reuse_is_per_adapter_set():
    m = load_model(GOLDEN / "arch_llama", device="cpu")
    load_adapters(m, [GOLDEN / "lora_llama" / "a1"])
    eng = Engine(m, StubTokenizer(), max_seqs=1, max_chunk=8)
    p = list(range(3, 20))
    a = eng.submit(Job(p, GenParams(max_tokens=4), StubTokenizer(), adapters=[])).wait(TIMEOUT)
    b = eng.submit(Job(p, GenParams(max_tokens=4), StubTokenizer(), adapters=["a1"])).wait(TIMEOUT)
    c = eng.submit(Job(p, GenParams(max_tokens=4), StubTokenizer(), adapters=["a1"])).wait(TIMEOUT)
    assert b.cached_tokens == 0 and c.cached_tokens > 0
    assert b.seqs[0].generated == c.seqs[0].generated != a.seqs[0].generated
    eng.shutdown()


# ----- bad input -------------------------------------------------------------------------------------------------

def _copy(tmp_path, name="a1"):
    dst = tmp_path / name
    shutil.copytree(GOLDEN / "lora_llama" / name, dst)
    return dst


def _edit_config(folder, **kw):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(kw)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_tensors(folder, fn):
    from minirs.formats.safetensors import read_safetensors_file
    tensors, _ = read_safetensors_file(folder / "adapter_model.safetensors")
    arrays = {k: np.frombuffer(t.data.tobytes(), np.float32).reshape(t.shape).copy() for k, t in tensors.items()}
    arrays = fn(arrays)
    header, blobs, off = {}, [], 0
    for k, v in arrays.items():
        b = np.ascontiguousarray(v, np.float32).tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (folder / "adapter_model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_bad_adapters_are_named(tmp_path):
    m = load_model(GOLDEN / "arch_llama", device="cpu")
    d = _copy(tmp_path / "dora")
    _edit_config(d, use_dora=True)
    with pytest.raises(MinirsError, match="DoRA"):
        read_adapter(d)
    d = _copy(tmp_path / "mts")
    _edit_config(d, modules_to_save=["lm_head"])
    with pytest.raises(MinirsError, match="modules_to_save"):
        read_adapter(d)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    d = _copy(tmp_path / "nan")
    _edit_tensors(d, lambda t: {**t, key: np.where(np.arange(t[key].size).reshape(t[key].shape) == 3, np.nan,
                                                   t[key])})
    with pytest.raises(MinirsError, match=r"adapter_model.safetensors.*q_proj.lora_B.weight.*NaN"):
        read_adapter(d)
    d = _copy(tmp_path / "half")
    _edit_tensors(d, lambda t: {k: v for k, v in t.items() if k != key})
    with pytest.raises(MinirsError, match=r"q_proj' has lora_A but not the other"):
        read_adapter(d)
    d = _copy(tmp_path / "shape")  # an adapter made for a wider base
    _edit_tensors(d, lambda t: {**t, key: np.zeros((80, 4), np.float32)})
    with pytest.raises(MinirsError, match=r"q_proj.*another base model"):
        attach(m, [read_adapter(d)])
    d = _copy(tmp_path / "missing")  # a module the model lacks
    _edit_tensors(d, lambda t: {k.replace("layers.0.", "layers.7."): v for k, v in t.items()})
    with pytest.raises(MinirsError, match=r"layers.7.*not in this model"):
        attach(m, [read_adapter(d)])
    d = _copy(tmp_path / "odd")
    _edit_tensors(d, lambda t: {k.replace("self_attn.q_proj", "self_attn.rotary"): v for k, v in t.items()})
    with pytest.raises(MinirsError, match=r"rotary.*not a projection"):
        attach(m, [read_adapter(d)])
    order = tmp_path / "ordering.json"
    order.write_text(json.dumps({"order": ["a1", "ghost"], "base_model_id": "x"}))
    with pytest.raises(MinirsError, match=r"ordering.json.*'ghost'"):
        load_adapters(m, [GOLDEN / "lora_llama"], order)


def test_twins_backend_runs_adapters():
    """A first run answers on the NumPy twins (minirs.warmup): the adapters apply there too."""
    from minirs.kernels.twins import TwinsBackend
    m = load_model(GOLDEN / "arch_llama", backend=TwinsBackend())
    load_adapters(m, [GOLDEN / "lora_llama" / n for n in ("a1", "a2")])
    g = np.load(GOLDEN / "lora_llama" / "logits.npz")
    assert rel(logits(m, g["prompts_1"], ["a1", "a2"]), g["both_logits_1"]) < 1e-4
