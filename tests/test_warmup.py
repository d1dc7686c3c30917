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
    # SmolLM2 Q4_1: q4 matrices, a Q8_0 embedding tied to the output projection, RMSNorm, a gated FFN, no MoE
    assert {"_mm_q4", "_mv_q4", "_mm_q8", "_mv_q8", "_deq_q8", "rmsnorm", "gated_act", "attention"} <= names
    assert not names & {"topk_softmax", "layernorm", "act", "_mm_float", "_deq_q4"}


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
