"""A Mistral folder served end to end: chat through the instruct format, fill-in-the-middle, `minirs demo` / `chat`.

The folders are tiny random models written at test time (tests/helpers_files.write_mistral_folder) around the real
tokenizer files of the mistral-common wheel. The reference for every prompt is mistral_common itself:
`encode_chat_completion` for chat requests and `encode_fim` for FIM requests, on the same tokenizer file. The
generated text of a random model means nothing; what is checked is which ids reach the model and what comes back.
"""

import io
import sys
from pathlib import Path

import pytest

from minirs import ChatCompletionRequest, CompletionRequest, RequestError, Runner, Which
from minirs.cli import main as cli_main
from minirs.tokenizer import Tokenizer
from minirs.tokenizer.mistral import load_mistral_tokenizer
from tests.helpers_files import mistral_tokenizer_file, write_mistral_folder

pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")

from mistral_common.protocol.fim.request import FIMRequest  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MCChatRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

V3 = "mistral_instruct_tokenizer_240323.model.v3"  # has [PREFIX] / [SUFFIX]: Codestral's FIM
V1 = "tokenizer.model.v1"  # no FIM tokens
T = 120  # seconds before a request counts as hung
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Weather in Paris?"}]


def folder_for(tmp_path_factory, name):
    file = mistral_tokenizer_file(name)
    return write_mistral_folder(tmp_path_factory.mktemp(name.split(".")[-1]), file,
                                load_mistral_tokenizer(file).vocab_size)


@pytest.fixture(scope="module")
def v3_folder(tmp_path_factory):
    return folder_for(tmp_path_factory, V3)


@pytest.fixture(scope="module")
def runner(v3_folder):
    r = Runner(Which.Plain(model_id=str(v3_folder)), device="cpu", max_seq_len=96)
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def reference():
    return MistralTokenizer.from_file(str(mistral_tokenizer_file(V3)))


def test_which_plain_loads_the_folder_with_its_instruct_tokenizer(runner):
    assert runner.tokenizer.instruct is not None and runner.tokenizer.instruct.version == "v3"
    assert runner.tokenizer.chat_template is None and runner.tokenizer.has_fim


def test_chat_is_encoded_as_mistral_common_does(runner, reference):
    want = reference.encode_chat_completion(MCChatRequest(messages=CHAT, tools=TOOLS)).tokens
    assert runner._chat_ids(ChatCompletionRequest(messages=CHAT, tools=TOOLS)) == want
    res = runner.send_chat_completion_request(ChatCompletionRequest(messages=CHAT, tools=TOOLS, max_tokens=3,
                                                                    temperature=0.0), T)
    assert res.usage.prompt_tokens == len(want) and res.usage.completion_tokens <= 3


@pytest.mark.parametrize("name", ["tekken_240911.json", "mistral_instruct_tokenizer_241114.model.v7"])
def test_tekken_and_v7_folders(tmp_path_factory, name):
    """A folder with tekken.json, and one with tokenizer.model.v7 (system prompt as [SYSTEM_PROMPT]): chat and FIM
    ids as mistral_common's, and a chat request served."""
    mt = MistralTokenizer.from_file(str(mistral_tokenizer_file(name)))
    r = Runner(Which.Plain(model_id=str(folder_for(tmp_path_factory, name))), device="cpu", max_seq_len=400)
    try:
        want = mt.encode_chat_completion(MCChatRequest(messages=CHAT, tools=TOOLS)).tokens
        assert r._chat_ids(ChatCompletionRequest(messages=CHAT, tools=TOOLS)) == want
        assert r._fim_ids("x = [", "]\n", 4) == mt.encode_fim(FIMRequest(prompt="x = [", suffix="]\n")).tokens
        res = r.send_chat_completion_request(ChatCompletionRequest(messages=CHAT, max_tokens=2), T)
        assert res.choices[0].finish_reason in ("length", "stop")
    finally:
        r.shutdown()


def test_fim_is_encoded_as_mistral_common_does_and_returns_the_middle(runner, reference):
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    want = reference.encode_fim(FIMRequest(prompt=prefix, suffix=suffix)).tokens
    assert runner._fim_ids(prefix, suffix, 4) == want
    req = {"max_tokens": 4, "temperature": 0.0}
    middle = runner.send_completion_request(CompletionRequest(prompt=prefix, suffix=suffix, **req), T)
    same_ids = runner.send_completion_request(CompletionRequest(prompt=want, **req), T)  # the ids, given directly
    assert middle.choices[0].text == same_ids.choices[0].text  # the middle alone: no suffix appended
    assert middle.usage.prompt_tokens == len(want)
    appended = runner.send_completion_request(CompletionRequest(prompt=prefix, suffix=suffix, fim=False, **req), T)
    assert appended.choices[0].text.endswith(suffix)  # fim=False: OpenAI's meaning, the suffix appended


def test_fim_that_cannot_fit_is_a_request_error(runner, v3_folder):
    long = " ".join(["word"] * 200)
    with pytest.raises(RequestError, match=r"invalid suffix: .* cannot fit the context of 96 tokens"):
        runner.send_completion_request(CompletionRequest(prompt="x = ", suffix=long, max_tokens=2), T)
    with pytest.raises(RequestError, match=r"invalid prompt: the prefix and suffix are \d+ tokens"):
        runner.send_completion_request(CompletionRequest(prompt=long, suffix="end", max_tokens=2), T)
    r = Runner(Which.Plain(model_id=str(v3_folder)), device="cpu", max_seq_len=96, truncate_sequence=True)
    try:  # truncate_sequence keeps the end of the prefix, nearest the gap
        ids = r._fim_ids(long + " tail", "end", 8)
        assert len(ids) <= 96 - 8 and r.tokenizer.decode(ids[-3:]).endswith("word tail")
        assert r.send_completion_request(CompletionRequest(prompt=long, suffix="end", max_tokens=2), T).choices
    finally:
        r.shutdown()


def test_fim_on_a_model_without_fim_tokens(tmp_path_factory):
    r = Runner(Which.Plain(model_id=str(folder_for(tmp_path_factory, V1))), device="cpu", max_seq_len=64)
    try:
        assert not r.tokenizer.has_fim
        res = r.send_completion_request(CompletionRequest(prompt="a", suffix="!", max_tokens=2), T)
        assert res.choices[0].text.endswith("!")  # no FIM tokens: the suffix is appended, as before
        with pytest.raises(RequestError, match="invalid fim: True, but .* has no fill-in-the-middle tokens"):
            r.send_completion_request(CompletionRequest(prompt="a", suffix="!", fim=True, max_tokens=2), T)
        with pytest.raises(RequestError, match="invalid fim: 'yes'"):
            r.send_completion_request(CompletionRequest(prompt="a", suffix="!", fim="yes", max_tokens=2), T)
    finally:
        r.shutdown()


def test_gguf_fim_metadata_orders_prefix_suffix_middle(smollm2_path):
    """A GGUF with tokenizer.ggml.fim_* ids (or CodeLlama's older prefix/suffix/middle keys) encodes
    [BOS] <PRE> prefix <SUF> suffix <MID>, llama.cpp's order: the documented Qwen2.5-Coder / StarCoder text
    '<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>' read with its special tokens. SmolLM2 has no FIM
    tokens, so three of its control tokens stand in for them."""
    from minirs.formats import load_model_file
    mf = load_model_file(smollm2_path)
    plain = Tokenizer.from_gguf(mf)
    assert not plain.has_fim
    with pytest.raises(Exception, match="no fill-in-the-middle tokens"):
        plain.encode_fim("a", "b")
    stand_in = ("<repo_name>", "<file_sep>", "<filename>")  # as <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>
    ids = [plain.special_texts[t] for t in stand_in]
    prefix, suffix = "def f(x):\n    ", "\n    return y"
    text = f"{stand_in[0]}{prefix}{stand_in[1]}{suffix}{stand_in[2]}"
    for keys in (("fim_pre", "fim_suf", "fim_mid"), ("prefix", "suffix", "middle")):
        md = dict(mf.metadata) | {f"tokenizer.ggml.{k}_token_id": i for k, i in zip(keys, ids)}
        tok = Tokenizer.from_gguf(type(mf)(mf.path, mf.format, mf.version, md, mf.tensors))
        assert tok.has_fim and tok.fim_ids == tuple(ids)
        assert tok.encode_fim(prefix, suffix) == tok.encode(text, parse_special=True)
        assert tok.encode_fim(prefix, suffix)[0] == ids[0]  # SmolLM2 adds no BOS


# ----- the commands -----------------------------------------------------------------------------------------------

def run_cli(argv, capsys, monkeypatch, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        rc = cli_main(argv)
    except SystemExit as e:  # argparse's exit on a bad flag
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_demo_generates_the_three_prompts(v3_folder, capsys, monkeypatch):
    rc, out, err = run_cli(["demo", str(v3_folder), "--max_tokens", "4", "--device", "cpu"], capsys, monkeypatch)
    assert rc == 0, err
    blocks = out.split("=====================\n")
    assert [b.split("\n")[0][:14] for b in blocks[:3]] == ["This is a test", "This is anothe", "This is a thir"]
    assert blocks[3] == "" and "temperature 0, top-p 0.8" in err


def test_chat_instruct_through_stdin(v3_folder, capsys, monkeypatch):
    argv = ["chat", str(v3_folder), "--instruct", "--max_tokens", "3", "--temperature", "0", "--seed", "1",
            "--system", "Be brief."]
    rc, out, err = run_cli(argv, capsys, monkeypatch, "Hello there\nAnd again\n")
    assert rc == 0, err
    assert len(out.splitlines()) == 2 and "3 new tokens" in err  # two answers of 3 tokens each
    assert "reused from the cache" in err  # the second turn's prompt starts with the first turn, still cached
    rc, out, err = run_cli(["chat", str(v3_folder), "--max_tokens", "2"], capsys, monkeypatch, "Once upon\n")
    assert rc == 0 and out.count("=====================") == 1  # plain text mode
    rc, out, err = run_cli(["chat", str(v3_folder), "--prompt", "Once upon", "--max_tokens", "2"], capsys,
                           monkeypatch)
    assert rc == 0 and len(out.splitlines()) == 1 and "2 new tokens" in err  # one plain continuation


def test_main_command_takes_the_folder_as_model(v3_folder, reference, capsys, monkeypatch):
    """`minirs --model FOLDER --prompt ...`: the main command's one-shot answer, its prompt in the instruct format."""
    argv = ["--model", str(v3_folder), "--prompt", "Hi", "--max-tokens", "2", "--temperature", "0", "--device", "cpu"]
    rc, out, err = run_cli(argv, capsys, monkeypatch)
    assert rc == 0, err
    want = reference.encode_chat_completion(MCChatRequest(messages=[{"role": "user", "content": "Hi"}])).tokens
    assert len(out.splitlines()) == 1 and f"minirs: {len(want)} prompt tokens" in err


def test_commands_refuse_what_they_cannot_do(v3_folder, capsys, monkeypatch):
    rc, _, err = run_cli(["demo", str(v3_folder), "--lora_path", "x.safetensors"], capsys, monkeypatch)
    assert rc == 1 and "--lora_path 'x.safetensors': LoRA adapter files are not supported" in err
    rc, _, err = run_cli(["chat", str(v3_folder), "--max_tokens", "0"], capsys, monkeypatch)
    assert rc == 2 and "--max_tokens must be an integer >= 1" in err
    rc, _, err = run_cli(["demo", str(Path(v3_folder) / "nothing")], capsys, monkeypatch)
    assert rc == 1 and "nothing" in err
    rc, _, err = run_cli(["demo", str(v3_folder), "--system", "Be brief."], capsys, monkeypatch)
    assert rc == 2 and "--system has no use in minirs demo" in err
    rc, _, err = run_cli(["chat", str(v3_folder), "--gguf", "x.gguf"], capsys, monkeypatch)
    assert rc == 2 and "takes the model as its FOLDER argument" in err
