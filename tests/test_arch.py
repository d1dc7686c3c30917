"""Every supported family against transformers, on tiny random-weight models (tests/golden/arch_<family>/).

Reference: tests/golden/make_arch_goldens.py builds each model with transformers' own config class, saves it as
float16 safetensors and records transformers' logits (float64, eager attention) for three seeded prompts.
Ours: the same folder read by minirs.models.hf (name tables + llama.cpp's transforms), and the GGUF files our
converter (minirs.models.convert) writes from it, F32 and Q8_0, loaded through the GGUF path like any llama.cpp
file. No torch or transformers is needed here.

Tolerances, relative to the largest |logit| of the prompt:
  * safetensors and F32 GGUF: 1e-4. The weights are the same float16 values in every file, so only float32
    rounding separates us from the float64 reference (observed ~1e-6).
  * Q8_0 GGUF: 0.1, plus the same top token at >= 85% of positions. Q8_0 stores every weight with ~0.4%
    rounding error; untrained random models amplify it through the layers (observed 0.4-8%; gemma2's soft-caps
    squeeze its logits into (-3, 3), so its error relative to the largest logit is the largest). The exact check
    of the quantized path is a second one: the Q8_0 file against the same file with every weight dequantized to
    F32 and run through the float path that matches transformers above, 1e-3: quantized weights meet the
    activations as 16-bit integers per 32-block (kernels/cpu/qdot.py), float weights meet them as they are
    (observed <= 1.4e-4, gemma2's soft-capped logits the largest).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minirs.engine.kv_cache import KVCache
from minirs.errors import MinirsError
from minirs.formats import Tensor, dequantize
from minirs.load import load_model, open_model
from minirs.models.convert import convert

GOLDEN = Path(__file__).parent / "golden"
FAMILIES = ["llama", "mistral", "qwen2", "mixtral", "gemma", "gemma2", "gemma3", "phi2", "phi3"]
TOL = {"safetensors": 1e-4, "F32": 1e-4, "Q8_0": 0.1}
WINDOW = 8  # mistral's sliding window in the golden model


def golden(family):
    g = np.load(GOLDEN / f"arch_{family}" / "logits.npz")
    return [(g[f"prompts_{i}"], g[f"logits_{i}"]) for i in range(3)], g


def run(model, ids, chunk=None, ctx_len=64):
    """Logits of every position, fed in chunks through a one-slot cache (default: one prefill)."""
    chunk = chunk or len(ids)
    cache = KVCache(model.config, model.backend, 1, ctx_len, chunk)
    out = []
    for c in range(0, len(ids), chunk):
        part = np.asarray(ids[c:c + chunk])
        out.append(model.forward(part, np.zeros(len(part), np.int64), np.arange(c, c + len(part)), cache))
    return np.concatenate(out)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("arch_gguf")


@pytest.fixture(scope="module", params=[(f, s) for f in FAMILIES for s in ("safetensors", "F32", "Q8_0")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request, gguf_dir):
    family, source = request.param
    folder = GOLDEN / f"arch_{family}"
    path = folder if source == "safetensors" else convert(folder, gguf_dir / f"{family}-{source}.gguf", source)
    m = load_model(path, device="cpu")
    if source == "Q8_0":  # the same weights, dequantized to F32
        mf = open_model(path)
        f32 = {n: Tensor(n, "F32", t.shape, dequantize(t).reshape(-1).view(np.uint8)) for n, t in mf.tensors.items()}
        m.dequantized = load_model(dataclasses.replace(mf, tensors=f32), device="cpu")
    return family, source, m


def test_logits_match_transformers(model):
    family, source, m = model
    prompts, _ = golden(family)
    for ids, want in prompts:
        for chunk in (None, 5):  # one prefill, and chunks through the (ring-buffer) cache
            got = run(m, ids, chunk)
            err = rel_err(got, want)
            assert err < TOL[source], f"{family} {source} chunk={chunk}: relative error {err:.2e}"
            if source == "Q8_0":
                agree = np.mean(got.argmax(-1) == want.argmax(-1))
                assert agree >= 0.85, f"{family} Q8_0: top token agrees at only {agree:.0%} of positions"
                exact = rel_err(got, run(m.dequantized, ids, chunk))
                assert exact < 1e-3, f"{family} Q8_0 vs its own weights in F32: {exact:.2e}"


def test_gguf_is_what_llama_cpp_would_write(gguf_dir):
    """Spot checks of the converted files against llama.cpp's conventions."""
    import gguf
    convert(GOLDEN / "arch_mixtral", gguf_dir / "mixtral-check.gguf")
    r = gguf.GGUFReader(str(gguf_dir / "mixtral-check.gguf"))
    names = {t.name: t for t in r.tensors}
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "llama"
    assert list(names["blk.0.ffn_gate_exps.weight"].shape) == [32, 48, 8]  # ne order: (n_in, n_out, expert)
    assert "blk.0.ffn_gate_inp.weight" in names and "llama.expert_used_count" in r.fields


def test_mistral_sliding_window_like_transformers():
    """Mistral attends to the last WINDOW keys only: like transformers, its logits equal full attention's up to
    position WINDOW - 1 and differ after, and a ring cache shorter than the prompt gives the windowed result."""
    prompts, g = golden("mistral")
    ids, windowed = prompts[2]
    full = g["full_2"]  # transformers, same weights, sliding_window=None
    scale = np.abs(windowed).max()
    assert np.abs(windowed[:WINDOW] - full[:WINDOW]).max() / scale < 1e-6
    assert (np.abs(windowed[WINDOW:] - full[WINDOW:]).max(-1) / scale > 1e-3).all()

    m = load_model(GOLDEN / "arch_mistral", device="cpu")
    cache = KVCache(m.config, m.backend, 1, 64, 4)
    assert max(cache.lengths) < len(ids)  # the ring is smaller than the context
    assert rel_err(run(m, ids, chunk=4), windowed) < 1e-4
    assert rel_err(run(m, ids, chunk=1), windowed) < 1e-4
    m.config = dataclasses.replace(m.config, sliding_window=0)
    assert rel_err(run(m, ids), full) < 1e-4


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_isq_equals_quantized_gguf(family, gguf_dir):
    """Quantizing at load time (ISQ) gives the same weights as loading the converted Q8_0 file."""
    ids, _ = golden(family)[0][1]
    isq = load_model(GOLDEN / f"arch_{family}", device="cpu", isq="Q8_0")
    q8 = load_model(convert(GOLDEN / f"arch_{family}", gguf_dir / f"{family}-isq.gguf", "Q8_0"), device="cpu")
    np.testing.assert_array_equal(run(isq, ids), run(q8, ids))


def test_unsupported_architecture_is_named(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "arch_llama", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(MinirsError, match="falcon"):
        load_model(folder, device="cpu")


def test_missing_tensor_is_named():
    mf = open_model(GOLDEN / "arch_phi2")
    del mf.tensors["blk.1.attn_norm.bias"]
    with pytest.raises(MinirsError, match=r"blk\.1\.attn_norm\.bias"):
        load_model(mf, device="cpu")
    mf = open_model(GOLDEN / "arch_mixtral")
    del mf.tensors["blk.0.ffn_up_exps.weight"]
    with pytest.raises(MinirsError, match=r"blk\.0\.ffn_up_exps\.weight"):
        load_model(mf, device="cpu")


def test_tiny_mixtral_preset_decodes_like_prefill(tmp_path):
    """The random-weight mixtral preset (for GPU benchmarks) loads, and decode through the cache equals prefill."""
    from minirs.models.synthetic import write_random_gguf
    m = load_model(write_random_gguf(tmp_path / "tiny-mixtral.gguf", "tiny-mixtral", seed=3), device="cpu")
    assert m.config.n_experts == 4 and m.config.n_experts_used == 2
    ids = list(np.random.default_rng(0).integers(0, 256, 12))
    assert rel_err(run(m, ids, chunk=1), run(m, ids)) < 1e-4


# Backend ops beyond llama's that a family's forward calls (listed so a backend can be checked for them).
EXTRA_OPS = {"qwen2": ["add_bias_"], "phi2": ["layernorm", "add_bias_", "act"],
             "mixtral": ["expert_matrix", "topk_softmax", "matmul_id", "moe_sum"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_cuda(family):
    """The same goldens on the GPU backend. Tolerance 5e-3: its KV cache is float16 (~5e-4 relative per value)."""
    from minirs.load import cuda_available, get_backend
    if not cuda_available():
        pytest.skip("no CUDA GPU")
    be = get_backend("cuda")
    missing = [op for op in EXTRA_OPS.get(family, []) if not hasattr(be, op)]
    if missing:
        pytest.skip(f"the CUDA backend lacks {', '.join(missing)}")
    m = load_model(GOLDEN / f"arch_{family}", backend=be)
    for ids, want in golden(family)[0]:
        for chunk in (None, 5):
            got = run(m, ids, chunk)
            got = be.to_numpy(got) if hasattr(be, "to_numpy") else np.asarray(got)
            assert rel_err(got, want) < 5e-3, f"{family} cuda chunk={chunk}"


def test_old_mixtral_gguf_per_expert_tensors(gguf_dir):
    """GGUFs from before llama.cpp stacked the experts (blk.{i}.ffn_gate.{e}.weight) give the same model."""
    mf = open_model(GOLDEN / "arch_mixtral")
    tensors = dict(mf.tensors)
    for name in [n for n in tensors if n.endswith("_exps.weight")]:
        t = tensors.pop(name)
        per = t.data.reshape(t.shape[0], -1)
        for e in range(t.shape[0]):
            old = name.replace("_exps.weight", f".{e}.weight")
            tensors[old] = Tensor(old, t.qtype, t.shape[1:], per[e])
    ids, want = golden("mixtral")[0][2]
    m = load_model(dataclasses.replace(mf, tensors=tensors), device="cpu")
    assert rel_err(run(m, ids), want) < 1e-4


def test_sharded_and_multimodal_folders(tmp_path):
    """The tiny gemma3 saved as a multimodal gemma3 folder (text_config, model.language_model.* names, a vision
    tower to skip) in two shards with an index gives the same logits."""
    from minirs.formats import load_model_file
    from tests.helpers_files import write_safetensors_file
    src = GOLDEN / "arch_gemma3"
    st = load_model_file(src)  # the HF names, as saved
    text_cfg = json.loads((src / "config.json").read_text())
    folder = tmp_path / "gemma3-mm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_cfg}))
    arrays = {name.replace("model.", "model.language_model.", 1): dequantize(t).reshape(t.shape).astype(np.float16)
              for name, t in st.tensors.items()}
    arrays["model.vision_tower.patch_embedding.weight"] = np.ones((4, 4), np.float16)
    names = sorted(arrays)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, part in shards.items():
        write_safetensors_file(folder / shard, {n: arrays[n] for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: shard for shard, part in shards.items() for n in part}}))
    ids, want = golden("gemma3")[0][2]
    assert rel_err(run(load_model(folder, device="cpu"), ids), want) < 1e-4
