"""Tiny random models in Mistral's folder layout, with reference logits from Hugging Face transformers.

For each of "dense" (Mistral: GQA, head_dim != dim / n_heads, a sliding window) and "moe" (Mixtral: 4 experts,
top 2) this writes tests/golden/mistral_<kind>/:

    params.json                  as mistral-inference reads it (dim, n_layers, head_dim, hidden_dim, ...)
    consolidated.safetensors     Mistral's tensor names (layers.{i}.attention.wq, feed_forward.w1, ...), seeded
                                 random weights (dense in BF16, moe in F16, as real files come in both)
    logits.npz                   prompts_<i> int64 (n_i,), logits_<i> float32 (n_i, vocab): every position's
                                 logits from transformers, greedy_<i> int64 (GREEDY,): the greedy continuation
    reference.json               versions, seed

The reference: the same weights converted to a Hugging Face folder the way transformers' own
convert_mistral_weights_to_hf.py does it (names mapped; q/k rows permuted from Mistral's interleaved RoPE pairs
to HF's rotate-half halves), loaded with from_pretrained (Mixtral's per-expert w1/w2/w3 names go through
transformers' own checkpoint conversion) and run in float64 with eager attention. Before it is used, the script
checks the permutation itself: Mistral's RoPE as mistral-inference computes it (complex rotation of consecutive
pairs, `torch.view_as_complex`) on the original wq/wk equals, row for row after the permutation, transformers'
`apply_rotary_pos_emb` on the converted q_proj/k_proj. Nothing of minirs is imported.

Run with a venv that has the ref extra (torch, transformers, safetensors; a few seconds):
    pip install -e .[ref] && python tests/golden/make_mistral_goldens.py
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers as T
from safetensors.torch import save_file
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

GOLDEN_DIR = Path(__file__).resolve().parent
SEED = 2311
VOCAB = 256
PROMPT_LENGTHS = (5, 13, 24)  # the longest runs past the dense model's window (8)
GREEDY = 8
COMMON = {"vocab_size": VOCAB, "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seq_len": 128}
KINDS = {
    "dense": dict(COMMON, dim=48, n_layers=2, head_dim=16, hidden_dim=64, n_heads=4, n_kv_heads=2,
                  sliding_window=8),
    "moe": dict(COMMON, dim=32, n_layers=2, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2,
                moe={"num_experts": 4, "num_experts_per_tok": 2}),
}
DTYPE = {"dense": torch.bfloat16, "moe": torch.float16}


def mistral_weights(p: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under Mistral's names; sizes from params. Norms near 1, matrices ~ N(0, 1/fan_in)."""
    d, h, q, kv = p["dim"], p["hidden_dim"], p["n_heads"] * p["head_dim"], p["n_kv_heads"] * p["head_dim"]

    def mat(rows, cols, scale=None):
        return torch.randn(rows, cols, generator=gen, dtype=torch.float64) * (scale or cols ** -0.5)

    def norm():
        return 1.0 + 0.2 * torch.randn(d, generator=gen, dtype=torch.float64)

    w = {"tok_embeddings.weight": mat(p["vocab_size"], d, 1.0), "norm.weight": norm(),
         "output.weight": mat(p["vocab_size"], d)}
    for i in range(p["n_layers"]):
        pre = f"layers.{i}."
        w |= {pre + "attention_norm.weight": norm(), pre + "ffn_norm.weight": norm(),
              pre + "attention.wq.weight": mat(q, d), pre + "attention.wk.weight": mat(kv, d),
              pre + "attention.wv.weight": mat(kv, d), pre + "attention.wo.weight": mat(d, q)}
        ffns = [pre + "feed_forward."]
        if "moe" in p:
            w[pre + "feed_forward.gate.weight"] = mat(p["moe"]["num_experts"], d, 1.0)
            ffns = [pre + f"feed_forward.experts.{e}." for e in range(p["moe"]["num_experts"])]
        for f in ffns:
            w |= {f + "w1.weight": mat(h, d), f + "w3.weight": mat(h, d), f + "w2.weight": mat(d, h)}
    return w


def to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Mistral's q/k rows (per head: interleaved pairs 0,1 2,3 ...) -> HF's rotate-half rows (per head: the
    first elements of every pair, then the second ones), as transformers' converter permutes them."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_state_dict(w: dict, p: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in w.items():
        if name == "tok_embeddings.weight":
            new = "model.embed_tokens.weight"
        elif name == "norm.weight":
            new = "model.norm.weight"
        elif name == "output.weight":
            new = "lm_head.weight"
        else:
            i, rest = name.split(".", 2)[1:]
            new = f"model.layers.{i}." + {
                "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
                "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
                "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
                "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
                "feed_forward.w2.weight": "mlp.down_proj.weight",
                "feed_forward.gate.weight": "block_sparse_moe.gate.weight",
            }.get(rest, rest.replace("feed_forward.experts.", "block_sparse_moe.experts."))
            if rest == "attention.wq.weight":
                t = to_hf_rows(t, p["n_heads"])
            elif rest == "attention.wk.weight":
                t = to_hf_rows(t, p["n_kv_heads"])
        out[new] = t.contiguous()
    return out


def hf_config(p: dict):
    kw = {"vocab_size": p["vocab_size"], "hidden_size": p["dim"], "intermediate_size": p["hidden_dim"],
          "num_hidden_layers": p["n_layers"], "num_attention_heads": p["n_heads"],
          "num_key_value_heads": p["n_kv_heads"], "head_dim": p["head_dim"], "rms_norm_eps": p["norm_eps"],
          "max_position_embeddings": p["max_seq_len"], "sliding_window": p.get("sliding_window"),
          "rope_theta": p["rope_theta"], "tie_word_embeddings": False}
    if "moe" in p:
        return T.MixtralConfig(**kw, num_local_experts=p["moe"]["num_experts"],
                               num_experts_per_tok=p["moe"]["num_experts_per_tok"])
    return T.MistralConfig(**kw)


def mistral_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """mistral-inference's RoPE: (seq, heads, head_dim) rotated as complex numbers of consecutive pairs."""
    seq, _, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    cis = torch.polar(torch.ones(seq, hd // 2, dtype=torch.float64), torch.outer(torch.arange(seq).double(), freqs))
    xc = torch.view_as_complex(x.reshape(seq, -1, hd // 2, 2))
    return torch.view_as_real(xc * cis[:, None, :]).flatten(2)


def check_permutation(w: dict, sd: dict, p: dict, model) -> None:
    """q and k after RoPE: Mistral's way on the original rows == transformers' way on the converted rows."""
    x = torch.randn(7, p["dim"], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    hd = p["head_dim"]
    pos = torch.arange(7)[None]
    cos, sin = model.model.rotary_emb(x[None], pos)
    for name, heads in (("wq", p["n_heads"]), ("wk", p["n_kv_heads"])):
        ours = mistral_rope((x @ w[f"layers.0.attention.{name}.weight"].T).view(7, heads, hd), p["rope_theta"])
        hf_name = f"model.layers.0.self_attn.{name[1]}_proj.weight"
        theirs = (x @ sd[hf_name].T).view(1, 7, heads, hd).transpose(1, 2)
        theirs, _ = apply_rotary_pos_emb(theirs, theirs, cos, sin)
        theirs = theirs[0].transpose(0, 1)  # (seq, heads, hd) in HF's order: un-permute each head's features
        order = torch.arange(hd).view(2, hd // 2).T.reshape(-1)  # Mistral position 2k + j <- HF feature j hd/2 + k
        back = theirs[..., order]
        err = (ours - back).abs().max().item()  # HF computes its RoPE angles in float32: ~1e-7
        assert err < 1e-5, f"RoPE permutation check failed for {name}: {err}"


def make(kind: str) -> None:
    p = KINDS[kind]
    gen = torch.Generator().manual_seed(SEED + len(kind))
    w = {n: t.to(DTYPE[kind]).double() for n, t in mistral_weights(p, gen).items()}  # exactly representable
    out = GOLDEN_DIR / f"mistral_{kind}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "params.json").write_text(json.dumps(p, indent=2) + "\n")
    save_file({n: t.to(DTYPE[kind]).contiguous() for n, t in w.items()}, str(out / "consolidated.safetensors"))

    sd = hf_state_dict(w, p)
    with tempfile.TemporaryDirectory() as tmp:
        hf_config(p).save_pretrained(tmp)
        save_file({n: t.float() for n, t in sd.items()}, str(Path(tmp) / "model.safetensors"))
        extra = {"experts_implementation": "eager"} if "moe" in p else {}
        model, info = T.AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float64, attn_implementation="eager", output_loading_info=True, **extra)
    model.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    loaded = model.state_dict()
    for name in ("model.layers.1.self_attn.k_proj.weight", "lm_head.weight"):  # the weights went in as given
        assert torch.equal(loaded[name], sd[name]), name
    check_permutation(w, sd, p, model)

    rng = np.random.default_rng(SEED + 1)
    arrays, margins = {}, []
    for i, n in enumerate(PROMPT_LENGTHS):
        ids = rng.integers(3, VOCAB, n).astype(np.int64)
        with torch.no_grad():
            logits = model(torch.from_numpy(ids)[None], use_cache=False).logits[0]
            greedy = model.generate(torch.from_numpy(ids)[None], max_new_tokens=GREEDY, do_sample=False,
                                    min_new_tokens=GREEDY, pad_token_id=0)[0, n:]
            full = model(greedy[None].new_tensor(np.concatenate([ids, greedy.numpy()]))[None],
                         use_cache=False).logits[0, n - 1:-1]
        top2 = full.topk(2, -1).values
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
        arrays |= {f"prompts_{i}": ids, f"logits_{i}": logits.numpy().astype(np.float32),
                   f"greedy_{i}": greedy.numpy().astype(np.int64)}
    np.savez_compressed(out / "logits.npz", **arrays)
    (out / "reference.json").write_text(json.dumps(
        {"transformers": T.__version__, "torch": torch.__version__, "model_class": type(model).__name__,
         "seed": SEED, "dtype": str(DTYPE[kind]), "min_greedy_margin": min(margins)}, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    top = max(np.abs(v).max() for k, v in arrays.items() if k.startswith("logits"))
    print(f"{kind:6s} {size / 1024:6.1f} KiB  max |logit| {top:.2f}  "
          f"smallest top-2 margin on the greedy path {min(margins):.3g}")


if __name__ == "__main__":
    for k in sys.argv[1:] or KINDS:
        make(k)
