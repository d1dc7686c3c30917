"""Tiny random-weight models of every supported family, with reference logits from Hugging Face transformers.

For each family a 2-6 layer model is built with transformers' own config class (LlamaConfig, MistralConfig, ...),
its weights drawn from a seeded generator, rounded to float16 and saved with `save_pretrained` as safetensors
into tests/golden/arch_<family>/. transformers then runs that same float16-representable model in float64 with
eager attention on a few seeded random prompts and writes every position's logits to arch_<family>/logits.npz:

    prompts_<i>   int64 (n_i,)          the token ids
    logits_<i>    float32 (n_i, vocab)  the reference logits at every position
    (mistral only) full_<i>: the same model with sliding_window=None (full attention), for the window test

transformers is the reference here; minirs's loader, converter (minirs/models/convert.py) and model are what the
tests (tests/test_arch.py) check against these files. Nothing of minirs is imported.

Run with a venv that has torch and transformers (about 20 s on 2 CPU cores):
    /work/venv-ref/bin/python tests/golden/make_arch_goldens.py [family ...]
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as T

GOLDEN_DIR = Path(__file__).resolve().parent
SEED = 1234
VOCAB = 256
PROMPT_LENGTHS = (5, 13, 24)  # the longest runs past every sliding window below (8)
WINDOW = 8
EXTRA_LOAD = {"mixtral": {"experts_implementation": "eager"}}  # the grouped-mm kernel has no float64
COMMON = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
          "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def longrope_factors(n: int, rng: np.random.Generator) -> list[float]:
    return [float(f) for f in np.sort(1.0 + 3.0 * rng.random(n))]


def families() -> dict:
    """family -> (config class name, causal-LM class name, config kwargs)."""
    rng = np.random.default_rng(SEED)
    gemma = dict(COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh")
    return {
        "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
            COMMON, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16})),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(COMMON, sliding_window=WINDOW)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(COMMON, rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": 1e6})),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
            COMMON, hidden_size=32, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2,
            head_dim=8, sliding_window=None)),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(gemma, num_key_value_heads=1)),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
            gemma, sliding_window=WINDOW, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0, num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
            num_key_value_heads=1)),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
            gemma, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
            num_key_value_heads=1, sliding_window=WINDOW, query_pre_attn_scalar=16,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1e6}})),
        "phi2": ("PhiConfig", "PhiForCausalLM", dict(
            COMMON, hidden_size=64, num_key_value_heads=4, hidden_act="gelu_new",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
            COMMON, hidden_size=64, original_max_position_embeddings=32, pad_token_id=0, eos_token_id=2,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                             "short_factor": longrope_factors(8, rng), "long_factor": longrope_factors(8, rng),
                             "original_max_position_embeddings": 32})),
    }


def randomize(model: torch.nn.Module, family: str, gen: torch.Generator) -> None:
    """Weights that give peaked, input-dependent logits (HF's own init is too close to uniform to test much)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                if "norm" in name or "layernorm" in name:
                    base = 0.0 if family.startswith("gemma") else 1.0  # gemma norms compute (1 + w)
                    p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
                else:  # biases
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if family.startswith("gemma") else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            p.copy_(p.half().float())  # exactly representable in the float16 file


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(ids)[None], use_cache=False)
    return out.logits[0].double().numpy().astype(np.float32)


def make(family: str) -> None:
    cfg_name, lm_name, kwargs = families()[family]
    torch.manual_seed(SEED)
    cfg = getattr(T, cfg_name)(**kwargs)
    cfg._attn_implementation = "eager"
    model = getattr(T, lm_name)(cfg).float().eval()
    randomize(model, family, torch.Generator().manual_seed(SEED))
    out_dir = GOLDEN_DIR / f"arch_{family}"
    shutil.rmtree(out_dir, ignore_errors=True)
    model.half().save_pretrained(out_dir, safe_serialization=True)
    # The reference is the saved folder loaded back by transformers, in float64: its own float32 run differs
    # from exact math by ~1e-5 relative, and reloading (not reusing the model above, whose RoPE buffers went
    # through float16) makes the reference read exactly the files minirs reads.
    model = T.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float64, attn_implementation="eager",
                                                   **EXTRA_LOAD.get(family, {})).eval()
    rng = np.random.default_rng(SEED + 1)
    arrays = {}
    for i, n in enumerate(PROMPT_LENGTHS):
        ids = rng.integers(3, VOCAB, n).astype(np.int64)
        arrays[f"prompts_{i}"] = ids
        arrays[f"logits_{i}"] = logits_of(model, ids)
    if family == "mistral":  # the same weights with full attention, for the sliding-window test
        full = T.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float64, attn_implementation="eager",
                                                      sliding_window=None).eval()
        assert full.config.sliding_window is None
        for i in range(len(PROMPT_LENGTHS)):
            arrays[f"full_{i}"] = logits_of(full, arrays[f"prompts_{i}"])
    np.savez_compressed(out_dir / "logits.npz", **arrays)
    (out_dir / "reference.json").write_text(json.dumps(
        {"transformers": T.__version__, "torch": torch.__version__, "config_class": cfg_name,
         "model_class": lm_name, "seed": SEED}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    top = max(np.abs(v).max() for k, v in arrays.items() if k.startswith("logits"))
    print(f"{family:8s} {size / 1024:6.1f} KiB  max |logit| {top:.2f}")


if __name__ == "__main__":
    for fam in sys.argv[1:] or families():
        make(fam)
