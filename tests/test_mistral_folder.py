"""Mistral's own folder layout (params.json + consolidated.safetensors) against transformers.

Reference: tests/golden/make_mistral_goldens.py writes tiny random Mistral (dense, BF16, sliding window) and Mixtral
(MoE, F16) folders, converts the same weights to Hugging Face folders as transformers' converter does (q/k rows
permuted to rotate-half; the script checks that permutation against mistral-inference's complex RoPE) and stores
transformers' float64 logits and greedy tokens. Ours: the Mistral folder read by minirs.models.mistral (no
permutation), and the F32 GGUF our converter writes from it. Tolerance 1e-5 relative to the largest |logit|:
the weights are exactly the same values, so only float32 rounding separates us from float64 (observed ~1e-7).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minirs.engine.kv_cache import KVCache
from minirs.errors import FormatError
from minirs.formats import dequantize
from minirs.formats.safetensors import read_safetensors_file
from minirs.load import load_model, open_model
from minirs.models.convert import convert
from tests.helpers_files import write_safetensors_file

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-5


def golden(kind):
    g = np.load(GOLDEN / f"mistral_{kind}" / "logits.npz")
    return [(g[f"prompts_{i}"], g[f"logits_{i}"], g[f"greedy_{i}"]) for i in range(3)]


def run(model, ids, chunk=None):
    chunk = chunk or len(ids)
    cache = KVCache(model.config, model.backend, 1, 64, chunk)
    out = []
    for c in range(0, len(ids), chunk):
        part = np.asarray(ids[c:c + chunk])
        out.append(model.forward(part, np.zeros(len(part), np.int64), np.arange(c, c + len(part)), cache))
    return np.concatenate(out)


def host(model, a):
    """Logits as a NumPy array (the CUDA backend returns device arrays)."""
    be = model.backend
    return be.to_numpy(a) if hasattr(be, "to_numpy") else np.asarray(a)


def greedy(model, ids, n):
    """n greedy tokens, one decode step at a time through the cache."""
    cache = KVCache(model.config, model.backend, 1, 64, len(ids))
    logits = host(model, model.forward(np.asarray(ids), np.zeros(len(ids), np.int64), np.arange(len(ids)), cache))
    out = [int(np.argmax(logits[-1]))]
    for k in range(n - 1):
        step = model.forward(np.asarray(out[-1:]), np.zeros(1, np.int64), np.array([len(ids) + k]), cache)
        out.append(int(np.argmax(host(model, step)[0])))
    return out


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def tensors_of(folder):
    files = sorted(folder.glob("consolidated*.safetensors"))
    return {n: t for f in files for n, t in read_safetensors_file(f)[0].items()}


def as_arrays(tensors):
    """name -> array to write back (BF16 kept as its raw uint16 bits), copied out of the memory map."""
    return {n: ("BF16", t.data.view(np.uint16).reshape(t.shape).copy()) if t.qtype == "BF16"
            else dequantize(t).reshape(t.shape).astype(np.float16 if t.qtype == "F16" else np.float32)
            for n, t in tensors.items()}


def copy_folder(kind, dest):
    src = GOLDEN / f"mistral_{kind}"
    dest.mkdir(parents=True)
    for name in ("params.json", "consolidated.safetensors"):
        shutil.copy(src / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mistral_gguf")


@pytest.mark.parametrize("kind", ["dense", "moe"])
@pytest.mark.parametrize("source", ["folder", "gguf"])
def test_logits_and_greedy_match_transformers(kind, source, gguf_dir):
    folder = GOLDEN / f"mistral_{kind}"
    path = folder if source == "folder" else convert(folder, gguf_dir / f"{kind}.gguf", "F32")
    m = load_model(path, device="cpu")
    if kind == "moe":
        assert (m.config.n_experts, m.config.n_experts_used) == (4, 2)
    else:
        assert m.config.sliding_window == 8 and m.config.head_dim * m.config.n_heads != m.config.dim
    for ids, want, tokens in golden(kind):
        for chunk in (None, 5):
            err = rel_err(run(m, ids, chunk), want)
            assert err < TOL, f"{kind} {source} chunk={chunk}: relative error {err:.2e}"
        assert greedy(m, ids, len(tokens)) == tokens.tolist()


def test_q_k_are_not_permuted():
    """Mistral's q/k rows are already in GGUF's interleaved-pair order: loading them through the HF permutation
    (as if they were rotate-half rows) must break the match, so the test above would see a wrong choice."""
    from minirs.models.hf import permute_rows
    mf = open_model(GOLDEN / "mistral_dense")
    for name in [n for n in mf.tensors if n.endswith(("attn_q.weight", "attn_k.weight"))]:
        heads = 4 if "attn_q" in name else 2
        mf.tensors[name] = permute_rows(mf.tensors[name], heads, name)
    ids, want, _ = golden("dense")[1]
    assert rel_err(run(load_model(mf, device="cpu"), ids), want) > 1e-2


def test_shards(tmp_path):
    """consolidated-0000X-of-0000Y.safetensors shards give the same model; a missing shard is named."""
    folder = copy_folder("moe", tmp_path / "sharded")
    arrays = as_arrays(tensors_of(folder))
    (folder / "consolidated.safetensors").unlink()
    names = list(arrays)
    for s in range(3):
        write_safetensors_file(folder / f"consolidated-{s + 1:05d}-of-00003.safetensors",
                               {n: arrays[n] for n in names[s::3]})
    ids, want, _ = golden("moe")[2]
    assert rel_err(run(load_model(folder, device="cpu"), ids), want) < TOL
    (folder / "consolidated-00002-of-00003.safetensors").unlink()
    with pytest.raises(FormatError, match="incomplete or inconsistent shards"):
        open_model(folder)


def test_lora_section_is_merged(tmp_path):
    """A params.json `lora` section: each projection stored as X.linear.weight + X.lora_A/B.weight (mistral-inference's
    LoRALinear, y = linear(x) + scaling * B(A(x))) gives the model with W = linear + scaling * B @ A."""
    folder = copy_folder("dense", tmp_path / "lora")
    params = json.loads((folder / "params.json").read_text())
    params["lora"] = {"rank": 2, "scaling": 2.0}
    (folder / "params.json").write_text(json.dumps(params))
    rng = np.random.default_rng(0)
    out = {}
    for n, t in tensors_of(folder).items():
        w = dequantize(t).reshape(t.shape).astype(np.float64)
        if ".attention.w" in n or ".feed_forward.w" in n:
            a, b = rng.standard_normal((2, w.shape[1])) * 0.1, rng.standard_normal((w.shape[0], 2)) * 0.1
            base = n[:-len(".weight")]
            out |= {base + ".linear.weight": (w - 2.0 * b @ a).astype(np.float32),
                    base + ".lora_A.weight": a.astype(np.float32), base + ".lora_B.weight": b.astype(np.float32)}
        else:
            out[n] = w.astype(np.float32)
    write_safetensors_file(folder / "consolidated.safetensors", out)
    ids, want, _ = golden("dense")[1]
    assert rel_err(run(load_model(folder, device="cpu"), ids), want) < 1e-4  # float32 rounding of the split
    del out["layers.1.feed_forward.w2.lora_B.weight"]
    write_safetensors_file(folder / "consolidated.safetensors", out)
    with pytest.raises(FormatError, match=r"layers\.1\.feed_forward\.w2\.lora_B\.weight is missing"):
        open_model(folder)


def _bad_params(tmp_path, change):
    folder = copy_folder("moe", tmp_path / "bad")
    params = json.loads((folder / "params.json").read_text())
    change(params)
    (folder / "params.json").write_text(json.dumps(params))
    return folder


@pytest.mark.parametrize("change, match", [
    (lambda p: p.pop("n_heads"), r"params\.json: missing field 'n_heads'"),
    (lambda p: p.update(n_kv_heads=3), r"params\.json: field 'n_kv_heads' is 3, which does not divide"),
    (lambda p: p.update(dim="32"), r"params\.json: field 'dim' is '32', expected an integer"),
    (lambda p: p.update(norm_eps=-1.0), r"field 'norm_eps' is -1.0"),
    (lambda p: p["moe"].update(num_experts_per_tok=5), r"'moe\.num_experts_per_tok' is 5, more than"),
    (lambda p: p["moe"].pop("num_experts"), r"field 'moe\.num_experts' is None"),
    (lambda p: p.update(lora={"rank": 0, "scaling": 2.0}), r"field 'lora\.rank' is 0"),
    (lambda p: p.update(vision_encoder={"hidden_size": 8}), r"'vision_encoder': a vision encoder"),
    (lambda p: p.update(model_type="mamba"), r"model_type 'mamba' is not supported"),
    (lambda p: p.update(sliding_window=[8, 16]), r"field 'sliding_window' is a per-layer list"),
    (lambda p: p.update(hidden_dim=40), r"consolidated\.safetensors: tensor 'layers\.0\.feed_forward\.experts\.0"
                                        r"\.w1\.weight' has shape \(48, 32\), expected \(40, 32\)"),
    (lambda p: p.pop("moe"), r"tensor 'layers\.0\.feed_forward\.(gate|experts\.0\.w1)\.weight' is not a tensor of this "
                                    r"model \(params\.json: dense"),
    (lambda p: p.update(n_layers=3), r"tensor 'layers\.2\.attention_norm\.weight' is missing"),
])
def test_bad_params_are_named(tmp_path, change, match):
    with pytest.raises(FormatError, match=match):
        open_model(_bad_params(tmp_path, change))


def test_bad_tensors_and_files_are_named(tmp_path):
    folder = copy_folder("dense", tmp_path / "m")
    arrays = as_arrays(tensors_of(folder))
    del arrays["layers.1.attention.wk.weight"]
    write_safetensors_file(folder / "consolidated.safetensors", arrays)
    with pytest.raises(FormatError, match=r"tensor 'layers\.1\.attention\.wk\.weight' is missing"):
        open_model(folder)
    arrays["layers.1.attention.wk.weight"] = np.zeros((16, 48), np.float32)
    write_safetensors_file(folder / "consolidated.safetensors", arrays)
    with pytest.raises(FormatError, match=r"'layers\.1\.attention\.wk\.weight' has shape \(16, 48\), expected "
                                          r"\(32, 48\)"):
        open_model(folder)
    arrays["layers.1.attention.wk.weight"] = np.zeros((32, 48), np.int32)
    write_safetensors_file(folder / "consolidated.safetensors", arrays)
    with pytest.raises(FormatError, match=r"'layers\.1\.attention\.wk\.weight' has dtype I32"):
        open_model(folder)
    (folder / "consolidated.safetensors").unlink()
    (folder / "consolidated.00.pth").write_bytes(b"\x80")
    with pytest.raises(FormatError, match=r"consolidated\.00\.pth is a PyTorch pickle"):
        open_model(folder)
    (folder / "params.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"params\.json: cannot read it as JSON"):
        open_model(folder)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_logits_and_greedy_match_transformers_cuda(kind):
    """The same goldens on the GPU backend (BF16 and F16 weights; MoE through the expert kernels). Tolerance 5e-3:
    its KV cache is float16 (~5e-4 relative per value), as in test_arch's CUDA test."""
    from minirs.load import cuda_available, get_backend
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    be = get_backend("cuda")
    m = load_model(GOLDEN / f"mistral_{kind}", backend=be)
    for ids, want, tokens in golden(kind):
        for chunk in (None, 5):
            assert rel_err(host(m, run(m, ids, chunk)), want) < 5e-3, f"{kind} cuda chunk={chunk}"
        assert greedy(m, ids, len(tokens)) == tokens.tolist()


def test_a_folder_with_both_layouts_is_read_as_mistral(tmp_path):
    """Many Mistral repositories ship params.json + consolidated.safetensors beside an HF config.json: the Mistral
    weights are read (a params.json alone, without weights, is named as such)."""
    folder = copy_folder("dense", tmp_path / "both")
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral", "hidden_size": 48}))
    mf = open_model(folder)
    assert mf.format == "mistral" and mf.tensors["blk.0.attn_q.weight"].shape == (64, 48)
    (folder / "consolidated.safetensors").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(FormatError, match=r"no consolidated\.safetensors nor consolidated-0000X-of-0000Y"):
        open_model(folder)
