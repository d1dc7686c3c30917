"""`minirs serve` and `python -m minirs.server`: load a model as the CLI does and serve the OpenAI API over HTTP.

    minirs serve                                            # the default model on http://127.0.0.1:8000/v1
    minirs serve --gguf model.gguf --port 8080 --max-seqs 32 --api-key secret --served-model-name mymodel
    MINIRS_API_KEY=secret python -m minirs.server --gguf org/repo:file.gguf --device cuda

The model flags are the CLI's (minirs/flags.py). SIGTERM or Ctrl-C stops taking connections, lets the requests
in flight finish (at most --drain-timeout seconds), then exits (uvicorn ends the process by the same signal).
"""

import os
import sys

from minirs.errors import MinirsError
from minirs.flags import CTX_CAP, Parser, add_model_flags, model_source, number

API_KEY_ENV = "MINIRS_API_KEY"


def build_parser() -> Parser:
    from minirs.api.validation import MAX_SEQS
    p = Parser(prog="minirs serve", description="Serve a model over HTTP with OpenAI's API (/v1/chat/completions, "
               "/v1/completions, /v1/models), plus /tokenize, /detokenize, /health and /metrics.")
    add_model_flags(p)
    p.add_argument("--max-seqs", type=number("--max-seqs", int, lambda v: 1 <= v <= MAX_SEQS, f"in [1, {MAX_SEQS}]"),
                   default=16, help="sequences decoded together in one batch, each with a KV slot (default 16)")
    p.add_argument("--max-queue", type=number("--max-queue", int, lambda v: v >= 0, ">= 0"), default=256,
                   help="requests that may wait for a slot beyond --max-seqs; past that the server answers 503 "
                        "with Retry-After (default 256)")
    p.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=number("--port", int, lambda v: 0 <= v <= 65535, "in [0, 65535]"), default=8000,
                   help="port to listen on (default 8000)")
    p.add_argument("--api-key", type=str, default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 and the tokenizer endpoints (default: "
                        f"${API_KEY_ENV} if set, else no key)")
    p.add_argument("--served-model-name", type=str, default=None,
                   help="the model id clients send and /v1/models lists (default: the model file's name)")
    p.add_argument("--seed", type=number("--seed", int, lambda v: v >= 0, ">= 0"), default=None,
                   help="the random seed of requests that give none (default: random)")
    p.add_argument("--drain-timeout", type=number("--drain-timeout", float, lambda v: v > 0, "a number > 0"),
                   default=60.0, help="seconds that requests in flight may take to finish after SIGTERM (default 60)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                   help="uvicorn's log level; info logs each request (default info)")
    return p


def open_runner(args):
    """The Runner for the model flags: the source resolved (downloaded once) to a local file or folder."""
    from minirs.api import Runner, Which
    from minirs.load import resolve
    path = resolve(model_source(args), token_source=args.token_source, progress=sys.stderr.isatty())
    which = Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name) if path.is_file() \
        else Which.Plain(model_id=str(path))
    return Runner(which, max_seqs=args.max_seqs, device=args.device, seed=args.seed,
                  max_seq_len=args.ctx_size or CTX_CAP, chat_template=args.chat_template, in_situ_quant=args.isq)


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return serve(args)
    except MinirsError as e:
        print(f"minirs: error: {e}", file=sys.stderr)
        return 1


def serve(args) -> int:
    try:
        import uvicorn

        from minirs.server.app import create_app
    except ImportError as e:
        raise MinirsError(f"minirs serve needs the server extra ({e.name} is missing): pip install 'minirs[server]'"
                          ) from None
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    runner = open_runner(args)
    try:
        app = create_app(runner, served_model_name=args.served_model_name, api_key=api_key,
                         max_queue=args.max_queue)
        print(f"minirs: serving {app.state.api.model_id} ({runner.model.backend.name}, {args.max_seqs} sequences, "
              f"context {runner.engine.ctx_len}) on http://{args.host}:{args.port}/v1"
              f"{' with an API key' if api_key else ''}", file=sys.stderr, flush=True)
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                      timeout_graceful_shutdown=args.drain_timeout)).run()
    finally:
        runner.close()
    return 0
