"""The command line's adapter flags (kept apart from cli.py): LoRA adapters and X-LoRA models on the loaded base.

    python cli.py --gguf base.gguf --lora adapter_a,adapter_b --prompt "Hi"       # PEFT adapter folders, all active
    python cli.py --model base_folder --xlora xlora_folder --xlora-order ordering.json
"""

import argparse


def _paths(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"--lora: expected PATH[,PATH...] (got {text!r})")
    return parts


def _index(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"--tgt-non-granular-index must be an integer >= 0 (got {text!r})")
    return v


def add_adapter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", type=_paths, default=None, metavar="PATH[,PATH]",
                   help="PEFT LoRA adapter folders (or hub ids) applied to the model, all active (default: none)")
    p.add_argument("--xlora", type=str, default=None, metavar="PATH",
                   help="an X-LoRA model folder (xlora_config.json, classifier, adapters) (default: none)")
    p.add_argument("--xlora-order", type=str, default=None, metavar="FILE",
                   help="mistral.rs's ordering file for --xlora (or --lora: the adapters it names) (default: none)")
    p.add_argument("--tgt-non-granular-index", type=_index, default=None, metavar="N",
                   help="X-LoRA: keep the scalings once N tokens are generated (default: recompute every token)")


def adapter_args(p: argparse.ArgumentParser, args) -> dict:
    """minirs.load.load's adapter arguments from the flags (a bad combination is a usage error, exit code 2)."""
    if args.lora and args.xlora:
        p.error("--lora and --xlora exclude each other")
    if args.tgt_non_granular_index is not None and not args.xlora:
        p.error("--tgt-non-granular-index needs --xlora")
    return {"lora": args.lora, "xlora": args.xlora, "order": args.xlora_order,
            "tgt_non_granular_index": args.tgt_non_granular_index}
