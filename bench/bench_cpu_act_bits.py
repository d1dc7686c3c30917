"""The CPU matmul's two activation forms side by side in one process: 16-bit (two int8 per input, the default) and
8-bit (one, MINIRS_CPU_ACT_BITS=8), alternating, so the machine's drift falls on both alike.

    python bench/bench_cpu_act_bits.py [--gguf FILE] [--reps 8]

Each repetition runs a 128-token prefill and 16 decode steps in each form (kernels/cpu/qdot.py X16 and X8);
prints the medians and the 8-bit / 16-bit ratios (mean +- standard error over the repetitions).
"""

import argparse
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="model file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--reps", type=int, default=8, help="alternations (default 8)")
    args = ap.parse_args(argv)
    import minirs.kernels.cpu.matmul as mm
    from minirs.engine.kv_cache import KVCache
    from minirs.engine.runner import ModelRunner
    from minirs.fetch import smollm2_path
    from minirs.kernels.cpu.qdot import X8, X16
    from minirs.load import load_model

    model = load_model(args.gguf or smollm2_path(), device="cpu")
    runner = ModelRunner(model, KVCache(model.config, model.backend, 1, 512, 256))
    ids = np.arange(400) % model.config.vocab_size

    def use(form):  # every matmul of the model takes qmatmul's default form
        mm.qmatmul.__defaults__ = (None, form)

    def prefill():
        t = time.perf_counter()
        runner.forward(ids[:128], np.zeros(128, np.int64), np.arange(128), [127])
        return 128 / (time.perf_counter() - t)

    def decode(n=16):
        t = time.perf_counter()
        for p in range(200, 200 + n):
            runner.forward(ids[p:p + 1], np.zeros(1, np.int64), np.array([p]), [0])
        return n / (time.perf_counter() - t)

    forms = {"16-bit": X16, "8-bit": X8}
    for form in forms.values():  # compile and warm both
        use(form)
        prefill()
        decode(4)
    got = {name: ([], []) for name in forms}
    for _ in range(args.reps):
        for name, form in forms.items():
            use(form)
            got[name][0].append(prefill())
            got[name][1].append(decode())
    use(mm.X_FORM)
    print("| form | pp128 tok/s | tg16 tok/s |\n| --- | ---: | ---: |")
    for name, (pp, tg) in got.items():
        print(f"| {name} | {np.median(pp):.1f} | {np.median(tg):.1f} |")
    for i, what in enumerate(("prefill", "decode")):
        r = np.array(got["8-bit"][i]) / np.array(got["16-bit"][i])
        print(f"8-bit / 16-bit {what}: {r.mean():.3f} +- {r.std() / np.sqrt(len(r)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
