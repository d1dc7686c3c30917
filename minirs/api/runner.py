"""Runner: loads a model named by `Which` and serves OpenAI-shaped chat and text completions from it.

    runner = Runner(which=Which.GGUF(quantized_model_id="models", quantized_filename="smollm2.gguf"))
    res = runner.send_chat_completion_request(ChatCompletionRequest(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=32, temperature=0.7, top_p=0.9))
    print(res.choices[0].message.content, res.usage)

Every request is checked in the caller's thread (validation.py: a bad field raises RequestError naming it and its
value, and nothing reaches the engine), then queued to the batching engine (minirs/engine), which runs all
requests in flight together; responses.py shapes what comes back. Many threads may call one Runner at once. With
`stream=True` the call returns an iterator of chunks; closing it, dropping it, or a timeout cancels the request
and frees its KV slot. A blocking call's timeout raises RequestTimeout and cancels the request too.
"""

import contextlib
import gc
import json
import threading
import time
import uuid
from dataclasses import asdict, replace

from minirs import tools
from minirs.api import adapters, responses, validation
from minirs.api.structured import request_grammar
from minirs.api.types import ChatCompletionRequest, CompletionRequest, Which
from minirs.engine import Engine, Job
from minirs.errors import MinirsError, RequestError, TokenizerError, quote
from minirs.grammar import compile_grammar


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
        validation.runner_args(max_seqs, prefill_chunk, max_seq_len, seed, prefix_cache_n)
        self.which = which
        self.truncate_sequence = truncate_sequence
        self.logfile = logfile
        self._log_lock = threading.Lock()
        loaded = load_which(which, device=device, token_source=token_source, token_source_value=token_source_value,
                            revision=revision, chat_template=chat_template, isq=_isq_name(in_situ_quant))
        self.model, self.tokenizer, self.model_name = loaded.model, loaded.tokenizer, loaded.name
        self.tool_syntax = tools.syntax_for(self.tokenizer.special_texts, self.tokenizer.chat_template)
        repeat_last_n = validation.integer("repeat_last_n", getattr(which, "repeat_last_n", 64), 0, 1 << 20, 64)
        ctx = min(max_seq_len or 4096, self.model.config.context_length)
        self.engine = Engine(self.model, self.tokenizer, max_seqs=max_seqs, ctx_len=ctx, max_chunk=prefill_chunk,
                             row_invariant=row_invariant, prefix_reuse=bool(prefix_cache_n))
        loaded.when_compiled(self._compiled)  # a first run: off the twins once the kernels have compiled
        self.max_seqs = max_seqs
        self.limits = validation.Limits(vocab=self.model.config.vocab_size, max_seqs=max_seqs, seed=seed,
                                        repeat_last_n=repeat_last_n, eos_ids=frozenset(self.tokenizer.eos_ids))

    # ----- public API ----------------------------------------------------------------------------------------------

    def send_chat_completion_request(self, request: ChatCompletionRequest, timeout: float | None = None):
        """A ChatCompletionResponse, or with request.stream an iterator of ChatCompletionChunkResponse."""
        if not isinstance(request, ChatCompletionRequest):
            raise RequestError(f"expected a ChatCompletionRequest, got {type(request).__name__}")
        timeout = _timeout(timeout)
        params = validation.gen_params(request, request.n_choices, request.logprobs, self.limits,
                                       grammar=request_grammar(request, self.tokenizer))
        use = validation.tool_use(request)
        ids = self._chat_ids(request, use)
        params, syntax = self._tool_params(params, use)
        job = self._submit(request, ids, params)
        rid, model = f"chatcmpl-{uuid.uuid4().hex}", self._model_name(request)
        if request.stream:
            texts = [[] for _ in job.seqs]
            events = job.stream_events(timeout)
            return ResponseStream(events, responses.chat_chunks(events, job, rid, model, self.tokenizer, request,
                                                                texts, syntax),
                                  lambda: self._log_stream(rid, job, texts))
        job.wait(timeout)
        res = responses.chat_response(job, rid, model, self.tokenizer, request.logprobs, syntax)
        self._log("response", rid, res.to_dict())
        return res

    add_request = send_chat_completion_request  # the old mistralrs name

    def send_completion_request(self, request: CompletionRequest, timeout: float | None = None):
        """A CompletionResponse, or with request.stream an iterator of CompletionChunkResponse."""
        if not isinstance(request, CompletionRequest):
            raise RequestError(f"expected a CompletionRequest, got {type(request).__name__}")
        timeout = _timeout(timeout)
        best_of = validation.best_of(request)
        validation.completion_extras(request)
        params = validation.gen_params(request, best_of, request.logprobs, self.limits, "best_of",
                                       grammar=request_grammar(request, self.tokenizer))
        shaped = request  # what the response is built from
        if self._wants_fim(request):
            ids = self._fim_ids(request.prompt, request.suffix, params.max_tokens)
            shaped = replace(request, suffix=None)  # the answer is the middle alone
        elif isinstance(request.prompt, str):
            if not request.prompt:
                raise RequestError("invalid prompt: '' (empty)")
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=True)
        elif isinstance(request.prompt, list) and request.prompt:
            ids = validation.token_ids("prompt", request.prompt, self.limits.vocab)
        else:
            raise RequestError(f"invalid prompt: {quote(request.prompt)} (expected a non-empty string or "
                               "token ids)")
        job = self._submit(request, ids, params)
        rid, model = f"cmpl-{uuid.uuid4().hex}", self._model_name(request)
        prefix = self._prompt_text(request) if request.echo_prompt else ""
        if request.stream:
            texts = [[] for _ in job.seqs]
            events = job.stream_events(timeout)
            return ResponseStream(events, responses.completion_chunks(events, job, rid, model, self.tokenizer,
                                                                      shaped, prefix, texts),
                                  lambda: self._log_stream(rid, job, texts))
        job.wait(timeout)
        res = responses.completion_response(job, rid, model, self.tokenizer, shaped, prefix, request.n_choices)
        self._log("response", rid, res.to_dict())
        return res

    def activate_adapters(self, adapter_names: list[str]) -> None:
        """Make these LoRA adapters the ones a request without its own `adapters` uses (mistral.rs's call)."""
        names = adapters.adapter_names(adapter_names)
        lora = self.model.lora
        if lora is None or self.model.xlora is not None:
            raise RequestError("activate_adapters: the model has no LoRA adapters to choose from"
                               + (" (X-LoRA mixes its own)" if self.model.xlora is not None else ""))
        bad = [n for n in names or [] if n not in lora.names]
        if names is None or bad:
            raise RequestError(f"invalid adapter_names: {adapter_names!r} (loaded: {', '.join(lora.names)})")
        lora.active = names

    def tokenize_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        validation.text("text", text)
        return self.tokenizer.encode(text, add_special_tokens=validation.flag("add_special_tokens",
                                                                              add_special_tokens))

    def detokenize_text(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        ids = validation.token_ids("tokens", tokens, self.limits.vocab)
        return self.tokenizer.decode(ids, skip_special_tokens=validation.flag("skip_special_tokens",
                                                                              skip_special_tokens))

    def _compiled(self, model) -> None:
        if self.model is not None:  # not closed meanwhile
            self.model = model
            self.engine.replace_model(model)

    def close(self) -> None:
        """Stop the engine thread and let go of the model: its weights, KV cache and captured graphs, whose memory
        goes back to the device (CUDA). Requests still in flight end with an error; later ones raise MinirsError.
        `with Runner(...) as runner:` closes at the end of the block; a Runner that is dropped (a notebook cell
        re-run that replaces it) closes itself when it is garbage collected."""
        engine = self.__dict__.get("engine")
        if engine is None or self.model is None:
            return
        release = type(self.model.backend).release_memory
        self.model = None
        engine.close()
        gc.collect()  # the captured graphs hold their runner in a cycle
        release()

    shutdown = close  # the earlier name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # nothing may escape a finalizer
            self.close()

    # ----- requests -> engine jobs ---------------------------------------------------------------------------------

    def _chat_ids(self, req: ChatCompletionRequest, use: validation.ToolUse | None = None) -> list[int]:
        """The chat's prompt ids: the chat template, with tool calls and results shaped for it (minirs.tools), or
        Mistral's instruct format, which takes them as they are (Tokenizer.encode_chat)."""
        use = validation.tool_use(req) if use is None else use
        msgs = validation.messages(req.messages)
        if isinstance(msgs, str):  # already templated: it spells BOS and the turn markers itself
            return self.tokenizer.encode(msgs, add_special_tokens=False, parse_special=True)
        shown = use.tools
        if self.tokenizer.chat_template is not None:
            msgs, shown = tools.for_template(msgs, use.tools, self.tool_syntax, self.tokenizer.chat_template)
        try:
            return self.tokenizer.encode_chat(msgs, tools=shown)
        except TokenizerError as e:
            raise RequestError(f"invalid messages: the chat template failed: {e}") from e

    def _tool_params(self, params, use: validation.ToolUse):
        """(params, syntax): the markers kept in the text and, for a required call, its grammar; syntax None when
        nothing is to be parsed."""
        if use.mode == "none":
            return params, None
        keep = tools.marker_ids(self.tool_syntax, self.tokenizer.special_texts)
        if use.mode == "auto":
            return replace(params, keep_special=keep), self.tool_syntax
        if params.grammar is not None:
            raise RequestError("invalid tool_choice: a required tool call cannot be combined with another grammar "
                               "(grammar or response_format)")
        chosen = [t for t in use.tools if use.name in (None, t["function"]["name"])]
        grammar = ("lark", tools.call_grammar(chosen, self.tool_syntax, self.tokenizer))
        compile_grammar(*grammar, self.tokenizer, field="tools")  # a schema llguidance refuses: RequestError here
        return replace(params, keep_special=keep, grammar=grammar), self.tool_syntax

    def _wants_fim(self, req: CompletionRequest) -> bool:
        """Fill in the middle: a suffix on a model with FIM tokens (unless fim=False); fim=True insists."""
        if req.fim is False or (req.fim is None and (req.suffix is None or not self.tokenizer.has_fim)):
            return False
        if not self.tokenizer.has_fim:
            raise RequestError(f"invalid fim: True, but {self.model_name} has no fill-in-the-middle tokens")
        if req.suffix is None or not isinstance(req.prompt, str):
            raise RequestError(f"invalid fim: True needs a text prompt (the prefix) and a suffix, got prompt "
                               f"{quote(req.prompt)} and suffix {quote(req.suffix)}")
        return True

    def _fim_ids(self, prefix: str, suffix: str, max_tokens: int | None) -> list[int]:
        """The FIM prompt ids. When they do not fit the context: with truncate_sequence, the start of the prefix is
        dropped (the text nearest the gap stays); a suffix that cannot fit on its own is a RequestError."""
        ctx, tok = self.engine.ctx_len, self.tokenizer
        ids = tok.encode_fim(prefix, suffix)
        if len(ids) < ctx:
            return ids
        alone = len(tok.encode_fim("", suffix))
        if alone >= ctx:
            raise RequestError(f"invalid suffix: with the FIM tokens it is {alone} tokens, which cannot fit the "
                               f"context of {ctx} tokens")
        if not self.truncate_sequence:
            raise RequestError(f"invalid prompt: the prefix and suffix are {len(ids)} tokens, which do not fit the "
                               f"context of {ctx} tokens (set truncate_sequence=True to keep the end of the prefix)")
        budget = max(alone, ctx - min(max_tokens or 1, ctx // 2))
        lo, hi = 0, len(prefix)  # the smallest cut of the prefix's start that fits the budget
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tok.encode_fim(prefix[mid:], suffix)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return tok.encode_fim(prefix[lo:], suffix)

    def _prompt_text(self, req: CompletionRequest) -> str:
        return req.prompt if isinstance(req.prompt, str) else self.tokenizer.decode(req.prompt)

    def _submit(self, req, ids: list[int], params) -> Job:
        ctx = self.engine.ctx_len
        if not ids:
            raise RequestError("invalid prompt: it encodes to no tokens")
        if len(ids) >= ctx:
            if not self.truncate_sequence:
                raise RequestError(f"invalid prompt: {len(ids)} tokens do not fit the context of {ctx} tokens "
                                   "(set truncate_sequence=True to keep its tail, or a larger max_seq_len)")
            room = min(params.max_tokens or 1, ctx // 2)
            ids = ids[len(ids) - (ctx - room):]
        job = Job(ids, params, self.tokenizer, stream=bool(req.stream), adapters=adapters.adapter_names(req.adapters))
        self._log("request", None, {"type": type(req).__name__, **_jsonable(asdict(req))})
        return self.engine.submit(job)

    def _model_name(self, req) -> str:
        return req.model if isinstance(req.model, str) and req.model and req.model != "default" else self.model_name

    def _log_stream(self, rid: str, job: Job, texts: list) -> None:
        self._log("response", rid, {"stream": True, "choices": ["".join(t) for t in texts],
                                    "finish_reasons": [s.finish_reason for s in job.seqs],
                                    "usage": asdict(responses.usage(job))})

    def _log(self, kind: str, rid, body: dict) -> None:
        if not self.logfile:
            return
        line = json.dumps({"time": time.time(), "kind": kind, "id": rid, "body": body}, default=str)
        with self._log_lock, open(self.logfile, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class ResponseStream:
    """The chunks of a streamed response. Closing it (or dropping it, or a timeout or error while iterating)
    cancels the request if it is still running; the response is logged once, whole or cut short."""

    def __init__(self, events, chunks, on_end):
        self._events, self._chunks, self._on_end = events, chunks, on_end

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def cancel(self) -> None:
        """Cancel the request from any thread, also while another one waits in next() (a server whose client went
        away): the engine frees its slot and the iteration ends."""
        events = self._events
        if events is not None:
            events.close()

    def close(self) -> None:
        events, self._events = self._events, None
        if events is None:
            return
        events.close()
        self._chunks.close()
        self._on_end()

    def __del__(self):
        with contextlib.suppress(Exception):  # nothing may escape a finalizer
            self.close()


def _timeout(v) -> float | None:
    if v is None:
        return None
    if not validation.is_number(v) or v <= 0:
        raise RequestError(f"invalid timeout: {quote(v)} (a number of seconds > 0, or None)")
    return float(v)


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ----- loading ---------------------------------------------------------------------------------------------------

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


def _tokenizer_folder(tokenizer_json: str | None, tok_model_id: str | None):
    """A local folder with the tokenizer files, when the Which names one; None: the model's own tokenizer."""
    from pathlib import Path
    if tokenizer_json:
        p = Path(tokenizer_json)
        if not p.is_file():
            raise MinirsError(f"tokenizer_json: {tokenizer_json!r} is not a file")
        return p.parent
    if tok_model_id and (Path(tok_model_id) / "tokenizer.json").is_file():
        return Path(tok_model_id)
    return None  # a hub id or nothing: the model file's own tokenizer is used


def load_which(which, device: str = "auto", token_source: str = "cache", token_source_value: str | None = None,
               revision: str | None = None, chat_template: str | None = None, isq: str | None = None):
    """minirs.load.Loaded for a Which (Plain / GGUF / GGML, and their Lora / XLora forms: api/adapters.py);
    `isq` quantizes float weights at load time."""
    from minirs.load import load
    common = {"device": device, "token_source": token_source, "token_source_value": token_source_value,
              "revision": revision, "chat_template": chat_template, "isq": isq}
    if isinstance(which, adapters.QUANTIZED):
        return load(which.quantized_model_id, filename=which.quantized_filename, gqa=getattr(which, "gqa", None),
                    tokenizer_folder=_tokenizer_folder(which.tokenizer_json, which.tok_model_id), **common,
                    **adapters.adapter_kwargs(which))
    if isinstance(which, Which.Plain):
        return load(which.model_id, tokenizer_folder=_tokenizer_folder(which.tokenizer_json, None), **common,
                    **adapters.adapter_kwargs(which))
    if isinstance(which, adapters.PLAIN):
        return load(adapters.base_model_id(which), tokenizer_folder=_tokenizer_folder(which.tokenizer_json, None),
                    **common, **adapters.adapter_kwargs(which))
    raise RequestError(f"invalid which: {which!r} (expected a Which: Plain, GGUF, GGML or their Lora / XLora forms)")
