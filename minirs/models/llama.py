"""The llama transformer, the reference architecture every other family is stated against.

    x = embed(tokens) * embed_scale                                          # (n, dim)
    for each layer:
        h = rmsnorm(x) ; q, k, v = h Wq, h Wk, h Wv ; [q/k rmsnorm per head] ; rope(q, k)
        o = attention(q, cache(k, v)) Wo ; [post-norm] ; x += o
        h = rmsnorm(x) ; f = (act(h Wgate) * h Wup) Wdown ; [post-norm] ; x += f
    logits = rmsnorm(x) Wout ; [soft-cap]

Differences between families (gemma3's q/k norms, post-norms, GeGLU, sliding windows...) are fields of
ModelConfig, not branches on the architecture name. The batch is a flat list of n tokens, each with its
sequence's cache slot and its position, so one forward serves prefill chunks, decode steps and mixed batches.
Weights are named after their GGUF tensors; the backend (CPU or CUDA) owns memory and kernels.
"""

from dataclasses import dataclass

import numpy as np

from minirs.errors import ModelError
from minirs.formats import ModelFile
from minirs.models.config import ModelConfig


@dataclass
class LayerWeights:
    attn_norm: object  # (dim,)
    attn_q: object  # (n_heads * head_dim, dim)
    attn_k: object  # (n_kv_heads * head_dim, dim)
    attn_v: object  # (n_kv_heads * head_dim, dim)
    attn_output: object  # (dim, n_heads * head_dim)
    ffn_norm: object  # (dim,)
    ffn_gate: object  # (ffn_dim, dim)
    ffn_up: object  # (ffn_dim, dim)
    ffn_down: object  # (dim, ffn_dim)
    attn_q_norm: object = None  # (head_dim,)  qk_norm
    attn_k_norm: object = None  # (head_dim,)  qk_norm
    post_attention_norm: object = None  # (dim,)  post_norms
    post_ffw_norm: object = None  # (dim,)  post_norms


class Transformer:
    def __init__(self, config: ModelConfig, backend, token_embd, output_norm, output, layers: list[LayerWeights]):
        self.config, self.backend = config, backend
        self.token_embd = token_embd  # (vocab, dim)
        self.output_norm = output_norm  # (dim,)
        self.output = output  # (vocab, dim), often the same matrix as token_embd
        self.layers = layers
        self.inv_freq = [backend.array(config.inv_freq(i)) for i in range(config.n_layers)]

    @classmethod
    def from_model_file(cls, mf: ModelFile, backend, progress=None) -> "Transformer":
        cfg = ModelConfig.from_gguf(mf.metadata)

        def tensor(name, required=True):
            t = mf.tensors.get(name)
            if t is None and required:
                raise ModelError(f"{mf.path}: tensor {name!r} is missing ({cfg.arch} model)")
            return t

        vector_names = {"attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"}
        optional = {"attn_q_norm": cfg.qk_norm, "attn_k_norm": cfg.qk_norm,
                    "post_attention_norm": cfg.post_norms, "post_ffw_norm": cfg.post_norms}
        layers = []
        steps = range(cfg.n_layers) if progress is None else progress(range(cfg.n_layers))
        for i in steps:
            fields = {}
            for field in LayerWeights.__dataclass_fields__:
                if field in optional and not optional[field]:
                    continue
                t = tensor(f"blk.{i}.{field}.weight")
                fields[field] = backend.vector(t) if field in vector_names else backend.matrix(t)
            layers.append(LayerWeights(**fields))
        embd = tensor("token_embd.weight")
        cfg_vocab = embd.shape[0]
        if cfg.vocab_size != cfg_vocab:
            cfg = ModelConfig(**{**cfg.__dict__, "vocab_size": cfg_vocab})
        token_embd = backend.matrix(embd)
        out_t = tensor("output.weight", required=False)
        output = token_embd if out_t is None else backend.matrix(out_t)
        return cls(cfg, backend, token_embd, backend.vector(tensor("output_norm.weight")), output, layers)

    def forward(self, tokens: np.ndarray, slots: np.ndarray, pos: np.ndarray, cache, logit_rows=None):
        """Run n tokens (each with its cache slot and position) through the model.

        Returns logits (len(logit_rows), vocab) for the chosen rows of the batch (default: every row).
        """
        cfg, be = self.config, self.backend
        n = len(tokens)
        x = be.embed(self.token_embd, tokens, cfg.embed_scale)  # (n, dim)
        for i, lw in enumerate(self.layers):
            # attention block
            h = be.rmsnorm(x, lw.attn_norm, cfg.norm_eps)
            q = be.matmul(lw.attn_q, h).reshape(n, cfg.n_heads, cfg.head_dim)
            k = be.matmul(lw.attn_k, h).reshape(n, cfg.n_kv_heads, cfg.head_dim)
            v = be.matmul(lw.attn_v, h).reshape(n, cfg.n_kv_heads, cfg.head_dim)
            if cfg.qk_norm:
                q = be.rmsnorm(q, lw.attn_q_norm, cfg.norm_eps)
                k = be.rmsnorm(k, lw.attn_k_norm, cfg.norm_eps)
            be.rope_(q, pos, self.inv_freq[i], cfg.rope_neox)
            be.rope_(k, pos, self.inv_freq[i], cfg.rope_neox)
            kc, vc = cache.layer(i)
            be.kv_write(kc, vc, slots, pos, k, v)
            o = be.attention(q, kc, vc, slots, pos, cfg.window(i), cfg.softmax_scale, cfg.attn_softcap)
            o = be.matmul(lw.attn_output, o.reshape(n, cfg.q_dim))
            if cfg.post_norms:
                o = be.rmsnorm(o, lw.post_attention_norm, cfg.norm_eps)
            be.add_(x, o)
            # feed-forward block
            h = be.rmsnorm(x, lw.ffn_norm, cfg.norm_eps)
            f = be.gated_act(be.matmul(lw.ffn_gate, h), be.matmul(lw.ffn_up, h), cfg.activation)
            f = be.matmul(lw.ffn_down, f)
            if cfg.post_norms:
                f = be.rmsnorm(f, lw.post_ffw_norm, cfg.norm_eps)
            be.add_(x, f)
        if logit_rows is not None:
            x = be.take_rows(x, logit_rows)
        logits = be.matmul(self.output, be.rmsnorm(x, self.output_norm, cfg.norm_eps))
        if cfg.final_softcap > 0:
            be.softcap_(logits, cfg.final_softcap)
        return logits
