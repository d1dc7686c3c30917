"""LoRA and X-LoRA through mistral.rs's API (Which.Lora / XLoraGGUF / ..., XLoraLoader), the engine's X-LoRA passes
and bad requests, on the tiny random llama of tests/golden (see test_lora.py; references from PEFT).

The base folder gets a byte-level tokenizer.json (the 256 byte tokens, no merges), so requests can carry text;
the golden prompts go in as token ids and the greedy tokens come back through top_logprobs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minirs import (
    ChatCompletionRequest,
    CompletionRequest,
    LlamaLoader,
    MistralLoader,
    ModelKind,
    RequestError,
    Runner,
    Which,
    XLoraLoader,
    XLoraQuantizedLoader,
)
from minirs.engine.kv_cache import KVCache
from minirs.errors import MinirsError
from minirs.load import load_model
from minirs.models.convert import convert
from minirs.models.xlora import load_xlora

GOLDEN = Path(__file__).parent / "golden"
LORA = GOLDEN / "lora_llama"
XL = LORA / "xlora"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """arch_llama with a byte-level tokenizer.json, and its F32 GGUF (with the same tokenizer beside it)."""
    d = tmp_path_factory.mktemp("lora_api")
    shutil.copytree(GOLDEN / "arch_llama", d / "base")
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))  # GPT-2's bytes_to_unicode
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    vocab = {chr(c): b for b, c in zip(bs, cs)}
    spec = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "decoder": {"type": "ByteLevel"},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "added_tokens": []}
    (d / "base" / "tokenizer.json").write_text(json.dumps(spec))
    convert(d / "base", d / "base-f32.gguf", "F32")
    return d


def greedy_ids(runner, ids, n=8, adapters=None):
    """Greedy tokens after a prompt of ids (the argmax of each step is its top-1 logprob entry)."""
    res = runner.send_completion_request(CompletionRequest(prompt=[int(i) for i in ids], max_tokens=n, temperature=0,
                                                           logprobs=True, top_logprobs=1, adapters=adapters))
    return [c.top_logprobs[0].token for c in res.choices[0].logprobs.content]


@pytest.fixture(scope="module")
def g():
    return np.load(LORA / "logits.npz")


def test_which_lora_and_request_adapters(base, g):
    r = Runner(which=Which.Lora(model_id=str(base / "base"), adapters_model_id=str(LORA), order=None,
                                tokenizer_json=str(base / "base" / "tokenizer.json")), chat_template="chatml")
    assert r.model.lora.names == ["a1", "a2", "rs"]
    assert greedy_ids(r, g["prompts_0"], adapters=["a1", "a2"]) == list(g["both_greedy"])
    assert greedy_ids(r, g["prompts_0"], adapters=["rs"]) == list(g["rs_greedy"])
    assert greedy_ids(r, g["prompts_0"], adapters=[]) == list(g["base_greedy"])
    r.activate_adapters(["a2"])  # the default for requests without their own list
    assert greedy_ids(r, g["prompts_0"]) == list(g["a2_greedy"])
    with pytest.raises(RequestError, match="unknown adapter 'zz'"):
        greedy_ids(r, g["prompts_0"], adapters=["zz"])
    with pytest.raises(RequestError, match="adapter_names"):
        r.activate_adapters(["zz"])
    with pytest.raises(RequestError, match="invalid adapters"):
        r.send_completion_request(CompletionRequest(prompt="hi", adapters="a1"))
    res = r.send_chat_completion_request(ChatCompletionRequest(
        model="default", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=4, temperature=0.1,
        top_p=0.1, presence_penalty=1.0, adapters=["a1"]))
    assert res.choices[0].finish_reason in ("stop", "length") and 1 <= res.usage.completion_tokens <= 4
    r.shutdown()


def test_lora_gguf_with_an_ordering_and_adapters_on_gguf(base, g, tmp_path):
    order = tmp_path / "ordering.json"
    order.write_text(json.dumps({"order": ["a2", "a1"], "base_model_id": "arch_llama"}))
    r = Runner(which=Which.LoraGGUF(tok_model_id=str(base / "base"), quantized_model_id=str(base),
                                    quantized_filename="base-f32.gguf", adapters_model_id=str(LORA),
                                    order=str(order)))
    assert r.model.lora.names == ["a2", "a1"]
    assert greedy_ids(r, g["prompts_0"]) == list(g["both_greedy"])  # every ordered adapter active by default
    r.shutdown()
    r = Runner(which=Which.GGUF(tok_model_id=str(base / "base"), quantized_model_id=str(base),
                                quantized_filename="base-f32.gguf", adapters=[str(LORA / "a1")]))
    assert greedy_ids(r, g["prompts_0"]) == list(g["a1_greedy"])
    r.shutdown()


def test_seed_xlora_examples(base, g):
    """Which.XLoraGGUF and the old XLoraLoader as mistral.rs's examples write them, with local paths."""
    r = Runner(which=Which.XLoraGGUF(tok_model_id=str(base / "base"), quantized_model_id=str(base),
                                     quantized_filename="base-f32.gguf", xlora_model_id=str(XL),
                                     order=str(XL / "ordering.json"), tgt_non_granular_index=None))
    assert greedy_ids(r, g["prompts_0"]) == list(g["xlora_greedy"])
    with pytest.raises(RequestError, match="X-LoRA"):
        greedy_ids(r, g["prompts_0"], adapters=["a1"])
    # n_choices copies the scaling pass's KV slot too: every choice is the greedy continuation
    res = r.send_completion_request(CompletionRequest(prompt=[int(i) for i in g["prompts_0"]], max_tokens=8,
                                                      temperature=0, n_choices=2))
    assert res.choices[0].text == res.choices[1].text
    r.shutdown()
    loader = XLoraLoader(MistralLoader, model_id=str(base / "base"), no_kv_cache=False, repeat_last_n=64,
                         xlora_model_id=str(XL), order_file=str(XL / "ordering.json"))
    runner = loader.load()
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        model="mistral", messages="already templated text", max_tokens=4, repetition_penalty=1.0, top_p=0.1,
        temperature=0.1))
    assert res.choices[0].finish_reason in ("stop", "length") and 1 <= res.usage.completion_tokens <= 4
    assert greedy_ids(runner, g["prompts_0"]) == list(g["xlora_greedy"])
    runner.shutdown()
    q = XLoraQuantizedLoader(LlamaLoader, is_gguf=True, model_id=str(base / "base"), quantized_model_id=str(base),
                             quantized_filename="base-f32.gguf", xlora_model_id=str(XL),
                             order_file=str(XL / "ordering.json"))
    assert q.kind is ModelKind.XLoraGGUF and isinstance(q.which(), Which.XLoraGGUF)


def test_xlora_logits_and_scalings_match_peft(g):
    m = load_model(GOLDEN / "arch_llama", device="cpu")
    xl = load_xlora(m, XL, XL / "ordering.json")
    for i in range(2):
        ids = g[f"prompts_{i}"]
        n = len(ids)
        cache = KVCache(m.config, m.backend, 2, 64, 64)
        hidden = m.forward(ids, np.ones(n, np.int64), np.arange(n), cache, coef=xl.dummy(n), hidden=True)
        coef = xl.coefs(m.backend, hidden)
        if i == 0:
            want = g["xlora_scalings_0"] * xl.config["global_scaling_weight"]
            assert np.abs(coef.reshape(want.shape) - want).max() < 1e-5
        got = m.forward(ids, np.zeros(n, np.int64), np.arange(n), cache, coef=coef)
        want = g[f"xlora_logits_{i}"]
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_tgt_non_granular_index_keeps_the_scalings(base, g):
    """Once k tokens are generated the scaling pass stops: the first k tokens are X-LoRA's, the rest come from the
    kept scalings of the last scaling pass."""
    which = Which.XLora(model_id=str(base / "base"), xlora_model_id=str(XL), order=str(XL / "ordering.json"),
                        tgt_non_granular_index=2)
    r = Runner(which=which)
    got = greedy_ids(r, g["prompts_0"])
    assert got[:2] == list(g["xlora_greedy"][:2])
    job_engine = r.engine
    calls = []
    orig = job_engine.runner.hidden
    job_engine.runner.hidden = lambda *a: calls.append(len(a[0])) or orig(*a)
    greedy_ids(r, g["prompts_0"])
    assert calls == [len(g["prompts_0"]), 1]  # the prompt, then one decode step (token 1); none after that
    r.shutdown()


def test_bad_which_and_xlora_folders(base, tmp_path):
    with pytest.raises(RequestError, match="adapters_model_id is required"):
        Which.LoraGGUF(quantized_model_id="x", quantized_filename="y")
    with pytest.raises(RequestError, match="tgt_non_granular_index"):
        Runner(which=Which.XLora(model_id=str(base / "base"), xlora_model_id=str(XL), tgt_non_granular_index=-1))
    with pytest.raises(RequestError, match="needs xlora_model_id"):
        LlamaLoader(model_id="x", kind=ModelKind.XLoraNormal)
    bad = tmp_path / "xl"
    shutil.copytree(XL, bad)
    cfg = json.loads((bad / "xlora_config.json").read_text())
    (bad / "xlora_config.json").write_text(json.dumps({**cfg, "hidden_size": 64}))
    m = load_model(base / "base", device="cpu")
    with pytest.raises(MinirsError, match="hidden_size 64 .* another base"):
        load_xlora(m, bad)
    (bad / "xlora_config.json").write_text(json.dumps({**cfg, "adapters": ["a1", "a3"]}))
    with pytest.raises(MinirsError, match="'a3'"):
        load_xlora(m, bad)
    (bad / "xlora_config.json").write_text(json.dumps([cfg]))  # an array, not an object: named, no TypeError
    with pytest.raises(MinirsError, match="xlora_config.json: expected a JSON object, got list"):
        load_xlora(m, bad)
    (bad / "ordering.json").write_text("[]")
    with pytest.raises(MinirsError, match="ordering.json: expected a JSON object, got list"):
        load_xlora(m, XL, bad / "ordering.json")
    order = json.loads((XL / "ordering.json").read_text())
    del order["layers"]["model.layers.1.mlp.down_proj"]
    (bad / "ordering.json").write_text(json.dumps(order))
    (bad / "xlora_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MinirsError, match="layers lack module 'model.layers.1.mlp.down_proj'"):
        load_xlora(m, bad, bad / "ordering.json")


def test_cli_lora_and_xlora_flags(base, capsys):
    from minirs.cli import main
    common = ["--model", str(base / "base"), "--raw", "--prompt", "Once upon", "--max-tokens", "6", "--temperature",
              "0", "--repeat-penalty", "1", "--quiet", "--device", "cpu"]
    assert main(common + ["--lora", f"{LORA / 'a1'},{LORA / 'a2'}"]) == 0
    cli_text = capsys.readouterr().out
    r = Runner(which=Which.Plain(model_id=str(base / "base"), adapters=[str(LORA / "a1"), str(LORA / "a2")]))
    res = r.send_completion_request(CompletionRequest(prompt="Once upon", max_tokens=6, temperature=0))
    plain = r.send_completion_request(CompletionRequest(prompt="Once upon", max_tokens=6, temperature=0,
                                                        adapters=[]))
    r.shutdown()
    assert cli_text.rstrip("\n") == res.choices[0].text != plain.choices[0].text
    assert main(common + ["--xlora", str(XL), "--xlora-order", str(XL / "ordering.json"),
                          "--tgt-non-granular-index", "3"]) == 0
    with pytest.raises(SystemExit) as e:
        main(common + ["--lora", str(LORA / "a1"), "--xlora", str(XL)])
    assert e.value.code == 2 and "exclude each other" in capsys.readouterr().err
    assert main(common + ["--lora", str(base)]) == 1  # no adapter there
    assert "no LoRA adapter" in capsys.readouterr().err
