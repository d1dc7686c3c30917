"""The CLI's chat never dead-ends: a history past the context loses its oldest turns, says so, and answers; and
the sampling defaults come from the flag, else the model, else minirs.cli.DEFAULTS."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from minirs.cli import DEFAULTS, build_parser, chat_ids, fit_history, messages, model_sampling, sampling_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from minirs.tokenizer import Tokenizer
    return Tokenizer.from_gguf(smollm2_path)


def test_fit_history_drops_whole_old_turns_and_keeps_the_system_message(tok):
    turns = []
    for i in range(6):
        turns += [("user", f"question {i}: " + "tell me more about rivers " * 4), ("assistant", "rivers flow " * 8)]
    turns.append(("user", "and lakes?"))
    ids, dropped = fit_history(tok, "Be brief.", turns, ctx_len=160, max_tokens=16)
    assert dropped > 0 and dropped % 2 == 0  # pairs of user turn and answer
    assert ids == chat_ids(tok, messages("Be brief.", turns[dropped:]))
    assert len(ids) + 16 <= 160
    assert len(chat_ids(tok, messages("Be brief.", turns[dropped - 2:]))) + 16 > 160  # no more dropped than needed
    text = tok.decode(ids)
    assert "Be brief." in text and "and lakes?" in text
    # everything fits: nothing dropped; the newest message alone too long: all but it dropped, the caller says so
    assert fit_history(tok, None, turns, ctx_len=4096, max_tokens=256)[1] == 0
    ids, dropped = fit_history(tok, None, turns[:-1] + [("user", "word " * 300)], ctx_len=64, max_tokens=8)
    assert dropped == len(turns) - 1 and len(ids) >= 64


def test_chat_past_the_context_answers_every_turn(smollm2_path):
    # two long turns and their answers fill a 160-token context; each later long turn overflows it again
    long = "Here is a long story about a cat named Tom who lives in a small house near the sea. " * 2
    lines = [f"{long} What is the cat's name?", f"{long} Where does he live?", f"{long} Is he happy?",
             f"{long} What does he eat?", "Thanks!"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--gguf", str(smollm2_path), "--ctx-size", "160",
                        "--max-tokens", "12", "--temperature", "0"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("new tokens at") == len(lines)  # one timing line per answer: every turn was answered
    assert r.stderr.count("minirs: the history no longer fits 160 tokens: the oldest turns are dropped from now "
                          "on (the system message stays; /reset clears the history)\n") == 1  # said once a session
    assert r.stderr.count("no longer fits") == 1
    assert len([s for s in r.stdout.split("\n") if s.strip()]) >= len(lines)


def _write_gguf(path, **kv):
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in kv.items():
        (w.add_int32 if isinstance(v, int) else w.add_float32)(k, v)
    w.add_tensor("x", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_sampling_defaults_come_from_the_flag_then_the_model(tmp_path):
    f = tmp_path / "m.gguf"
    _write_gguf(f, **{"general.sampling.temp": 0.5, "general.sampling.top_k": 20,
                      "general.sampling.penalty_repeat": 1.25})
    rec = model_sampling(f)
    assert rec["top_k"] == 20 and abs(rec["temperature"] - 0.5) < 1e-6 and set(rec) == {"temperature", "top_k",
                                                                                         "repeat_penalty"}
    p = sampling_params(build_parser().parse_args(["--temperature", "0.9", "--seed", "4"]), rec)
    assert (p.temperature, p.top_k, p.repetition_penalty, p.seed) == (0.9, 20, 1.25, 4)
    assert (p.top_p, p.min_p) == (DEFAULTS["top_p"], DEFAULTS["min_p"])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_p": 0.8, "top_k": 5,
                                                               "repetition_penalty": 1.05}))
    assert model_sampling(folder) == {"temperature": 0.3, "top_p": 0.8, "top_k": 5, "repeat_penalty": 1.05}
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert model_sampling(folder) == {"temperature": 0.0}
    (folder / "generation_config.json").write_text(json.dumps({"top_p": 0.0, "temperature": -1, "top_k": 7}))
    assert model_sampling(folder) == {"top_k": 7}  # out of the flags' ranges: ignored, as if unstated
    assert sampling_params(argparse.Namespace(**{k: None for k in DEFAULTS}, seed=None), {}).temperature == \
        DEFAULTS["temperature"]
