"""Continuous batching: one engine thread runs up to max_seqs sequences together, one model forward per step.

    engine = Engine(model, tokenizer, max_seqs=16)
    job = engine.submit(Job(prompt_ids, GenParams(...), tokenizer))    # from any thread
    for ev in job.stream_events(): ...                                 # Delta events; or job.wait()

Each step: admit waiting jobs while KV slots are free, drop cancelled ones, then run
  - one prefill chunk (up to `max_chunk` prompt tokens) per prefilling sequence, within a per-step token budget,
    so that a long prompt never stalls the sequences that are decoding, and
  - one decode row per running sequence (its latest token at its position, in its own cache slot).
A job asking for n sequences (n_choices / best_of) prefills its prompt once and copies the KV slot.

Row invariance. A batched greedy run must give each request the same tokens as running it alone, so a row's
logits may not depend on the other rows of its forward. On the CPU every kernel computes each row on its own, so
one forward per step is exact there. `row_invariant=True` is for backends whose large matmuls round with the batch
(cuBLAS in CUDA prefill, the tensor-core GEMVs): each prefill chunk then runs in its own forward, with chunk
boundaries fixed by the sequence alone, and the backend keeps every GEMV batch-invariant (backend.batch_invariant).

On a backend with graphs (CUDA) the decode rows of a step go through the model runner's captured steps (runner.py),
and so does each prefill chunk that starts its prompt; later chunks run eagerly. A failed step is retried job by
job, so a request that breaks the forward ends alone and the others go on.

LoRA adapters (models/lora.py) are chosen per job: each row of a forward carries its job's coefficients, so one
forward mixes adapters. An X-LoRA model (models/xlora.py) runs each step twice: the scaling pass over the rows that
still need one, in each sequence's second KV slot, then the real pass with the classifier's scalings; its steps
run eagerly and its slots are not reused.

Grammars. A row whose job has a grammar draws under its allowed-token mask (minirs.grammar). Where the host draws,
the masks of the step's rows are computed on a worker thread while the forward runs (llguidance drops the GIL), and
applied on the host; where the device draws (the captured step's argmax or sampler), they are computed first and go
to the device with the step's inputs. `mask_s` counts the time the engine thread spent on masks (computing them, or
waiting for the worker): the part of their cost that the forward did not hide.
"""

import contextlib
import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minirs.engine.kv_cache import KVCache
from minirs.engine.request import Job, check_prompt
from minirs.engine.runner import GRAPH_BUCKETS, ModelRunner
from minirs.engine.slots import SlotPool
from minirs.engine.threads import ThreadChooser
from minirs.errors import MinirsError, RequestError
from minirs.grammar import fill_masks
from minirs.sampling import Sampled


class Engine:
    """Owns the model, its KV cache and slots; a background thread runs the batch loop."""

    def __init__(self, model, tokenizer, max_seqs: int = 16, ctx_len: int = 4096, max_chunk: int = 256,
                 row_invariant: bool | None = None, prefill_budget: int | None = None,
                 graphs: bool | None = None, prefix_reuse: bool = True):
        for name, value, low in (("max_seqs", max_seqs, 1), ("ctx_len", ctx_len, 2), ("max_chunk", max_chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RequestError(f"invalid {name}: {value!r} (must be an integer >= {low})")
        if prefill_budget is not None and (not isinstance(prefill_budget, int) or prefill_budget < 1):
            raise RequestError(f"invalid prefill_budget: {prefill_budget!r} (must be an integer >= 1)")
        be = model.backend
        self.model, self.tokenizer = model, tokenizer
        self.max_seqs = max_seqs
        self.ctx_len = min(ctx_len, model.config.context_length)
        self.max_chunk = max_chunk
        # None: exact wherever that costs something, i.e. where batched kernels round with the batch (graphs: CUDA)
        self.row_invariant = be.graphs if row_invariant is None else row_invariant
        self.prefill_budget = prefill_budget or max_chunk
        graphs = (be.graphs if graphs is None else graphs) and model.xlora is None
        prefix_reuse = prefix_reuse and model.xlora is None
        self.scaling_slots = max_seqs + graphs  # X-LoRA: a sequence's scaling pass uses slot + this
        self.cache = KVCache(model.config, be, self.scaling_slots * (1 + (model.xlora is not None)), self.ctx_len,
                             max_chunk)  # + the padding slot
        self.runner = ModelRunner(model, self.cache, graphs, spare_slot=max_seqs if graphs else None)
        self.slots = SlotPool(model.config, max_seqs, max_chunk, self.row_invariant, prefix_reuse)
        self.vocab = model.config.vocab_size
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.steps = 0
        self.overlap_masks = True  # grammar masks on a worker thread while the forward runs (False: before it)
        self.mask_s = 0.0  # engine-thread seconds spent on grammar masks (see the module docstring)
        self._mask_worker: ThreadPoolExecutor | None = None
        self._next_model = None  # replace_model's model, swapped in before the next step
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = False
        # Numba's thread count is per thread: the engine thread chooses among counts up to the one of the thread that
        # made the engine, by measured step time (threads.py: other processes may hold cores)
        numba = sys.modules.get("numba")
        self._threads = ThreadChooser(numba.get_num_threads()) if numba is not None else None

    @property
    def graphs(self) -> bool:
        return self.runner.graphs

    def load(self) -> tuple[int, int]:
        """(jobs waiting for KV slots, sequences running): a snapshot for monitoring, from any thread."""
        return len(self.waiting) + self.inbox.qsize(), sum(len(j.seqs) for j in list(self.active))

    # ----- the caller's side ---------------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        if self._closing:  # close() has dropped the model: nothing below may look at it (checked again under the lock)
            raise MinirsError("the engine is shut down")
        if job.params.n > self.max_seqs:
            raise RequestError(f"n_choices/best_of of {job.params.n} exceeds max_seqs={self.max_seqs}")
        check_prompt(job.prompt_ids, self.ctx_len, self.vocab)
        self._adapters(job)
        with self._lock:
            if self._closing:
                raise MinirsError("the engine is shut down")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="minirs-engine", daemon=True)
                self._thread.start()
        self.inbox.put(job)
        return job

    def _adapters(self, job: Job) -> None:
        """Resolve the job's LoRA adapters (None: the model's active ones) to its coefficient row, refusing unknown
        names before the job joins a batch."""
        lora = self.model.lora
        if self.model.xlora is not None:
            if job.adapters:
                raise RequestError(f"invalid adapters: {list(job.adapters)!r} (an X-LoRA model mixes its adapters "
                                   "itself; they cannot be chosen per request)")
            return
        if lora is None:
            if job.adapters:
                raise RequestError(f"invalid adapters: {list(job.adapters)!r} (the model has no LoRA adapters)")
            return
        names = tuple(lora.active) if job.adapters is None else job.adapters
        bad = [n for n in names if n not in lora.names]
        if bad:
            raise RequestError(f"invalid adapters: unknown adapter {bad[0]!r} (loaded: {', '.join(lora.names)})")
        job.adapters = names
        job.coef = lora.row(names) if names else None

    def replace_model(self, model) -> None:
        """Run on `model` from the next step on: the same weights on a backend with the same KV cache layout (a
        first run moves from the twins to the compiled CPU kernels this way: minirs.warmup). Safe from any thread;
        sequences in flight carry on from their cache."""
        old = self.model
        if model.config != old.config or model.backend.kv_dtype != old.backend.kv_dtype or \
                model.backend.graphs != old.backend.graphs:
            raise MinirsError(f"replace_model: {model.backend.name} model does not fit this engine's "
                              f"{old.backend.name} model and cache (config, KV dtype and graphs must match)")
        self._next_model = model

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closing = True
        self.inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._mask_worker is not None:
            self._mask_worker.shutdown(wait=False)

    def close(self) -> None:
        """Shut down, then let go of the model, the KV cache and the captured graphs (their memory is freed once
        nothing else holds them); a closed engine takes no more jobs."""
        self.shutdown()
        self.model = self.cache = self.runner = self.slots = self._next_model = None

    # ----- the engine thread ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        self.model.backend.use_in_thread()
        while True:
            idle = not self.active and not self.waiting
            try:
                incoming = [self.inbox.get(timeout=0.5)] if idle else []
            except queue.Empty:
                continue
            while not self.inbox.empty():
                incoming.append(self.inbox.get_nowait())
            if None in incoming:  # shutdown
                self.waiting.extend(j for j in incoming if j is not None)
                self._fail(list(self.active) + list(self.waiting), MinirsError("the engine was shut down"))
                self.waiting.clear()
                return
            self.waiting.extend(incoming)
            if self._next_model is not None:
                self._swap_model()
            self._admit()
            self._reap()
            if self.active:
                self._step()

    def _swap_model(self) -> None:
        model, self._next_model = self._next_model, None
        self.model = model
        self.runner = ModelRunner(model, self.cache, self.runner.graphs, spare_slot=self.runner.spare_slot)
        model.backend.use_in_thread()

    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self.waiting.popleft()
                self._finish_job(job, "canceled")
                continue
            if len(self.slots.free) < job.params.n:
                return
            self.waiting.popleft()
            slots, reuse = self.slots.take(job.prompt_ids, job.params.n, job.adapters or None)
            for s, slot in zip(job.seqs, slots):
                s.slot = slot
            job.seqs[0].n_cached = job.cached_tokens = reuse
            job.t_start = time.perf_counter()
            self.active.append(job)

    def _reap(self) -> None:
        for job in list(self.active):
            if job.cancelled.is_set():
                self._release(job, "canceled")

    def _release(self, job: Job, reason: str | None = None) -> None:
        """End an active job: give its slots back (remembering what they hold), then finish it."""
        self.active.remove(job)
        for s in job.seqs:
            if s.slot >= 0:
                self.slots.give_back(s.slot, s.ids[:s.n_cached], len(job.prompt_ids), job.adapters or None)
                s.slot = -1
        self._finish_job(job, reason)

    def _finish_job(self, job: Job, reason: str | None = None) -> None:
        for s in job.seqs:
            if reason and not s.done:
                s.finish_reason = reason
        job.t_end = time.perf_counter()
        if not job.t_prompt_done:
            job.t_prompt_done = job.t_end
        job.events.put(None)
        job.finished.set()

    def _fail(self, jobs: list[Job], err: BaseException) -> None:
        for job in jobs:
            job.error = err
            if job in self.active:
                self._release(job, "error")
            else:
                self._finish_job(job, "error")

    # ----- one step ------------------------------------------------------------------------------------------------

    def _step(self) -> None:
        """Run this step's rows. If that fails, each job runs a step of its own from where it stands (a repeated
        forward rewrites the same KV rows with the same values), so only a job that fails alone ends."""
        self.runner.batch_invariant(self.row_invariant)
        try:
            parts = self._plan(self.active)
            with self._timed(parts):
                self._execute(parts)
        except Exception:  # noqa: BLE001 - find the job that breaks the forward
            for job in list(self.active):
                try:
                    self._execute(self._plan([job]))
                except Exception as e:  # noqa: BLE001 - a failed forward ends the job in it, never the loop
                    self._fail([job], e if isinstance(e, MinirsError) else MinirsError(f"engine step failed: {e!r}"))
        self.steps += 1

    @contextlib.contextmanager
    def _timed(self, parts: list[tuple]):
        """Run a step on the CPU thread count the chooser picks for its kind (decode rows, or a step with prefill
        and its token count to a power of two), and tell it how long the step took."""
        if self._threads is None or not self.model.backend.numba_threads:
            yield
            return
        tokens = sum(len(ids) for _, ids, _ in parts)
        prefill = any(p[0].n_cached < len(p[0].job.prompt_ids) for p in parts)
        key = ("prefill", 1 << max(tokens - 1, 0).bit_length()) if prefill else ("decode", tokens)
        threads = self._threads.pick(key)
        sys.modules["numba"].set_num_threads(threads)
        t0 = time.perf_counter()
        yield
        self._threads.record(key, threads, time.perf_counter() - t0)

    def _plan(self, jobs: list[Job]) -> list[tuple]:
        """This step's parts: (seq, ids, start) per prefill chunk (ids at positions start..) and per decode row."""
        parts = []
        budget = self.prefill_budget
        for job in jobs:
            lead = job.seqs[0]
            n_prompt = len(job.prompt_ids)
            if lead.n_cached < n_prompt:
                if budget <= 0:
                    continue
                start = lead.n_cached
                end = min(n_prompt, start + self.max_chunk, (start // self.max_chunk + 1) * self.max_chunk)
                if not self.row_invariant:
                    end = min(end, start + budget)
                parts.append((lead, lead.ids[start:end], start))
                budget -= end - start
            else:
                parts += [(s, [s.ids[-1]], len(s.ids) - 1) for s in job.seqs if not s.done]
        return parts

    def _execute(self, parts: list[tuple]) -> None:
        prefill = [p for p in parts if p[0].n_cached < len(p[0].job.prompt_ids)]
        decode = [p for p in parts if p[0].n_cached >= len(p[0].job.prompt_ids)]
        if not self.graphs and not self.row_invariant:
            batches = [prefill + decode]  # one forward per step
        else:  # each prefill chunk alone when exact, the decode rows together (graphs: through the runner)
            # a chunk that starts its prompt goes alone too where graphs are: the runner replays it (runner.py)
            alone = [p for p in prefill if self.row_invariant or p[2] == 0]
            rest = [p for p in prefill if not (self.row_invariant or p[2] == 0)]
            batches = [[p] for p in alone] + ([rest] if rest else [])
            if not self.graphs:
                batches += [decode] if decode else []
        for batch in batches:
            if batch:
                self._run(batch)
        if self.graphs:
            for i in range(0, len(decode), GRAPH_BUCKETS[-1]):
                self._run_decode(decode[i:i + GRAPH_BUCKETS[-1]])

    def _run(self, batch: list[tuple]) -> None:
        """An eager forward of the batch's rows, then sampling from the logits of the rows that end a prompt or
        decode a token."""
        tokens, slots, pos, want = [], [], [], []
        for seq, ids, start in batch:
            tokens += ids
            slots += [seq.slot] * len(ids)
            pos += range(start, start + len(ids))
            if start + len(ids) >= len(seq.job.prompt_ids):  # the prompt's last row, or a decode row
                want.append((seq, len(tokens) - 1))
        if self.model.xlora is not None:
            coef = self._xlora_coefs(batch, tokens, slots, pos)
        else:
            coef = self._coefs([seq.job for seq, ids, _ in batch for _ in ids])
        masks = self._masks([seq for seq, _ in want], overlap=self.overlap_masks)
        logits = self.runner.forward(tokens, slots, pos, [r for _, r in want] or [len(tokens) - 1], coef)
        masks = self._wait(masks)
        for seq, ids, start in batch:
            seq.n_cached = start + len(ids)
        for k, (seq, _) in enumerate(want):
            self._emit(seq, logits=logits[k], mask=_row(masks, k, seq))

    def _run_decode(self, batch: list[tuple]) -> None:
        """Decode rows through the runner's captured step; the tokens are chosen where the logits are when every
        row's draw depends on the raw logits alone."""
        seqs = [seq for seq, _, _ in batch]
        picks = None
        if self.runner.device_sampling and all(s.job.params.raw_draw for s in seqs):
            picks = [(0.0, 1, 1.0, 0.0, 0.0) if s.job.params.sampling.greedy else
                     (s.job.params.sampling.temperature, s.job.params.sampling.top_k, s.job.params.sampling.top_p,
                      s.job.params.sampling.min_p, s.coin()) for s in seqs]
        # device draws take the masks with the step's inputs; host draws apply them after, computed meanwhile
        masks = self._masks(seqs, overlap=self.overlap_masks and picks is None)
        out = self.runner.decode([s.ids[-1] for s in seqs], [s.slot for s in seqs], [len(s.ids) - 1 for s in seqs],
                                 picks, masks if picks is not None else None, coef=self._coefs([s.job for s in seqs]))
        masks = self._wait(masks)
        for k, seq in enumerate(seqs):
            seq.n_cached = len(seq.ids)
            if picks is None:
                self._emit(seq, logits=out[k], mask=_row(masks, k, seq))
            else:
                self._emit(seq, token=int(out[k]))

    def _coefs(self, jobs: list[Job]) -> np.ndarray | None:
        """Each row's LoRA coefficients (n, K) (zero for a job without adapters); None when no row has any."""
        if all(j.coef is None for j in jobs):
            return None
        out = np.zeros((len(jobs), self.model.lora.width), np.float32)
        for r, j in enumerate(jobs):
            if j.coef is not None:
                out[r] = j.coef
        return out

    def _xlora_coefs(self, batch: list[tuple], tokens, slots, pos) -> np.ndarray:
        """X-LoRA: the rows' coefficients from a scaling pass over the rows that need one (a sequence past
        tgt_non_granular_index generated tokens keeps its latest scalings), in the sequences' second KV slots."""
        xl = self.model.xlora
        seqs = [seq for seq, ids, _ in batch for _ in ids]
        keep = xl.tgt_non_granular_index
        need = np.array([s.scalings is None or keep is None or len(s.generated) < keep for s in seqs])
        coef = np.empty((len(seqs), self.model.lora.width), np.float32)
        if need.any():
            rows = np.nonzero(need)[0]
            sel = [np.asarray(a, np.int64)[rows] for a in (tokens, slots, pos)]
            hidden = self.runner.hidden(sel[0], sel[1] + self.scaling_slots, sel[2], xl.dummy(len(rows)))
            coef[rows] = xl.coefs(self.model.backend, hidden)
        for r, s in enumerate(seqs):
            if need[r]:
                s.scalings = coef[r]
            else:
                coef[r] = s.scalings
        return coef

    def _masks(self, seqs: list, overlap: bool):
        """The allowed-token masks (len(seqs), W) of the rows' next tokens (free rows all ones), or None when no row
        has a grammar; with overlap, a future of them computed on the worker thread."""
        cons = [s.constraint for s in seqs]
        if all(c is None for c in cons):
            return None
        if overlap:
            if self._mask_worker is None:
                self._mask_worker = ThreadPoolExecutor(1, thread_name_prefix="minirs-grammar")
            return self._mask_worker.submit(fill_masks, cons, self.vocab)
        t = time.perf_counter()
        masks = fill_masks(cons, self.vocab)
        self.mask_s += time.perf_counter() - t
        return masks

    def _wait(self, masks):
        """The masks of _masks, waiting for the worker's (the wait counts in mask_s)."""
        if masks is None or isinstance(masks, np.ndarray):
            return masks
        t = time.perf_counter()
        masks = masks.result()
        self.mask_s += time.perf_counter() - t
        return masks

    def _emit(self, seq, logits: np.ndarray | None = None, token: int | None = None, mask=None) -> None:
        """Sample seq's next token under its grammar's mask (or take the one chosen on the device) and pass it on;
        the prompt's last logits (and mask: every matcher of the job is at the grammar's start) serve every sequence
        of the job, after the leader's KV slot is copied to theirs."""
        job = seq.job
        first = not job.t_prompt_done
        if first:
            job.t_prompt_done = time.perf_counter()
            for s in job.seqs[1:]:
                self.cache.copy_slot(seq.slot, s.slot)
                if self.model.xlora is not None:
                    self.cache.copy_slot(seq.slot + self.scaling_slots, s.slot + self.scaling_slots)
                    s.scalings = seq.scalings
                s.n_cached = seq.n_cached
        try:
            for s in (job.seqs if first else [seq]):
                if not s.done:
                    s.accept(Sampled(token, 0.0, []) if token is not None else s.sample(logits, mask), self.ctx_len)
        except Exception as e:  # noqa: BLE001 - a bad sampling step ends this job only
            job.error = e if isinstance(e, MinirsError) else MinirsError(f"sampling failed: {e!r}")
            job.cancel()
        if all(s.done for s in job.seqs) and job in self.active:
            self._release(job)


def _row(masks: np.ndarray | None, k: int, seq) -> np.ndarray | None:
    """Row k of a step's masks for seq, None for a free row (no mask to apply)."""
    return masks[k] if masks is not None and seq.constraint is not None else None
