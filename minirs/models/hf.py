"""Hugging Face folders as GGUF: config.json -> GGUF metadata, safetensors names -> GGUF names, one table per family.

`read_hf_folder(path)` returns the ModelFile that llama.cpp's convert_hf_to_gguf.py would have written (same
architecture names, metadata keys, tensor names and weight transforms), except that weights keep their
F32/F16/BF16 type and most stay zero-copy views into the safetensors. So the model code has one loader (GGUF
names) and models/convert.py writes a GGUF from the same ModelFile. The transforms, as llama.cpp's converter:

  * llama-family GGUFs (llama, mistral, mixtral) use the "normal" RoPE layout, so the rows of attn_q and attn_k
    are permuted from HF's rotate-half order (per head: [first halves, second halves] -> interleaved pairs);
  * gemma norms compute x * (1 + w): the converter stores 1 + w, so every *norm.weight gains 1;
  * mixtral's per-expert w1/w3/w2 are stacked into ffn_gate_exps / ffn_up_exps / ffn_down_exps (E, out, in);
  * Llama-3 RoPE scaling becomes the rope_freqs tensor of per-frequency divisors, Phi-3 LongRoPE the
    rope_factors_short / rope_factors_long tensors plus rope.scaling.attn_factor.
phi3's fused qkv_proj and gate_up_proj stay fused (attn_qkv, ffn_up), as in llama.cpp; the model splits them.
`quantize_model_file(mf, "Q8_0")` quantizes the matrices in memory (in-situ quantization, as mistral.rs's ISQ).
"""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from minirs.errors import ModelError
from minirs.formats import ModelFile, Tensor, dequantize, quantize
from minirs.formats.types import QTYPES

# Hugging Face model_type -> GGUF architecture (as llama.cpp's converter names them)
HF_ARCH = {"llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "qwen2", "gemma": "gemma",
           "gemma2": "gemma2", "gemma3_text": "gemma3", "phi": "phi2", "phi3": "phi3"}

# --- name tables: HF tensor name -> GGUF tensor name; {i} is the layer, {e} the expert -----------------------
LLAMA = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
_LLAMA_MLP = {k: v for k, v in LLAMA.items() if ".mlp." in k}
MIXTRAL = {k: v for k, v in LLAMA.items() if k not in _LLAMA_MLP} | {
    "model.layers.{i}.block_sparse_moe.gate.weight": "blk.{i}.ffn_gate_inp.weight",
    "model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight": "blk.{i}.ffn_gate_exps.weight",
    "model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight": "blk.{i}.ffn_up_exps.weight",
    "model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight": "blk.{i}.ffn_down_exps.weight",
}
QWEN2 = LLAMA | {f"model.layers.{{i}}.self_attn.{p}_proj.bias": f"blk.{{i}}.attn_{p}.bias" for p in "qkv"}
GEMMA = LLAMA
GEMMA2 = LLAMA | {
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.post_attention_norm.weight",
    "model.layers.{i}.pre_feedforward_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.post_feedforward_layernorm.weight": "blk.{i}.post_ffw_norm.weight",
}
GEMMA3 = GEMMA2 | {
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
}
PHI2 = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.final_layernorm.{w}": "output_norm.{w}",
    "lm_head.{w}": "output.{w}",
    "model.layers.{i}.input_layernorm.{w}": "blk.{i}.attn_norm.{w}",
    "model.layers.{i}.self_attn.q_proj.{w}": "blk.{i}.attn_q.{w}",
    "model.layers.{i}.self_attn.k_proj.{w}": "blk.{i}.attn_k.{w}",
    "model.layers.{i}.self_attn.v_proj.{w}": "blk.{i}.attn_v.{w}",
    "model.layers.{i}.self_attn.dense.{w}": "blk.{i}.attn_output.{w}",
    "model.layers.{i}.mlp.fc1.{w}": "blk.{i}.ffn_up.{w}",
    "model.layers.{i}.mlp.fc2.{w}": "blk.{i}.ffn_down.{w}",
}
PHI2 = {k.replace("{w}", w): v.replace("{w}", w) for k, v in PHI2.items() for w in ("weight", "bias")}
PHI3 = {k: v for k, v in LLAMA.items() if not re.search(r"[qkv]_proj|gate_proj|up_proj", k)} | {
    "model.layers.{i}.self_attn.qkv_proj.weight": "blk.{i}.attn_qkv.weight",
    "model.layers.{i}.mlp.gate_up_proj.weight": "blk.{i}.ffn_up.weight",
}
NAME_TABLES = {"llama": LLAMA, "mistral": LLAMA, "mixtral": MIXTRAL, "qwen2": QWEN2, "gemma": GEMMA,
               "gemma2": GEMMA2, "gemma3_text": GEMMA3, "phi": PHI2, "phi3": PHI3}
IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # buffers some old checkpoints saved

# Multimodal wrappers whose text model we run: model_type -> (text model_type, name prefix rewrites, skipped parts)
MULTIMODAL = {"gemma3": ("gemma3_text", {"model.language_model.": "model.", "language_model.model.": "model.",
                                         "language_model.lm_head.": "lm_head."},
                         ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                          "model.multi_modal_projector."))}


def _text_part(cfg: dict, tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """For a multimodal folder (gemma3 with a vision tower): the text model's config and tensors, renamed."""
    if cfg.get("model_type") not in MULTIMODAL:
        return cfg, tensors
    text_type, prefixes, skipped = MULTIMODAL[cfg["model_type"]]
    text_cfg = {**cfg.get("text_config", {}), "model_type": text_type}
    text_cfg.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", True))
    out = {}
    for name, t in tensors.items():
        if name.startswith(skipped):
            continue
        for old, new in prefixes.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        out[name] = t
    return text_cfg, out


def _template(name: str) -> tuple[str, list[int]]:
    """'model.layers.3.block_sparse_moe.experts.5.w1.weight' -> ('model.layers.{i}...experts.{e}.w1.weight', [3, 5])"""
    nums: list[int] = []

    def sub(m):
        nums.append(int(m.group(1)))
        return "." + ("{i}", "{e}")[len(nums) - 1] + "."
    return re.sub(r"\.(\d+)\.", sub, name, count=2), nums


# --- config.json -> GGUF metadata ----------------------------------------------------------------------------
def _rope_params(cfg: dict) -> dict:
    """RoPE settings in transformers 5 form (rope_parameters) from either v5 or v4 (rope_theta, rope_scaling)."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        return dict(rp.get("full_attention", rp))
    rp = dict(cfg.get("rope_scaling") or {})
    rp.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rp.setdefault("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    rp.setdefault("rope_type", rp.get("type", "default"))
    return rp


def hf_metadata(cfg: dict, folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """GGUF metadata for a config.json, and the extra F32 tensors llama.cpp derives from it (RoPE factors)."""
    model_type = cfg.get("model_type")
    if model_type not in HF_ARCH:
        raise ModelError(f"{folder}/config.json: unsupported model_type {model_type!r} "
                         f"(supported: {', '.join(HF_ARCH)})")
    arch = HF_ARCH[model_type]

    def need(key):
        if cfg.get(key) is None:
            raise ModelError(f"{folder}/config.json lacks {key!r} ({model_type})")
        return cfg[key]

    dim, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = int(cfg.get("head_dim") or dim // n_heads)
    n_layers = int(need("num_hidden_layers"))
    rope = _rope_params(cfg)
    a = arch + "."
    md = {
        "general.architecture": arch, "general.name": str(cfg.get("_name_or_path") or folder.name),
        a + "embedding_length": dim, a + "block_count": n_layers,
        a + "feed_forward_length": int(need("intermediate_size")),
        a + "attention.head_count": n_heads,
        a + "attention.head_count_kv": int(cfg.get("num_key_value_heads") or n_heads),
        a + "attention.key_length": head_dim, a + "attention.value_length": head_dim,
        a + "context_length": int(cfg.get("max_position_embeddings", 2048)),
        a + "vocab_size": int(need("vocab_size")),
        a + "rope.freq_base": float(rope.get("rope_theta", 10000.0)),
        a + "rope.dimension_count": int(float(rope.get("partial_rotary_factor", 1.0)) * head_dim),
    }
    if arch == "phi2":
        md[a + "attention.layer_norm_epsilon"] = float(cfg.get("layer_norm_eps", 1e-5))
    else:
        md[a + "attention.layer_norm_rms_epsilon"] = float(cfg.get("rms_norm_eps", 1e-6))
    window = cfg.get("sliding_window")
    if model_type == "qwen2" and not cfg.get("use_sliding_window"):
        window = None
    if window:
        md[a + "attention.sliding_window"] = int(window)
        if isinstance(cfg.get("layer_types"), list):
            md[a + "attention.sliding_window_pattern"] = [t == "sliding_attention" for t in cfg["layer_types"]]
    if model_type.startswith("gemma") and cfg.get("query_pre_attn_scalar"):
        md[a + "attention.scale"] = float(cfg["query_pre_attn_scalar"]) ** -0.5
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if cfg.get(key):
            md[a + key] = float(cfg[key])
    if model_type == "gemma3_text":
        local = (cfg.get("rope_parameters") or {}).get("sliding_attention", {})
        md[a + "rope.freq_base_swa"] = float(local.get("rope_theta", cfg.get("rope_local_base_freq", 10000.0)))
    if model_type == "mixtral":
        md[a + "expert_count"] = int(need("num_local_experts"))
        md[a + "expert_used_count"] = int(need("num_experts_per_tok"))

    extra: dict[str, np.ndarray] = {}
    kind = rope.get("rope_type", "default")
    freqs = 1.0 / float(rope.get("rope_theta", 10000.0)) ** (np.arange(0, md[a + "rope.dimension_count"], 2)
                                                             / md[a + "rope.dimension_count"])
    if kind == "linear":
        md[a + "rope.scaling.type"] = "linear"
        md[a + "rope.scaling.factor"] = float(rope["factor"])
    elif kind == "llama3":  # as llama.cpp's LlamaModel.generate_extra_tensors
        factor, lo, hi = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old = float(rope["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freqs
        smooth = (old / wavelen - lo) / (hi - lo)
        extra["rope_freqs.weight"] = np.where(wavelen < old / hi, 1.0, np.where(
            wavelen > old / lo, factor, 1.0 / ((1 - smooth) / factor + smooth))).astype(np.float32)
    elif kind in ("longrope", "su"):  # as llama.cpp's Phi3MiniModel
        orig = int(rope.get("original_max_position_embeddings") or need("original_max_position_embeddings"))
        scale = md[a + "context_length"] / orig
        attn_factor = rope.get("attention_factor") or (
            math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
        md[a + "rope.scaling.type"] = "longrope"
        md[a + "rope.scaling.attn_factor"] = float(attn_factor)
        md[a + "rope.scaling.original_context_length"] = orig
        extra["rope_factors_long.weight"] = np.asarray(rope["long_factor"], dtype=np.float32)
        extra["rope_factors_short.weight"] = np.asarray(rope["short_factor"], dtype=np.float32)
    elif kind != "default":
        raise ModelError(f"{folder}/config.json: RoPE scaling {kind!r} is not supported")
    return md, extra


# --- tensors ---------------------------------------------------------------------------------------------------
def _f32(name: str, a: np.ndarray) -> Tensor:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return Tensor(name, "F32", a.shape, a.reshape(-1).view(np.uint8))


def permute_rows(t: Tensor, n_heads: int, name: str) -> Tensor:
    """HF rotate-half q/k rows -> llama.cpp's interleaved-pair order (its LlamaModel.permute), bytes only."""
    n = t.shape[0]
    order = np.arange(n).reshape(n_heads, 2, n // n_heads // 2).swapaxes(1, 2).reshape(-1)
    return Tensor(name, t.qtype, t.shape, np.ascontiguousarray(t.rows()[order]).reshape(-1))


def read_hf_folder(source) -> ModelFile:
    """A Hugging Face model folder (config.json + safetensors), or its already opened safetensors ModelFile, as
    a GGUF-named ModelFile."""
    from minirs.formats.safetensors import read_safetensors
    if isinstance(source, ModelFile):
        st, folder = source, source.path if source.path.is_dir() else source.path.parent
    else:
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder}: no config.json (a Hugging Face model folder needs one)")
        st = read_safetensors(folder)
    if "hf.config" not in st.metadata:
        raise ModelError(f"{folder}: no config.json beside the safetensors")
    cfg, hf_tensors = _text_part(st.metadata["hf.config"], st.tensors)
    md, extra = hf_metadata(cfg, folder)
    for extra_file in ("generation_config.json",):
        if (folder / extra_file).is_file():
            md["hf." + extra_file[:-5]] = json.loads((folder / extra_file).read_text(encoding="utf-8"))
    model_type, arch = cfg["model_type"], md["general.architecture"]
    table = NAME_TABLES[model_type]
    n_heads, n_kv = md[f"{arch}.attention.head_count"], md[f"{arch}.attention.head_count_kv"]

    tensors: dict[str, Tensor] = {}
    experts: dict[str, dict[int, Tensor]] = {}
    for hf_name, t in hf_tensors.items():
        if IGNORED.search(hf_name):
            continue
        template, nums = _template(hf_name)
        if template not in table:
            raise ModelError(f"{folder}: tensor {hf_name!r} has no entry in the {model_type} name table")
        name = table[template].replace("{i}", str(nums[0]) if nums else "")
        if "{e}" in template:
            experts.setdefault(name, {})[nums[1]] = t
            continue
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            t = permute_rows(t, n_heads if "attn_q" in name else n_kv, name)
        elif arch.startswith("gemma") and name.endswith("norm.weight"):
            t = _f32(name, dequantize(t) + 1.0)
        tensors[name] = replace(t, name=name)
    for name, parts in experts.items():
        if sorted(parts) != list(range(md[f"{arch}.expert_count"])):
            raise ModelError(f"{folder}: {name} has experts {sorted(parts)}, expected "
                             f"0..{md[f'{arch}.expert_count'] - 1}")
        first = parts[0]
        data = np.concatenate([parts[e].data for e in sorted(parts)])
        tensors[name] = Tensor(name, first.qtype, (len(parts), *first.shape), data)
    for name, a in extra.items():
        tensors[name] = _f32(name, a)
    if cfg.get("tie_word_embeddings") and "output.weight" in tensors:
        del tensors["output.weight"]  # tied: the file may still carry a copy; GGUF leaves it out
    return ModelFile(path=folder, format="hf", version=1, metadata=md, tensors=tensors)


# --- in-situ quantization --------------------------------------------------------------------------------------
# tensors llama.cpp never quantizes (all but the router are vectors anyway)
KEEP_F32 = ("norm.weight", "ffn_gate_inp.weight", "rope_freqs.weight", "rope_factors_long.weight",
            "rope_factors_short.weight")


def quantize_model_file(mf: ModelFile, qtype: str) -> ModelFile:
    """Quantize every weight matrix of a ModelFile to qtype in memory (norms, biases and the router stay)."""
    block = QTYPES[qtype].block_size
    out = {}
    for name, t in mf.tensors.items():
        if len(t.shape) < 2 or name.endswith(KEEP_F32) or t.shape[-1] % block \
                or t.qtype not in ("F32", "F16", "BF16"):
            out[name] = t
            continue
        raw = quantize(dequantize(t).reshape(-1, t.shape[-1]), qtype)
        out[name] = Tensor(name, qtype, t.shape, np.ascontiguousarray(raw).reshape(-1))
    return replace(mf, tensors=out)
