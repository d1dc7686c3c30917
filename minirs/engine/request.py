"""What the engine runs: a Job (one request: prompt ids, generation parameters, results) and its Sequences.

    job = engine.submit(Job(prompt_ids, GenParams(max_tokens=32), tokenizer, stream=True))
    for delta in job.stream_events(timeout=60): ...          # or job.wait(timeout)

A Sequence turns each accepted token into text (streaming detokenizer, stop ids and stop strings, max_tokens and
the end of the context) and reports it as a Delta. A job with a grammar (GenParams.grammar) compiles it when it is
made, in the caller's thread, and each of its sequences follows it with a matcher (minirs.grammar.Constraint): the
draw sees only the tokens the grammar allows, and the sequence ends with "stop" once the grammar is complete.

Cancellation always frees the job's slots: the engine drops a cancelled job before its next step, whether it was
waiting or running. A timeout, an exception or a KeyboardInterrupt in the waiting caller, or closing or dropping a
stream at any point, cancels the job.
"""

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from minirs.errors import RequestError, RequestTimeout
from minirs.grammar import Constraint, compile_grammar
from minirs.sampling import Sampled, SamplingParams, sample_token
from minirs.sampling.stop import StopText


def check_prompt(ids: list[int], ctx_len: int, vocab: int) -> None:
    """A prompt the engine can run: not empty, shorter than the context, every id a row of the embedding."""
    if not ids:
        raise RequestError("the prompt is empty (no tokens)")
    if len(ids) >= ctx_len:
        raise RequestError(f"prompt of {len(ids)} tokens does not fit the context of {ctx_len} tokens")
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError(f"token id {bad} is outside the model's vocabulary (size {vocab})")


@dataclass
class GenParams:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until a stop or the end of the context
    stop_ids: frozenset = frozenset()
    stop_seqs: tuple = ()
    n: int = 1  # sequences to generate from the prompt
    logprobs: bool = False
    top_logprobs: int = 0
    # (grammar_type, grammar_text) constraining every token: "regex", "json_schema" (the schema as a JSON string),
    # "lark" or "llguidance"; request grammars, response_format and tool_choice all arrive here (minirs.grammar)
    grammar: tuple[str, str] | None = None
    keep_special: frozenset = frozenset()  # special token ids the text shows (tool-call markers a parser looks for)

    @property
    def raw_draw(self) -> bool:
        """Whether the next token depends on the raw logits alone (one sequence, no logit bias, penalties or
        logprobs): then it can be drawn where the logits are (argmax or the device sampler) and only ids return."""
        sp = self.sampling
        return (self.n == 1 and not sp.logit_bias and sp.repetition_penalty == 1.0 and not sp.frequency_penalty
                and not sp.presence_penalty and not self.logprobs and not self.top_logprobs)


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
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=True, keep=job.params.keep_special)
        self.stop = StopText(job.params.stop_seqs)
        self.scalings = None  # X-LoRA: the LoRA coefficients (K,) of its latest scaling pass
        self.constraint = Constraint(job.grammar) if job.grammar is not None else None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def coin(self) -> float:
        """The uniform draw of the next sampled token (none for a greedy sequence)."""
        return 0.0 if self.job.params.sampling.greedy else float(self.rng.random())

    def mask(self, vocab: int) -> np.ndarray | None:
        """The grammar's allowed-token words for the next token (None: no grammar)."""
        return self.constraint.mask(vocab) if self.constraint is not None else None

    def sample(self, logits: np.ndarray, mask: np.ndarray | None = None) -> Sampled:
        """Draw the next token from this sequence's host logits (vocab,) with its grammar's mask (given, else
        computed here), penalties, bias and sampling."""
        p = self.job.params
        if mask is None and self.constraint is not None:
            mask = self.mask(len(logits))
        # the logprob costs a log-softmax over the vocabulary: only where it is shown or ranks best_of sequences
        want_lp = bool(p.logprobs or p.top_logprobs or len(self.job.seqs) > 1)
        return sample_token(logits, p.sampling, self.ids, self.coin(), p.top_logprobs, want_logprob=want_lp,
                            mask=mask)

    def accept(self, smp: Sampled, ctx_len: int) -> None:
        """Take the sampled token: emit its text, and end the sequence at a stop id or string, at max_tokens or at
        the end of the context."""
        p = self.job.params
        tok = smp.token
        if tok in p.stop_ids or self.constraint is not None and tok in self.constraint.eos_ids:
            self._end("stop", self.decoder.flush() + self.stop.flush())  # what was held back is text after all
            return
        self.ids.append(tok)
        self.generated.append(tok)
        self.cum_logprob += smp.logprob
        lp = (tok, smp.logprob, smp.top) if p.logprobs or p.top_logprobs else None
        if lp is not None:
            self.logprobs.append(lp)
        shown, hit = self.stop.push(self.decoder.feed(tok))
        complete = self.constraint is not None and self.constraint.advance(tok)
        if hit:
            self._end("stop", shown, tok, lp)
        elif complete:  # nothing but the end of sequence may follow: end here, without a step to draw it
            self._end("stop", shown + self.decoder.flush() + self.stop.flush(), tok, lp)
        elif p.max_tokens is not None and len(self.generated) >= p.max_tokens or len(self.ids) >= ctx_len:
            self._end("length", shown + self.decoder.flush() + self.stop.flush(), tok, lp)
        else:
            self.text.append(shown)
            if self.job.stream:
                self.job.events.put(Delta(self.index, shown, tok, lp))

    def _end(self, reason: str, shown: str, tok=None, lp=None) -> None:
        self.text.append(shown)
        self.finish_reason = reason
        if self.job.stream:
            self.job.events.put(Delta(self.index, shown, tok, lp, reason))


class Job:
    """A request as the engine sees it: prompt ids and generation parameters; results flow back in `events`."""

    def __init__(self, prompt_ids: list[int], params: GenParams, tokenizer, stream: bool = False,
                 adapters: list[str] | None = None):
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.params = params
        self.stream = stream
        self.adapters = None if adapters is None else tuple(adapters)  # LoRA adapters; None: the model's active ones
        self.coef = None  # its rows' LoRA coefficients (K,), set by the engine from `adapters` (None: no adapter)
        self.grammar = compile_grammar(*params.grammar, tokenizer) if params.grammar is not None else None
        self.events: queue.Queue = queue.Queue()
        self.seqs = [Sequence(self, i, tokenizer) for i in range(params.n)]
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.t_submit = time.perf_counter()
        self.t_start = self.t_prompt_done = self.t_end = 0.0
        self.cached_tokens = 0  # leading prompt tokens served by a KV slot's earlier contents (prefix reuse)

    def cancel(self) -> None:
        """Ask the engine to drop the job; it frees the slots before its next step."""
        self.cancelled.set()

    def wait(self, timeout: float | None = None) -> "Job":
        """Block until the job ends; re-raise an engine error that ended it. A timeout (RequestTimeout) or an
        exception in the caller (KeyboardInterrupt) cancels the job."""
        try:
            if not self.finished.wait(timeout):
                raise RequestTimeout(f"the request did not finish within {timeout} s (it was cancelled)")
        except BaseException:
            self.cancel()
            raise
        if self.error is not None:
            raise self.error
        return self

    def stream_events(self, timeout: float | None = None) -> "EventStream":
        """The job's Delta events, until every sequence has finished (see EventStream)."""
        return EventStream(self, timeout)

    @property
    def prompt_s(self) -> float:
        return max(self.t_prompt_done - self.t_start, 0.0)

    @property
    def decode_s(self) -> float:
        return max(self.t_end - self.t_prompt_done, 0.0)


class EventStream:
    """Iterates a job's Delta events; `timeout` bounds the wait for each one (RequestTimeout). Closing the stream,
    dropping it (garbage collection), a timeout or an exception raised into the caller cancels an unfinished job,
    also before the first event was asked for."""

    def __init__(self, job: Job, timeout: float | None = None):
        self.job, self.timeout = job, timeout

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Delta:
        job = self.job
        if job is None:
            raise StopIteration
        try:
            ev = job.events.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            raise RequestTimeout(f"no output within {self.timeout} s (the request was cancelled)") from None
        except BaseException:
            self.close()
            raise
        if ev is None:
            self.job = None
            if job.error is not None:
                raise job.error
            raise StopIteration
        return ev

    def close(self) -> None:
        job, self.job = self.job, None
        if job is not None and not job.finished.is_set():
            job.cancel()

    def __del__(self):
        self.close()
