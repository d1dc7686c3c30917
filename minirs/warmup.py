"""The first run on a machine: Numba compiles the CPU kernels once (and caches them on disk), visibly.

    warm_up(model)     # after loading a model on the CPU: a notice, then every kernel it uses compiled

Without it the first answer sits silent for a minute or more while kernels compile at their first call. Here the
loader says so on stderr (with the elapsed seconds on a terminal), runs the model's prefill and decode paths once
on a throwaway cache, and says how long it took; the kernels land in Numba's on-disk cache, so the next run loads
them in well under a second. Nothing happens when the cache is warm.

Compiling the two paths in two processes at once was tried and measured slower (194 s against 90 s on this 2-core
machine under load: the paths share most kernels, so both processes compiled them).

A first run need not wait, though. `first_run(model, path)` decides what the loader does with a cold cache:
    - "background" (the default; MINIRS_FIRST_RUN): a model whose float32 copy fits TWINS_BUDGET answers at once on
      the twins backend (kernels/twins.py: the NumPy statements of the kernels, nothing to compile), while
      `python -m minirs.warmup MODEL` compiles the kernels in a process of its own; when it is done, BackgroundCompile
      hands the compiled model to whoever asked (the engine swaps it in between two steps: Engine.replace_model).
      The process outlives a one-shot command, so the next run finds the cache warm.
    - "compile": compile here and now, with the notice (also for models too large for the twins).

    python -m minirs.warmup MODEL      # compile the CPU kernels MODEL needs into Numba's cache (one at a time)
"""

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PREFILL_ROWS = 16  # a prefill chunk this long takes every batched kernel (gated_act_rows starts at 16 rows)


def kernels(model) -> list:
    """The Numba dispatchers (with an on-disk cache) that a CPU model's prefill and decode call (run_path runs
    exactly these): the quantized matmul (and its one-thread form where a decode matmul is small enough for it),
    the float matmul where there are float weights, the embedding's dequantizer, and the norm, activation,
    attention-input (biases, q/k norms, RoPE, cache writes) and attention kernels (MoE: the router too)."""
    from minirs.kernels.backend import Stack
    from minirs.kernels.cpu import activation, attention, attn_inputs, dequant, matmul, moe, norm
    from minirs.kernels.cpu.weights import QMatrix
    cfg = model.config
    mats = [model.output] + [w for lw in model.layers for w in vars(lw).values()]
    flat = []
    for w in mats:
        flat += list(w.parts) if isinstance(w, Stack) else w if isinstance(w, list) else [w]
    quantized = [w for w in flat if isinstance(w, QMatrix) and w.family != "float"]
    found = [attention.attention, attn_inputs.attn_inputs, norm.layernorm if cfg.norm == "layer" else norm.rmsnorm]
    up_bias = any(lw.ffn_up_bias is not None for lw in model.layers)
    if cfg.gated_ffn and not cfg.n_experts:
        found += [activation.gated_halves, activation.gated_halves_rows]
    found += [activation.gated_act, activation.gated_act_rows] if cfg.n_experts or (cfg.gated_ffn and up_bias) else []
    found += [] if cfg.gated_ffn or cfg.n_experts else [activation.act]
    found += [moe.topk_softmax] if cfg.n_experts else []
    found += [matmul._mm_q] if quantized else []
    found += [matmul._mm_q_serial] if any(w.n_out * w.n_in < matmul.SERIAL_MACS for w in quantized) else []
    found += [matmul._mm_float] if any(isinstance(w, QMatrix) and w.family == "float" for w in flat) else []
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


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def warm_up(model, log=say) -> float:
    """Compile what a CPU model needs if the cache is cold; returns the seconds it took (0 when warm)."""
    if model.backend.name != "cpu" or cached(model):
        return 0.0
    log("minirs: compiling the CPU kernels for this machine (first run only, under a minute; cached for later)")
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


# ----- the first run in the background ---------------------------------------------------------------------------

FIRST_RUN_ENV = "MINIRS_FIRST_RUN"  # "background" or "compile"
TWINS_BUDGET = 2 << 30  # bytes of float32 weights the twins backend may take on a first run


def first_run_mode() -> str:
    mode = os.environ.get(FIRST_RUN_ENV, "background")
    if mode not in ("background", "compile"):
        from minirs.errors import MinirsError
        raise MinirsError(f"{FIRST_RUN_ENV}={mode!r}: expected 'background' or 'compile'")
    return mode


def _state_file(suffix: str) -> Path:
    """The lock or log of the background compile for this Numba cache (one per NUMBA_CACHE_DIR)."""
    from minirs.fetch import cache_dir
    key = hashlib.sha256(os.environ.get("NUMBA_CACHE_DIR", "").encode()).hexdigest()[:12]
    folder = cache_dir().parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"compile-{key}.{suffix}"


class BackgroundCompile:
    """Compiles the kernels a CPU model needs in a separate process; `then(fn)` calls fn(model) in a watcher thread
    once they are cached and loaded (at once if they already are). A failed compile is logged and nothing is handed
    over: the caller stays on the twins."""

    def __init__(self, model, path: Path, command: list[str] | None = None, poll_s: float = 1.0, log=say):
        self.model, self.path = model, Path(path)
        self.log_file = _state_file("log")
        self.command = command or [sys.executable, "-m", "minirs.warmup", str(self.path)]
        self.poll_s = poll_s
        self._log = log
        self._callbacks: list = []
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.failed: str | None = None
        self.process = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="minirs-compile-watch", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        with open(self.log_file, "ab") as log:  # the child keeps its own handle
            return subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)  # a Ctrl-C of the command does not stop the compile

    def _watch(self) -> None:
        while not cached(self.model):
            code = self.process.poll()
            if code is not None and not cached(self.model):
                self.failed = f"the background compile exited with status {code} (see {self.log_file})"
                self._log(f"minirs: {self.failed}; staying on the NumPy kernels")
                return
            time.sleep(self.poll_s)
        run_path(self.model, "prefill")  # load the cached kernels here, not in the engine's next step
        run_path(self.model, "decode")
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self.model)

    def then(self, fn) -> None:
        """Call fn(compiled_model) when the compile is done (now, in this thread, if it is)."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn(self.model)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


def main(argv=None) -> int:
    """Compile the kernels of one model into Numba's cache; one compile at a time per cache (a file lock), so two
    first runs side by side do not both compile."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m minirs.warmup MODEL", file=sys.stderr)
        return 2
    import fcntl  # POSIX: the file lock that keeps one compile per cache

    from minirs.kernels.cpu.backend import CpuBackend
    from minirs.models.llama import Transformer
    from minirs.models.source import open_model
    with open(_state_file("lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a compile already running
        print(f"minirs: compiling the CPU kernels for {argv[0]} (pid {os.getpid()})", flush=True)
        warm_up(Transformer.from_model_file(open_model(argv[0]), CpuBackend()), log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
