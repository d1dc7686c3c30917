"""The first run on a machine: Numba compiles the CPU kernels once (and caches them on disk), visibly.

    warm_up(model)     # after loading a model on the CPU: a notice, then every kernel it uses compiled

Without it the first answer sits silent for a minute or more while kernels compile at their first call. Here the
loader says so on stderr (with the elapsed seconds on a terminal), runs the model's prefill and decode paths once
on a throwaway cache, and says how long it took; the kernels land in Numba's on-disk cache, so the next run loads
them in well under a second. Nothing happens when the cache is warm.

Compiling the two paths in two processes at once was tried and measured slower (194 s against 90 s on this 2-core
machine under load: the paths share most kernels, so both processes compiled them).
"""

import sys
import threading
import time
from pathlib import Path

import numpy as np

PREFILL_ROWS = 16  # a prefill chunk this long takes every batched kernel (gated_act_rows starts at 16 rows)


def kernels(model) -> list:
    """The Numba dispatchers (with an on-disk cache) that a CPU model's prefill and decode call (run_path runs
    exactly these): the batched and one-token matmuls of its weights' families, the embedding's dequantizer, and
    the norm, activation, RoPE and attention kernels (MoE: the router too)."""
    from minirs.kernels.backend import Stack
    from minirs.kernels.cpu import activation, attention, dequant, matmul, moe, norm, rope
    from minirs.kernels.cpu.weights import QMatrix
    cfg = model.config
    mats = [model.output] + [w for lw in model.layers for w in vars(lw).values()]
    flat = []
    for w in mats:
        flat += list(w.parts) if isinstance(w, Stack) else w if isinstance(w, list) else [w]
    families = {w.family for w in flat if isinstance(w, QMatrix)}
    found = [attention.attention, attention.kv_write, rope.rope_,
             norm.layernorm if cfg.norm == "layer" else norm.rmsnorm]
    found += [activation.gated_act, activation.gated_act_rows] if cfg.gated_ffn or cfg.n_experts else [activation.act]
    found += [moe.topk_softmax] if cfg.n_experts else []
    for fam in families:
        batched_and_one = [getattr(matmul, f"_mm_{fam}"), getattr(matmul, f"_mv_{fam}")] if fam != "float" else []
        found += batched_and_one or [matmul._mm_float]
    if model.token_embd.family != "float":
        found.append(getattr(dequant, f"_deq_{model.token_embd.family}"))
    return found


def cached(model) -> bool:
    """Whether every kernel the model calls has a cache index on disk (then a run loads it instead of compiling)."""
    try:
        return all(Path(k._cache._cache_file._index_path).exists() for k in kernels(model))
    except AttributeError:  # a Numba without these internals: say nothing rather than guess
        return True


def run_path(model, part: str) -> None:
    """Run the model once the way `part` ("prefill" or "decode") does, on a throwaway one-slot cache (prefill asks
    for every row's logits, so the output projection takes its batched kernel too)."""
    from minirs.engine.kv_cache import KVCache
    n = PREFILL_ROWS if part == "prefill" else 1
    cache = KVCache(model.config, model.backend, 1, PREFILL_ROWS + 2, PREFILL_ROWS)
    ids = np.arange(n, dtype=np.int64) % model.config.vocab_size
    model.forward(ids, np.zeros(n, np.int64), np.arange(n, dtype=np.int64), cache)


def warm_up(model, log=None) -> float:
    """Compile what a CPU model needs if the cache is cold; returns the seconds it took (0 when warm)."""
    if model.backend.name != "cpu" or cached(model):
        return 0.0
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    log("minirs: compiling the CPU kernels for this machine (first run only, about a minute; cached for later)")
    t0 = time.perf_counter()
    ticker = _Ticker(t0) if sys.stderr.isatty() else None
    try:
        run_path(model, "prefill")
        run_path(model, "decode")
    finally:
        if ticker is not None:
            ticker.stop()
    took = time.perf_counter() - t0
    log(f"minirs: compiled in {took:.0f} s")
    return took


class _Ticker:
    """Elapsed seconds on one stderr line while the compile runs (a terminal only)."""

    def __init__(self, t0: float):
        self.t0, self.done = t0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(1.0):
            sys.stderr.write(f"\rminirs: compiling... {time.perf_counter() - self.t0:.0f} s")
            sys.stderr.flush()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        sys.stderr.write("\r\033[K")
