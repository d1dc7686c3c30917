"""Engine results as OpenAI-shaped responses: whole responses, stream chunks, usage and logprobs.

    res = chat_response(job, rid, model, tokenizer, logprobs=True)
    for chunk in chat_chunks(job, rid, model, tokenizer, request, timeout): ...

With a tool-call syntax (the request offered tools), each sequence's text goes through minirs.tools' parser:
calls become `message.tool_calls` with finish_reason "tool_calls", and in a stream OpenAI's tool_calls deltas
(one with index, id, type and function.name, then one with the arguments) as each call completes.
"""

import math
import time

from minirs.api.types import (
    ChatCompletionChunkResponse,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionChunkChoice,
    CompletionChunkResponse,
    CompletionResponse,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    Logprobs,
    ResponseLogprob,
    ResponseMessage,
    ToolCall,
    ToolCallFunction,
    TopLogprob,
    Usage,
)
from minirs.engine import Job
from minirs.tools import CallParser, Syntax, parse
from minirs.tools import ToolCall as ParsedCall

FINGERPRINT = "minirs"


def usage(job: Job, now: float | None = None) -> Usage:
    """The job's token counts and timings; `now` stands in for its end time when it is about to end (the last
    chunk of a stream is made before the engine marks the job finished)."""
    prompt = len(job.prompt_ids)
    compl = sum(len(s.generated) for s in job.seqs)
    ps = job.prompt_s
    ds = job.decode_s if now is None else max(now - job.t_prompt_done, 0.0)
    total = ps + ds
    return Usage(completion_tokens=compl, prompt_tokens=prompt, total_tokens=prompt + compl,
                 avg_tok_per_sec=(prompt + compl) / total if total else 0.0,
                 avg_prompt_tok_per_sec=prompt / ps if ps else 0.0,
                 avg_compl_tok_per_sec=max(compl - len(job.seqs), 0) / ds if ds else 0.0,
                 total_time_sec=total, total_prompt_time_sec=ps, total_completion_time_sec=ds)


LOGPROB_FLOOR = -9999.0  # what OpenAI reports for an impossible token: -inf is no JSON number


def _finite(lp: float) -> float:
    return lp if math.isfinite(lp) else LOGPROB_FLOOR


def logprob_entry(tokenizer, entry) -> ResponseLogprob:
    tok, lp, top = entry
    return ResponseLogprob(token=tokenizer.decode([tok]), logprob=_finite(lp),
                           bytes=list(tokenizer.token_to_bytes(tok)), top_logprobs=[TopLogprob(i, _finite(v), tokenizer.decode([i])) for i, v in top])


def logprobs(tokenizer, seq, wanted: bool) -> Logprobs | None:
    return Logprobs([logprob_entry(tokenizer, e) for e in seq.logprobs]) if wanted else None


def chat_response(job: Job, rid: str, model: str, tokenizer, wanted_logprobs: bool,
                  syntax: Syntax | None = None) -> ChatCompletionResponse:
    choices = []
    for i, s in enumerate(job.seqs):
        message, reason = _message(s, syntax)
        choices.append(Choice(reason, i, message, logprobs(tokenizer, s, wanted_logprobs)))
    return ChatCompletionResponse(rid, choices, int(time.time()), model, FINGERPRINT, "chat.completion", usage(job))


def _message(seq, syntax: Syntax | None) -> tuple:
    text = "".join(seq.text)
    if syntax is None:
        return ResponseMessage(text), seq.finish_reason
    parsed = parse(text, syntax)
    if not parsed.calls:
        return ResponseMessage(parsed.content), seq.finish_reason
    calls = [ToolCall(c.id, ToolCallFunction(c.name, c.arguments)) for c in parsed.calls]
    return ResponseMessage(parsed.content, tool_calls=calls), "tool_calls"


def completion_response(job: Job, rid: str, model: str, tokenizer, req, prefix: str, n: int) -> CompletionResponse:
    """The n best sequences (by cumulative logprob when best_of generated more), prefix + text + suffix each."""
    seqs = sorted(job.seqs, key=lambda s: -s.cum_logprob)[:n] if len(job.seqs) > n else job.seqs
    choices = [CompletionChoice(s.finish_reason, i, prefix + "".join(s.text) + (req.suffix or ""),
                                logprobs(tokenizer, s, req.logprobs)) for i, s in enumerate(seqs)]
    return CompletionResponse(rid, choices, int(time.time()), model, FINGERPRINT, "text_completion", usage(job))


def chat_chunks(events, job: Job, rid: str, model: str, tokenizer, req, texts: list, syntax: Syntax | None = None):
    """Chunks of a streamed chat completion; texts[i] collects sequence i's text (for the log)."""
    created = int(time.time())
    ends = 0
    parsers = [CallParser(syntax) for _ in job.seqs] if syntax is not None else None
    n_calls = [0] * len(job.seqs)
    for ev in events:
        texts[ev.index].append(ev.text)
        lp = logprob_entry(tokenizer, ev.logprob) if req.logprobs and ev.logprob else None
        ends += ev.finish_reason is not None
        use = usage(job, time.perf_counter()) if ends == len(job.seqs) and ev.finish_reason else None
        if parsers is None:
            deltas, reason = [Delta(ev.text)], ev.finish_reason
        else:
            p = parsers[ev.index]
            items = p.feed(ev.text) + (p.finish() if ev.finish_reason else [])
            deltas = _deltas(items, n_calls, ev.index) or [Delta("")]
            reason = "tool_calls" if ev.finish_reason and n_calls[ev.index] else ev.finish_reason
        for k, d in enumerate(deltas):
            last = k == len(deltas) - 1
            yield ChatCompletionChunkResponse(rid, [ChunkChoice(reason if last else None, ev.index, d,
                                                                lp if k == 0 else None)],
                                              created, model, FINGERPRINT, usage=use if last else None)


def _deltas(items: list, n_calls: list, index: int) -> list[Delta]:
    """Content pieces as content deltas; each call as two: index, id, type and name first, then its arguments."""
    out = []
    for it in items:
        if isinstance(it, ParsedCall):
            k = n_calls[index]
            n_calls[index] += 1
            out.append(Delta(None, tool_calls=[DeltaToolCall(k, DeltaFunction(it.name, ""), it.id, "function")]))
            out.append(Delta(None, tool_calls=[DeltaToolCall(k, DeltaFunction(arguments=it.arguments))]))
        else:
            out.append(Delta(it))
    return out


def completion_chunks(events, job: Job, rid: str, model: str, tokenizer, req, prefix: str, texts: list):
    """Chunks of a streamed text completion: the echoed prompt first, the suffix with each sequence's end."""
    created = int(time.time())
    if prefix:
        for s in job.seqs:
            texts[s.index].append(prefix)
            yield CompletionChunkResponse(rid, [CompletionChunkChoice(None, s.index, prefix)], created, model,
                                          FINGERPRINT)
    ends = 0
    for ev in events:
        piece = ev.text + (req.suffix or "" if ev.finish_reason else "")
        texts[ev.index].append(piece)
        lp = logprob_entry(tokenizer, ev.logprob) if req.logprobs and ev.logprob else None
        ends += ev.finish_reason is not None
        use = usage(job, time.perf_counter()) if ends == len(job.seqs) and ev.finish_reason else None
        yield CompletionChunkResponse(rid, [CompletionChunkChoice(ev.finish_reason, ev.index, piece, lp)],
                                      created, model, FINGERPRINT, usage=use)
