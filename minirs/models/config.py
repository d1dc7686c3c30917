"""Model configuration: one frozen dataclass, built in one place from GGUF metadata.

`llama` is the reference architecture; every other family is the same transformer with some of the fields
below changed (norm type, activation, soft-capping, sliding-window pattern, q/k norms, extra norms, MoE, ...).
FAMILIES states each GGUF architecture's differences from llama; key names of the GGUF metadata live here and
nowhere else. Hugging Face folders arrive here too, as GGUF-style metadata made by models/hf.py.
"""

import math
from dataclasses import dataclass, field, replace

import numpy as np

from minirs.errors import ModelError

SQRT_DIM = "sqrt(dim)"  # embed_scale placeholder resolved against the model's dim

# Each GGUF architecture as its differences from llama. Mistral and Mixtral GGUFs say "llama" (Mixtral adds
# expert_count / expert_used_count), so they need no entry of their own.
FAMILIES: dict[str, dict] = {
    "llama": {"rope_neox": False},
    "qwen2": {},  # + q/k/v biases (found by the loader)
    "gemma": {"activation": "gelu", "embed_scale": SQRT_DIM},  # + norm weight + 1, applied by the converter
    "gemma2": {"activation": "gelu", "embed_scale": SQRT_DIM, "post_norms": True, "swa_pattern": 2},
    "gemma3": {"activation": "gelu", "embed_scale": SQRT_DIM, "post_norms": True, "swa_pattern": 6, "qk_norm": True,
               "rope_theta_local": 10000.0},
    "phi2": {"norm": "layer", "parallel_block": True, "gated_ffn": False, "activation": "gelu"},  # + biases everywhere
    "phi3": {},  # fused qkv and gate_up (split by the loader), LongRoPE factors
}
SUPPORTED_ARCHS = tuple(FAMILIES)


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
    rope_dim: int  # leading part of each head that is rotated (phi2: partial rotary)
    rope_neox: bool = True  # NeoX layout rotates (i, i + d/2) pairs; the "normal" layout rotates (2i, 2i + 1)
    # --- differences from llama, as data ---
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm with bias, phi2)
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    gated_ffn: bool = True  # False: plain MLP down(act(up x)) (phi2)
    parallel_block: bool = False  # attention and MLP both read norm(x) and add to x together (phi2)
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
    # per-frequency divisors of the RoPE frequencies (Llama-3 scaling, Phi-3 LongRoPE); empty = none
    rope_freq_factors: tuple[float, ...] = field(default_factory=tuple)
    rope_attn_factor: float = 1.0  # LongRoPE multiplies cos and sin by this, i.e. q.k by its square
    n_experts: int = 0  # sparse MoE feed-forward when > 0 (mixtral: 8)
    n_experts_used: int = 0  # experts per token (mixtral: 2)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def softmax_scale(self) -> float:
        return (self.attn_scale or 1.0 / math.sqrt(self.head_dim)) * self.rope_attn_factor ** 2

    def is_local(self, layer: int) -> bool:
        if self.sliding_window <= 0:
            return False
        return self.local_layers[layer] if self.local_layers else True

    def window(self, layer: int) -> int:
        """Sliding window of a layer (0 = full attention)."""
        return self.sliding_window if self.is_local(layer) else 0

    def inv_freq(self, layer: int) -> np.ndarray:
        """RoPE inverse frequencies of a layer, (rope_dim // 2,) float64; scaling variants only change these.

        Local layers with their own base (gemma3) are never scaled, as in transformers and llama.cpp.
        """
        i = np.arange(0, self.rope_dim, 2, dtype=np.float64)
        if self.rope_theta_local and self.is_local(layer):
            return 1.0 / self.rope_theta_local ** (i / self.rope_dim)
        f = self.rope_freq_scale / self.rope_theta ** (i / self.rope_dim)
        return f / np.asarray(self.rope_freq_factors, dtype=np.float64) if self.rope_freq_factors else f

    @classmethod
    def from_gguf(cls, md: dict, tensors: dict | None = None) -> "ModelConfig":
        """The config of a model from its GGUF metadata (and the RoPE factor tensors, where a file has them)."""
        arch = md.get("general.architecture")
        if arch not in FAMILIES:
            raise ModelError(f"unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)}; "
                             f"mistral and mixtral GGUFs use 'llama')")
        tensors = tensors or {}

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
        family = dict(FAMILIES[arch])
        swa_pattern = family.pop("swa_pattern", 0)
        if family.get("embed_scale") == SQRT_DIM:
            family["embed_scale"] = math.sqrt(dim)
        eps = get("attention.layer_norm_epsilon", 1e-5) if family.get("norm") == "layer" \
            else get("attention.layer_norm_rms_epsilon", 1e-5)
        fields = {
            "arch": arch, "dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": int(n_kv),
            "head_dim": head_dim,
            "ffn_dim": int(get("feed_forward_length")), "vocab_size": int(vocab),
            "context_length": int(get("context_length", 2048)), "norm_eps": float(eps),
            "rope_theta": float(get("rope.freq_base", 10000.0)),
            "rope_dim": int(get("rope.dimension_count", head_dim)),
            "attn_scale": float(get("attention.scale", 0.0)),
            "attn_softcap": float(get("attn_logit_softcapping", 0.0)),
            "final_softcap": float(get("final_logit_softcapping", 0.0)),
            "sliding_window": int(get("attention.sliding_window", 0)),
            "n_experts": int(get("expert_count", 0)), "n_experts_used": int(get("expert_used_count", 0)),
        }
        if "rope_theta_local" in family:
            family["rope_theta_local"] = float(get("rope.freq_base_swa", family["rope_theta_local"]))
        pattern = get("attention.sliding_window_pattern", swa_pattern)
        if isinstance(pattern, list):  # one flag per layer: True = sliding window
            fields["local_layers"] = tuple(bool(p) for p in pattern)
        elif pattern:  # every pattern-th layer is global
            fields["local_layers"] = tuple((i + 1) % int(pattern) != 0 for i in range(n_layers))
        if len(fields.get("local_layers", ())) not in (0, n_layers):
            raise ModelError(f"{arch}.attention.sliding_window_pattern has {len(pattern)} entries for "
                             f"{n_layers} layers")
        if fields["n_experts"] and not 0 < fields["n_experts_used"] <= fields["n_experts"]:
            raise ModelError(f"{arch}.expert_used_count is {fields['n_experts_used']} for "
                             f"{fields['n_experts']} experts")

        # RoPE scaling: linear (a factor on positions) or per-frequency factors stored as tensors, as llama.cpp
        # does: rope_freqs (Llama-3) or rope_factors_short/long (Phi-3 LongRoPE). We use the short factors,
        # which transformers uses while a sequence stays within the original context length.
        scaling = md.get(f"{arch}.rope.scaling.type")
        if scaling == "linear":
            fields["rope_freq_scale"] = 1.0 / float(get("rope.scaling.factor"))
        elif scaling not in (None, "none", "longrope", "su", "llama3"):
            raise ModelError(f"RoPE scaling {scaling!r} is not supported yet")
        for name in ("rope_freqs.weight", "rope_factors_short.weight"):
            if name in tensors:
                from minirs.formats import dequantize
                factors = dequantize(tensors[name]).astype(np.float64).reshape(-1)
                if len(factors) != fields["rope_dim"] // 2:
                    raise ModelError(f"tensor {name!r} has {len(factors)} factors for rope_dim "
                                     f"{fields['rope_dim']}")
                fields["rope_freq_factors"] = tuple(float(f) for f in factors)
                break
        fields["rope_attn_factor"] = float(get("rope.scaling.attn_factor", 1.0))
        if fields["rope_attn_factor"] != 1.0 and fields["rope_dim"] != head_dim:
            raise ModelError(f"{arch}: rope.scaling.attn_factor with partial rotary is not supported")
        return cls(**fields, **family)

    def with_vocab(self, vocab_size: int) -> "ModelConfig":
        return replace(self, vocab_size=vocab_size)
