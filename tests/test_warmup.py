"""The first-run compile notice (minirs/warmup.py): which kernels a model needs, whether they are cached, and the
notice and timing lines around compiling them."""

from pathlib import Path

import pytest

from minirs import warmup


@pytest.fixture(scope="module")
def model(smollm2_path):
    from minirs.load import load
    return load(smollm2_path, device="cpu", warm_up=False).model


def test_the_kernels_a_model_needs(model):
    names = {k.py_func.__name__ for k in warmup.kernels(model)}
    # SmolLM2 Q4_1: quantized matrices all above the one-thread size, a Q8_0 embedding tied to the output
    # projection, RMSNorm, a gated FFN, no MoE
    assert {"_mm_q", "_deq_q8", "rmsnorm", "gated_halves", "attn_inputs", "attention"} <= names
    assert not names & {"topk_softmax", "layernorm", "act", "gated_act", "_mm_float", "_deq_q4", "_mm_q_serial"}


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_the_warm_up_runs_every_kernel_it_waits_for(which):
    """In a fresh process (nothing loaded yet), the two warm-up paths call every kernel cached() checks: otherwise
    a kernel that never runs would keep its cache empty and the notice would come back on every run."""
    import subprocess
    import sys
    code = f"""
from minirs.fetch import {which}_path
from minirs.load import load
from minirs import warmup
model = load({which}_path(), device="cpu", warm_up=False).model
warmup.run_path(model, "prefill")
warmup.run_path(model, "decode")
print([k.py_func.__name__ for k in warmup.kernels(model) if not k.signatures])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cached_reads_the_index_files(model, monkeypatch):
    assert warmup.cached(model)  # the tests ran these kernels already
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert not warmup.cached(model)


def test_a_cold_cache_gets_a_notice_and_a_timing(model, monkeypatch):
    lines = []
    assert warmup.warm_up(model, log=lines.append) == 0.0 and not lines  # warm: nothing said, nothing run
    monkeypatch.setattr(warmup, "cached", lambda m: False)
    took = warmup.warm_up(model, log=lines.append)
    assert took > 0 and len(lines) == 2
    assert lines[0].startswith("minirs: compiling the CPU kernels") and "first run only" in lines[0]
    assert lines[1].startswith("minirs: compiled in")


# ----- a first run answers on the twins while the kernels compile in the background -----

def test_the_engine_moves_to_the_compiled_model_mid_request(smollm2_path, model):
    """Engine.replace_model swaps the twins for the compiled kernels between two steps of a running request: the
    request goes on from its KV cache and its greedy tokens are those of a run on the compiled kernels alone."""
    from minirs.engine import Engine, GenParams, Job
    from minirs.kernels.twins import TwinsBackend
    from minirs.load import load
    loaded = load(smollm2_path, backend=TwinsBackend(), warm_up=False)
    ids = loaded.tokenizer.encode("The capital of France is", add_special_tokens=True)

    def run(engine, swap_to=None):
        job = engine.submit(Job(ids, GenParams(max_tokens=10), loaded.tokenizer, stream=True))
        for k, _ in enumerate(job.stream_events(timeout=120)):
            if k == 2 and swap_to is not None:
                engine.replace_model(swap_to)
        engine.shutdown()
        return job.seqs[0].generated, engine.model

    want, _ = run(Engine(model, loaded.tokenizer, max_seqs=2, ctx_len=64))
    got, last = run(Engine(loaded.model, loaded.tokenizer, max_seqs=2, ctx_len=64), swap_to=model)
    assert last is model and got == want


def test_replace_model_refuses_another_model(smollm2_path, gemma3_path, model):
    from minirs.engine import Engine
    from minirs.errors import MinirsError
    from minirs.load import load
    gemma = load(gemma3_path, device="cpu", warm_up=False, tokenizer=False).model
    with pytest.raises(MinirsError, match="does not fit"):
        Engine(model, None, max_seqs=1, ctx_len=32).replace_model(gemma)


def test_background_compile_hands_over_or_says_why_not(model, monkeypatch, tmp_path):
    import sys
    monkeypatch.setenv("MINIRS_CACHE", str(tmp_path))  # its log beside a throwaway cache
    monkeypatch.setattr(warmup, "cached", lambda m: False)
    lines = []
    failing = warmup.BackgroundCompile(model, Path("m.gguf"), [sys.executable, "-c", "raise SystemExit(3)"],
                                       poll_s=0.05, log=lines.append)
    failing._thread.join(60)
    assert failing.failed and "status 3" in lines[0] and not failing.done.is_set()

    state = {}
    monkeypatch.setattr(warmup, "cached", lambda m: "p" in state and state["p"].poll() is not None)  # once it ran
    got = []
    ok = warmup.BackgroundCompile(model, Path("m.gguf"), [sys.executable, "-c", "print('compiling')"], poll_s=0.05)
    ok.then(got.append)
    state["p"] = ok.process
    assert ok.wait(60) and got == [model] and ok.failed is None
    ok.then(got.append)  # after the fact: called at once
    assert got == [model, model]
    assert "compiling" in ok.log_file.read_text()


def test_a_first_run_answers_on_the_twins(smollm2_path, tmp_path):
    """The README command with an empty Numba cache: a notice, a correct answer from the twins, and a compile left
    running in its own process (stopped here)."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    env = dict(os.environ, MINIRS_FIRST_RUN="background", NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               MINIRS_CACHE=str(tmp_path))
    cli = "import sys; from minirs.cli import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", cli, "--gguf", str(smollm2_path), "--prompt",
                          "What is the capital of France?", "--max-tokens", "12"],
                         capture_output=True, text=True, timeout=600, env=env)
    log = next(tmp_path.glob("compile-*.log"))
    deadline = time.time() + 60
    while not (m := re.search(r"\(pid (\d+)\)", log.read_text())) and time.time() < deadline:
        time.sleep(0.2)
    if m:
        os.killpg(int(m.group(1)), signal.SIGKILL)  # the compile's own session
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "compile in the background" in out.stderr and "twins" not in out.stdout
    assert m, f"no background compile started: {log.read_text()!r}"
