"""Runner.close() on the CPU: the engine thread ends, the model is let go (nothing keeps it alive), later requests
raise; `with` closes, and a dropped Runner closes itself. (On a GPU, tests/test_cuda_runner.py checks that the
device memory returns.)"""

import gc
import threading
import weakref

import numba
import pytest

from minirs import ChatCompletionRequest, MinirsError, Runner, Which


def _engines() -> int:
    return sum(t.name == "minirs-engine" and t.is_alive() for t in threading.enumerate())


def test_close_ends_the_thread_and_frees_the_model(smollm2_path):
    old = numba.get_num_threads()
    numba.set_num_threads(1)

    def make():
        r = Runner(Which.GGUF(quantized_model_id=str(smollm2_path.parent), quantized_filename=smollm2_path.name),
                   device="cpu", max_seqs=2, max_seq_len=128)
        assert r.send_chat_completion_request(ChatCompletionRequest(messages="Hi", max_tokens=2)).choices
        return r, weakref.ref(r.model), weakref.ref(r.engine.cache)

    try:
        before = _engines()
        with make()[0] as r:
            assert _engines() == before + 1
        assert _engines() == before
        with pytest.raises(MinirsError, match="shut down"):
            r.send_chat_completion_request(ChatCompletionRequest(messages="Hi", max_tokens=2))
        r, model, cache = make()
        r.close()
        r.close()
        gc.collect()
        assert model() is None and cache() is None and _engines() == before

        r, model, cache = make()
        del r  # dropped (a notebook cell run again): the finalizer closes it
        gc.collect()
        assert model() is None and cache() is None and _engines() == before
    finally:
        numba.set_num_threads(old)
