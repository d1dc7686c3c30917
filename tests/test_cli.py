"""The command line as a user runs it: stdout holds only the generated text, errors are one clear line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def run_cli(*args, timeout=600, input=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)


def test_raw_greedy_prints_only_the_continuation(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "The capital of France is", "--raw", "--max-tokens", "24",
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris.")
    assert "tok/s" in r.stderr and "tok/s" not in r.stdout
    # the same 24 tokens as HF transformers' greedy decoding (golden made by tests/golden/make_goldens.py)
    from minirs.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(smollm2_path)
    ref = np.load(GOLDEN / "logits_smollm2.npz")
    i = next(i for i in range(int(ref["n_prompts"])) if str(ref[f"prompt_{i}"]) == "The capital of France is")
    assert r.stdout == tok.decode([int(t) for t in ref[f"greedy_{i}"]]) + "\n"


def test_chat_once_and_interactive(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--prompt", "What is the capital of France?", "--max-tokens", "24",
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    r = run_cli("--gguf", str(smollm2_path), "--max-tokens", "8", "--temperature", "0",
                input="Hello!\n/reset\nWhat is 2+2?\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert "history cleared" in r.stderr


def test_chat_ends_cleanly_on_eof(smollm2_path):
    r = run_cli("--gguf", str(smollm2_path), "--max-tokens", "4", input="")
    assert r.returncode == 0, r.stderr


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


def test_bad_flag_values():
    r = run_cli("--max-tokens", "0", "--prompt", "x")
    assert r.returncode != 0 and "--max-tokens" in r.stderr
    r = run_cli("--top-p", "1.5", "--prompt", "x", "--gguf", "whatever.gguf")
    assert r.returncode != 0 and "top_p" in r.stderr
