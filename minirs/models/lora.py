"""LoRA adapters: PEFT adapter folders read, mapped to our GGUF-named projections and attached to a model.

    adapters = [read_adapter("path/to/adapter_a"), read_adapter("path/to/adapter_b")]
    attach(model, adapters)               # model.lora: the LoraSet; each block gets its stacked LoraStacks
    coef = model.lora.coefs(["a"], n)     # (n, K) coefficients: the rows' active adapters, for model.forward

The math is PEFT's: a target projection computes y = W x + sum_a c_a * s_a * B_a (A_a x), with s_a = alpha / r
(alpha / sqrt(r) with use_rslora; rank_pattern / alpha_pattern per module) and c_a the row's coefficient of
adapter a (1 for an active adapter, 0 else; X-LoRA's scalings, models/xlora.py). The base weights stay quantized
and unmerged, so one base serves every adapter and a batch may mix them.

An adapter folder holds adapter_config.json and adapter_model.safetensors, whose tensors are named
`base_model.model.<HF module>.lora_A.weight` (r, n_in) and `...lora_B.weight` (n_out, r). HF module names map to
our GGUF names through models/hf.py's per-family tables, so an adapter applies to a GGUF, GGML or safetensors
base alike. llama-family GGUFs store q/k rows permuted for interleaved RoPE (hf.permute_rows): B's q/k rows are
permuted the same way. q/k/v (and gate/up) are stacked: each LoraStack holds the rank columns of every adapter and
part of one stacked projection, with the output rows each column writes, so the kernels run once per projection.

A module's coefficient key is module * n_adapters + adapter, where module is the projection's index in PEFT's
module order (per block: q, k, v (or fused qkv), o, gate, up (or fused gate_up), down); X-LoRA's per-layer
scalings use it, and plain LoRA sets the same value for every module.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirs.errors import ModelError
from minirs.formats import dequantize
from minirs.formats.safetensors import read_safetensors_file
from minirs.models.hf import GEMMA2, GEMMA3, LLAMA, PHI2, PHI3, QWEN2, _template

# GGUF architecture -> the HF name table its adapters' module names go through
ARCH_TABLES = {"llama": LLAMA, "qwen2": QWEN2, "gemma": LLAMA, "gemma2": GEMMA2, "gemma3": GEMMA3, "phi2": PHI2,
               "phi3": PHI3}
# the projections a LoRA may target, in PEFT's module order within a block (HF modules are declared so)
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
RANK = {p: i for i, p in enumerate(PROJECTIONS)} | {"ffn_gate_up_fused": PROJECTIONS.index("ffn_gate")}
_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass
class Module:
    """One targeted HF module of an adapter: A (r, n_in), B (n_out, r) as float32, and its scale s."""
    a: np.ndarray
    b: np.ndarray
    scale: float


@dataclass
class Adapter:
    name: str
    path: Path
    modules: dict[str, Module]  # HF module name ("model.layers.0.self_attn.q_proj") -> its A, B, scale
    config: dict = field(default_factory=dict)


def _pattern(patterns: dict, module: str, default):
    """PEFT's get_pattern_key: the first pattern key matching the module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object (adapter, X-LoRA and ordering configs); ModelError naming the file otherwise."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_adapter(folder, name: str | None = None) -> Adapter:
    """A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors); DoRA, modules_to_save, LoRA
    biases, embedding LoRAs and non-finite weights are refused with a ModelError naming the file and tensor."""
    folder = Path(folder)
    cfg_path, st_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise ModelError(f"{folder}: not a LoRA adapter folder (no adapter_config.json)")
    if not st_path.is_file():
        raise ModelError(f"{folder}: no adapter_model.safetensors (minirs reads adapters in safetensors only)")
    cfg = read_json_object(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not a LoRA adapter")
    if cfg.get("use_dora"):
        raise ModelError(f"{cfg_path}: use_dora is true: DoRA adapters are not supported")
    if cfg.get("modules_to_save"):
        raise ModelError(f"{cfg_path}: modules_to_save {cfg['modules_to_save']!r} is not supported (fully trained "
                         "modules would replace base weights)")
    if cfg.get("bias", "none") != "none":
        raise ModelError(f"{cfg_path}: bias {cfg['bias']!r} is not supported (only 'none')")
    try:
        r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", 8))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{cfg_path}: r must be an integer and lora_alpha a number ({e})") from e
    rslora = bool(cfg.get("use_rslora", False))
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    tensors, _ = read_safetensors_file(st_path)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for tname, t in tensors.items():
        m = _KEY.match(tname)
        if m is None:
            what = "DoRA magnitude" if "magnitude" in tname else "embedding LoRA" if "embedding" in tname else "tensor"
            raise ModelError(f"{st_path}: {what} {tname!r} is not supported (expected <module>.lora_A/B.weight)")
        a = np.asarray(dequantize(t), np.float32)
        if a.ndim != 2:
            raise ModelError(f"{st_path}: tensor {tname!r} has shape {a.shape}, expected a matrix")
        if not np.isfinite(a).all():
            raise ModelError(f"{st_path}: tensor {tname!r} holds NaN or infinite values")
        parts.setdefault(m.group(1), {})[m.group(2)] = a
    modules = {}
    for mod, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ModelError(f"{st_path}: module {mod!r} has lora_{next(iter(ab))} but not the other")
        a, b = ab["A"], ab["B"]
        mr, ma = int(_pattern(ranks, mod, r)), float(_pattern(alphas, mod, alpha))
        if a.shape[0] != mr or b.shape[1] != mr:
            raise ModelError(f"{st_path}: {mod}.lora_A {a.shape} / lora_B {b.shape} do not have rank {mr} "
                             "(adapter_config.json r / rank_pattern)")
        modules[mod] = Module(a, b, ma / math.sqrt(mr) if rslora else ma / mr)
    if not modules:
        raise ModelError(f"{st_path}: no LoRA tensors")
    return Adapter(name or folder.name, folder, modules, cfg)


def read_ordering(path) -> dict:
    """mistral.rs's ordering file: {"order": [adapter names], "layers": {HF module: index}, "base_model_id": ...,
    "preload_adapters": [{"name", "adapter_model_id"}]} (layers and preload_adapters optional)."""
    path = Path(path)
    order = read_json_object(path)
    if not isinstance(order.get("order", []), list) \
            or not all(isinstance(n, str) for n in order.get("order", [])):
        raise ModelError(f"{path}: an ordering file is a JSON object whose 'order' is a list of adapter names")
    layers = order.get("layers")
    if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, int) for v in layers.values())):
        raise ModelError(f"{path}: 'layers' must map module names to integer indices")
    for p in order.get("preload_adapters") or []:
        if not (isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("adapter_model_id"), str)):
            raise ModelError(f"{path}: each preload_adapters entry needs 'name' and 'adapter_model_id' (got {p!r})")
    return order


def adapters_from(folder, order: dict | None, order_path=None) -> list[Adapter]:
    """The adapters an adapters folder holds: the subfolders named by the ordering's `order` (and its
    preload_adapters), else the folder itself when it is one adapter, else every adapter subfolder (sorted)."""
    folder = Path(folder)
    if order is not None:
        out = []
        for name in order.get("order", []):
            sub = folder / name
            if not (sub / "adapter_config.json").is_file():
                raise ModelError(f"{order_path}: the ordering names adapter {name!r}, but {sub} holds no adapter")
            out.append(read_adapter(sub, name))
        for p in order.get("preload_adapters") or []:
            sub = Path(p["adapter_model_id"])
            out.append(read_adapter(sub if sub.is_absolute() or sub.exists() else folder / sub, p["name"]))
        if not out:
            raise ModelError(f"{order_path}: the ordering names no adapters")
        return out
    if (folder / "adapter_config.json").is_file():
        return [read_adapter(folder)]
    subs = sorted(p for p in folder.iterdir() if (p / "adapter_config.json").is_file()) if folder.is_dir() else []
    if not subs:
        raise ModelError(f"{folder}: no LoRA adapter (adapter_config.json) here or in its subfolders")
    return [read_adapter(s) for s in subs]


@dataclass
class LoraSet:
    """The adapters attached to a model: their names, the coefficient layout, and the defaults."""
    names: list[str]
    modules: list[tuple[int, str]]  # (block, projection) in PEFT's module order: the X-LoRA layer numbers
    active: list[str]  # the adapters a request without its own list uses

    @property
    def width(self) -> int:
        """K: the length of a row of coefficients."""
        return len(self.modules) * len(self.names)

    def row(self, names) -> np.ndarray:
        """The coefficient row (K,) of a request whose active adapters are `names` (each 1, the others 0)."""
        c = np.zeros((len(self.modules), len(self.names)), np.float32)
        for n in names:
            c[:, self.names.index(n)] = 1.0
        return c.reshape(-1)


def _field(arch: str, module: str, path: Path) -> tuple[int, str]:
    """HF module name -> (block, GGUF projection field), through the family's name table."""
    template, nums = _template(module + ".weight")
    gguf = ARCH_TABLES.get(arch, {}).get(template)
    proj = gguf.split(".")[2] if gguf and gguf.startswith("blk.") else None
    if proj not in PROJECTIONS:
        raise ModelError(f"{path}: target module {module!r} is not a projection this {arch} model has "
                         f"(LoRA applies to {', '.join(PROJECTIONS)})")
    return nums[0], proj


def _stacks(cfg) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Stacked weight field -> projection -> (first output row inside it, n_out, n_in). phi3's fused qkv_proj and
    gate_up_proj cover their whole stacks (attn_qkv, ffn_gate_up_fused)."""
    q, kv, f, d = cfg.q_dim, cfg.kv_dim, cfg.ffn_dim, cfg.dim
    ffn = {"ffn_gate_up": {"ffn_gate": (0, f, d), "ffn_up": (f, f, d), "ffn_gate_up_fused": (0, 2 * f, d)}} \
        if cfg.gated_ffn else {"ffn_up": {"ffn_up": (0, f, d)}}
    return {"attn_qkv": {"attn_q": (0, q, d), "attn_k": (q, kv, d), "attn_v": (q + kv, kv, d),
                         "attn_qkv": (0, q + 2 * kv, d)},
            "attn_output": {"attn_output": (0, d, q)}, **ffn, "ffn_down": {"ffn_down": (0, d, f)}}


def attach(model, adapters: list[Adapter], active: list[str] | None = None,
           layers: dict[str, int] | None = None) -> LoraSet:
    """Put the adapters on the model's blocks (each block's `lora`: stacked weight field -> LoraStack) and set
    model.lora. `layers` (an ordering file's) overrides the module numbering; `active` the default adapters."""
    cfg, be = model.config, model.backend
    if cfg.n_experts:
        raise ModelError("LoRA adapters on mixture-of-experts models are not supported")
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ModelError(f"adapter names must be unique (got {names})")
    stacks = _stacks(cfg)
    owner = {p: s for s, parts in stacks.items() for p in parts}
    placed: dict[tuple[int, str], list] = {}  # (block, projection) -> [(adapter index, module name, Module)]
    for ai, ad in enumerate(adapters):
        for mod, m in ad.modules.items():
            i, proj = _field(cfg.arch, mod, ad.path)
            if proj == "ffn_up" and cfg.gated_ffn and m.b.shape[0] == 2 * cfg.ffn_dim:
                proj = "ffn_gate_up_fused"  # phi3's gate_up_proj: GGUF's ffn_up of 2 * ffn_dim rows
            if i >= cfg.n_layers or proj not in owner:
                raise ModelError(f"{ad.path}: target module {mod!r} is not in this model ({cfg.n_layers} blocks, "
                                 f"{cfg.arch})")
            _, n_out, n_in = stacks[owner[proj]][proj]
            if m.a.shape[1] != n_in or m.b.shape[0] != n_out:
                raise ModelError(f"{ad.path}: {mod}.lora_A {m.a.shape} / lora_B {m.b.shape} do not fit the base's "
                                 f"{proj} ({n_out} x {n_in}): the adapter belongs to another base model")
            placed.setdefault((i, proj), []).append((ai, mod, m))
    order = sorted(placed, key=lambda k: (k[0], RANK[k[1]]))
    if layers is not None:
        index = {}
        for i, proj in order:
            mod = placed[(i, proj)][0][1]
            if mod not in layers:
                raise ModelError(f"the ordering file's layers lack module {mod!r}")
            index[(i, proj)] = layers[mod]
        if sorted(index.values()) != list(range(len(order))):
            raise ModelError(f"the ordering file's layers number {len(layers)} modules, the adapters target "
                             f"{len(order)}: they do not belong together")
        order = sorted(order, key=index.get)
    module_of = {k: j for j, k in enumerate(order)}
    n_ad = len(adapters)
    for i, lw in enumerate(model.layers):
        lw.lora = {}
        for stack, parts in stacks.items():
            cols = [(module_of[(i, p)] * n_ad + ai, p, mod, m) for p in parts for ai, mod, m in placed.get((i, p), [])]
            if not cols:
                continue
            n_out = max(lo + n for lo, n, _ in parts.values())
            a, bt, key, scale, lo, hi = [], [], [], [], [], []
            for k, p, mod, m in cols:
                start, n, _ = parts[p]
                b = m.b
                if not cfg.rope_neox and p in ("attn_q", "attn_k"):  # the GGUF's interleaved q/k row order
                    heads = cfg.n_heads if p == "attn_q" else cfg.n_kv_heads
                    b = b[np.arange(n).reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(-1)]
                full = np.zeros((m.a.shape[0], n_out), np.float32)
                full[:, start:start + n] = b.T
                a.append(m.a)
                bt.append(full)
                key += [k] * m.a.shape[0]
                scale += [m.scale] * m.a.shape[0]
                lo += [start] * m.a.shape[0]
                hi += [start + n] * m.a.shape[0]
            lw.lora[stack] = be.lora_stack(np.concatenate(a), np.concatenate(bt), np.array(key), np.array(scale),
                                           np.array(lo), np.array(hi), getattr(lw, stack))
    lset = LoraSet(names, order, list(active if active is not None else names))
    for n in lset.active:
        if n not in names:
            raise ModelError(f"active adapter {n!r} is not loaded (loaded: {names})")
    model.lora = lset
    return lset


def load_adapters(model, sources: list, order_file=None, active: list[str] | None = None) -> LoraSet:
    """Read and attach adapters: each source a local folder (one adapter, or a folder of adapter subfolders; with
    an ordering file, the subfolders it names, in its order). The ordering's `layers` numbering matters to X-LoRA
    only (models/xlora.py), so plain LoRA does not read it."""
    order = read_ordering(order_file) if order_file else None
    adapters = [a for src in sources for a in adapters_from(src, order, order_file)]
    return attach(model, adapters, active)
