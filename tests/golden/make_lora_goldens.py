"""LoRA and X-LoRA adapters on the tiny random llama and mistral models, with reference logits from PEFT.

The bases are tests/golden/arch_llama and arch_mistral (make_arch_goldens.py). For each, this script makes PEFT
LoRA adapters with `get_peft_model` and saves them with `save_pretrained` into tests/golden/lora_<family>/:

    a1/   r=4, lora_alpha=8, attention q, k, v, o                     (rank_pattern: o_proj r=2)
    a2/   r=8, lora_alpha=16, q and the MLP gate, up, down           (alpha_pattern: down_proj alpha=4)
    rs/   rsLoRA (use_rslora), r=16, lora_alpha=8, all seven projections
    (phi3: a1 only, r=4 on the fused qkv_proj and gate_up_proj, o_proj and down_proj)
    xlora/  mistral.rs's X-LoRA layout: xlora_config.json, xlora_classifier.safetensors (inner.{i} / last), the
            adapters a1/ and a2/ as subfolders, and ordering.json (llama only)

PEFT initialises B to zero (the adapter would change nothing): every A and B is overwritten with seeded random
values, rounded to float16 so the float32 files hold them exactly. PEFT then runs on the base loaded in float64
(eager attention) and logits.npz stores, for prompts_<i> (int64 ids):

    <case>_logits_<i>  float32 (n_i, vocab): every position's logits, case in a1, a2, both (a1 and a2 active), rs,
                       xlora (PEFT's XLoraModel over a1 and a2), base
    <case>_greedy      int64 (8,): 8 greedy tokens after prompts_0 (each a full forward, no cache)

Nothing of minirs is imported. Run with a venv that has torch, transformers and peft (about 20 s on 2 cores):
    /work/ref-venv/bin/python tests/golden/make_lora_goldens.py [family ...]
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as T
from peft import LoraConfig, PeftModel, XLoraConfig, get_peft_model
from safetensors.torch import save_file

GOLDEN = Path(__file__).resolve().parent
SEED = 4321
PROMPT_LENGTHS = (6, 11)
GREEDY = 8
ADAPTERS = {
    "a1": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
               rank_pattern={"o_proj": 2}),
    "a2": dict(r=8, lora_alpha=16, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"],
               alpha_pattern={"down_proj": 4}),
    "rs": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]),
}
# phi3's fused projections: qkv_proj (q|k|v rows) and gate_up_proj (gate|up rows)
PHI3_ADAPTERS = {"a1": dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])}
XLORA = dict(xlora_depth=2, xlora_size=16, layerwise_scalings=True, softmax_temperature=0.7, enable_softmax=True,
             scaling_pass_value=0.25, global_scaling_weight=0.9, top_k_lora=None)


def base(family: str) -> T.PreTrainedModel:
    return T.AutoModelForCausalLM.from_pretrained(GOLDEN / f"arch_{family}", dtype=torch.float64,
                                                  attn_implementation="eager", use_cache=False).eval()


def randomize_lora(model, gen: torch.Generator) -> None:
    """Non-zero A and B, exactly float16-representable, large enough to move the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3).half().double())


def tidy(folder: Path, family: str) -> None:
    """The saved adapter in float32 (PEFT saves the float64 run's dtype; the values are float16-exact) and with the
    base named relatively."""
    from safetensors.torch import load_file
    st = folder / "adapter_model.safetensors"
    save_file({k: v.float().contiguous() for k, v in load_file(st).items()}, st)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = f"arch_{family}"
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=1) + "\n")


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].double().numpy().astype(np.float32)


def greedy(model, ids: np.ndarray) -> np.ndarray:
    ids, out = list(ids), []
    for _ in range(GREEDY):
        nxt = int(np.argmax(logits_of(model, np.array(ids))[-1]))
        out.append(nxt)
        ids.append(nxt)
    return np.array(out, np.int64)


def run_cases(model, prompts, arrays: dict, case: str) -> None:
    for i, ids in enumerate(prompts):
        arrays[f"{case}_logits_{i}"] = logits_of(model, ids)
    arrays[f"{case}_greedy"] = greedy(model, prompts[0])


def make(family: str) -> None:
    out = GOLDEN / f"lora_{family}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    gen = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    vocab = base(family).config.vocab_size
    prompts = [rng.integers(3, vocab, n).astype(np.int64) for n in PROMPT_LENGTHS]
    arrays = {f"prompts_{i}": p for i, p in enumerate(prompts)}
    run_cases(base(family), prompts, arrays, "base")
    adapters = PHI3_ADAPTERS if family == "phi3" else ADAPTERS
    for name, kw in adapters.items():  # make and save each adapter
        peft = get_peft_model(base(family), LoraConfig(init_lora_weights=False, **kw), adapter_name=name)
        randomize_lora(peft, gen)
        peft.save_pretrained(out / "tmp", selected_adapters=[name])
        shutil.move(out / "tmp" / name if (out / "tmp" / name).is_dir() else out / "tmp", out / name)
        shutil.rmtree(out / "tmp", ignore_errors=True)
        tidy(out / name, family)
    # reference: the saved adapters loaded back, alone and together
    model = PeftModel.from_pretrained(base(family), out / "a1", adapter_name="a1").eval()
    for name in adapters:
        if name != "a1":
            model.load_adapter(out / name, adapter_name=name)
    cases = (("a1", "a1"), ("a2", "a2"), ("rs", "rs"), ("both", ["a1", "a2"])) if family != "phi3" else (("a1", "a1"),)
    for case, active in cases:
        model.base_model.set_adapter(active)
        run_cases(model, prompts, arrays, case)
    if family == "llama":
        make_xlora(family, out, prompts, arrays, gen)
    np.savez_compressed(out / "logits.npz", **arrays)
    import peft as peft_pkg
    (out / "reference.json").write_text(json.dumps(
        {"transformers": T.__version__, "torch": torch.__version__, "peft": peft_pkg.__version__, "seed": SEED},
        indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"lora_{family}: {size / 1024:.1f} KiB")


def make_xlora(family: str, out: Path, prompts, arrays: dict, gen: torch.Generator) -> None:
    """PEFT's XLoraModel over a1 and a2 with a random classifier, saved in mistral.rs's X-LoRA layout."""
    xdir = out / "xlora"
    xdir.mkdir()
    for name in ("a1", "a2"):
        shutil.copytree(out / name, xdir / name)
    m = base(family)
    cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=m.config.hidden_size, xlora_dropout_p=0.0,
                      adapters={"0": str(out / "a1"), "1": str(out / "a2")}, **XLORA)  # PEFT names them 0, 1
    model = get_peft_model(m, cfg).eval()
    clf = model.base_model.internal_xlora_classifier
    linears = [mod for mod in clf.layers if isinstance(mod, torch.nn.Linear)]
    tensors = {}
    with torch.no_grad():
        for k, lin in enumerate(linears):
            lin.weight.copy_((torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64) * 0.5).half()
                             .to(lin.weight.dtype))
            lin.bias.copy_((torch.randn(lin.bias.shape, generator=gen, dtype=torch.float64) * 0.5).half()
                           .to(lin.bias.dtype))
            prefix = "last" if k == len(linears) - 1 else f"inner.{k}"
            tensors[f"{prefix}.weight"] = lin.weight.detach().float().contiguous()
            tensors[f"{prefix}.bias"] = lin.bias.detach().float().contiguous()
    save_file(tensors, xdir / "xlora_classifier.safetensors")
    n_layers = clf.n_layers
    (xdir / "xlora_config.json").write_text(json.dumps(
        {"hidden_size": m.config.hidden_size, "base_model_id": f"arch_{family}", "adapters": ["a1", "a2"],
         "use_bias": True, **XLORA}, indent=1) + "\n")
    layers = [n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith(".lora_A")]
    layers = [n[n.index("model.layers."):] for n in layers]  # HF module names, as mistral.rs orderings have them
    assert len(layers) == n_layers, (len(layers), n_layers)
    (xdir / "ordering.json").write_text(json.dumps(
        {"order": ["a1", "a2"], "layers": {n: i for i, n in enumerate(layers)}, "base_model_id": f"arch_{family}"},
        indent=1) + "\n")
    run_cases(model, prompts, arrays, "xlora")
    logits_of(model, prompts[0])  # the scalings of prompt 0: (n_0, lora layers, adapters)
    arrays["xlora_scalings_0"] = model.base_model.internal_xlora_scalings[0].double().numpy().astype(np.float32)


if __name__ == "__main__":
    for fam in sys.argv[1:] or ("llama", "mistral", "phi3"):
        make(fam)
