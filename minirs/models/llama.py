"""The llama transformer, the reference architecture every other family is stated against.

    x = embed(tokens) * embed_scale                                          # (n, dim)
    for each layer:
        h = norm(x) ; q, k, v = h Wq [+ bq], h Wk [+ bk], h Wv [+ bv] ; [q/k rmsnorm per head] ; rope(q, k)
        o = attention(q, cache(k, v)) Wo ; [post-norm] ; x += o
        h = norm(x) ; f = (act(h Wgate) * h Wup) Wdown ; [post-norm] ; x += f
    logits = norm(x) Wout [+ b] ; [soft-cap]

Differences between families are fields of ModelConfig, not branches on the architecture name: gemma's
GeGLU, q/k norms, post-norms and sliding windows; phi2's LayerNorm, parallel attention + MLP (both read the
same norm(x)) and plain MLP down(act(up h)); mixtral's sparse MoE, where each token's FFN is the softmax-weighted
sum of its top-k experts. Biases (qwen2, phi2) are used wherever the file has them. The batch is a flat list of
n tokens, each with its sequence's cache slot and its position, so one forward serves prefill chunks, decode
steps and mixed batches. Weights are named after their GGUF tensors; the backend (CPU or CUDA) owns memory and
kernels.
"""

from dataclasses import dataclass, fields

import numpy as np

from minirs.errors import ModelError
from minirs.formats import ModelFile, Tensor
from minirs.formats.types import QTYPES
from minirs.models.config import ModelConfig


@dataclass
class LayerWeights:
    """One block's weights; field x is GGUF tensor blk.{i}.x.weight, and x_bias is blk.{i}.x.bias."""
    attn_norm: object = None  # (dim,)
    attn_norm_bias: object = None  # (dim,)  LayerNorm
    attn_q: object = None  # (n_heads * head_dim, dim)
    attn_k: object = None  # (n_kv_heads * head_dim, dim)
    attn_v: object = None  # (n_kv_heads * head_dim, dim)
    attn_q_bias: object = None  # (n_heads * head_dim,)
    attn_k_bias: object = None  # (n_kv_heads * head_dim,)
    attn_v_bias: object = None  # (n_kv_heads * head_dim,)
    attn_q_norm: object = None  # (head_dim,)  qk_norm
    attn_k_norm: object = None  # (head_dim,)  qk_norm
    attn_output: object = None  # (dim, n_heads * head_dim)
    attn_output_bias: object = None  # (dim,)
    post_attention_norm: object = None  # (dim,)  post_norms
    ffn_norm: object = None  # (dim,)  absent with parallel_block
    ffn_norm_bias: object = None  # (dim,)
    ffn_gate: object = None  # (ffn_dim, dim)  gated_ffn
    ffn_up: object = None  # (ffn_dim, dim)
    ffn_up_bias: object = None  # (ffn_dim,)
    ffn_down: object = None  # (dim, ffn_dim)
    ffn_down_bias: object = None  # (dim,)
    post_ffw_norm: object = None  # (dim,)  post_norms
    ffn_gate_inp: object = None  # (n_experts, dim)  MoE router
    ffn_gate_exps: object = None  # (n_experts, ffn_dim, dim)
    ffn_up_exps: object = None  # (n_experts, ffn_dim, dim)
    ffn_down_exps: object = None  # (n_experts, dim, ffn_dim)
    # not file tensors: the backend's stacked weights (stack_matrices) that replace the separate projections
    attn_qkv: object = None  # rows of attn_q, attn_k, attn_v
    ffn_gate_up: object = None  # rows of ffn_gate, ffn_up  (gated_ffn)
    # LoRA adapters (models/lora.py): stacked weight field (attn_qkv, attn_output, ffn_gate_up / ffn_up, ffn_down)
    # -> its backend LoraStack
    lora: dict | None = None


FILE_FIELDS = [f.name for f in fields(LayerWeights) if f.name not in ("attn_qkv", "ffn_gate_up", "lora")]


def required_fields(cfg: ModelConfig) -> list[str]:
    """The LayerWeights every block of this config must have (biases are used when present)."""
    need = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"]
    need += [] if cfg.parallel_block else ["ffn_norm"]
    if cfg.n_experts:
        need += ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
    else:
        need += ["ffn_up", "ffn_down"] + (["ffn_gate"] if cfg.gated_ffn else [])
    need += ["attn_q_norm", "attn_k_norm"] if cfg.qk_norm else []
    need += ["post_attention_norm", "post_ffw_norm"] if cfg.post_norms else []
    need += ["attn_norm_bias"] if cfg.norm == "layer" else []
    return need


def tensor_name(layer: int, field: str) -> str:
    return f"blk.{layer}.{field[:-5]}.bias" if field.endswith("_bias") else f"blk.{layer}.{field}.weight"


def row_slice(t: Tensor, start: int, stop: int, name: str) -> Tensor:
    """Rows start:stop of a matrix (or elements of a vector) as a zero-copy Tensor."""
    if len(t.shape) == 1:
        size = QTYPES[t.qtype].type_size  # vectors are F32/F16/BF16: one element per block
        return Tensor(name, t.qtype, (stop - start,), t.data[start * size:stop * size])
    return Tensor(name, t.qtype, (stop - start, *t.shape[1:]), t.rows()[start:stop].reshape(-1))


def split_fused(tensors: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Split phi3-style fused tensors into the llama ones, without copying: attn_qkv -> attn_q, attn_k, attn_v
    (weight and bias) and a 2*ffn_dim ffn_up -> ffn_gate (first half), ffn_up (second half). Old mixtral GGUFs'
    per-expert blk.{i}.ffn_gate.{e}.weight are stacked (copied) into ffn_gate_exps and friends."""
    out = dict(tensors)
    for i in range(cfg.n_layers):
        for role in ("ffn_gate", "ffn_up", "ffn_down"):
            parts = [out.pop(f"blk.{i}.{role}.{e}.weight", None) for e in range(cfg.n_experts)]
            if cfg.n_experts and all(p is not None for p in parts):
                name = f"blk.{i}.{role}_exps.weight"
                out[name] = Tensor(name, parts[0].qtype, (cfg.n_experts, *parts[0].shape),
                                   np.concatenate([p.data for p in parts]))
        for kind in ("weight", "bias"):
            qkv = out.pop(f"blk.{i}.attn_qkv.{kind}", None)
            if qkv is not None:
                bounds = np.cumsum([0, cfg.q_dim, cfg.kv_dim, cfg.kv_dim])
                if qkv.shape[0] != bounds[-1]:
                    raise ModelError(f"{qkv.name}: {qkv.shape[0]} rows, expected q + k + v = {bounds[-1]}")
                for part, a, b in zip("qkv", bounds[:-1], bounds[1:]):
                    out[f"blk.{i}.attn_{part}.{kind}"] = row_slice(qkv, int(a), int(b), f"blk.{i}.attn_{part}.{kind}")
        up = out.get(f"blk.{i}.ffn_up.weight")
        if up is not None and cfg.gated_ffn and f"blk.{i}.ffn_gate.weight" not in out \
                and up.shape[0] == 2 * cfg.ffn_dim:
            out[f"blk.{i}.ffn_gate.weight"] = row_slice(up, 0, cfg.ffn_dim, f"blk.{i}.ffn_gate.weight")
            out[f"blk.{i}.ffn_up.weight"] = row_slice(up, cfg.ffn_dim, 2 * cfg.ffn_dim, f"blk.{i}.ffn_up.weight")
    return out


def stack_projections(lw: LayerWeights, backend) -> None:
    """q/k/v become one attn_qkv weight and gate/up one ffn_gate_up weight (backend.stack_matrices: one stacked
    matrix where one GEMV reading them all is faster, else the parts), and the separate fields are dropped."""
    lw.attn_qkv = backend.stack_matrices([lw.attn_q, lw.attn_k, lw.attn_v])
    lw.attn_q = lw.attn_k = lw.attn_v = None
    if lw.ffn_gate is not None and lw.ffn_up is not None:
        lw.ffn_gate_up = backend.stack_matrices([lw.ffn_gate, lw.ffn_up])
        lw.ffn_gate = lw.ffn_up = None


class Transformer:
    def __init__(self, config: ModelConfig, backend, token_embd, output_norm, output, layers: list[LayerWeights],
                 output_norm_bias=None, output_bias=None):
        self.config, self.backend = config, backend
        self.token_embd = token_embd  # (vocab, dim)
        self.output_norm = output_norm  # (dim,)
        self.output_norm_bias = output_norm_bias  # (dim,)  LayerNorm
        self.output = output  # (vocab, dim), often the same matrix as token_embd
        self.output_bias = output_bias  # (vocab,)
        self.layers = layers
        self.lora = None  # models/lora.LoraSet once adapters are attached
        self.xlora = None  # models/xlora.XLora: the classifier of an X-LoRA model
        self.inv_freq = [backend.array(config.inv_freq(i)) for i in range(config.n_layers)]
        # the matrices read after each layer's attention, in order (the next layer's q/k/v, or the output, last)
        nxt = [[m.attn_qkv] for m in layers[1:]] + [[output]]
        self.after_attention = [[m for m in [lw.attn_output, lw.ffn_gate_up, lw.ffn_up, lw.ffn_down] + n
                                 if m is not None] for lw, n in zip(layers, nxt)]

    @classmethod
    def from_model_file(cls, mf: ModelFile, backend, progress=None) -> "Transformer":
        cfg = ModelConfig.from_gguf(mf.metadata, mf.tensors)
        tensors = split_fused(mf.tensors, cfg)

        def load(name, kind):
            t = tensors[name]
            if kind == "vector" or len(t.shape) == 1:
                return backend.vector(t)
            return backend.expert_matrix(t) if kind == "experts" else backend.matrix(t)

        required = required_fields(cfg)
        layers = []
        steps = range(cfg.n_layers) if progress is None else progress(range(cfg.n_layers))
        for i in steps:
            lw = LayerWeights()
            for f in FILE_FIELDS:
                name = tensor_name(i, f)
                if name not in tensors:
                    if f in required:
                        raise ModelError(f"{mf.path}: tensor {name!r} is missing ({cfg.arch} model)")
                    continue
                kind = "experts" if f.endswith("_exps") else "matrix"
                setattr(lw, f, load(name, "vector" if f.endswith(("norm", "_bias")) else kind))
            stack_projections(lw, backend)
            layers.append(lw)
        top_level = ("token_embd.weight", "output_norm.weight") + (("output_norm.bias",) if cfg.norm == "layer" else ())
        for name in top_level:
            if name not in tensors:
                raise ModelError(f"{mf.path}: tensor {name!r} is missing ({cfg.arch} model)")
        embd = tensors["token_embd.weight"]
        if cfg.vocab_size != embd.shape[0]:
            cfg = cfg.with_vocab(embd.shape[0])
        token_embd = backend.matrix(embd)
        output = token_embd if "output.weight" not in tensors else load("output.weight", "matrix")
        opt = {name: load(name, "vector") if name in tensors else None
               for name in ("output_norm.bias", "output.bias")}
        return cls(cfg, backend, token_embd, load("output_norm.weight", "vector"), output, layers,
                   output_norm_bias=opt["output_norm.bias"], output_bias=opt["output.bias"])

    # --- pieces ---
    def norm(self, x, w, b=None):
        """RMSNorm, or LayerNorm with bias when config.norm == "layer"."""
        if self.config.norm == "layer":
            return self.backend.layernorm(x, w, b, self.config.norm_eps)
        return self.backend.rmsnorm(x, w, self.config.norm_eps)

    def linear(self, w, x, b=None, lora=None):
        """y = x W.T [+ LoRA delta] [+ b]"""
        y = self.backend.matmul(w, x, lora)
        if b is not None:
            self.backend.add_bias_(y, b)
        return y

    def add_projection_(self, x, w, a, b=None, post_norm=None, lora=None) -> None:
        """x += post_norm(a W.T [+ LoRA delta] + b): an output projection into the residual stream x (inside the
        matmul when nothing comes between)."""
        be = self.backend
        if b is None and post_norm is None:
            be.matmul_add_(w, a, x, lora)
            return
        y = self.linear(w, a, b, lora)
        be.add_(x, be.rmsnorm(y, post_norm, self.config.norm_eps, gemv=False) if post_norm is not None else y)

    @staticmethod
    def adapters(lw: LayerWeights, field: str, coef):
        """(LoraStack, coef) for a stacked weight of the block when it has adapters and the forward has rows'
        coefficients, else None."""
        return None if coef is None or not lw.lora or field not in lw.lora else (lw.lora[field], coef)

    def attention(self, i: int, lw: LayerWeights, h, slots, pos, cache, x, coef=None) -> None:
        """x += attention block of layer i over h = norm(x)."""
        cfg, be = self.config, self.backend
        biases = (lw.attn_q_bias, lw.attn_k_bias, lw.attn_v_bias) if lw.attn_q_bias is not None else (None,) * 3
        norms = (lw.attn_q_norm, lw.attn_k_norm) if cfg.qk_norm else None
        kc, vc = cache.layer(i)
        q = be.qkv_attn_inputs(lw.attn_qkv, h, cfg.q_dim, cfg.kv_dim, biases, norms, cfg.norm_eps, pos,
                               self.inv_freq[i], cfg.rope_neox, kc, vc, slots,
                               self.adapters(lw, "attn_qkv", coef))  # (n, n_heads, head_dim)
        be.prefetch(self.after_attention[i])  # attention leaves device memory idle: warm the L2 for what follows
        o = be.attention(q, kc, vc, slots, pos, cfg.window(i), cfg.softmax_scale, cfg.attn_softcap)  # (n, q_dim)
        self.add_projection_(x, lw.attn_output, o, lw.attn_output_bias,
                             lw.post_attention_norm if cfg.post_norms else None, self.adapters(lw, "attn_output", coef))

    def feed_forward(self, lw: LayerWeights, h, x, coef=None) -> None:
        """x += feed-forward block over h."""
        cfg, be = self.config, self.backend
        if cfg.n_experts:
            be.add_(x, self.moe(lw, h))
            return
        if cfg.gated_ffn:  # act(h Wgate) * (h Wup + b)
            a = be.gated_ffn(lw.ffn_gate_up, h, cfg.ffn_dim, cfg.activation, lw.ffn_up_bias,
                             self.adapters(lw, "ffn_gate_up", coef))
        else:  # act(h Wup + b)
            a = be.act(self.linear(lw.ffn_up, h, lw.ffn_up_bias, self.adapters(lw, "ffn_up", coef)), cfg.activation)
        self.add_projection_(x, lw.ffn_down, a, lw.ffn_down_bias, lw.post_ffw_norm if cfg.post_norms else None,
                             self.adapters(lw, "ffn_down", coef))

    def moe(self, lw: LayerWeights, h):
        """Sparse MoE: f[t] = sum over t's top-k experts e of softmax weight * down_e(act(gate_e h) * up_e h)."""
        cfg, be = self.config, self.backend
        n, k = h.shape[0], cfg.n_experts_used
        ids, weights = be.topk_softmax(be.matmul(lw.ffn_gate_inp, h), k)  # (n, k), (n, k)
        g = be.matmul_id(lw.ffn_gate_exps, h, ids).reshape(n * k, -1)  # (n * k, ffn_dim)
        u = be.matmul_id(lw.ffn_up_exps, h, ids).reshape(n * k, -1)
        a = be.gated_act(g, u, cfg.activation).reshape(n, k, -1)
        return be.moe_sum(be.matmul_id(lw.ffn_down_exps, a, ids), weights)  # (n, dim)

    def forward(self, tokens: np.ndarray, slots: np.ndarray, pos: np.ndarray, cache, logit_rows=None, coef=None,
                hidden: bool = False):
        """Run n tokens (each with its cache slot and position) through the model.

        Returns logits (len(logit_rows), vocab) for the chosen rows of the batch (default: every row), or with
        hidden the final-normed hidden states (len(logit_rows), dim) instead. coef (n, K): each row's LoRA
        coefficients (models/lora.py; None: no adapter anywhere).
        """
        cfg, be = self.config, self.backend
        x = be.embed(self.token_embd, tokens, cfg.embed_scale)  # (n, dim)
        for i, lw in enumerate(self.layers):
            h = self.norm(x, lw.attn_norm, lw.attn_norm_bias)
            self.attention(i, lw, h, slots, pos, cache, x, coef)
            if not cfg.parallel_block:  # parallel (phi2): x += attn(h) + ffn(h), both from the same norm(x)
                h = self.norm(x, lw.ffn_norm, lw.ffn_norm_bias)
            self.feed_forward(lw, h, x, coef)
        if logit_rows is not None:
            x = be.take_rows(x, logit_rows)
        if hidden:
            return self.norm(x, self.output_norm, self.output_norm_bias).x
        logits = self.linear(self.output, self.norm(x, self.output_norm, self.output_norm_bias), self.output_bias)
        if cfg.final_softcap > 0:
            be.softcap_(logits, cfg.final_softcap)
        return logits
