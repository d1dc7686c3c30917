"""Runner: loads a model named by `Which` and serves OpenAI-shaped chat and text completions from it.

    runner = Runner(which=Which.GGUF(quantized_model_id="models", quantized_filename="smollm2.gguf"))
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=32, temperature=0.7, top_p=0.9))
    print(res.choices[0].message.content, res.usage)

Every request is checked in the caller's thread (a bad field raises RequestError naming it and its value, and
nothing reaches the engine), then queued to the batching engine (scheduler.py), which runs all requests in
flight together. Many threads may call one Runner at once. With `stream=True` the call returns an iterator
of chunks; closing it (or dropping it) cancels the request and frees its KV slot.
"""

import json
import os
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from minirs.api.types import (
    ChatCompletionChunkResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionChunkChoice,
    CompletionChunkResponse,
    CompletionRequest,
    CompletionResponse,
    Delta,
    Logprobs,
    ResponseLogprob,
    ResponseMessage,
    TopLogprob,
    Usage,
    Which,
)
from minirs.errors import MinirsError, RequestError, TokenizerError
from minirs.sampling import SamplingParams
from minirs.scheduler import Engine, GenParams, Job

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_TOP_LOGPROBS = 20
FINGERPRINT = "minirs"


class Runner:
    """A loaded model and its batching engine; see the module docstring."""

    def __init__(self, which, max_seqs: int = 16, no_kv_cache: bool = False, prefix_cache_n: int = 16,
                 token_source: str = "cache", speculative_gamma: int = 32, which_draft=None,
                 chat_template: str | None = None, num_device_layers=None, in_situ_quant: str | None = None,
                 anymoe_config=None, pa_gpu_mem=None, pa_blk_size=None, no_paged_attn: bool = False, *,
                 device: str = "auto", seed: int | None = None, truncate_sequence: bool = False,
                 logfile: str | None = None, revision: str | None = None, token_source_value: str | None = None,
                 max_seq_len: int | None = None, prefill_chunk: int = 256, row_invariant: bool | None = None):
        # no_kv_cache, speculative_gamma, num_device_layers and the paged-attention knobs change only how
        # mistral.rs computes, never what: they are accepted and ignored. prefix_cache_n=0 turns prefix reuse off
        # (a new request otherwise skips the leading tokens a free KV slot still holds, e.g. a chat's history).
        for name, value in (("which_draft", which_draft), ("anymoe_config", anymoe_config)):
            if value is not None:
                raise MinirsError(f"Runner: {name}={value!r} is not supported by minirs")
        if not isinstance(max_seqs, int) or max_seqs < 1:
            raise RequestError(f"Runner: invalid max_seqs: {max_seqs!r}")
        self.which = which
        self.seed = seed
        self.truncate_sequence = truncate_sequence
        self.logfile = logfile
        self._log_lock = threading.Lock()
        self.model, self.tokenizer, self.model_name = load_which(
            which, device=device, token_source=token_source, token_source_value=token_source_value,
            revision=revision, chat_template=chat_template, isq=_isq_name(in_situ_quant))
        self.repeat_last_n = int(getattr(which, "repeat_last_n", 64) or 0)
        ctx = min(max_seq_len or 4096, self.model.config.context_length)
        self.engine = Engine(self.model, self.tokenizer, max_seqs=max_seqs, ctx_len=ctx, max_chunk=prefill_chunk,
                             row_invariant=row_invariant, prefix_reuse=bool(prefix_cache_n))
        self.max_seqs = max_seqs

    # ----- public API ----------------------------------------------------------------------------------------------

    def send_chat_completion_request(self, request: ChatCompletionRequest, timeout: float | None = None):
        """A ChatCompletionResponse, or with request.stream an iterator of ChatCompletionChunkResponse."""
        if not isinstance(request, ChatCompletionRequest):
            raise RequestError(f"expected a ChatCompletionRequest, got {type(request).__name__}")
        ids = self._prompt_ids(self._chat_prompt(request), chat=True)
        job = self._submit(request, ids, n=request.n_choices, logprobs=request.logprobs)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream:
            return self._chat_chunks(job, request, rid, timeout)
        job.wait(timeout)
        choices = [Choice(s.finish_reason, i, ResponseMessage("".join(s.text)), self._logprobs(s, request.logprobs))
                   for i, s in enumerate(job.seqs)]
        res = ChatCompletionResponse(rid, choices, int(time.time()), self._model_name(request), FINGERPRINT,
                                     "chat.completion", self._usage(job))
        self._log("response", rid, res.to_dict())
        return res

    add_request = send_chat_completion_request  # the old mistralrs name

    def send_completion_request(self, request: CompletionRequest, timeout: float | None = None):
        """A CompletionResponse, or with request.stream an iterator of CompletionChunkResponse."""
        if not isinstance(request, CompletionRequest):
            raise RequestError(f"expected a CompletionRequest, got {type(request).__name__}")
        if isinstance(request.prompt, str):
            if not request.prompt:
                raise RequestError("invalid prompt: '' (empty)")
            ids = self._prompt_ids(request.prompt, chat=False)
        elif isinstance(request.prompt, list) and request.prompt and all(isinstance(t, int) for t in request.prompt):
            ids = self._check_ids("prompt", request.prompt)
        else:
            raise RequestError(f"invalid prompt: {request.prompt!r} (expected a non-empty string or token ids)")
        best_of = request.best_of if request.best_of is not None else request.n_choices
        if not isinstance(best_of, int) or best_of < request.n_choices:
            raise RequestError(f"invalid best_of: {request.best_of!r} (must be >= n_choices={request.n_choices})")
        if request.stream and best_of != request.n_choices:
            raise RequestError(f"invalid best_of: {best_of!r} (cannot stream when best_of > n_choices)")
        job = self._submit(request, ids, n=best_of, logprobs=request.logprobs)
        rid = f"cmpl-{uuid.uuid4().hex}"
        prefix = self._prompt_text(request) if request.echo_prompt else ""
        if request.stream:
            return self._completion_chunks(job, request, rid, prefix, timeout)
        job.wait(timeout)
        seqs = sorted(job.seqs, key=lambda s: -s.cum_logprob)[:request.n_choices] if best_of > 1 else job.seqs
        choices = [CompletionChoice(s.finish_reason, i, prefix + "".join(s.text) + (request.suffix or ""),
                                    self._logprobs(s, request.logprobs)) for i, s in enumerate(seqs)]
        res = CompletionResponse(rid, choices, int(time.time()), self._model_name(request), FINGERPRINT,
                                 "text_completion", self._usage(job))
        self._log("response", rid, res.to_dict())
        return res

    def tokenize_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise RequestError(f"invalid text: {text!r} (expected a string)")
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize_text(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(self._check_ids("tokens", tokens), skip_special_tokens=skip_special_tokens)

    def shutdown(self) -> None:
        """Stop the engine thread; requests still in flight end with an error."""
        self.engine.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    # ----- requests -> engine jobs ---------------------------------------------------------------------------------

    def _chat_prompt(self, req: ChatCompletionRequest) -> str:
        msgs = req.messages
        if isinstance(msgs, str):
            if not msgs:
                raise RequestError("invalid messages: '' (empty)")
            return msgs  # already templated
        if not isinstance(msgs, list) or not msgs:
            raise RequestError(f"invalid messages: {msgs!r} (expected a non-empty list of messages or a string)")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m:
                raise RequestError(f"invalid messages[{i}]: {m!r} (expected a dict with role and content)")
            if m["role"] not in ROLES:
                raise RequestError(f"invalid messages[{i}].role: {m['role']!r} (expected one of {', '.join(ROLES)})")
            content = m.get("content", "")
            if isinstance(content, list):  # OpenAI content parts: only text parts are understood
                parts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text":
                        raise RequestError(f"invalid messages[{i}].content part: {part!r} (only text is supported)")
                    parts.append(str(part.get("text", "")))
                content = "".join(parts)
            elif content is None:
                content = ""
            elif not isinstance(content, str):
                raise RequestError(f"invalid messages[{i}].content: {content!r} (expected a string)")
            clean.append({**m, "content": content})
        try:
            return self.tokenizer.apply_chat_template(clean, add_generation_prompt=True, tools=req.tools)
        except TokenizerError as e:
            raise RequestError(f"invalid messages: the chat template failed: {e}") from e

    def _prompt_ids(self, text: str, chat: bool) -> list[int]:
        if chat:  # a rendered template spells BOS and the turn markers itself
            return self.tokenizer.encode(text, add_special_tokens=False, parse_special=True)
        return self.tokenizer.encode(text, add_special_tokens=True)

    def _prompt_text(self, req: CompletionRequest) -> str:
        return req.prompt if isinstance(req.prompt, str) else self.tokenizer.decode(req.prompt)

    def _check_ids(self, name: str, ids) -> list[int]:
        vocab = self.model.config.vocab_size
        out = []
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                raise RequestError(f"invalid {name}: token id {t!r} is outside the vocabulary (size {vocab})")
            out.append(int(t))
        return out

    def _submit(self, req, ids: list[int], n: int, logprobs: bool) -> Job:
        params = self._gen_params(req, n, logprobs)
        ctx = self.engine.ctx_len
        if not ids:
            raise RequestError("invalid prompt: it encodes to no tokens")
        if len(ids) >= ctx:
            if not self.truncate_sequence:
                raise RequestError(f"invalid prompt: {len(ids)} tokens do not fit the context of {ctx} tokens "
                                   "(set truncate_sequence=True to keep its tail)")
            room = min(params.max_tokens or 1, ctx // 2)
            ids = ids[len(ids) - (ctx - room):]
        job = Job(ids, params, self.tokenizer, stream=bool(req.stream))
        self._log("request", None, {"type": type(req).__name__, **_jsonable(asdict(req))})
        return self.engine.submit(job)

    def _gen_params(self, req, n: int, logprobs: bool) -> GenParams:
        if not isinstance(n, int) or n < 1:
            raise RequestError(f"invalid n_choices: {n!r} (must be >= 1)")
        if n > self.max_seqs:
            raise RequestError(f"invalid n_choices: {n!r} (more than max_seqs={self.max_seqs})")
        if req.max_tokens is not None and (not isinstance(req.max_tokens, int) or req.max_tokens <= 0):
            raise RequestError(f"invalid max_tokens: {req.max_tokens!r} (must be > 0)")
        temp = 0.0 if req.temperature is None else req.temperature
        if not isinstance(temp, (int, float)) or temp < 0:
            raise RequestError(f"invalid temperature: {req.temperature!r} (must be >= 0)")
        if req.top_p is not None and not (isinstance(req.top_p, (int, float)) and 0 < req.top_p <= 1):
            raise RequestError(f"invalid top_p: {req.top_p!r} (must be in (0, 1])")
        if req.top_k is not None and (not isinstance(req.top_k, int) or req.top_k < 0):
            raise RequestError(f"invalid top_k: {req.top_k!r} (must be >= 0)")
        if req.min_p is not None and not (isinstance(req.min_p, (int, float)) and 0 <= req.min_p <= 1):
            raise RequestError(f"invalid min_p: {req.min_p!r} (must be in [0, 1])")
        top_lp = req.top_logprobs or 0
        if not isinstance(top_lp, int) or not 0 <= top_lp <= MAX_TOP_LOGPROBS:
            raise RequestError(f"invalid top_logprobs: {req.top_logprobs!r} (must be in [0, {MAX_TOP_LOGPROBS}])")
        bias = {}
        for k, v in (req.logit_bias or {}).items():
            try:
                tok = int(k)
            except (TypeError, ValueError):
                raise RequestError(f"invalid logit_bias key: {k!r} (expected a token id)") from None
            if not 0 <= tok < self.model.config.vocab_size:
                raise RequestError(f"invalid logit_bias: token id {k!r} is outside the vocabulary "
                                   f"(size {self.model.config.vocab_size})")
            if not isinstance(v, (int, float)):
                raise RequestError(f"invalid logit_bias[{k}]: {v!r} (expected a number)")
            bias[tok] = float(v)
        stop_ids = self._check_ids("stop_token_ids", req.stop_token_ids or [])
        stops = req.stop_seqs
        if isinstance(stops, str):
            stops = [stops]
        if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
            raise RequestError(f"invalid stop_seqs: {stops!r} (expected a list of strings)")
        seed = req.seed if req.seed is not None else self.seed
        sampling = SamplingParams(
            temperature=float(temp), top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else float(req.top_p),
            min_p=req.min_p or 0.0, seed=seed,
            repetition_penalty=1.0 if req.repetition_penalty is None else float(req.repetition_penalty),
            frequency_penalty=float(req.frequency_penalty or 0.0), presence_penalty=float(req.presence_penalty or 0.0),
            repeat_last_n=self.repeat_last_n, logit_bias=bias)
        return GenParams(sampling=sampling, max_tokens=req.max_tokens,
                         stop_ids=frozenset(self.tokenizer.eos_ids) | frozenset(stop_ids),
                         stop_seqs=tuple(s for s in stops or () if s), n=n, logprobs=bool(logprobs),
                         top_logprobs=top_lp if logprobs else 0)

    # ----- engine results -> responses -----------------------------------------------------------------------------

    def _model_name(self, req) -> str:
        return req.model if req.model and req.model != "default" else self.model_name

    def _usage(self, job: Job, now: float | None = None) -> Usage:
        """The job's token counts and timings; `now` stands in for its end time when it is about to end (the
        last chunk of a stream is made before the engine marks the job finished)."""
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

    def _logprob_entry(self, entry) -> ResponseLogprob:
        tok, lp, top = entry
        tk = self.tokenizer
        return ResponseLogprob(token=tk.decode([tok]), logprob=lp, bytes=list(tk.token_to_bytes(tok)),
                               top_logprobs=[TopLogprob(i, v, tk.decode([i])) for i, v in top])

    def _logprobs(self, seq, wanted: bool) -> Logprobs | None:
        return Logprobs([self._logprob_entry(e) for e in seq.logprobs]) if wanted else None

    def _chat_chunks(self, job: Job, req, rid: str, timeout):
        created, model = int(time.time()), self._model_name(req)
        texts = [[] for _ in job.seqs]
        ends = 0
        for ev in job.stream_events(timeout):
            texts[ev.index].append(ev.text)
            lp = self._logprob_entry(ev.logprob) if req.logprobs and ev.logprob else None
            ends += ev.finish_reason is not None
            usage = self._usage(job, time.perf_counter()) if ends == len(job.seqs) and ev.finish_reason else None
            yield ChatCompletionChunkResponse(rid, [ChunkChoice(ev.finish_reason, ev.index, Delta(ev.text), lp)],
                                              created, model, FINGERPRINT, usage=usage)
        self._log("response", rid, {"stream": True, "choices": ["".join(t) for t in texts],
                                    "usage": asdict(self._usage(job))})

    def _completion_chunks(self, job: Job, req, rid: str, prefix: str, timeout):
        created, model = int(time.time()), self._model_name(req)
        texts = [[prefix] for _ in job.seqs]
        if prefix:
            for s in job.seqs:
                yield CompletionChunkResponse(rid, [CompletionChunkChoice(None, s.index, prefix)], created, model,
                                              FINGERPRINT)
        ends = 0
        for ev in job.stream_events(timeout):
            text = ev.text + (req.suffix or "" if ev.finish_reason else "")
            texts[ev.index].append(text)
            lp = self._logprob_entry(ev.logprob) if req.logprobs and ev.logprob else None
            ends += ev.finish_reason is not None
            usage = self._usage(job, time.perf_counter()) if ends == len(job.seqs) and ev.finish_reason else None
            yield CompletionChunkResponse(rid, [CompletionChunkChoice(ev.finish_reason, ev.index, text, lp)],
                                          created, model, FINGERPRINT, usage=usage)
        self._log("response", rid, {"stream": True, "choices": ["".join(t) for t in texts],
                                    "usage": asdict(self._usage(job))})

    def _log(self, kind: str, rid, body: dict) -> None:
        if not self.logfile:
            return
        line = json.dumps({"time": time.time(), "kind": kind, "id": rid, "body": body}, default=str)
        with self._log_lock, open(self.logfile, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ----- loading ---------------------------------------------------------------------------------------------------

def _model_path(model_id: str, filename, revision, token_source, token_source_value) -> Path:
    if isinstance(filename, (list, tuple)):
        if len(filename) != 1:
            raise MinirsError(f"quantized_filename: {filename!r}: minirs loads one GGUF file per model")
        filename = filename[0]
    if os.path.isabs(filename) and os.path.isfile(filename):
        return Path(filename)
    from minirs.hub import resolve_file
    return Path(resolve_file(model_id, filename, revision or "main", token_source, token_source_value))


def _read_template(chat_template: str | None) -> str | None:
    """A literal Jinja template, or a path to a .jinja file or to a tokenizer_config-style .json file."""
    if chat_template is None:
        return None
    p = Path(chat_template)
    if len(chat_template) < 4096 and p.is_file():
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            tmpl = json.loads(text).get("chat_template")
            if not isinstance(tmpl, str):
                raise MinirsError(f"chat_template file {p}: no 'chat_template' string in it")
            return tmpl
        return text
    return chat_template


def _tokenizer_folder(tokenizer_json: str | None, tok_model_id: str | None) -> Path | None:
    if tokenizer_json:
        p = Path(tokenizer_json)
        if not p.is_file():
            raise MinirsError(f"tokenizer_json: {tokenizer_json!r} is not a file")
        return p.parent
    if tok_model_id and (Path(tok_model_id) / "tokenizer.json").is_file():
        return Path(tok_model_id)
    return None  # a hub id or nothing: the model file's own tokenizer is used


_ISQ_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")


def _isq_name(name: str | None) -> str | None:
    """mistral.rs's in_situ_quant names ("Q4K", "Q8_0") as GGUF type names ("Q4_K", "Q8_0")."""
    if name is None:
        return None
    qtype = str(name).upper()
    qtype = qtype[:-1] + "_K" if qtype.endswith("K") and "_" not in qtype else qtype
    if qtype not in _ISQ_TYPES:
        raise RequestError(f"invalid in_situ_quant: {name!r} (supported: {', '.join(_ISQ_TYPES)})")
    return qtype


def load_which(which, device: str = "auto", token_source: str = "cache", token_source_value: str | None = None,
               revision: str | None = None, chat_template: str | None = None, isq: str | None = None):
    """(model, tokenizer, name) for a Which.Plain / GGUF / GGML; `isq` quantizes float weights at load time."""
    from minirs.formats import load_model_file
    from minirs.load import load_model
    from minirs.tokenizer import Tokenizer
    template = _read_template(chat_template)
    if isinstance(which, (Which.GGUF, Which.GGML)):
        path = _model_path(which.quantized_model_id, which.quantized_filename, revision, token_source,
                           token_source_value)
        gqa = getattr(which, "gqa", None)
        mf = load_model_file(path, gqa=gqa) if gqa else load_model_file(path)
        folder = _tokenizer_folder(which.tokenizer_json, which.tok_model_id)
        if folder is not None:
            tok = Tokenizer.from_files(folder, chat_template=template)
        else:
            try:
                tok = Tokenizer.from_gguf(mf, chat_template=template)
            except TokenizerError as e:
                raise MinirsError(f"{path}: the file has no usable tokenizer ({e}); give tok_model_id as a local "
                                  "folder with tokenizer.json, or tokenizer_json") from e
        return load_model(mf, device=device, isq=isq), tok, path.name
    if isinstance(which, Which.Plain):
        from minirs.hub import resolve_folder
        path = Path(which.model_id)
        if not path.is_file():  # a local folder, or a hub repo id: its files are downloaded into the cache
            path = resolve_folder(which.model_id, revision or "main", token_source, token_source_value)
        folder = _tokenizer_folder(which.tokenizer_json, None) or (path if path.is_dir() else path.parent)
        model = load_model(path, device=device, isq=isq)
        return model, Tokenizer.from_files(folder, chat_template=template), Path(which.model_id).name
    raise RequestError(f"invalid which: {which!r} (expected Which.Plain, Which.GGUF or Which.GGML)")
