"""How far the GPU's roundings by design put the real SmolLM2 from transformers.

    python bench/real_twin.py            # on the CPU: float32, and the CPU twin of the GPU's roundings
    python bench/real_twin.py --cuda     # the same, plus the CUDA backend (needs a GPU)

Runs the procedure of the real-model tests (tests/helpers_real.py: one prefill, then 24 greedy tokens one decode
step at a time, against tests/golden/logits_smollm2.npz) with the float32 CPU backend, with
cuda/numerics.GpuNumericsCpu (the CPU backend with the CUDA backend's int8 / float16 roundings) and, with --cuda,
the CUDA backend. It prints two tables:

- per prompt, the relative error of the last-position logits and where free-running greedy leaves the reference;
- per greedy step, teacher-forced on the reference's tokens, each backend's margin for the reference's token (its
  logit minus the best other logit; negative where the backend would pick another token) beside the reference's
  own top-2 margin. The largest gap between the two is how far rounding moves a greedy decision.

The GPU test's tolerances (tests/test_cuda.py: REAL_LOGIT_TOL, REAL_MARGIN_TOL) are set from these numbers.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers_real import N_GREEDY, run_smollm2

GREEDY_PROMPTS = 3


def backends(cuda: bool):
    from minirs.kernels.cpu import CpuBackend
    from minirs.kernels.cuda.numerics import GpuNumericsCpu
    out = [("CPU float32", CpuBackend()), ("CPU twin of the GPU", GpuNumericsCpu())]
    if cuda:
        from minirs.kernels.cuda.backend import CudaBackend
        out.append(("CUDA", CudaBackend()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", action="store_true", help="add the CUDA backend")
    args = ap.parse_args()

    from minirs.fetch import smollm2_path
    from minirs.load import load_model
    runs = {}  # backend -> run_smollm2's runs
    print("| backend | prompt | tokens | last-logits error | greedy leaves the reference at | margin there |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, be in backends(args.cuda):
        runs[name] = run_smollm2(load_model(smollm2_path(), backend=be), GREEDY_PROMPTS, teacher=True)
        for i, r in enumerate(runs[name]):
            d = r.divergence
            where = "-" if not r.toks else ("never" if d is None else str(d[0]))
            margin = "-" if d is None else f"{d[1]:.4f}"
            print(f"| {name} | {i} | {r.n_ids} | {r.err:.2e} | {where} | {margin} |")
    margins = {n: [r.margins for r in rs[:GREEDY_PROMPTS]] for n, rs in runs.items()}
    rows = {n: [r.rows for r in rs[:GREEDY_PROMPTS]] for n, rs in runs.items()}
    ref_margins = [r.ref_margin for r in next(iter(runs.values()))[:GREEDY_PROMPTS]]

    names = list(margins)
    print("\nTeacher-forced greedy steps: each backend's margin for the reference's token.\n")
    print("| prompt | step | reference | " + " | ".join(names) + " |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |")
    gaps = {n: 0.0 for n in names}
    for i, ref in enumerate(ref_margins):
        for s in range(N_GREEDY):
            cells = [f"{margins[n][i][s]:+.4f}" for n in names]
            print(f"| {i} | {s} | {ref[s]:.4f} | " + " | ".join(cells) + " |")
            for n in names:
                gaps[n] = max(gaps[n], abs(margins[n][i][s] - ref[s]))
    print("\nLargest |margin - reference margin| over those steps: "
          + ", ".join(f"{n} {gaps[n]:.4f}" for n in names))
    if "CUDA" in rows:  # the GPU against its CPU twin, row by row
        twin, gpu = (np.stack([r for p in rows[n] for r in p]) for n in ("CPU twin of the GPU", "CUDA"))
        rel = np.abs(gpu - twin).max(axis=1) / np.abs(twin).max(axis=1)
        print(f"CUDA against the CPU twin, teacher-forced rows: max |error| / max |logit| median {np.median(rel):.2e}, "
              f"largest {rel.max():.2e}")


if __name__ == "__main__":
    main()
