"""Every request field and Runner argument checked in the caller's thread, before anything reaches the engine.

A bad value raises RequestError naming the field, the value (a short repr) and what is allowed; nothing else
escapes. Types are strict: a bool is not an int, a string is not a number, and only finite numbers in range pass.

    params = gen_params(request, n=1, logprobs=False, limits=Limits(vocab=49152, max_seqs=16))
"""

import math
from dataclasses import dataclass

from minirs.engine import GenParams
from minirs.errors import RequestError, quote
from minirs.sampling import SamplingParams

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_TOP_LOGPROBS = 20
MAX_SEED = 2 ** 64 - 1
# What each sampling number may be, for the API and the CLI alike: (low, high, low excluded). Sampling itself stays
# well defined for any finite value (minirs/sampling clamps extremes); these bounds keep requests meaningful, as
# OpenAI's do for the penalties and the bias.
RANGES = {"temperature": (0.0, 100.0, False), "top_p": (0.0, 1.0, True), "min_p": (0.0, 1.0, False),
          "repetition_penalty": (0.01, 100.0, False), "frequency_penalty": (-2.0, 2.0, False),
          "presence_penalty": (-2.0, 2.0, False), "logit_bias": (-100.0, 100.0, False)}
MAX_SEQS = 1024  # Runner(max_seqs=): each sequence holds a KV slot of the whole context


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bad(field: str, v, allowed: str) -> RequestError:
    return RequestError(f"invalid {field}: {quote(v)} ({allowed})")


def in_range(name: str, v) -> bool:
    """Whether v is a finite number inside RANGES[name]."""
    low, high, low_open = RANGES[name]
    return is_number(v) and low <= v <= high and not (low_open and v == low)


def range_text(name: str) -> str:
    low, high, low_open = RANGES[name]
    return f"in {'(' if low_open else '['}{low:g}, {high:g}]"


def number(field: str, v, default: float, name: str | None = None) -> float:
    """v as a float inside RANGES[name or field], default for None."""
    if v is None:
        return default
    if not in_range(name or field, v):
        raise _bad(field, v, f"a number {range_text(name or field)}")
    return float(v)


REQUIRED = object()  # integer()'s default for a field that may not be None


def integer(field: str, v, low: int, high: int, default=REQUIRED) -> int | None:
    """v as an int in [low, high], default for None (unless the field is required)."""
    if v is None and default is not REQUIRED:
        return default
    if not is_int(v) or not low <= v <= high:
        raise _bad(field, v, f"an integer in [{low}, {high}]")
    return int(v)


def flag(field: str, v) -> bool:
    if not isinstance(v, bool):
        raise _bad(field, v, "True or False")
    return v


def token_ids(field: str, ids, vocab: int) -> list[int]:
    """A list of token ids, each in [0, vocab)."""
    if not isinstance(ids, (list, tuple)):
        raise _bad(field, ids, "a list of token ids")
    for t in ids:
        if not is_int(t) or not 0 <= t < vocab:
            raise RequestError(f"invalid {field}: token id {quote(t)} is outside the vocabulary (size {vocab})")
    return [int(t) for t in ids]


def text(field: str, v, allow_empty: bool = True) -> str:
    if not isinstance(v, str) or (not v and not allow_empty):
        raise _bad(field, v, "a string" if allow_empty else "a non-empty string")
    return v


@dataclass(frozen=True)
class Limits:
    """What a request may ask of this Runner."""
    vocab: int
    max_seqs: int
    seed: int | None = None  # the Runner's default seed
    repeat_last_n: int = 64
    eos_ids: frozenset = frozenset()


def logit_bias(v, vocab: int) -> dict[int, float]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad("logit_bias", v, "a dict of token id -> bias")
    bias = {}
    for k, b in v.items():
        try:
            tok = int(k) if not isinstance(k, (bool, float)) else None
        except (TypeError, ValueError):
            tok = None
        if tok is None:
            raise RequestError(f"invalid logit_bias key: {quote(k)} (expected a token id)")
        if not 0 <= tok < vocab:
            raise RequestError(f"invalid logit_bias: token id {quote(k)} is outside the vocabulary (size {vocab})")
        bias[tok] = number(f"logit_bias[{tok}]", b, 0.0, "logit_bias")
    return bias


def stop_seqs(v) -> tuple:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise _bad("stop_seqs", v, "a string or a list of strings")
    return tuple(s for s in v if s)


def gen_params(req, n, logprobs, limits: Limits, n_field: str = "n_choices",
               grammar: tuple[str, str] | None = None) -> GenParams:
    """The engine's GenParams for a chat or text completion request asking for n sequences (field n_field), under
    `grammar` (checked already: api/structured.py)."""
    n = integer(n_field, n, 1, limits.max_seqs)
    max_tokens = integer("max_tokens", req.max_tokens, 1, 2 ** 31, None)
    logprobs = flag("logprobs", logprobs)
    flag("stream", req.stream)
    top_lp = integer("top_logprobs", req.top_logprobs, 0, MAX_TOP_LOGPROBS, 0)
    seed = integer("seed", req.seed, 0, MAX_SEED, None)
    sampling = SamplingParams(
        temperature=number("temperature", req.temperature, 0.0),
        top_k=integer("top_k", req.top_k, 0, 2 ** 31, 0),
        top_p=number("top_p", req.top_p, 1.0),
        min_p=number("min_p", req.min_p, 0.0),
        seed=seed if seed is not None else limits.seed,
        repetition_penalty=number("repetition_penalty", req.repetition_penalty, 1.0),
        frequency_penalty=number("frequency_penalty", req.frequency_penalty, 0.0),
        presence_penalty=number("presence_penalty", req.presence_penalty, 0.0),
        repeat_last_n=limits.repeat_last_n, logit_bias=logit_bias(req.logit_bias, limits.vocab))
    stop_ids = token_ids("stop_token_ids", req.stop_token_ids, limits.vocab) if req.stop_token_ids is not None else []
    return GenParams(sampling=sampling, max_tokens=max_tokens, stop_ids=limits.eos_ids | frozenset(stop_ids),
                     stop_seqs=stop_seqs(req.stop_seqs), n=n, logprobs=logprobs,
                     top_logprobs=top_lp if logprobs else 0, grammar=grammar)


def best_of(req) -> int:
    """How many sequences a completion request generates (best_of, at least n_choices)."""
    n = integer("n_choices", req.n_choices, 1, 2 ** 31)
    best = integer("best_of", req.best_of, 1, 2 ** 31, None)
    best = n if best is None else best
    if best < n:
        raise _bad("best_of", req.best_of, f"must be >= n_choices={n}")
    if req.stream and best != n:
        raise _bad("best_of", best, "cannot stream when best_of > n_choices")
    return best


def completion_extras(req) -> None:
    """The text completion's own fields."""
    flag("echo_prompt", req.echo_prompt)
    if req.suffix is not None:
        text("suffix", req.suffix)


def messages(msgs) -> list[dict] | str:
    """A chat's messages as dicts with string content (OpenAI text parts joined), or an already templated string."""
    if isinstance(msgs, str):
        return text("messages", msgs, allow_empty=False)
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", msgs, "a non-empty list of messages or a string")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise _bad(f"messages[{i}]", m, "a dict with role and content")
        if m["role"] not in ROLES:
            raise _bad(f"messages[{i}].role", m["role"], f"one of {', '.join(ROLES)}")
        content = m.get("content", "")
        if isinstance(content, list):  # OpenAI content parts: only text parts are understood
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content part", part, "only text parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _bad(f"messages[{i}].content", content, "a string")
        clean.append({**m, "content": content})
    return clean


def tools(v) -> list[dict] | None:
    if v is not None and (not isinstance(v, list) or not all(isinstance(t, dict) for t in v)):
        raise _bad("tools", v, "a list of tool dicts")
    return v


def runner_args(max_seqs, prefill_chunk, max_seq_len, seed, prefix_cache_n) -> None:
    """The Runner's own arguments (each bounds memory or the engine's loop)."""
    integer("max_seqs", max_seqs, 1, MAX_SEQS)
    integer("prefill_chunk", prefill_chunk, 1, 1 << 16)
    integer("max_seq_len", max_seq_len, 2, 1 << 24, None)
    integer("seed", seed, 0, MAX_SEED, None)
    integer("prefix_cache_n", prefix_cache_n, 0, 1 << 31)
