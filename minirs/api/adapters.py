"""The adapter side of `Which`: what Which.Lora / LoraGGUF / LoraGGML, Which.XLora / XLoraGGUF / XLoraGGML (and the
`adapters` of Plain / GGUF / GGML) ask the loader for, and the base model they name.

mistral.rs's `order` file names the adapters (subfolders of adapters_model_id / xlora_model_id) and, for X-LoRA,
numbers the LoRA layers; its `base_model_id` (or xlora_config.json's) is the base model when Which.Lora / XLora
give no model_id. Requests choose among the loaded adapters with `adapters=[names]` (default: the Runner's active
ones, all loaded adapters until `Runner.activate_adapters` changes them).
"""

import json
from pathlib import Path

from minirs.api.types import Which
from minirs.errors import RequestError

LORA = (Which.Lora, Which.LoraGGUF, Which.LoraGGML)
XLORA = (Which.XLora, Which.XLoraGGUF, Which.XLoraGGML)
QUANTIZED = (Which.GGUF, Which.GGML, Which.LoraGGUF, Which.LoraGGML, Which.XLoraGGUF, Which.XLoraGGML)
PLAIN = (Which.Plain, Which.Lora, Which.XLora)


def adapter_kwargs(which) -> dict:
    """minirs.load.load's lora / xlora / order / tgt_non_granular_index arguments for a Which."""
    tgt = getattr(which, "tgt_non_granular_index", None)
    if tgt is not None and (isinstance(tgt, bool) or not isinstance(tgt, int) or tgt < 0):
        raise RequestError(f"invalid tgt_non_granular_index: {tgt!r} (an integer >= 0, or None)")
    if isinstance(which, XLORA):
        return {"xlora": which.xlora_model_id, "order": which.order, "tgt_non_granular_index": tgt}
    if isinstance(which, LORA):
        return {"lora": [which.adapters_model_id], "order": which.order}
    extra = getattr(which, "adapters", None)
    if extra is None:
        return {}
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, (list, tuple)) or not all(isinstance(a, str) for a in extra):
        raise RequestError(f"invalid adapters: {extra!r} (a list of LoRA adapter folders)")
    return {"lora": list(extra)}


def base_model_id(which) -> str:
    """A Which.Lora / XLora's base model: model_id, else the ordering file's or xlora_config.json's base_model_id."""
    if which.model_id:
        return which.model_id
    for f in ([which.order] if which.order else []) + \
            ([str(Path(which.xlora_model_id) / "xlora_config.json")] if isinstance(which, Which.XLora) else []):
        try:
            base = json.loads(Path(f).read_text(encoding="utf-8")).get("base_model_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(base, str) and base:
            return base
    raise RequestError(f"{type(which).__qualname__}: model_id is required (no base_model_id in the ordering file)")


def adapter_names(names) -> list[str] | None:
    """A request's `adapters` field: None or a list of adapter names."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise RequestError(f"invalid adapters: {names!r} (a list of adapter names, or None)")
    return list(names)
