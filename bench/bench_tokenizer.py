"""Tokenizer encode speed on 1 MB of mixed text (English prose, code, numbers, CJK, emoji), both PyPI models, and
Mistral's Tekken and v3 SentencePiece files from the mistral-common wheel (when it is installed; Tekken is also
timed through mistral_common's own tiktoken-based Tekkenizer, for comparison).

    python bench/bench_tokenizer.py            # prints a markdown table
    python bench/bench_tokenizer.py --mb 4     # a bigger text, to see that the time grows linearly

The text is generated from a fixed seed, so runs are comparable. Each tokenizer is built fresh, so the time
includes filling its cache of encoded words, which is what a first long prompt costs.
"""

import argparse
import random
import time

from minirs.fetch import gemma3_path, smollm2_path
from minirs.tokenizer import Tokenizer

WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "with", "as", "was", "on", "be", "by", "this",
         "are", "from", "at", "or", "an", "which", "have", "not", "but", "were", "model", "token", "inference",
         "runtime", "quantized", "matrix", "kernel", "attention", "cache", "layer", "weight", "prompt", "sampling",
         "résumé", "naïve", "Zürich", "façade", "Ελληνικά", "русский", "язык"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }\n",
        "    if key not in table:\n        raise KeyError(key)\n", "SELECT id, name FROM users WHERE age > 42;\n"]
OTHER = ["日本語のテキストです。", "中文分词测试。", "한국어 문장입니다. ", " 🎉🚀 ", " 3.14159 ", " 2024-06-01 ", "\n\n", "\t"]


def mixed_text(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        r = rng.random()
        if r < 0.8:
            s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + rng.choice([". ", ", ", "\n"])
        elif r < 0.9:
            s = rng.choice(CODE)
        else:
            s = rng.choice(OTHER) + str(rng.randint(0, 10**rng.randint(1, 8)))
        parts.append(s)
        size += len(s.encode())
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="size of the text in MB")
    args = ap.parse_args()
    text = mixed_text(int(args.mb * 1_000_000))
    n_mb = len(text.encode()) / 1e6
    print("| tokenizer | text | load s | encode s | MB/s | tokens | decode s | round trip |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    models = [("SmolLM2 (byte-level BPE, smollm)", lambda: Tokenizer.from_gguf(smollm2_path())),
              ("Gemma 3 (SentencePiece BPE)", lambda: Tokenizer.from_gguf(gemma3_path()))]
    try:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        from minirs.tokenizer.mistral import load_mistral_tokenizer
        data = MistralTokenizer._data_path()
        models += [("Mistral Tekken (tekken_240718.json)", lambda: load_mistral_tokenizer(data / "tekken_240718.json")),
                   ("Mistral v3 SentencePiece", lambda: load_mistral_tokenizer(
                       data / "mistral_instruct_tokenizer_240323.model.v3"))]
    except ImportError:
        Tekkenizer = None
    for name, load in models:
        t0 = time.perf_counter()
        tok = load()
        t1 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False)
        t2 = time.perf_counter()
        back = tok.decode(ids)
        t3 = time.perf_counter()
        print(f"| {name} | {n_mb:.2f} MB mixed | {t1 - t0:.2f} | {t2 - t1:.2f} | {n_mb / (t2 - t1):.2f} | {len(ids)} "
              f"| {t3 - t2:.2f} | {'exact' if back == text else 'DIFFERS'} |")
    if Tekkenizer is not None:
        t0 = time.perf_counter()
        ref = Tekkenizer.from_file(data / "tekken_240718.json")
        t1 = time.perf_counter()
        ids = ref.encode(text, bos=False, eos=False)
        t2 = time.perf_counter()
        print(f"| mistral_common Tekkenizer (tiktoken, Rust) | {n_mb:.2f} MB mixed | {t1 - t0:.2f} | {t2 - t1:.2f} "
              f"| {n_mb / (t2 - t1):.2f} | {len(ids)} | | |")


if __name__ == "__main__":
    main()
