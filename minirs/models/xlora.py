"""X-LoRA: a mixture of LoRA experts whose per-token weights (scalings) a small classifier predicts.

    xl = load_xlora(model, "path/to/xlora")     # xlora_config.json, xlora_classifier.safetensors, adapter folders
    coef = xl.coefs(hidden)                     # (n, K) LoRA coefficients of the real pass, on the host

For each token, as PEFT's XLoraModel (tuners/xlora/model.py) computes it:
  1. the scaling pass: the model with every adapter at the dummy scaling `scaling_pass_value` (times
     `global_scaling_weight`) gives the last hidden states (after the final norm, as transformers'
     hidden_states[-1]);
  2. the classifier (xlora_depth linear layers, ReLU between them, PEFT's Sequential) maps each hidden state to
     one logit per adapter (or per adapter and LoRA layer with layerwise_scalings; else broadcast to every
     layer), softmax over the adapters at softmax_temperature (enable_softmax), then per layer the top_k_lora
     largest kept (the others 0) and, with enable_softmax_topk, a softmax over the kept ones;
  3. the real pass: each LoRA layer m adds  sum_a scalings[m, a] * global_scaling_weight * s_a * B_a (A_a x).
The scaling pass is causal like the model, so it keeps its own KV cache (the engine gives each sequence a second
slot). With `tgt_non_granular_index`, a sequence keeps the scalings of its last scaling pass once that many tokens
are generated, and its scaling pass stops (mistral.rs's option; PEFT has none).

Where mistral.rs and PEFT differ we follow PEFT: ReLU between the classifier's layers always (mistral.rs only with
`enable_relu_and_dropout`), and the dummy scalings of the scaling pass go through the same top-k as real ones.
The classifier's tensors are read under mistral.rs's names (inner.{i}, last) or PEFT's
(internal_xlora_classifier.layers.{k}). Its linear layers run on the backend; the softmax and top-k of the small
(n, layers x adapters) logits run on the host, where the engine keeps each sequence's scalings.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minirs.errors import ModelError
from minirs.formats import Tensor
from minirs.models.lora import adapters_from, attach, read_json_object, read_ordering

DEFAULTS = {"layerwise_scalings": False, "xlora_depth": 1, "xlora_size": 2048, "enable_softmax": True,
            "enable_softmax_topk": False, "softmax_temperature": 1.0, "scaling_pass_value": 0.0, "use_bias": True,
            "global_scaling_weight": 1.0, "top_k_lora": None}


@dataclass
class XLora:
    config: dict  # xlora_config.json with DEFAULTS filled in
    linears: list  # [(backend matrix (out, in), backend bias (out,) or None)], ReLU between them
    n_modules: int  # LoRA layers (modules) of the model
    n_adapters: int
    tgt_non_granular_index: int | None = None

    def dummy(self, n: int) -> np.ndarray:
        """The scaling pass's coefficients (n, K): every scaling scaling_pass_value."""
        return self.mix(np.full((n, self.n_modules, self.n_adapters), self.config["scaling_pass_value"], np.float32),
                        softmax=False)

    def coefs(self, backend, hidden) -> np.ndarray:
        """The real pass's coefficients (n, K) from the scaling pass's last hidden states (n, dim)."""
        h = hidden
        for j, (w, b) in enumerate(self.linears):
            h = backend.matmul(w, h)
            if b is not None:
                backend.add_bias_(h, b)
            if j < len(self.linears) - 1:
                backend.relu_(h)
        logits = backend.to_numpy(h).astype(np.float32)
        n = logits.shape[0]
        if self.config["layerwise_scalings"]:
            logits = logits.reshape(n, self.n_modules, self.n_adapters)
        else:
            logits = np.broadcast_to(logits[:, None, :], (n, self.n_modules, self.n_adapters))
        return self.mix(logits, softmax=self.config["enable_softmax"])

    def mix(self, s: np.ndarray, softmax: bool) -> np.ndarray:
        """Scalings (n, modules, adapters) -> coefficients (n, K): softmax, top-k, weight (see the docstring)."""
        cfg = self.config
        s = s.astype(np.float64)
        if softmax:
            z = s / cfg["softmax_temperature"]
            z = np.exp(z - z.max(-1, keepdims=True))
            s = z / z.sum(-1, keepdims=True)
        k = cfg["top_k_lora"]
        if k is not None:
            keep = np.zeros(s.shape, bool)  # the k largest per layer (ties: the first ones, a stable sort)
            np.put_along_axis(keep, np.argsort(-s, axis=-1, kind="stable")[..., :k], True, axis=-1)
            s = np.where(keep, s, 0.0)
            if cfg["enable_softmax_topk"]:
                z = np.where(s != 0, s, -np.inf)
                z = np.exp(z - z.max(-1, keepdims=True))
                s = np.where(s != 0, z / z.sum(-1, keepdims=True), 0.0)
        return (s * cfg["global_scaling_weight"]).reshape(s.shape[0], -1).astype(np.float32)


def _classifier(path: Path, cfg: dict, n_out: int, backend) -> list:
    """The classifier's linear layers, in order, from mistral.rs's names (inner.{i}, last) or PEFT's."""
    from minirs.formats import dequantize
    from minirs.formats.safetensors import read_safetensors_file
    tensors, _ = read_safetensors_file(path)
    peft = {int(m.group(1)): m.group(2) for k in tensors
            if (m := re.fullmatch(r"(?:.*\.)?internal_xlora_classifier\.layers\.(\d+)\.(weight|bias)", k))}
    if peft:
        prefix = next(k for k in tensors if "internal_xlora_classifier.layers." in k).split("layers.")[0] + "layers."
        names = [f"{prefix}{i}" for i in sorted(peft)]
    else:
        names = [f"inner.{i}" for i in range(cfg["xlora_depth"] - 1)] + ["last"]
    dims = [cfg["hidden_size"]] + [cfg["xlora_size"]] * (cfg["xlora_depth"] - 1) + [n_out]
    if len(names) != cfg["xlora_depth"]:
        raise ModelError(f"{path}: {len(names)} linear layers, xlora_config.json's xlora_depth is {cfg['xlora_depth']}")
    out = []
    for j, name in enumerate(names):
        w = tensors.get(name + ".weight")
        if w is None:
            raise ModelError(f"{path}: tensor {name + '.weight'!r} is missing")
        if tuple(w.shape) != (dims[j + 1], dims[j]):
            raise ModelError(f"{path}: tensor {name}.weight has shape {tuple(w.shape)}, expected "
                             f"{(dims[j + 1], dims[j])} (hidden_size, xlora_size, adapters and layers)")
        b = tensors.get(name + ".bias") if cfg["use_bias"] else None
        if cfg["use_bias"] and b is None:
            raise ModelError(f"{path}: tensor {name + '.bias'!r} is missing (use_bias is true)")
        arrays = [np.asarray(dequantize(t), np.float32) for t in (w, b) if t is not None]
        for t, a in zip((w, b), arrays):
            if not np.isfinite(a).all():
                raise ModelError(f"{path}: tensor {t.name!r} holds NaN or infinite values")
        wm = backend.matrix(Tensor(name, "F32", tuple(w.shape), np.ascontiguousarray(arrays[0]).view(np.uint8)
                                   .reshape(-1)))
        out.append((wm, backend.array(arrays[1]) if b is not None else None))
    return out


def load_xlora(model, folder, order_file=None, tgt_non_granular_index: int | None = None) -> XLora:
    """An X-LoRA model folder (mistral.rs's layout: xlora_config.json, xlora_classifier.safetensors and the
    adapters as subfolders named by the config's `adapters` or the ordering's `order`) attached to the model."""
    folder = Path(folder)
    cfg_path = folder / "xlora_config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder}: not an X-LoRA folder (no xlora_config.json)")
    cfg = DEFAULTS | read_json_object(cfg_path)  # a JSON array here was a TypeError
    names = cfg.get("adapters")
    names = list(names) if isinstance(names, (list, dict)) else None
    for key, kind in (("hidden_size", int), ("xlora_depth", int), ("xlora_size", int)):
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            raise ModelError(f"{cfg_path}: {key} must be a positive integer (got {cfg.get(key)!r})")
    if not cfg["softmax_temperature"] or cfg["softmax_temperature"] <= 0:
        raise ModelError(f"{cfg_path}: softmax_temperature must be > 0 (got {cfg['softmax_temperature']!r})")
    if cfg["hidden_size"] != model.config.dim:
        raise ModelError(f"{cfg_path}: hidden_size {cfg['hidden_size']} does not match the base model's width "
                         f"{model.config.dim}: the X-LoRA model belongs to another base")
    order = read_ordering(order_file) if order_file else {"order": names} if names else None
    if order_file and names is not None and list(order.get("order", [])) != names:
        raise ModelError(f"{order_file}: its order {order.get('order')} differs from {cfg_path}'s adapters {names}")
    adapters = adapters_from(folder, order, order_file or cfg_path)
    lset = attach(model, adapters, layers=order.get("layers") if order else None)
    k = cfg["top_k_lora"]
    if k is not None and not (isinstance(k, int) and 1 <= k <= len(adapters)):
        raise ModelError(f"{cfg_path}: top_k_lora must be 1..{len(adapters)} (got {k!r})")
    n_out = len(adapters) * (len(lset.modules) if cfg["layerwise_scalings"] else 1)
    xl = XLora(cfg, _classifier(folder / "xlora_classifier.safetensors", cfg, n_out, model.backend),
               len(lset.modules), len(adapters), tgt_non_granular_index)
    model.xlora = xl
    return xl
