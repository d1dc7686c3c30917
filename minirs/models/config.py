"""Model configuration: one frozen dataclass, built in one place from GGUF metadata.

`llama` is the reference architecture; every other family is the same transformer with some of the fields
below changed (norm offset, activation, soft-capping, sliding-window pattern, q/k norms, extra norms, ...).
Key names of the GGUF metadata live here and nowhere else.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from minirs.errors import ModelError

# Architectures whose GGUF metadata and tensors this config and models/llama.py understand.
SUPPORTED_ARCHS = ("llama", "gemma3")


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    dim: int  # residual stream width (embedding_length)
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    norm_eps: float
    rope_theta: float
    rope_dim: int  # leading part of each head that is rotated
    rope_neox: bool  # NeoX layout rotates (i, i + d/2) pairs; the "normal" layout rotates (2i, 2i + 1)
    # --- differences from llama, as data ---
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    embed_scale: float = 1.0  # embeddings are multiplied by this (gemma: sqrt(dim))
    attn_scale: float = 0.0  # softmax scale; 0 means 1/sqrt(head_dim)
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (gemma3)
    post_norms: bool = False  # extra RMSNorm on the attention and FFN outputs before the residual add (gemma2/3)
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap) when > 0 (gemma2)
    final_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) when > 0 (gemma2)
    sliding_window: int = 0  # window of the local layers, 0 = none
    # which layers use the sliding window: True for local layers; empty means all layers when window > 0
    local_layers: tuple[bool, ...] = field(default_factory=tuple)
    rope_theta_local: float = 0.0  # RoPE base of local layers when it differs (gemma3: 10000)
    rope_freq_scale: float = 1.0  # linear RoPE scaling: positions are multiplied by this

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def softmax_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def is_local(self, layer: int) -> bool:
        if self.sliding_window <= 0:
            return False
        return self.local_layers[layer] if self.local_layers else True

    def window(self, layer: int) -> int:
        """Sliding window of a layer (0 = full attention)."""
        return self.sliding_window if self.is_local(layer) else 0

    def inv_freq(self, layer: int) -> np.ndarray:
        """RoPE inverse frequencies of a layer, (rope_dim // 2,) float64; scaling variants only change these."""
        theta = self.rope_theta_local if (self.rope_theta_local and self.is_local(layer)) else self.rope_theta
        i = np.arange(0, self.rope_dim, 2, dtype=np.float64)
        return self.rope_freq_scale / theta ** (i / self.rope_dim)

    @classmethod
    def from_gguf(cls, md: dict) -> "ModelConfig":
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ModelError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")

        def get(key, default=None):
            full = f"{arch}.{key}"
            if full in md:
                v = md[full]
                return v.tolist() if isinstance(v, np.ndarray) else v
            if default is None:
                raise ModelError(f"GGUF metadata lacks {full!r}")
            return default

        dim = int(get("embedding_length"))
        n_heads = int(get("attention.head_count"))
        n_kv = get("attention.head_count_kv", n_heads)
        if isinstance(n_kv, list):  # some files give one value per layer
            n_kv = n_kv[0]
        head_dim = int(get("attention.key_length", dim // n_heads))
        n_layers = int(get("block_count"))
        vocab = md.get(f"{arch}.vocab_size") or len(md.get("tokenizer.ggml.tokens", [])) or 0
        if head_dim <= 0 or n_heads <= 0 or n_kv <= 0 or n_heads % n_kv:
            raise ModelError(f"bad head counts: {n_heads} heads, {n_kv} kv heads, head_dim {head_dim}")
        common = dict(
            arch=arch, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=int(n_kv), head_dim=head_dim,
            ffn_dim=int(get("feed_forward_length")), vocab_size=int(vocab),
            context_length=int(get("context_length", 2048)),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_dim=int(get("rope.dimension_count", head_dim)),
        )
        scaling = md.get(f"{arch}.rope.scaling.type")
        if scaling == "linear":
            common["rope_freq_scale"] = 1.0 / float(get("rope.scaling.factor"))
        elif scaling not in (None, "none"):
            raise ModelError(f"RoPE scaling {scaling!r} is not supported yet")
        if arch == "llama":
            return cls(**common, rope_neox=False)
        # gemma3: GeGLU, sqrt(dim) embedding scale, q/k norms, post-norms, 5 local : 1 global layers.
        # (The GGUF converter already adds gemma's +1 to every norm weight.)
        window = int(get("attention.sliding_window", 0))
        pattern = 6
        return cls(**common, rope_neox=True, activation="gelu", embed_scale=math.sqrt(dim), qk_norm=True,
                   post_norms=True, sliding_window=window,
                   local_layers=tuple((i + 1) % pattern != 0 for i in range(n_layers)),
                   rope_theta_local=10000.0)
