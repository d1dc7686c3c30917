"""The command line as a user runs it: stdout holds only the generated text, errors are one line that names the fix."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minirs.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def run_cli(*args, timeout=600, input=None, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)


def test_raw_greedy_prints_only_the_continuation(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "The capital of France is", "--raw", "--max-tokens", "24",
                "--temperature", "0", "--repeat-penalty", "1")  # plain greedy: no default repeat penalty
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris.")
    assert "tok/s" in r.stderr and "tok/s" not in r.stdout
    # the same 24 tokens as HF transformers' greedy decoding (golden made by tests/golden/make_goldens.py)
    from minirs.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(smollm2_path)
    ref = np.load(GOLDEN / "logits_smollm2.npz")
    i = next(i for i in range(int(ref["n_prompts"])) if str(ref[f"prompt_{i}"]) == "The capital of France is")
    assert r.stdout == tok.decode([int(t) for t in ref[f"greedy_{i}"]]) + "\n"


def test_default_sampling_answers_the_readme_question(smollm2_path):
    # no sampling flags: the defaults (greedy, repeat penalty 1.1; bench/cli_defaults.py) answer it in English;
    # --quiet leaves stderr empty
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "What is the capital of France?", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
    assert r.stderr == ""


@pytest.mark.parametrize("flag, value, says", [
    ("--temperature", "-1", "--temperature must be in [0, 100] (got -1)"),
    ("--temperature", "inf", "--temperature must be in [0, 100]"),
    ("--top-p", "1.5", "--top-p must be in (0, 1]"),
    ("--top-p", "0", "--top-p must be in (0, 1]"),
    ("--top-k", "-1", "--top-k must be an integer >= 0"),
    ("--top-k", "2.5", "--top-k must be an integer >= 0 (got '2.5')"),
    ("--min-p", "1.1", "--min-p must be in [0, 1]"),
    ("--seed", "-3", "--seed must be an integer >= 0"),
    ("--seed", "x", "--seed must be an integer >= 0 (got 'x')"),
    ("--max-tokens", "0", "--max-tokens must be an integer >= 1"),
    ("--ctx-size", "8", "--ctx-size must be an integer >= 16"),
    ("--repeat-penalty", "0", "--repeat-penalty must be in [0.01, 100]"),
    ("--presence-penalty", "2.5", "--presence-penalty must be in [-2, 2]"),
    ("--frequency-penalty", "nan", "--frequency-penalty must be in [-2, 2]"),
])
def test_bad_flag_values_are_one_line_and_exit_2(capsys, flag, value, says):
    with pytest.raises(SystemExit) as e:
        main([flag, value, "--prompt", "x", "--gguf", "whatever.gguf"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_bad_flag_in_a_real_process():
    r = run_cli("--temperature", "-1", "--prompt", "x")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "minirs: error: --temperature must be in [0, 100] (got -1)\n"


def test_chat_once_and_interactive(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "What is the capital of France?", "--max-tokens", "24",
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    r = run_cli("--gguf", str(smollm2_path), "--max-tokens", "8", "--temperature", "0",
                input="Hello!\n/reset\nWhat is 2+2?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "history cleared" in r.stderr
    assert "> " not in r.stdout and r.stderr.count("> ") >= 3  # the prompt goes to stderr with the notices


def test_chat_ends_cleanly_on_eof(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--max-tokens", "4", input="")
    assert r.returncode == 0, r.stderr


def test_prompt_longer_than_the_context_names_ctx_size(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "tell me about Paris " * 20, "--ctx-size", "32")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "--ctx-size" in last and "32" in last


def test_model_without_chat_template_suggests_raw_or_a_builtin(gemma3_path):
    from minirs.formats import load_model_file
    assert "tokenizer.chat_template" not in load_model_file(gemma3_path).metadata  # Gemma-3-270M base
    r = run_cli("--gguf", str(gemma3_path), "--prompt", "Hi", "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for hint in ("no chat template", "--raw", "--chat-template", "chatml", "gemma", "llama-3"):
        assert hint in r.stderr


def test_broken_pipe_exits_quietly(smollm2_path):
    # `minirs --prompt ... | head -c 1`: the reader closes after the first piece of the answer
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--gguf", str(smollm2_path), "--prompt",
                          "Count from 1 to 50, one number per line.", "--max-tokens", "64", "--temperature", "0",
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout.read(1)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=600) in (0, 141)
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_models_lists_both_caches(smollm2_path, tmp_path):
    mine, hub = tmp_path / "minirs", tmp_path / "hub"
    (mine / "models").mkdir(parents=True)
    (mine / "models" / "small.gguf").symlink_to(smollm2_path)
    snap = hub / "models--someorg--Some-Model-GGUF" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "some-model.Q4_1.gguf").symlink_to(smollm2_path)
    r = run_cli("models", env={"MINIRS_CACHE": str(mine), "HF_HUB_CACHE": str(hub)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith(str(mine / "models" / "small.gguf")) and lines[0].split()[-2:] == ["llama", "Q4_1"]
    assert lines[1].startswith("someorg/Some-Model-GGUF:some-model.Q4_1.gguf") and "MiB" in lines[1]


def test_pull_checks_the_reference():
    r = run_cli("pull", "not-a-ref")
    assert r.returncode == 2 and "org/repo:file.gguf" in r.stderr and len(r.stderr.splitlines()) == 1


def test_missing_and_bad_files_give_one_line(tmp_path):
    r = run_cli("--gguf", str(tmp_path / "nope.gguf"), "--prompt", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "nope.gguf" in r.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    r = run_cli("--gguf", str(bad), "--prompt", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "bad.gguf" in r.stderr


def test_cuda_without_gpu_is_one_line():
    from minirs.load import cuda_available
    if cuda_available():
        pytest.skip("a GPU is present")
    r = run_cli("--device", "cuda", "--prompt", "x", "--gguf", "whatever.gguf")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "cuda" in r.stderr.lower()
