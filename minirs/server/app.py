"""The OpenAI-compatible HTTP API over a Runner, as a Starlette app (served by uvicorn, see main.py).

    app = create_app(runner, served_model_name="smollm2", api_key="secret", max_queue=64)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: POST /v1/chat/completions, POST /v1/completions (OpenAI's JSON, server-sent events with stream=true,
ending with `data: [DONE]`), GET /v1/models, GET /v1/models/{id}, POST /tokenize, POST /detokenize, GET /health
and GET /metrics (Prometheus text). With an API key, /v1/* and the tokenizer endpoints want
`Authorization: Bearer KEY`; /health and /metrics stay open.

The Runner stays synchronous underneath: a request is checked and queued in a worker thread (anyio.to_thread),
which returns a whole response or a ResponseStream; a thread of the stream's own reads its chunks and hands them
to the event loop. When the client goes away mid-stream, Starlette cancels the response and the request is
cancelled (ResponseStream.cancel), which frees its KV slot at the engine's next step. At most max_seqs +
max_queue requests are in flight; one more gets 503 with Retry-After. Errors are OpenAI's error JSON: 400 with the
RequestError's text (the field named as the client spelled it), 401, 404 for an unknown model, 413, 503.
"""

import asyncio
import contextlib
import hmac
import json
import threading
import time

import anyio
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from minirs.errors import MinirsError, RequestError
from minirs.server import mapping
from minirs.server.metrics import Metrics

MAX_BODY = 16 << 20  # bytes of one request's JSON: far above any context's worth of text
RETRY_AFTER_S = 1
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Admission:
    """Counts the requests in flight (queued in the engine or running); past `limit` a request is refused."""

    def __init__(self, limit: int):
        self.limit, self.in_flight = limit, 0

    def enter(self) -> bool:  # called on the event loop only: no lock needed
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class LiveStream:
    """A streamed request in flight: its timings for the metrics, and its end, which happens once: the request
    is cancelled (a no-op if it finished), its admission given back and its outcome counted."""

    def __init__(self, api: "Api", stream, endpoint: str, t0: float):
        self.api, self.stream, self.endpoint, self.t0 = api, stream, endpoint, t0
        self.last: dict[int, float] = {}  # choice index -> when its latest chunk came
        self.chunks, self.final, self.outcome, self.ended = 0, None, "canceled", False

    def seen(self, chunk) -> None:
        m, now = self.api.metrics, time.perf_counter()
        if not self.last:
            m.ttft.observe(now - self.t0)
        for c in chunk.choices:
            if c.index in self.last:
                m.itl.observe(now - self.last[c.index])
            self.last[c.index] = now
        self.chunks += 1
        if chunk.usage is not None:
            self.final = chunk

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.stream.cancel()
        m = self.api.metrics
        self.api.admission.leave()
        m.requests.inc(endpoint=self.endpoint, outcome=self.outcome)
        m.duration.observe(time.perf_counter() - self.t0)
        if self.final is not None:
            m.prompt_tokens.inc(self.final.usage.prompt_tokens)
            m.generation_tokens.inc(self.final.usage.completion_tokens)
        else:  # cut short: one chunk per token
            m.generation_tokens.inc(self.chunks)


class EventResponse(StreamingResponse):
    """Server-sent events that call `on_end` however the response ends, also when the client went away before
    the first event was asked for (the events' generator then never ran, so its own `finally` cannot)."""

    def __init__(self, events, on_end):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_end = on_end

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()


class HttpError(Exception):
    """An answer in OpenAI's error JSON; `outcome` labels it in the metrics."""

    def __init__(self, status: int, message: str, kind: str, param=None, code=None, outcome="bad_request",
                 headers=None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome, headers
        self.body = mapping.error_json(message, kind, param, code)


class Api:
    """The routes' state: the runner, its names, the key, admission and metrics."""

    def __init__(self, runner, served_model_name: str | None, api_key: str | None, max_queue: int):
        self.runner = runner
        self.model_id = served_model_name or runner.model_name
        self.api_key = api_key
        self.admission = Admission(runner.max_seqs + max_queue)
        # a worker thread per request being checked and queued or waited for, a few more for the tokenizer endpoints
        self.limiter = anyio.CapacityLimiter(self.admission.limit + 8)
        self.created = int(time.time())
        engine = runner.engine
        self.metrics = Metrics({
            "minirs_queue_depth": ("requests waiting for a KV slot", lambda: engine.load()[0]),
            "minirs_running_sequences": ("sequences running in the batch", lambda: engine.load()[1]),
            "minirs_requests_in_flight": ("HTTP requests admitted and not finished", lambda: self.admission.in_flight),
        })

    # ----- the completion endpoints --------------------------------------------------------------------------------

    async def chat(self, request: Request):
        return await self._complete(request, "chat")

    async def completions(self, request: Request):
        return await self._complete(request, "completions")

    async def _complete(self, request: Request, endpoint: str):
        t0 = time.perf_counter()
        chat = endpoint == "chat"
        try:
            self._authorize(request)
            body = await _read_json(request)
            names = {}
            try:
                parsed = mapping.chat_request(body) if chat else mapping.completion_request(body)
                names = parsed.names
                self._check_model(parsed.request.model)
                if not self.admission.enter():
                    raise HttpError(503, f"the server is busy: {self.admission.limit} requests are in flight "
                                    "(max_seqs running and --max-queue waiting); retry shortly",
                                    "server_error", code="queue_full", outcome="queue_full",
                                    headers={"Retry-After": str(RETRY_AFTER_S)})
                try:
                    send = self.runner.send_chat_completion_request if chat else self.runner.send_completion_request
                    res = await to_thread.run_sync(send, parsed.request, limiter=self.limiter)
                except BaseException:
                    self.admission.leave()
                    raise
            except RequestError as e:
                message, param = mapping.client_error(e, names)
                raise HttpError(400, message, "invalid_request_error", param) from e
        except HttpError as e:
            self.metrics.requests.inc(endpoint=endpoint, outcome=e.outcome)
            return JSONResponse(e.body, e.status, headers=e.headers)
        except MinirsError as e:  # the engine failed the request (or is shut down)
            self.metrics.requests.inc(endpoint=endpoint, outcome="error")
            return JSONResponse(mapping.error_json(str(e), "server_error"), 500)
        if parsed.request.stream:
            live = LiveStream(self, res, endpoint, t0)
            return EventResponse(self._events(live, parsed.include_usage), live.end)
        self.admission.leave()
        self._count_whole(res, endpoint, t0)
        tok = self.runner.tokenizer
        prefix = len(_prompt_text(parsed.request)) if not chat and parsed.request.echo_prompt else 0
        return JSONResponse(mapping.chat_json(res, tok) if chat else mapping.completion_json(res, tok, prefix))

    async def _events(self, live: "LiveStream", include_usage: bool):
        """The stream's chunks as server-sent events. A thread of the request's own reads the stream (blocking)
        and hands each event, already written, to the event loop (one wake-up a token, no thread-pool round trip);
        what is ready goes out in one write. If this generator is cancelled (the client went away) or fails,
        live.end() cancels the request, which ends the thread."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._pump, args=(live, include_usage, loop, ready), name="minirs-sse",
                         daemon=True).start()
        try:
            while True:
                parts = [await ready.get()]
                while not ready.empty():
                    parts.append(ready.get_nowait())
                text = "".join(p for p in parts if p is not None)
                if text:
                    yield text
                if parts[-1] is None:
                    break
        finally:
            live.end()

    def _pump(self, live: "LiveStream", include_usage: bool, loop, ready) -> None:
        """The stream read in its own thread: each chunk as an event into `ready`, then [DONE] (or an error event),
        then None."""
        chat, tok = live.endpoint == "chat", self.runner.tokenizer

        def put(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server has stopped
                loop.call_soon_threadsafe(ready.put_nowait, item)
        try:
            for chunk in live.stream:
                live.seen(chunk)
                put(_sse(mapping.chunk_json(chunk, tok, chat, include_usage)))
            if include_usage and live.final is not None:
                put(_sse(mapping.usage_json(live.final)))
            put("data: [DONE]\n\n")
            live.outcome = "ok"
        except Exception as e:  # noqa: BLE001 - the engine failed the request mid-stream: tell the client
            live.outcome = "error"
            put(_sse(mapping.error_json(str(e) if isinstance(e, MinirsError) else f"internal error: {e!r}",
                                        "server_error")))
        finally:
            put(None)

    def _count_whole(self, res, endpoint: str, t0: float) -> None:
        """Metrics of a whole response: the engine's timings stand in for the chunks' arrival times."""
        m, u = self.metrics, res.usage
        took = time.perf_counter() - t0
        m.requests.inc(endpoint=endpoint, outcome="ok")
        m.duration.observe(took)
        m.ttft.observe(max(took - u.total_completion_time_sec, 0.0))
        gaps = u.completion_tokens - len(res.choices)
        if gaps > 0:  # the mean gap of each choice, once per gap
            m.itl.observe(u.total_completion_time_sec * len(res.choices) / gaps, times=gaps)
        m.prompt_tokens.inc(u.prompt_tokens)
        m.generation_tokens.inc(u.completion_tokens)

    # ----- the other endpoints -------------------------------------------------------------------------------------

    async def models(self, request: Request):
        async def cards():
            return {"object": "list", "data": [self._model_card()]}
        return await self._simple(request, "models", cards)

    async def model(self, request: Request):
        async def card():
            self._check_model(request.path_params["model"])
            return self._model_card()
        return await self._simple(request, "models", card)

    async def tokenize(self, request: Request):
        async def run():
            body = await _read_json(request)
            _only(body, {"prompt", "add_special_tokens", "model"})
            self._check_model(body.get("model", "default"))
            ids = await to_thread.run_sync(self.runner.tokenize_text, body.get("prompt"),
                                           body.get("add_special_tokens", True), limiter=self.limiter)
            return {"tokens": ids, "count": len(ids), "max_model_len": self.runner.engine.ctx_len}
        return await self._simple(request, "tokenize", run)

    async def detokenize(self, request: Request):
        async def run():
            body = await _read_json(request)
            _only(body, {"tokens", "skip_special_tokens", "model"})
            self._check_model(body.get("model", "default"))
            text = await to_thread.run_sync(self.runner.detokenize_text, body.get("tokens"),
                                            body.get("skip_special_tokens", True), limiter=self.limiter)
            return {"prompt": text}
        return await self._simple(request, "detokenize", run)

    async def health(self, request: Request):
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request):
        return PlainTextResponse(self.metrics.render(), media_type=PROMETHEUS_TEXT)

    async def _simple(self, request: Request, endpoint: str, make):
        try:
            self._authorize(request)
            out = await make()
        except RequestError as e:
            message, param = mapping.client_error(e, {})
            self.metrics.requests.inc(endpoint=endpoint, outcome="bad_request")
            return JSONResponse(mapping.error_json(message, "invalid_request_error", param), 400)
        except HttpError as e:
            self.metrics.requests.inc(endpoint=endpoint, outcome=e.outcome)
            return JSONResponse(e.body, e.status, headers=e.headers)
        self.metrics.requests.inc(endpoint=endpoint, outcome="ok")
        return JSONResponse(out)

    # ----- checks --------------------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise HttpError(401, "invalid or missing API key (send the header Authorization: Bearer KEY)",
                            "invalid_request_error", code="invalid_api_key", outcome="unauthorized",
                            headers={"WWW-Authenticate": "Bearer"})

    def _check_model(self, name) -> None:
        if not isinstance(name, str):
            raise RequestError(f"invalid model: {name!r} (a string)")
        if name not in (self.model_id, "default"):
            raise HttpError(404, f"the model {name!r} does not exist: this server serves {self.model_id!r}",
                            "invalid_request_error", "model", "model_not_found", outcome="not_found")

    def _model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "minirs",
                "max_model_len": self.runner.engine.ctx_len}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _prompt_text(req) -> str:
    return req.prompt if isinstance(req.prompt, str) else ""


def _only(body: dict, allowed: set) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise RequestError(f"unsupported field{'s' if len(extra) > 1 else ''}: {', '.join(extra)} (allowed: "
                           f"{', '.join(sorted(allowed))})")


async def _read_json(request: Request):
    """The body as JSON, read up to MAX_BODY bytes (413 past it, 400 if it is no JSON object)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise HttpError(413, f"the request body is {int(size):,} bytes; at most {MAX_BODY:,} are read",
                        "invalid_request_error")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_BODY:
            raise HttpError(413, f"the request body is over {MAX_BODY:,} bytes", "invalid_request_error")
    try:
        body = json.loads(data)
    except ValueError as e:
        raise HttpError(400, f"the request body is not valid JSON: {e}", "invalid_request_error") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"the request body is JSON but not an object: {str(body)[:80]}",
                        "invalid_request_error")
    return body


def create_app(runner, served_model_name: str | None = None, api_key: str | None = None,
               max_queue: int = 256) -> Starlette:
    """The app serving `runner` (which the caller closes when the server has stopped)."""
    api = Api(runner, served_model_name, api_key, max_queue)
    app = Starlette(routes=[
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
    ])
    app.state.api = api
    return app
