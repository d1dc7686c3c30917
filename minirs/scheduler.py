"""Continuous batching: one engine thread runs up to max_seqs sequences together, one model forward per step.

    engine = Engine(model, tokenizer, max_seqs=16)
    job = engine.submit(Job(prompt_ids, GenParams(...)))     # from any thread
    for ev in job.stream(): ...                              # Delta events; or job.wait()

Each step: admit waiting jobs while KV slots are free, drop cancelled ones, then run
  - one prefill chunk (up to `max_chunk` prompt tokens) per prefilling sequence, within a per-step token budget,
    so that a long prompt never stalls the sequences that are decoding, and
  - one decode row per running sequence (its latest token at its position, in its own cache slot).
A job asking for n sequences (n_choices / best_of) prefills its prompt once and copies the KV slot.

Row invariance. A batched greedy run must give each request the same tokens as running it alone, so a row's
logits may not depend on the other rows of its forward. On the CPU every kernel computes each row on its own:
qmatmul's kernels are batch-invariant (a row's bits depend only on that row of x and on W, whatever n is),
and norms, RoPE, attention and sampling are per row. So one forward per step is exact there, and a request gives
the same tokens and logprobs alone and batched with 15 others. `row_invariant=True` is for backends whose large
matmuls round with the batch (cuBLAS in CUDA prefill): then each prefill chunk runs in its own forward, with chunk
boundaries fixed by the sequence alone.

On CUDA, row_invariant also keeps every GEMV on the dp4a kernels (backend.batch_invariant): without it, batches
of 2 or more tokens run on the tensor cores (cuda/mma.py), 2.3-4.2x as fast at 16 tokens, and a row's last bits
then differ from the same row decoded alone.

CUDA graphs. On a backend with `decode_step` (CUDA), the decode rows of a step go through one captured CUDA
graph: the batch is padded to the next size of GRAPH_BUCKETS with dummy rows (token 0 at position 0 in a spare
KV slot that no sequence owns), so six graphs serve every batch size and a step costs one graph launch instead of
hundreds of Python kernel launches. The GPU's decode kernels compute each row identically whatever the batch
(cuda/mmvq.py's GEMVs), so dummy rows and other requests never change a row's logits. Prefill chunks run eagerly
between replays: each alone with `row_invariant` (then a request's tokens are identical alone and batched), else
all chunks of a step in one forward (cuBLAS for more than GEMV_MAX_N tokens: faster, rounds with the batch).
"""

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from minirs.errors import MinirsError, RequestError
from minirs.generate import reusable_prefix
from minirs.kv_cache import KVCache
from minirs.sampling import Sampled, SamplingParams, sample_token
from minirs.sampling.stop import StopText

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32)  # decode batch sizes captured as CUDA graphs (32 = cuda/quantize.GEMV_MAX_N)


@dataclass
class GenParams:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until a stop or the end of the context
    stop_ids: frozenset = frozenset()
    stop_seqs: tuple = ()
    n: int = 1  # sequences to generate from the prompt
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class Delta:
    """What a step produced for one sequence: new text, the token's logprob entry, and the end if it came."""
    index: int
    text: str
    token: int | None = None
    logprob: tuple | None = None  # (token, logprob, [(id, logprob)...])
    finish_reason: str | None = None


class Sequence:
    """One generated continuation of a job's prompt, with its own KV slot, random stream and text state."""

    def __init__(self, job: "Job", index: int, tokenizer):
        self.job, self.index = job, index
        self.slot = -1
        self.ids = list(job.prompt_ids)  # prompt and generated tokens; the last one is fed next
        self.n_cached = 0  # how many of ids the KV cache holds
        self.generated: list[int] = []
        self.logprobs: list[tuple] = []
        self.cum_logprob = 0.0
        self.text: list[str] = []
        self.finish_reason: str | None = None
        seed = job.params.sampling.seed
        self.rng = np.random.default_rng(None if seed is None else [seed, index])
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=True)
        self.stop = StopText(job.params.stop_seqs)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Job:
    """A request as the engine sees it: prompt ids and generation parameters; results flow back in `events`."""

    def __init__(self, prompt_ids: list[int], params: GenParams, tokenizer, stream: bool = False):
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.params = params
        self.stream = stream
        self.events: queue.Queue = queue.Queue()
        self.seqs = [Sequence(self, i, tokenizer) for i in range(params.n)]
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.t_submit = time.perf_counter()
        self.t_start = self.t_prompt_done = self.t_end = 0.0
        self.cached_tokens = 0  # leading prompt tokens served by a KV slot's earlier contents (prefix reuse)

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> "Job":
        """Block until the job ends; re-raise an engine error that ended it."""
        if not self.finished.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self

    def stream_events(self, timeout: float | None = None):
        """Yield Delta events until every sequence has finished; closing the generator cancels the job."""
        try:
            while True:
                ev = self.events.get(timeout=timeout)
                if ev is None:
                    if self.error is not None:
                        raise self.error
                    return
                yield ev
        finally:
            if not self.finished.is_set():
                self.cancel()

    @property
    def prompt_s(self) -> float:
        return max(self.t_prompt_done - self.t_start, 0.0)

    @property
    def decode_s(self) -> float:
        return max(self.t_end - self.t_prompt_done, 0.0)


def _raw_draw(p: GenParams) -> bool:
    """Whether the next token depends on the raw logits alone: one sequence, no logit bias, penalties or logprobs.
    Then the GPU can pick it (its argmax when greedy, else its sampler: temperature, top-k, top-p, min-p) and only
    token ids come back."""
    sp = p.sampling
    return (p.n == 1 and not sp.logit_bias and sp.repetition_penalty == 1.0 and not sp.frequency_penalty and
            not sp.presence_penalty and not p.logprobs and not p.top_logprobs)


def _plain_greedy(p: GenParams) -> bool:
    """Whether the next token is just the argmax of the raw logits."""
    return p.sampling.greedy and _raw_draw(p)


def _host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


class Engine:
    """Owns the model and its KV cache; a background thread runs the batch loop."""

    def __init__(self, model, tokenizer, max_seqs: int = 16, ctx_len: int = 4096, max_chunk: int = 256,
                 row_invariant: bool | None = None, prefill_budget: int | None = None,
                 graphs: bool | None = None, prefix_reuse: bool = True):
        if max_seqs < 1:
            raise RequestError(f"invalid max_seqs: {max_seqs!r}")
        self.model, self.tokenizer = model, tokenizer
        self.max_seqs = max_seqs
        self.ctx_len = min(ctx_len, model.config.context_length)
        self.max_chunk = max_chunk
        # None: exact wherever that costs something, i.e. only where prefill rounds with the batch (CUDA's cuBLAS)
        self.row_invariant = hasattr(model.backend, "decode_step") if row_invariant is None else row_invariant
        self.prefill_budget = prefill_budget or max_chunk
        self.graphs = hasattr(model.backend, "decode_step") if graphs is None else graphs
        self.spare_slot = max_seqs  # graphs: the dummy rows' KV slot, never handed to a sequence
        self.cache = KVCache(model.config, model.backend, max_seqs + self.graphs, self.ctx_len, max_chunk)
        self.free_slots = list(range(max_seqs - 1, -1, -1))
        # prefix reuse: what each free slot's KV cache still holds, so a new prompt starting with it skips it
        self.prefix_reuse = prefix_reuse
        self.slot_ids: list[list[int]] = [[] for _ in range(max_seqs)]  # ids at positions 0.. in the slot
        self.slot_exact = [0] * max_seqs  # of those, how many came from whole, aligned prefill chunks
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.steps = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = False
        # Numba's thread count is per thread: the engine thread takes the one of the thread that made the engine.
        numba = sys.modules.get("numba")
        self._numba_threads = numba.get_num_threads() if numba is not None else None

    # ----- the caller's side ---------------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        if job.params.n > self.max_seqs:
            raise RequestError(f"n_choices/best_of of {job.params.n} exceeds max_seqs={self.max_seqs}")
        if len(job.prompt_ids) >= self.ctx_len:
            raise RequestError(f"prompt of {len(job.prompt_ids)} tokens does not fit the context of "
                               f"{self.ctx_len} tokens")
        with self._lock:
            if self._closing:
                raise MinirsError("the engine is shut down")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="minirs-engine", daemon=True)
                self._thread.start()
        self.inbox.put(job)
        return job

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._closing = True
        self.inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- the engine thread ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        if self._numba_threads is not None:
            sys.modules["numba"].set_num_threads(self._numba_threads)
        if hasattr(self.model.backend, "use_in_thread"):  # CUDA: this thread's CuPy ops on the backend's stream
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
                self._fail_all(MinirsError("the engine was shut down"))
                return
            self.waiting.extend(incoming)
            self._admit()
            self._reap()
            if not self.active:
                continue
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - a failed forward ends the jobs in it, never the loop
                self._fail_all(e if isinstance(e, MinirsError) else MinirsError(f"engine step failed: {e!r}"),
                               waiting=False)

    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self.waiting.popleft()
                self._finish_job(job, "canceled")
                continue
            if len(self.free_slots) < job.params.n:
                return
            self.waiting.popleft()
            self._take_slots(job)
            job.t_start = time.perf_counter()
            self.active.append(job)

    def _reuse(self, slot: int, ids: list[int]) -> int:
        """How many leading prompt ids the free slot's cache can serve. With row_invariant, only whole chunks
        that the earlier sequence prefilled exactly as this prompt's own chunks would run (same ids, same
        max_chunk-aligned boundaries), so the rows are bit-identical to recomputing them."""
        n = reusable_prefix(self.model.config, self.slot_ids[slot], ids, self.max_chunk)
        if self.row_invariant:
            n = min(n, self.slot_exact[slot]) // self.max_chunk * self.max_chunk
        return n

    def _take_slots(self, job: Job) -> None:
        """Give the job's sequences free slots: the leader the one whose cache holds the longest prefix of the
        prompt (prefix reuse), the others any."""
        lead = job.seqs[0]
        best, reuse = len(self.free_slots) - 1, 0  # by default the slot pop() would give
        if self.prefix_reuse:
            for i, slot in enumerate(self.free_slots):
                n = self._reuse(slot, job.prompt_ids)
                if n > reuse:
                    best, reuse = i, n
        lead.slot = self.free_slots.pop(best)
        lead.n_cached = reuse
        job.cached_tokens = reuse
        for s in job.seqs[1:]:
            s.slot = self.free_slots.pop()

    def _reap(self) -> None:
        for job in list(self.active):
            if job.cancelled.is_set():
                for s in job.seqs:
                    if not s.done:
                        s.finish_reason = "canceled"
                self._release(job)

    def _release(self, job: Job) -> None:
        self.active.remove(job)
        for s in job.seqs:
            if s.slot >= 0:
                self.slot_ids[s.slot] = s.ids[:s.n_cached]
                # whole prefill chunks: the prompt's full max_chunk-aligned chunks, fed from 0 or after reuse
                self.slot_exact[s.slot] = min(s.n_cached, len(job.prompt_ids)) // self.max_chunk * self.max_chunk
                self.free_slots.append(s.slot)
                s.slot = -1
        self._finish_job(job)

    def _finish_job(self, job: Job, reason: str | None = None) -> None:
        for s in job.seqs:
            if reason and not s.done:
                s.finish_reason = reason
        job.t_end = time.perf_counter()
        if not job.t_prompt_done:
            job.t_prompt_done = job.t_end
        job.events.put(None)
        job.finished.set()

    def _fail_all(self, err: BaseException, waiting: bool = True) -> None:
        jobs = list(self.active) + (list(self.waiting) if waiting else [])
        for job in jobs:
            job.error = err
            if job in self.active:
                self._release(job)
            else:
                self._finish_job(job, "error")
        if waiting:
            self.waiting.clear()

    # ----- one step ------------------------------------------------------------------------------------------------

    def _step(self) -> None:
        """Gather this step's rows, run them, sample from the logits they produce."""
        if hasattr(self.model.backend, "batch_invariant"):  # per step: engines may share a backend
            self.model.backend.batch_invariant(self.row_invariant)
        chunks = []  # (seq, start, end): prompt ids [start, end) of a prefilling leader
        budget = self.prefill_budget
        decode = []
        for job in self.active:
            lead = job.seqs[0]
            if lead.n_cached < len(job.prompt_ids):
                if budget <= 0:
                    continue
                start = lead.n_cached
                end = min(len(job.prompt_ids), start + self.max_chunk, (start // self.max_chunk + 1) * self.max_chunk)
                if not self.row_invariant:
                    end = min(end, start + budget)
                chunks.append((lead, start, end))
                budget -= end - start
            else:
                decode += [s for s in job.seqs if not s.done]
        # each batch: (tokens, slots, pos, [(seq, row) that need logits], [prefill chunks whose cache it fills])
        parts = []
        for seq, start, end in chunks:
            ids = seq.ids[start:end]
            want = [(seq, len(ids) - 1)] if end == len(seq.job.prompt_ids) else []
            parts.append((ids, [seq.slot] * len(ids), list(range(start, end)), want, [(seq, end)]))
        for s in decode:
            p = len(s.ids) - 1
            parts.append(([s.ids[-1]], [s.slot], [p], [(s, 0)], [(s, p + 1)]))
        if self.graphs:
            pre, dec = parts[:len(chunks)], parts[len(chunks):]  # prefill chunks eagerly, decode rows by graph
            for batch in ([[p] for p in pre] if self.row_invariant else [pre] if pre else []):
                self._run(batch)
            for i in range(0, len(dec), GRAPH_BUCKETS[-1]):
                self._run(dec[i:i + GRAPH_BUCKETS[-1]], graph=True)
            self.steps += 1
            return
        if self.row_invariant:  # each prefill chunk alone, the decode rows together
            batches = [[p] for p in parts[:len(chunks)]] + ([parts[len(chunks):]] if decode else [])
        else:
            batches = [parts]
        for batch in batches:
            self._run(batch)
        self.steps += 1

    def _run(self, batch, graph: bool = False) -> None:
        """One forward of the batch's rows (graph: decode rows through the backend's captured step, padded to a
        GRAPH_BUCKETS size with dummy rows in the spare slot), then sampling from its logits."""
        tokens, slots, pos, want, fills = [], [], [], [], []
        for ids, sl, ps, wants, fill in batch:
            base = len(tokens)
            tokens += ids
            slots += sl
            pos += ps
            want += [(s, base + r) for s, r in wants]
            fills += fill
        argmax = False
        if graph:
            pad = next(b for b in GRAPH_BUCKETS if b >= len(tokens)) - len(tokens)
            argmax = all(_plain_greedy(s.job.params) for s, _ in want)  # then only token ids come back
            sample = None
            if not argmax and hasattr(self.model.backend, "sample_rows") and all(_raw_draw(s.job.params)
                                                                                  for s, _ in want):
                sample = self._gpu_sample(want, len(tokens) + pad)  # ids drawn on the GPU
            logits = self.model.backend.decode_step(
                self.model, self.cache, np.asarray(tokens + [0] * pad, np.int64),
                np.asarray(slots + [self.spare_slot] * pad, np.int64), np.asarray(pos + [0] * pad, np.int64),
                greedy=argmax, sample=sample)
            argmax = argmax or sample is not None
        else:
            logits = self.model.forward(np.asarray(tokens, np.int64), np.asarray(slots, np.int64),
                                        np.asarray(pos, np.int64), self.cache,
                                        logit_rows=[r for _, r in want] or [len(tokens) - 1])
        logits = _host(logits)
        for s, n in fills:
            s.n_cached = n
        for k, (s, _) in enumerate(want):
            job = s.job
            first = not job.t_prompt_done  # the prompt's last logits: every sequence of the job samples from them
            if first:
                job.t_prompt_done = time.perf_counter()
                self._fork(job)
            try:
                for q in (job.seqs if first else [s]):
                    self._accept(q, logits[k], int(logits[k]) if argmax else None)
            except Exception as e:  # noqa: BLE001 - a bad sampling step ends this job only
                job.error = e if isinstance(e, MinirsError) else MinirsError(f"sampling failed: {e!r}")
                job.cancel()
            if all(q.done for q in job.seqs) and job in self.active:
                self._release(job)

    def _gpu_sample(self, want, n: int) -> tuple:
        """Per-row (temperature, top_k, top_p, min_p, coin) of a decode batch for the backend's sample_rows: the
        coin drawn from each sequence's generator as _accept would; greedy rows (and padding) take top_k = 1."""
        temp, top_k = np.ones(n), np.ones(n, np.int64)
        top_p, min_p, coin = np.ones(n), np.zeros(n), np.zeros(n)
        for s, row in want:
            sp = s.job.params.sampling
            if not sp.greedy and not s.done:
                temp[row], top_k[row], top_p[row], min_p[row] = sp.temperature, sp.top_k, sp.top_p, sp.min_p
                coin[row] = s.rng.random()
        return temp, top_k, top_p, min_p, coin

    def _fork(self, job: Job) -> None:
        """Copy the leader's prefilled KV slot to the job's other sequences."""
        lead = job.seqs[0]
        for s in job.seqs[1:]:
            for i in range(len(self.cache.k)):
                self.cache.k[i][s.slot] = self.cache.k[i][lead.slot]
                self.cache.v[i][s.slot] = self.cache.v[i][lead.slot]
            s.n_cached = lead.n_cached

    def _accept(self, s: Sequence, logits: np.ndarray, token: int | None = None) -> None:
        """Sample the next token of s from its logits (or take `token`, the GPU's argmax or draw for a plain
        greedy or sampled sequence); emit its text; decide whether s has finished."""
        if s.done:
            return
        p = s.job.params
        if token is not None:
            smp = Sampled(token, 0.0, [])
        else:
            coin = 0.0 if p.sampling.greedy else float(s.rng.random())
            # the logprob costs a log-softmax over the vocabulary: only where it is shown or ranks best_of sequences
            want_lp = bool(p.logprobs or p.top_logprobs or len(s.job.seqs) > 1)
            smp = sample_token(logits, p.sampling, s.ids, coin, p.top_logprobs, want_logprob=want_lp)
        tok = smp.token
        if tok in p.stop_ids:
            self._end(s, "stop", "")
            return
        s.ids.append(tok)
        s.generated.append(tok)
        s.cum_logprob += smp.logprob
        lp = (tok, smp.logprob, smp.top) if p.logprobs or p.top_logprobs else None
        if lp is not None:
            s.logprobs.append(lp)
        shown, hit = s.stop.push(s.decoder.feed(tok))
        if hit:
            self._end(s, "stop", shown, tok, lp)
        elif p.max_tokens is not None and len(s.generated) >= p.max_tokens or len(s.ids) >= self.ctx_len:
            self._end(s, "length", shown + s.decoder.flush() + s.stop.flush(), tok, lp)
        else:
            s.text.append(shown)
            if s.job.stream:
                s.job.events.put(Delta(s.index, shown, tok, lp))

    def _end(self, s: Sequence, reason: str, shown: str, tok=None, lp=None) -> None:
        if reason == "stop" and tok is None:
            shown = s.decoder.flush() + s.stop.flush()  # a stop token: what was held back is text after all
        s.text.append(shown)
        s.finish_reason = reason
        if s.job.stream:
            s.job.events.put(Delta(s.index, shown, tok, lp, reason))
