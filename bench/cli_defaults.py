"""Which sampling defaults give the CLI clean answers on its default model (SmolLM2-135M-Instruct Q4_1)?

    python bench/cli_defaults.py [--seeds 20] [--device cpu]

Asks the README's question through the CLI's own chat path (minirs.cli: chat_ids, answer, --max-tokens 256) once
per seed for each candidate setting, and counts the clean answers: they mention Paris, are English (at most 2% of
the letters outside ASCII, no French article or "est"/"et") and do not loop (no 4-word sequence three times, and
the answer ends before --max-tokens). Prints a Markdown table for BENCHMARKS.md ("CLI sampling defaults").
"""

import argparse
import io
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minirs.cli import answer, chat_ids, messages  # noqa: E402
from minirs.sampling import SamplingParams  # noqa: E402

QUESTION = "What is the capital of France?"
# (temperature, top_p, min_p, repeat penalty); top_k 40 throughout, as the CLI's DEFAULTS
CANDIDATES = [(0.7, 0.95, 0.05, 1.0), (0.7, 0.9, 0.05, 1.1), (0.3, 0.9, 0.05, 1.0), (0.3, 0.9, 0.05, 1.1),
              (0.2, 0.9, 0.05, 1.0), (0.2, 0.9, 0.05, 1.1), (0.2, 0.9, 0.1, 1.1), (0.1, 0.9, 0.05, 1.1),
              (0.2, 0.8, 0.05, 1.1), (0.2, 0.8, 0.1, 1.1), (0.3, 0.8, 0.1, 1.1), (0.1, 0.9, 0.05, 1.0),
              (0.1, 0.9, 0.1, 1.1), (0.1, 0.8, 0.1, 1.1), (0.05, 0.9, 0.05, 1.1), (0.0, 1.0, 0.0, 1.1)]


def loops(text: str) -> bool:
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    return bool(grams) and grams.most_common(1)[0][1] >= 3


FRENCH = re.compile(r"(?:^|[^\w'])(?:l'|la|le|les|du|des|est|et|une|je)(?=[^\w']|$)", re.IGNORECASE)


def english(text: str) -> bool:
    """At most 2% of the letters outside ASCII, and none of the French words this model drifts into."""
    letters = [c for c in text if c.isalpha()]
    return (not letters or sum(not c.isascii() for c in letters) <= 0.02 * len(letters)) and not FRENCH.search(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--only", type=int, nargs="*", default=None, help="run these rows of CANDIDATES (default: all)")
    args = ap.parse_args()
    from minirs.engine import Engine
    from minirs.fetch import smollm2_path
    from minirs.load import load
    loaded = load(smollm2_path(), device=args.device)
    tok = loaded.tokenizer
    engine = Engine(loaded.model, tok, max_seqs=1, ctx_len=4096)
    ids = chat_ids(tok, messages(None, [("user", QUESTION)]))
    rows = []
    try:
        for temp, top_p, min_p, rep in [c for i, c in enumerate(CANDIDATES) if args.only is None or i in args.only]:
            t0 = time.perf_counter()
            counts, bad = Counter(), []
            for seed in range(args.seeds):
                params = SamplingParams(temperature=temp, top_k=40, top_p=top_p, min_p=min_p,
                                        repetition_penalty=rep, seed=seed)
                text, reason = answer(engine, tok, ids, params, args.max_tokens, quiet=True, out=io.StringIO())
                paris, eng, loop = "Paris" in text, english(text), loops(text) or reason == "length"
                counts.update(paris=paris, english=eng, no_loop=not loop, clean=paris and eng and not loop)
                if not (paris and eng and not loop):
                    bad.append((seed, text.strip().replace("\n", " ")[:100]))
            rows.append((temp, top_p, min_p, rep, counts))
            print(f"temperature {temp} top_p {top_p} min_p {min_p} repeat {rep}: {counts['clean']}/{args.seeds} clean "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            for seed, text in bad:
                print(f"  seed {seed}: {text!r}", file=sys.stderr)
    finally:
        engine.shutdown()
    n = args.seeds
    print(f"| temperature | top-p | min-p | repeat penalty | mentions Paris | English | no loop | clean (of {n}) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for temp, top_p, min_p, rep, c in rows:
        print(f"| {temp} | {top_p} | {min_p} | {rep} | {c['paris']} | {c['english']} | {c['no_loop']} | "
              f"**{c['clean']}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
