"""Single-sequence generation: chunked prefill, then one decode step per token, for tests and benchmarks.

A thin loop over the engine's own pieces (engine/runner.py's ModelRunner with a KV cache of one sequence's slot and
the runner's spare, the pure sampling functions): the same forward, the same captured prefill and decode steps on
CUDA, as the batching engine.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from minirs.engine.kv_cache import KVCache
from minirs.engine.request import check_prompt
from minirs.engine.runner import ModelRunner
from minirs.engine.slots import reusable_prefix
from minirs.errors import RequestError
from minirs.sampling import SamplingParams, sample


@dataclass
class GenStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prompt_s: float = 0.0  # prefill time, up to the first sampled token
    decode_s: float = 0.0
    finish_reason: str = ""
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0


class Generator:
    """Generates from one sequence at a time with a model and its own one-slot KV cache."""

    def __init__(self, model, ctx_len: int = 4096, max_chunk: int = 256):
        self.model = model
        self.ctx_len = min(ctx_len, model.config.context_length)
        self.max_chunk = max_chunk
        # where prefill is captured: the slot the captured prefill runs in (runner.py)
        spare = 1 if model.backend.graphs and model.backend.prefill_graphs else None
        self.cache = KVCache(model.config, model.backend, 1 + (spare is not None), self.ctx_len, max_chunk)
        self.runner = ModelRunner(model, self.cache, spare_slot=spare)
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds, in order
        self.stats = GenStats()

    def reusable_prefix(self, ids: list[int]) -> int:
        """How many leading ids can be taken from the cache instead of recomputed (reusable_prefix)."""
        return reusable_prefix(self.model.config, self.cached, ids, self.max_chunk)

    def prefill(self, ids: list[int], start: int = 0) -> np.ndarray:
        """Feed ids at positions start.. in chunks; return the logits after the last one."""
        logits = None
        for c in range(0, len(ids), self.max_chunk):
            chunk = ids[c:c + self.max_chunk]
            pos = range(start + c, start + c + len(chunk))
            logits = self.runner.forward(chunk, [0] * len(chunk), pos, [len(chunk) - 1])[0]
        return logits

    def decode(self, tok: int, pos: int) -> np.ndarray:
        """Logits after one token at position pos (on CUDA from the captured decode step)."""
        return self.runner.decode([tok], [0], [pos])[0]

    def generate(self, ids: list[int], params: SamplingParams, max_tokens: int, stop_ids=()) -> Iterator[int]:
        """Yield new token ids after the prompt `ids`, reusing whatever prefix of it the cache already holds.

        A stop id ends generation and is not yielded.
        """
        ids = [int(i) for i in ids]
        check_prompt(ids, self.ctx_len, self.model.config.vocab_size)
        if max_tokens <= 0:
            raise RequestError(f"invalid max_tokens: {max_tokens}")
        rng = np.random.default_rng(params.seed)
        start = self.reusable_prefix(ids)
        st = self.stats = GenStats(prompt_tokens=len(ids) - start)
        t0 = time.perf_counter()
        self.cached = ids[:start]
        logits = self.prefill(ids[start:], start)
        self.cached = list(ids)
        pos = len(ids)
        stop = set(stop_ids)
        st.finish_reason = "length"
        t1 = None
        while True:
            tok = sample(logits, params, rng)
            st.new_tokens += 1
            if t1 is None:
                t1 = time.perf_counter()
                st.prompt_s = t1 - t0
            st.decode_s = time.perf_counter() - t1
            if tok in stop:
                st.finish_reason = "stop"
                return
            yield tok
            if st.new_tokens >= max_tokens or pos + 1 >= self.ctx_len:
                return
            logits = self.decode(tok, pos)
            self.cached.append(tok)
            pos += 1
