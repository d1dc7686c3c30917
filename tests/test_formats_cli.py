"""python -m minirs.formats: the summary of real and helper-written files, and one-line errors."""

import subprocess
import sys

from helpers_files import write_ggml, write_safetensors_folder

from minirs.formats.__main__ import main


def test_summary_of_gemma(gemma3_path, capsys):
    assert main([str(gemma3_path), "--tensors"]) == 0
    out = capsys.readouterr().out
    for want in ["format:          gguf v3", "architecture:    gemma3", "context length:  32768", "Q4_K",
                 "tokenizer:       llama (262,144 tokens)", "chat template:", "token_embd.weight", "Q6_K"]:
        assert want in out, want


def test_summary_of_ggml_and_safetensors(tmp_path, capsys):
    assert main([str(write_ggml(tmp_path / "m.bin")), "--gqa", "2"]) == 0
    out = capsys.readouterr().out
    assert "ggjt v3" in out and "context length:  2048" in out and "Q4_0" in out
    assert main([str(write_safetensors_folder(tmp_path / "st"))]) == 0
    out = capsys.readouterr().out
    assert "safetensors v1" in out and "architecture:    llama" in out and "tokenizer:       none" in out


def test_error_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    r = subprocess.run([sys.executable, "-m", "minirs.formats", str(bad)], check=False,
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "absurd counts" in r.stderr


def test_reader_that_stops_early_is_no_error(tmp_path):
    """`python -m minirs.formats FILE --tensors | head`: the pipe closes before the table is written."""
    path = write_ggml(tmp_path / "m.bin")
    p = subprocess.Popen([sys.executable, "-m", "minirs.formats", str(path), "--tensors"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first write: that write fails with EPIPE
    err = p.stderr.read().decode()
    p.stderr.close()
    assert (p.wait(timeout=60), err) == (0, "")
