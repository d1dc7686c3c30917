"""Mistral's own model folders as GGUF: params.json -> GGUF metadata, Mistral tensor names -> GGUF names.

A folder as mistral-inference reads it (`Transformer.from_folder`):

    params.json                                   dim, n_layers, head_dim, hidden_dim, n_heads, n_kv_heads,
                                                  norm_eps, vocab_size, rope_theta, sliding_window, moe, lora
    consolidated.safetensors                      or shards consolidated-0000X-of-0000Y.safetensors
    tokenizer.model.v1/v2/v3/v7 or tekken.json    read by minirs.tokenizer.mistral

`read_mistral_folder(path)` returns the ModelFile llama.cpp's converter would have made from the same weights
(architecture "llama", like every Mistral / Mixtral GGUF), so the model code has one loader and
models/convert.py writes a GGUF from it. Differences from an HF folder (models/hf.py):

  * no q/k permutation: Mistral's checkpoints rotate interleaved pairs (2i, 2i + 1), as mistral-inference's
    complex-number RoPE does, which is already GGUF's "normal" layout. transformers' convert_mistral_weights_to_hf
    permutes q/k to HF's rotate-half order, and llama.cpp's converter permutes them back; we do neither;
  * MoE experts `layers.{i}.feed_forward.experts.{e}.w1/w2/w3` are stacked into ffn_*_exps (E, out, in) and the
    router `feed_forward.gate` becomes ffn_gate_inp;
  * a `lora` section (mistral-inference's LoRALinear) stores each projection as `X.linear.weight` plus
    `X.lora_A.weight` (rank, in) and `X.lora_B.weight` (out, rank); we merge them once at load time,
    W = linear + scaling * B @ A (F32), as mistral-inference's load_lora merges an adapter;
  * a missing rope_theta means 1e6, as mistral-inference's default.
Everything is checked against params.json: a missing or inconsistent field, a missing tensor or one of the wrong
shape is a FormatError naming the file and the field or tensor.
"""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from minirs.errors import FormatError, quote
from minirs.formats import ModelFile, Tensor, dequantize
from minirs.formats.safetensors import read_safetensors_file
from minirs.models.hf import _f32, _template

PARAMS = "params.json"
SINGLE = "consolidated.safetensors"
SHARD = re.compile(r"consolidated-(\d{5})-of-(\d{5})\.safetensors")
DEFAULT_ROPE_THETA = 1e6  # mistral-inference: `theta = self.args.rope_theta or 1000000.0`
DEFAULT_CONTEXT = 32768  # transformers' converter uses this when params.json has no max_seq_len

# --- the name table: Mistral tensor name -> GGUF tensor name; {i} is the layer, {e} the expert ---------------
MISTRAL = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    # sparse MoE (Mixtral): the router and each expert's w1/w3/w2, stacked by expert
    "layers.{i}.feed_forward.gate.weight": "blk.{i}.ffn_gate_inp.weight",
    "layers.{i}.feed_forward.experts.{e}.w1.weight": "blk.{i}.ffn_gate_exps.weight",
    "layers.{i}.feed_forward.experts.{e}.w3.weight": "blk.{i}.ffn_up_exps.weight",
    "layers.{i}.feed_forward.experts.{e}.w2.weight": "blk.{i}.ffn_down_exps.weight",
}
LORA_PARTS = ("linear", "lora_A", "lora_B")  # X.weight is stored as X.linear.weight + X.lora_A/B.weight
REQUIRED = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "vocab_size")
# params.json sections minirs cannot run: refused by name rather than silently ignored
REFUSED = {"vision_encoder": "a vision encoder (multimodal models such as Pixtral)",
           "yarn": "YaRN RoPE scaling", "quantization": "pre-quantized weights"}


def is_mistral_folder(path) -> bool:
    """A folder in Mistral's layout: params.json, beside consolidated* weights or without an HF config.json."""
    p = Path(path)
    if not (p.is_dir() and (p / PARAMS).is_file()):
        return False
    return not (p / "config.json").is_file() or any(f.name.startswith("consolidated") for f in p.iterdir())


# --- params.json -> GGUF metadata ------------------------------------------------------------------------------
def _number(params: dict, key: str, where: Path, kind=int, minimum=1, section: str = ""):
    v = params.get(key)
    name = f"{section}.{key}" if section else key
    if isinstance(v, bool) or not isinstance(v, int if kind is int else (int, float)):
        expected = "an integer" if kind is int else "a number"
        raise FormatError(f"{where}: field {name!r} is {quote(v)}, expected {expected}")
    if v < minimum or (kind is float and not np.isfinite(v)):
        raise FormatError(f"{where}: field {name!r} is {quote(v)}, expected a finite value >= {minimum}")
    return kind(v)


def read_params(folder: Path) -> dict:
    """params.json, checked: every required field present, of the right type and consistent with the others."""
    where = folder / PARAMS
    try:
        params = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise FormatError(f"{where}: cannot read it as JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(params, dict):
        raise FormatError(f"{where}: is a JSON {type(params).__name__}, not an object")
    if params.get("model_type", "transformer") != "transformer":
        raise FormatError(f"{where}: model_type {quote(params['model_type'])} is not supported (only 'transformer')")
    for key, what in REFUSED.items():
        if params.get(key):
            raise FormatError(f"{where}: field {key!r}: {what} is not supported by minirs")
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise FormatError(f"{where}: missing field {missing[0]!r} (needs {', '.join(REQUIRED)})")
    out = {k: _number(params, k, where) for k in REQUIRED if k != "norm_eps"}
    out["norm_eps"] = _number(params, "norm_eps", where, float, minimum=0)
    if out["n_heads"] % out["n_kv_heads"]:
        raise FormatError(f"{where}: field 'n_kv_heads' is {out['n_kv_heads']}, which does not divide "
                          f"n_heads = {out['n_heads']}")
    out["rope_theta"] = _number(params, "rope_theta", where, float) if params.get("rope_theta") is not None \
        else DEFAULT_ROPE_THETA
    out["max_seq_len"] = _number(params, "max_seq_len", where) if params.get("max_seq_len") is not None \
        else DEFAULT_CONTEXT
    window = params.get("sliding_window")
    if isinstance(window, str) and window.isdigit():  # some params.json give it as a string
        window = int(window)
    if isinstance(window, list):  # Ministral's per-layer windows ("ragged attention")
        raise FormatError(f"{where}: field 'sliding_window' is a per-layer list {quote(window)}, which minirs does "
                          "not support (one window for every layer only)")
    out["sliding_window"] = _number({"sliding_window": window}, "sliding_window", where) if window else 0
    out["tied_embeddings"] = bool(params.get("tied_embeddings", False))
    moe = params.get("moe")
    if moe is not None:
        if not isinstance(moe, dict):
            raise FormatError(f"{where}: field 'moe' is {quote(moe)}, expected an object")
        out["n_experts"] = _number(moe, "num_experts", where, section="moe")
        out["n_experts_used"] = _number(moe, "num_experts_per_tok", where, section="moe")
        if out["n_experts_used"] > out["n_experts"]:
            raise FormatError(f"{where}: field 'moe.num_experts_per_tok' is {out['n_experts_used']}, more than "
                              f"moe.num_experts = {out['n_experts']}")
    lora = params.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            raise FormatError(f"{where}: field 'lora' is {quote(lora)}, expected an object")
        out["lora_rank"] = _number(lora, "rank", where, section="lora")
        out["lora_scaling"] = _number(lora, "scaling", where, float, minimum=0, section="lora")
    return out


def mistral_metadata(p: dict, name: str) -> dict:
    """GGUF metadata (architecture "llama", as llama.cpp names Mistral and Mixtral) for checked params."""
    a = "llama."
    md = {
        "general.architecture": "llama", "general.name": name,
        a + "embedding_length": p["dim"], a + "block_count": p["n_layers"],
        a + "feed_forward_length": p["hidden_dim"],
        a + "attention.head_count": p["n_heads"], a + "attention.head_count_kv": p["n_kv_heads"],
        a + "attention.key_length": p["head_dim"], a + "attention.value_length": p["head_dim"],
        a + "attention.layer_norm_rms_epsilon": p["norm_eps"],
        a + "context_length": p["max_seq_len"], a + "vocab_size": p["vocab_size"],
        a + "rope.freq_base": p["rope_theta"], a + "rope.dimension_count": p["head_dim"],
    }
    if p["sliding_window"]:
        md[a + "attention.sliding_window"] = p["sliding_window"]
    if "n_experts" in p:
        md[a + "expert_count"] = p["n_experts"]
        md[a + "expert_used_count"] = p["n_experts_used"]
    return md


def expected_shapes(p: dict) -> dict[str, tuple[int, ...]]:
    """Each Mistral tensor template's shape (NumPy order: out, in) for the checked params."""
    d, h, q, kv = p["dim"], p["hidden_dim"], p["n_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"]
    ffn = {"w1": (h, d), "w3": (h, d), "w2": (d, h)}
    shapes = {
        "tok_embeddings.weight": (p["vocab_size"], d), "norm.weight": (d,), "output.weight": (p["vocab_size"], d),
        "layers.{i}.attention_norm.weight": (d,), "layers.{i}.ffn_norm.weight": (d,),
        "layers.{i}.attention.wq.weight": (q, d), "layers.{i}.attention.wk.weight": (kv, d),
        "layers.{i}.attention.wv.weight": (kv, d), "layers.{i}.attention.wo.weight": (d, q),
    }
    if "n_experts" in p:
        shapes["layers.{i}.feed_forward.gate.weight"] = (p["n_experts"], d)
        shapes |= {f"layers.{{i}}.feed_forward.experts.{{e}}.{w}.weight": s for w, s in ffn.items()}
    else:
        shapes |= {f"layers.{{i}}.feed_forward.{w}.weight": s for w, s in ffn.items()}
    return shapes


# --- tensors ---------------------------------------------------------------------------------------------------
def weight_files(folder: Path) -> list[Path]:
    """consolidated.safetensors, or every shard consolidated-0000X-of-0000Y.safetensors (all Y of them)."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    shards = sorted(f for f in folder.iterdir() if SHARD.fullmatch(f.name))
    if not shards:
        torch_files = sorted(f.name for f in folder.iterdir() if f.name.startswith("consolidated."))
        extra = f" ({torch_files[0]} is a PyTorch pickle, which minirs does not read)" if torch_files else ""
        raise FormatError(f"{folder}: no {SINGLE} nor consolidated-0000X-of-0000Y.safetensors shards{extra}")
    total = {int(SHARD.fullmatch(f.name).group(2)) for f in shards}
    numbers = [int(SHARD.fullmatch(f.name).group(1)) for f in shards]
    if len(total) != 1 or numbers != list(range(1, total.pop() + 1)):
        raise FormatError(f"{folder}: incomplete or inconsistent shards {[f.name for f in shards]}")
    return shards


def _merge_lora(parts: dict[str, Tensor], name: str, where: Path, p: dict) -> Tensor:
    """W = linear + scaling * B @ A for one LoRALinear (rank checked against params.json)."""
    for part in LORA_PARTS:
        if part not in parts:
            raise FormatError(f"{where}: tensor {name}.{part}.weight is missing (params.json has a lora section)")
    w, a, b = (dequantize(parts[k]).reshape(parts[k].shape).astype(np.float32) for k in LORA_PARTS)
    r = p["lora_rank"]
    if a.shape != (r, w.shape[1]) or b.shape != (w.shape[0], r):
        raise FormatError(f"{where}: LoRA tensors of {name} have shapes A {a.shape}, B {b.shape} for a weight "
                          f"{w.shape} and lora.rank {r}")
    return _f32(name + ".weight", w + np.float32(p["lora_scaling"]) * (b @ a))


def read_mistral_folder(source) -> ModelFile:
    """A folder in Mistral's layout (params.json + consolidated safetensors) as a GGUF-named ModelFile."""
    folder = Path(source)
    p = read_params(folder)
    files = weight_files(folder)
    raw: dict[str, tuple[Tensor, Path]] = {}
    for f in files:
        part, _ = read_safetensors_file(f)
        for n, t in part.items():
            if n in raw:
                raise FormatError(f"{f}: tensor {quote(n)} is also in {raw[n][1].name}")
            raw[n] = (t, f)
    if "lora_rank" in p:  # group X.linear/lora_A/lora_B.weight into one merged X.weight
        groups: dict[str, dict[str, Tensor]] = {}
        files_of: dict[str, Path] = {}
        for n in list(raw):
            m = re.fullmatch(r"(.+)\.(linear|lora_A|lora_B)\.weight", n)
            if m:
                t, files_of[m.group(1)] = raw.pop(n)
                groups.setdefault(m.group(1), {})[m.group(2)] = t
        for base, parts in groups.items():
            raw[base + ".weight"] = (_merge_lora(parts, base, folder, p), files_of[base])

    shapes = expected_shapes(p)
    tensors: dict[str, Tensor] = {}
    experts: dict[str, dict[int, Tensor]] = {}
    seen: set[str] = set()
    for mname, (t, f) in raw.items():
        template, nums = _template(mname)
        if template not in MISTRAL or template not in shapes:
            raise FormatError(f"{f}: tensor {quote(mname)} is not a tensor of this model (params.json: "
                              f"{'MoE' if 'n_experts' in p else 'dense'}; see the Mistral name table)")
        if nums and not nums[0] < p["n_layers"] or len(nums) > 1 and not nums[1] < p["n_experts"]:
            raise FormatError(f"{f}: tensor {quote(mname)} is past n_layers = {p['n_layers']} "
                              f"or moe.num_experts in params.json")
        if t.qtype not in ("F32", "F16", "BF16"):
            raise FormatError(f"{f}: tensor {quote(mname)} has dtype {t.qtype}; Mistral weights are F32, F16 or BF16")
        if tuple(t.shape) != shapes[template]:
            raise FormatError(f"{f}: tensor {quote(mname)} has shape {tuple(t.shape)}, expected "
                              f"{shapes[template]} from params.json")
        seen.add(mname)
        name = MISTRAL[template].replace("{i}", str(nums[0]) if nums else "")
        if "{e}" in template:
            experts.setdefault(name, {})[nums[1]] = t
        else:
            tensors[name] = replace(t, name=name)
    for template in shapes:  # every expected tensor is there
        if template == "output.weight" and p["tied_embeddings"]:
            continue
        for i in range(p["n_layers"] if "{i}" in template else 1):
            for e in range(p.get("n_experts", 1) if "{e}" in template else 1):
                mname = template.replace("{i}", str(i)).replace("{e}", str(e))
                if mname not in seen:
                    raise FormatError(f"{folder}: tensor {mname!r} is missing from "
                                      f"{', '.join(f.name for f in files)}")
    for name, parts in experts.items():
        first = parts[0]
        if any(parts[e].qtype != first.qtype for e in parts):
            raise FormatError(f"{folder}: the experts of {name} have different dtypes")
        data = np.concatenate([parts[e].data for e in sorted(parts)])
        tensors[name] = Tensor(name, first.qtype, (len(parts), *first.shape), data)
    return ModelFile(path=folder, format="mistral", version=1, metadata=mistral_metadata(p, folder.name),
                     tensors=tensors)
