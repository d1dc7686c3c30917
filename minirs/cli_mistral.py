"""`minirs demo FOLDER` and `minirs chat FOLDER`: mistral-inference's `mistral-demo` and `mistral-chat` on minirs.

    minirs demo Mistral-7B-v0.3/                                        # three fixed prompts, one batch
    minirs chat Mistral-7B-Instruct-v0.3/ --instruct --max_tokens 256 --temperature 0.35
    minirs chat Mistral-7B-v0.3/                                        # no --instruct: a growing plain text

They take the flags of mistral-inference (--max_tokens, --temperature, --instruct; --lora_path is refused: merge
the adapter first) and those of the main `minirs` command (--device, --top-p, --seed, --ctx-size, --system,
--quiet, ...). Sampling flags left out take mistral-inference's values (temperature 0 for demo and 0.7 for chat,
top-p 0.8, no top-k, min-p or repeat penalty), not the main command's defaults. The folder may be any model
minirs loads (a Mistral folder, an HF folder, a GGUF file). `chat --instruct` is the main command's chat loop:
its prompt ids come from Tokenizer.encode_chat, i.e. mistral_common's instruct format for a Mistral folder.

The main command's flags, chat loop and answer printer are minirs/cli.py's: `minirs.cli.main` hands its own module
to `main` here (this module never imports it, so the two do not import each other).
"""

import argparse
import sys
import time

from minirs.errors import MinirsError

# mistral-inference's demo prompts (main.py) and its sampling: generate.sample(logits, temperature, top_p=0.8)
DEMO_PROMPTS = ["This is a test", "This is another great test",
                "This is a third test, mistral AI is very good at testing. "]
SAMPLING = {"top_k": 0, "top_p": 0.8, "min_p": 0.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0}
MAX_TOKENS = 35  # mistral-inference's default for both commands
SEPARATOR = "====================="


def build_parser(command: str, cli):
    what = {"demo": "generate from three fixed prompts as one batch (mistral-inference's mistral-demo)",
            "chat": "chat with a model (mistral-inference's mistral-chat): --instruct uses the model's instruct "
                    "format, without it each line extends one plain text"}[command]
    p = cli._Parser(prog=f"minirs {command}", description=f"{what}. Also takes the flags of 'minirs'.",
                    parents=[cli.build_parser(add_help=False)], conflict_handler="resolve")
    p.add_argument("folder", help="the model: a Mistral folder (params.json, consolidated.safetensors, "
                                  "tekken.json or tokenizer.model.vN), an HF folder or a GGUF file")
    p.add_argument("--max_tokens", "--max-tokens", dest="max_tokens", default=MAX_TOKENS,
                   type=cli._number("--max_tokens", int, lambda v: v >= 1, ">= 1"),
                   help=f"most tokens to generate per answer (default {MAX_TOKENS})")
    p.add_argument("--instruct", action="store_true",
                   help="chat: encode the conversation in the model's instruct format (default: plain text)")
    p.add_argument("--lora_path", default=None, help="not supported: merge the adapter into the weights first")
    for flag in ("--gguf", "--model"):  # the model is the FOLDER argument here
        p.add_argument(flag, default=None, help=argparse.SUPPRESS)
    return p


def main(command: str, argv, cli) -> int:
    """Run `minirs demo ...` or `minirs chat ...` with the pieces of `cli` (the minirs.cli module), whose main
    handles the errors."""
    parser = build_parser(command, cli)
    args = parser.parse_args(argv)
    args.adapters = cli.adapter_args(parser, args)
    if args.gguf is not None or args.model is not None:
        parser.error(f"minirs {command} takes the model as its FOLDER argument, not --gguf or --model")
    plain = command == "demo" or not args.instruct
    for flag, value in (("--system", args.system), ("--chat-template", args.chat_template),
                        ("--prompt", args.prompt if command == "demo" else None)):
        if value is not None and plain:
            parser.error(f"{flag} has no use in minirs {command}{'' if command == 'demo' else ' without --instruct'}")
    if args.lora_path is not None:
        raise MinirsError(f"--lora_path {args.lora_path!r}: LoRA adapter files are not supported; a folder whose "
                          "params.json has a lora section (weights with lora_A / lora_B) is merged at load time")
    temperature = 0.7 if command == "chat" else 0.0
    for name, value in SAMPLING.items() | {("temperature", temperature)}:
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.model = args.folder
    if command == "chat" and (args.instruct or args.prompt is not None):
        args.raw = args.raw or not args.instruct  # --prompt without --instruct: one plain-text continuation
        return cli._run(args)  # the main command's chat loop, prompt ids from Tokenizer.encode_chat
    return _demo(args, cli) if command == "demo" else _text_chat(args, cli)


def _load(args, cli):
    from minirs.engine import Engine
    from minirs.load import get_backend, load
    t0 = time.perf_counter()
    backend = get_backend(args.device)
    loaded = load(args.model, backend=backend, chat_template=args.chat_template, isq=args.isq,
                  token_source=args.token_source, progress=sys.stderr.isatty() and not args.quiet, **args.adapters)
    params = cli.sampling_params(args, {})
    ctx = args.ctx_size or min(loaded.model.config.context_length, cli.CTX_CAP)
    engine = Engine(loaded.model, loaded.tokenizer, max_seqs=len(DEMO_PROMPTS), ctx_len=ctx)
    loaded.when_compiled(engine.replace_model)  # a first run: off the twins once the kernels have compiled
    cli._say(args, f"loaded {loaded.name} ({loaded.model.config.arch}, {loaded.model.backend.name}) in "
               f"{time.perf_counter() - t0:.2f} s; temperature {params.temperature:g}, top-p {params.top_p:g}")
    return engine, loaded.tokenizer, params


def _demo(args, cli) -> int:
    """The three prompts as one batch; each is printed with its continuation, then a separator line."""
    from minirs.engine import GenParams, Job
    engine, tok, params = _load(args, cli)
    try:
        stop = frozenset(tok.eos_ids)
        jobs = [engine.submit(Job(tok.encode(p, add_special_tokens=True),
                                  GenParams(sampling=params, max_tokens=args.max_tokens, stop_ids=stop), tok))
                for p in DEMO_PROMPTS]  # all submitted before any is waited on: the engine batches them
        for prompt, job in zip(DEMO_PROMPTS, jobs):
            job.wait()
            print(prompt + "".join(job.seqs[0].text))
            print(SEPARATOR)
    finally:
        engine.shutdown()
    return 0


def _text_chat(args, cli) -> int:
    """mistral-chat without --instruct: each line is appended to one text, which the model continues."""
    engine, tok, params = _load(args, cli)
    text = ""
    try:
        while True:
            print("Prompt: ", end="", file=sys.stderr, flush=True)
            try:
                line = input("")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            text += line
            ids = tok.encode(text, add_special_tokens=True)
            if len(ids) >= engine.ctx_len:
                raise MinirsError(f"the text is {len(ids)} tokens but the context holds {engine.ctx_len}: raise "
                                  "--ctx-size")
            reply, _ = cli.answer(engine, tok, ids, params, args.max_tokens, quiet=args.quiet)
            print(SEPARATOR)
            text += reply
    finally:
        engine.shutdown()
