"""How far the GPU's roundings by design put the real SmolLM2 from transformers, measured on the CPU.

    python bench/real_twin.py

Runs the procedure of tests/test_cuda.py::test_real_smollm2_matches_transformers (prefill in chunks of 256, then
24 greedy tokens one decode step at a time, against tests/golden/logits_smollm2.npz) with the float32 CPU backend
and with cuda_numerics.GpuNumericsCpu (the CPU backend with the CUDA backend's int8 / float16 roundings), and
prints per prompt the relative error of the last-position logits and where greedy leaves the reference. The GPU
test's tolerances (REAL_LOGIT_TOL, REAL_NEAR_TIE) are set from the twin's numbers. No GPU needed.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from test_cuda import real_runs

    from minirs.fetch import smollm2_path
    from minirs.kernels.cpu import CpuBackend
    from minirs.kernels.cuda_numerics import GpuNumericsCpu
    from minirs.load import load_model
    g = np.load(ROOT / "tests" / "golden" / "logits_smollm2.npz")
    print("| backend | prompt | tokens | last-logits error | greedy leaves the reference at | margin there |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, be in (("CPU float32", CpuBackend()), ("CPU with the GPU's roundings", GpuNumericsCpu())):
        model = load_model(smollm2_path(), backend=be)
        for i, (err, step, margin) in enumerate(real_runs(model, g)):
            where = "-" if step == -1 else ("never" if step is None else str(step))
            print(f"| {name} | {i} | {len(g[f'ids_{i}'])} | {err:.2e} | {where} | "
                  f"{'-' if margin is None else f'{margin:.4f}'} |")


if __name__ == "__main__":
    main()
