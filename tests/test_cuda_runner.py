"""A Runner on the GPU gives its memory and its engine thread back when it is closed, used as a context manager,
deleted, or replaced (a notebook cell run again): CuPy's pool and the device's free memory return to what they
were after the first one closed, round after round. Skips cleanly without CuPy or a GPU; needs the SmolLM2 file
(MINIRS_SMOLLM2=path or the minirs cache: the GPU machine has no network).
"""

import gc
import os
import threading
from pathlib import Path

import pytest

from minirs.load import cuda_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")]

SLACK = 32 << 20  # bytes the device's free memory may drift by between rounds (driver bookkeeping)


def _smollm2() -> Path:
    from minirs.errors import FetchError
    from minirs.fetch import smollm2_path
    if os.environ.get("MINIRS_SMOLLM2"):
        return Path(os.environ["MINIRS_SMOLLM2"])
    try:
        return smollm2_path()
    except FetchError as e:
        pytest.skip(f"no SmolLM2 file here and no network: {e}")


def _engines() -> int:
    return sum(t.name == "minirs-engine" and t.is_alive() for t in threading.enumerate())


def test_runner_close_gives_the_gpu_memory_back():
    import cupy as cp

    from minirs import ChatCompletionRequest, Runner, Which
    path = _smollm2()
    pool = cp.get_default_memory_pool()

    def make():
        r = Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name), device="cuda",
                   max_seqs=4, max_seq_len=1024)
        for stream in (False, True):  # a prefill, and decode steps through the captured graphs
            res = r.send_chat_completion_request(ChatCompletionRequest(
                messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, stream=stream))
            list(res) if stream else res.choices[0].message.content
        return r

    def device_used() -> int:
        gc.collect()
        free, total = cp.cuda.runtime.memGetInfo()
        return total - free

    engines_before = _engines()  # other tests of the session may hold Runners of their own
    r = make()
    loaded = device_used()
    r.close()
    r.close()  # twice is harmless
    base_pool, base_used, base_device = pool.total_bytes(), pool.used_bytes(), device_used()
    assert _engines() == engines_before and base_used <= base_pool < 8 << 20, (base_used, base_pool)  # nothing big
    assert loaded - base_device > path.stat().st_size // 2  # the weights (and the KV cache) went back
    with pytest.raises(Exception, match="shut down"):
        r.send_chat_completion_request(ChatCompletionRequest(messages="x", max_tokens=1))

    def check(round_name):
        assert _engines() == 0, round_name
        assert (pool.total_bytes(), pool.used_bytes()) == (base_pool, base_used), round_name
        assert abs(device_used() - base_device) < SLACK, (round_name, device_used() - base_device)

    for i in range(2):
        with make() as r:
            assert _engines() == 1
        check(f"with, round {i}")
        r = make()
        del r  # dropped: its finalizer closes it
        check(f"del, round {i}")
        r = make()
        r = make()  # a re-run cell: the first one is dropped while the second loads
        r.close()
        check(f"replaced, round {i}")
