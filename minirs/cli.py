"""The `minirs` command (also `python cli.py`): chat with a GGUF model, answer one prompt, list or fetch models.

    python cli.py                                   # chat with the embedded default model (SmolLM2-135M)
    python cli.py --gguf model.gguf --prompt "Hi"   # one answer, then exit
    python cli.py --gguf model.gguf --prompt "The capital of France is" --raw --max-tokens 24 --temperature 0
    python cli.py models                            # the models in the minirs and Hugging Face caches
    python cli.py pull org/repo:file.gguf           # download one into the Hugging Face cache, print its path
    python cli.py chat FOLDER --instruct            # a Mistral folder, as mistral-chat (also: demo FOLDER)
    python cli.py serve --port 8000                 # the OpenAI API over HTTP (minirs/server)

Only generated text goes to stdout; the `> ` prompt, notices, load time and tokens/s go to stderr (--quiet drops
the last two). A bad flag value is one line on stderr and exit code 2; any other error is one line and exit code 1.
Sampling flags left out take the model's recommendation (GGUF `general.sampling.*`, an HF folder's
generation_config.json), else DEFAULTS, measured on SmolLM2 by bench/cli_defaults.py (see BENCHMARKS.md).
"""

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from minirs import cli_grammar
from minirs.cli_adapters import adapter_args, add_adapter_flags
from minirs.errors import MinirsError
from minirs.flags import CTX_CAP, add_model_flags, model_source
from minirs.flags import Parser as _Parser
from minirs.flags import number as _number

# Used when neither the flag nor the model names a value. Chosen by bench/cli_defaults.py (BENCHMARKS.md, "CLI
# sampling defaults"): on SmolLM2-135M-Instruct only greedy decoding with a repeat penalty answered the README
# question in clean English for all 20 seeds (even temperature 0.05 drifted into French twice). top-k, top-p and
# min-p apply once --temperature is raised.
DEFAULTS = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1,
            "presence_penalty": 0.0, "frequency_penalty": 0.0}
# GGUF keys (llama.cpp's gguf.Keys.General.SAMPLING_*) and generation_config.json keys for each sampling flag
GGUF_SAMPLING = {"temperature": "general.sampling.temp", "top_k": "general.sampling.top_k",
                 "top_p": "general.sampling.top_p", "min_p": "general.sampling.min_p",
                 "repeat_penalty": "general.sampling.penalty_repeat"}
HF_SAMPLING = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
               "repeat_penalty": "repetition_penalty"}
MIN_ANSWER_ROOM = 0.25  # chat keeps room for min(--max-tokens, this share of the context) new tokens


# ----- flags: every number is checked where argparse reads it, the message names the flag and its range -----
# (flags.number; the model-selection flags are flags.add_model_flags, shared with `minirs serve`)

def _sampling(name: str):
    """A float flag checked against the API's table (api/validation.RANGES): one range per field everywhere."""
    from minirs.api.validation import in_range, range_text
    return float, lambda v: in_range(name, v), range_text(name)


# each sampling flag's type, check and range as its error message says it
RANGES = {"temperature": _sampling("temperature"), "top_k": (int, lambda v: v >= 0, ">= 0"),
          "top_p": _sampling("top_p"), "min_p": _sampling("min_p"), "repeat_penalty": _sampling("repetition_penalty"),
          "presence_penalty": _sampling("presence_penalty"), "frequency_penalty": _sampling("frequency_penalty")}


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = _Parser(prog="minirs", add_help=add_help, description="Run a GGUF language model on the CPU or a CUDA GPU. "
                "Subcommands: 'minirs models' lists the cached models, 'minirs pull org/repo:file.gguf' downloads "
                "one, 'minirs serve' serves the OpenAI API over HTTP (minirs serve --help), 'minirs demo FOLDER' and "
                "'minirs chat FOLDER --instruct' run a Mistral folder as mistral-inference's mistral-demo and "
                "mistral-chat do.")
    add_model_flags(p)
    p.add_argument("--prompt", type=str, default=None, help="answer this prompt once and exit (default: chat)")
    p.add_argument("--raw", action="store_true",
                   help="treat --prompt as plain completion text: no chat template, BOS as the model says")
    p.add_argument("--system", type=str, default=None, help="system message for chat (default: none)")
    p.add_argument("--max-tokens", type=_number("--max-tokens", int, lambda v: v >= 1, ">= 1"), default=256,
                   help="most tokens to generate per answer (default 256)")
    d = DEFAULTS
    p.add_argument("--temperature", type=_number("--temperature", *RANGES["temperature"]), default=None,
                   help=f"sampling temperature, 0 = greedy (default: the model's or {d['temperature']})")
    p.add_argument("--top-k", type=_number("--top-k", *RANGES["top_k"]), default=None,
                   help=f"keep the k most likely tokens, 0 = off (default: the model's or {d['top_k']})")
    p.add_argument("--top-p", type=_number("--top-p", *RANGES["top_p"]), default=None,
                   help=f"nucleus sampling mass, 1 = off (default: the model's or {d['top_p']})")
    p.add_argument("--min-p", type=_number("--min-p", *RANGES["min_p"]), default=None,
                   help=f"drop tokens below min_p * p_max, 0 = off (default: the model's or {d['min_p']})")
    p.add_argument("--repeat-penalty", type=_number("--repeat-penalty", *RANGES["repeat_penalty"]),
                   default=None, help="penalise the ids among the last 64 tokens: positive logits divided by "
                   f"this, negative ones multiplied, 1 = off (default: the model's or {d['repeat_penalty']})")
    p.add_argument("--presence-penalty", type=_number("--presence-penalty", *RANGES["presence_penalty"]),
                   default=None, help="subtract this from the logit of every id among the last 64 tokens, "
                   f"0 = off (default {d['presence_penalty']})")
    p.add_argument("--frequency-penalty", type=_number("--frequency-penalty", *RANGES["frequency_penalty"]),
                   default=None, help="subtract this times its count among the last 64 tokens from each id's "
                   f"logit, 0 = off (default {d['frequency_penalty']})")
    p.add_argument("--seed", type=_number("--seed", int, lambda v: v >= 0, ">= 0"), default=None,
                   help="random seed for reproducible sampling (default: random)")
    p.add_argument("--quiet", action="store_true",
                   help="no load and timing lines on stderr (the chat prompt, notices and errors stay)")
    add_adapter_flags(p)  # --lora, --xlora, --xlora-order, --tgt-non-granular-index
    cli_grammar.add_flags(p)
    return p


def _err(msg: str) -> int:
    print(f"minirs: error: {msg}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["models"]:
            return _models_main(argv[1:])
        if argv[:1] == ["pull"]:
            return _pull_main(argv[1:])
        if argv[:1] in (["demo"], ["chat"]):  # mistral-inference's commands, built on this module's pieces
            from minirs.cli_mistral import main as mistral_main
            return mistral_main(argv[0], argv[1:], sys.modules[__name__])
        if argv[:1] == ["serve"]:
            from minirs.server.main import main as serve
            return serve(argv[1:])
        p = build_parser()
        args = p.parse_args(argv)
        args.adapters = adapter_args(p, args)
        return _run(args)
    except BrokenPipeError:
        # the reader went away (`| head -1`): stop quietly; point stdout at /dev/null so the interpreter's final
        # flush does not complain (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MinirsError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


# ----- sampling defaults: the flag, else the model's recommendation, else DEFAULTS -----

def model_sampling(path: Path) -> dict:
    """The sampling values a model file or folder recommends: GGUF `general.sampling.*` metadata, or an HF folder's
    generation_config.json (beside a safetensors file too). Keys as in DEFAULTS; absent ones are left out."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from minirs.formats import load_model_file
        md = load_model_file(path).metadata
        found = {flag: md[key] for flag, key in GGUF_SAMPLING.items() if key in md}
    elif path.is_dir() or path.suffix == ".safetensors":
        cfg = (path if path.is_dir() else path.parent) / "generation_config.json"
        try:
            gen = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
        except (OSError, ValueError):
            gen = {}
        if isinstance(gen, dict) and gen.get("do_sample") is False:
            gen = {**gen, "temperature": 0.0}
        found = {flag: gen[key] for flag, key in HF_SAMPLING.items() if isinstance(gen, dict) and key in gen}
    else:  # a legacy GGML file states nothing
        found = {}
    # a value out of the flag's range is ignored, as if the model stated none
    return {k: v for k, v in found.items() if isinstance(v, int | float) and RANGES[k][1](v)}


def sampling_params(args, recommended: dict):
    """SamplingParams from the flags, the model's recommendation and DEFAULTS, in that order."""
    from minirs.sampling import SamplingParams

    def pick(name):
        given = getattr(args, name)
        return given if given is not None else recommended.get(name, DEFAULTS[name])
    return SamplingParams(temperature=float(pick("temperature")), top_k=int(pick("top_k")),
                          top_p=float(pick("top_p")), min_p=float(pick("min_p")),
                          repetition_penalty=float(pick("repeat_penalty")),
                          presence_penalty=float(pick("presence_penalty")),
                          frequency_penalty=float(pick("frequency_penalty")), seed=args.seed)


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(f"minirs: {msg}", file=sys.stderr)


def _no_template(name: str) -> MinirsError:
    from minirs.tokenizer.chat import BUILTIN_TEMPLATES
    return MinirsError(f"{name} has no chat template: add --raw for plain text completion, or --chat-template NAME "
                       f"with a built-in one ({', '.join(BUILTIN_TEMPLATES)}), a file or a Jinja string")


def _run(args) -> int:
    from minirs.engine import Engine
    from minirs.formats import load_model_file
    from minirs.load import get_backend, load, resolve

    t0 = time.perf_counter()
    source = model_source(args)
    progress = sys.stderr.isatty() and not args.quiet
    backend = get_backend(args.device)  # the device first: it fails fastest
    path = resolve(source, token_source=args.token_source, progress=progress)
    chat = not args.raw and args.chat_template is None
    if chat and path.is_file() and path.suffix == ".gguf" and "tokenizer.chat_template" not in \
            load_model_file(path).metadata:  # say so before loading the weights
        raise _no_template(path.name)
    loaded = load(path, backend=backend, chat_template=args.chat_template, isq=args.isq, progress=progress,
                  **args.adapters)
    model, tok = loaded.model, loaded.tokenizer
    if chat and tok.chat_template is None and tok.instruct is None:  # a Mistral folder has its instruct format
        raise _no_template(loaded.name)
    params = sampling_params(args, model_sampling(loaded.path))
    grammar = cli_grammar.grammar_of(args, tok)
    ctx = args.ctx_size or min(model.config.context_length, CTX_CAP)
    # the API's engine with one sequence slot: a chat's next turn reuses the history its slot still holds
    engine = Engine(model, tok, max_seqs=1, ctx_len=ctx)
    loaded.when_compiled(engine.replace_model)  # a first run: off the twins once the kernels have compiled
    _say(args, f"loaded {loaded.name} ({model.config.arch}, {model.backend.name}) in {time.perf_counter() - t0:.2f} s; "
               f"context {engine.ctx_len} tokens; temperature {params.temperature:g}, top-k {params.top_k}, "
               f"top-p {params.top_p:g}, min-p {params.min_p:g}, repeat penalty {params.repetition_penalty:g}")
    try:
        if args.prompt is not None:
            if args.raw:
                ids = tok.encode(args.prompt, add_special_tokens=True)
            else:
                ids = chat_ids(tok, messages(args.system, [("user", args.prompt)]))
            if len(ids) >= engine.ctx_len:
                raise MinirsError(f"the prompt is {len(ids)} tokens but the context holds {engine.ctx_len}: raise "
                                  f"--ctx-size (this model allows up to {model.config.context_length})")
            answer(engine, tok, ids, params, args.max_tokens, quiet=args.quiet, grammar=grammar)
            return 0
        return _chat(engine, tok, params, args, grammar)
    finally:
        engine.shutdown()


def messages(system, turns):
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": r, "content": c} for r, c in turns]


def chat_ids(tok, msgs) -> list[int]:
    """The chat's prompt ids: the chat template tokenized as HF does, or Mistral's instruct format."""
    return tok.encode_chat(msgs)


def answer(engine, tok, ids, params, max_tokens, quiet=False, out=None, grammar=None) -> tuple[str, str]:
    """Stream one answer to `out` (stdout); return its text and finish reason. Timings go to stderr."""
    from minirs.engine import GenParams, Job

    out = out or sys.stdout
    if not ids:
        raise MinirsError("the prompt is empty (no tokens)")
    job = engine.submit(Job(ids, GenParams(sampling=params, max_tokens=max_tokens, stop_ids=frozenset(tok.eos_ids),
                                           grammar=grammar), tok, stream=True))
    parts = []
    try:
        for ev in job.stream_events():  # Ctrl-C or a closed stdout closes the stream, which cancels the job
            if ev.text:
                parts.append(ev.text)
                out.write(ev.text)
                out.flush()
        job.wait()
    finally:
        out.write("\n")
        out.flush()
    seq = job.seqs[0]
    if not quiet:
        computed, new = len(ids) - job.cached_tokens, len(seq.generated)
        tps = computed / job.prompt_s if job.prompt_s else 0.0
        dtps = (new - 1) / job.decode_s if job.decode_s and new > 1 else 0.0
        cached = f", {job.cached_tokens} reused from the cache" if job.cached_tokens else ""
        print(f"minirs: {computed} prompt tokens in {job.prompt_s:.2f} s ({tps:.1f} tok/s, time to first token "
              f"{job.prompt_s:.2f} s{cached}); {new} new tokens at {dtps:.1f} tok/s [{seq.finish_reason}]",
              file=sys.stderr)
    return "".join(parts), seq.finish_reason


# ----- chat -----

def fit_history(tok, system, turns, ctx_len: int, max_tokens: int) -> tuple[list[int], int]:
    """The prompt ids of the chat and how many of its oldest turns were dropped so that the prompt and room for
    an answer (min(max_tokens, a quarter of the context)) fit ctx_len. The system message and the newest user
    message always stay; the ids may still not fit when those alone do not."""
    room = max(1, min(max_tokens, int(ctx_len * MIN_ANSWER_ROOM)))
    dropped = 0
    while True:
        ids = chat_ids(tok, messages(system, turns[dropped:]))
        if len(ids) + room <= ctx_len or dropped + 1 >= len(turns):
            return ids, dropped
        dropped += 2  # a user turn and its answer


def _chat(engine, tok, params, args, grammar=None) -> int:
    _say(args, "chat started; /reset clears the history, /exit or Ctrl-D quits")
    turns: list[tuple[str, str]] = []
    told = False  # the history's dropping is said once a session
    while True:
        print("> ", end="", file=sys.stderr, flush=True)  # input("> ") would write the prompt to stdout
        try:
            line = input("")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd == "/exit":
            return 0
        if cmd == "/reset":
            turns = []
            print("minirs: history cleared", file=sys.stderr)
            continue
        turns.append(("user", line))
        ids, dropped = fit_history(tok, args.system, turns, engine.ctx_len, args.max_tokens)
        if dropped:
            turns = turns[dropped:]
            if not told:
                print(f"minirs: the history no longer fits {engine.ctx_len} tokens: the oldest turns are dropped "
                      "from now on (the system message stays; /reset clears the history)", file=sys.stderr)
                told = True
        if len(ids) >= engine.ctx_len:
            _err(f"this message is {len(ids)} tokens with the chat template and the system message, but the "
                 f"context holds {engine.ctx_len}: send a shorter one, or restart with a larger --ctx-size")
            turns.pop()
            continue
        try:
            text, _ = answer(engine, tok, ids, params, args.max_tokens, quiet=args.quiet, grammar=grammar)
        except KeyboardInterrupt:
            print("\nminirs: answer interrupted", file=sys.stderr)
            turns.pop()
            continue
        except MinirsError as e:
            _err(f"{e} (/reset clears the history)")
            turns.pop()
            continue
        turns.append(("assistant", text))


# ----- models and pull -----

def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def describe(path: Path) -> tuple[str, str]:
    """A GGUF file's architecture and quant type, from its header: the `general.file_type` name (Q4_K_M, ...), else
    the type holding the most tensor bytes."""
    import gguf

    from minirs.formats import load_model_file
    mf = load_model_file(path)
    ft = mf.metadata.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        nbytes = Counter()
        for t in mf.tensors.values():
            nbytes[t.qtype] += t.nbytes
        quant = nbytes.most_common(1)[0][0] if nbytes else "?"
    return mf.architecture, quant


def cached_models() -> list[tuple[str, Path]]:
    """(name for --gguf, path) of every GGUF in the minirs cache and in the Hugging Face cache."""
    from minirs.fetch import cache_dir
    from minirs.hub.settings import hub_cache_dir
    found = [(str(p), p) for p in sorted(cache_dir().glob("*.gguf"))]
    for p in sorted(hub_cache_dir().glob("models--*/snapshots/*/**/*.gguf")):
        repo = p.relative_to(hub_cache_dir()).parts[0].removeprefix("models--").replace("--", "/", 1)
        rel = p.relative_to(hub_cache_dir()).parts[3:]
        found.append((f"{repo}:{'/'.join(rel)}", p))
    return found


def _models_main(argv) -> int:
    p = _Parser(prog="minirs models", description="List the GGUF models in the minirs cache and the Hugging Face "
                "cache: the name to pass to --gguf, size, architecture and quant type.")
    p.parse_args(argv)
    rows = []
    for name, path in cached_models():
        try:
            arch, quant = describe(path)
            size = _size(path.stat().st_size)
        except (MinirsError, OSError) as e:
            arch, quant, size = "unreadable", str(e).splitlines()[0][:60], "?"
        rows.append((name, size, arch, quant))
    if not rows:
        from minirs.fetch import cache_dir
        from minirs.hub.settings import hub_cache_dir
        print(f"minirs: no models in {cache_dir()} or {hub_cache_dir()}; 'minirs pull org/repo:file.gguf' "
              "downloads one", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for name, size, arch, quant in rows:
        print(f"{name:<{widths[0]}}  {size:>{widths[1]}}  {arch:<{widths[2]}}  {quant}")
    return 0


def _pull_main(argv) -> int:
    p = _Parser(prog="minirs pull", description="Download a GGUF file from the Hugging Face hub into its cache "
                "(once; resumes after interruptions) and print its path.")
    p.add_argument("ref", help="org/repo:file.gguf or org/repo@revision:file.gguf")
    p.add_argument("--token-source", type=str, default="cache",
                   help="token for gated repos: cache, none, literal:TOKEN, env:NAME or path:FILE (default cache)")
    args = p.parse_args(argv)
    from minirs.hub import is_model_ref, resolve_model_ref
    if not is_model_ref(args.ref):
        p.error(f"{args.ref!r} is not a hub reference: write org/repo:file.gguf or org/repo@revision:file.gguf")
    path = resolve_model_ref(args.ref, token_source=args.token_source, progress=True)
    print(path)
    return 0
