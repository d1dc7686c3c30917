"""How far the GPU's roundings by design put the real SmolLM2 from transformers, measured on the CPU.

    python bench/real_twin.py

Runs the procedure of the real-model tests (tests/helpers_real.py: one prefill, then 24 greedy tokens one decode
step at a time, against tests/golden/logits_smollm2.npz) with the float32 CPU backend and with
cuda_numerics.GpuNumericsCpu (the CPU backend with the CUDA backend's int8 / float16 roundings), and prints per
prompt the relative error of the last-position logits and where greedy leaves the reference. The GPU test's
tolerances (tests/test_cuda.py: REAL_LOGIT_TOL, REAL_NEAR_TIE) are set from the twin's numbers. No GPU needed.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from helpers_real import N_GREEDY, divergence, load_golden, prefill_and_greedy

    from minirs.fetch import smollm2_path
    from minirs.kernels.cpu import CpuBackend
    from minirs.kernels.cuda_numerics import GpuNumericsCpu
    from minirs.load import load_model
    g = load_golden("logits_smollm2.npz")
    print("| backend | prompt | tokens | last-logits error | greedy leaves the reference at | margin there |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, be in (("CPU float32", CpuBackend()), ("CPU with the GPU's roundings", GpuNumericsCpu())):
        model = load_model(smollm2_path(), backend=be)
        for i in range(int(g["n_prompts"])):
            ids = g[f"ids_{i}"].tolist()
            last, toks = prefill_and_greedy(model, ids, N_GREEDY if i < 3 else 0)
            want = g[f"last_logits_{i}"]
            err = np.abs(last - want).max() / np.abs(want).max()
            d = divergence(toks, g[f"greedy_{i}"], g[f"greedy_margin_{i}"]) if toks else None
            where = "-" if not toks else ("never" if d is None else str(d[0]))
            margin = "-" if d is None else f"{d[1]:.4f}"
            print(f"| {name} | {i} | {len(ids)} | {err:.2e} | {where} | {margin} |")


if __name__ == "__main__":
    main()
