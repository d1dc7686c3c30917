"""Registers and spills of every CUDA kernel for Hopper, without a GPU: numba's PTX through ptxas -v.

    python bench/regs.py [name-substring ...]

Occupancy follows from the registers: an SM has
65,536, so a kernel of r registers keeps at most 65536 // (32 * r) warps resident (and at most 32 blocks).
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def regs(fn, sig) -> str:
    from numba import cuda
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        r = subprocess.run([shutil.which("ptxas") or "ptxas", "-arch=sm_90", "-v", str(p), "-o", str(Path(d) / "k.o")],
                           capture_output=True, text=True)
    out = r.stderr
    m = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    stack = re.search(r"(\d+) bytes stack frame", out)
    if not m:
        return "ptxas failed: " + out.strip().splitlines()[-1]
    return f"{m.group(1)} regs, stack {stack.group(1) if stack else '?'} B, spills {spill.group(1) if spill else '?'}/{spill.group(2) if spill else '?'} B"


def main(subs):
    import importlib

    import minirs.kernels.cuda as pkg
    files = sorted(p.stem for p in Path(pkg.__file__).parent.glob("*.py") if "\nSIGS" in p.read_text())
    for mod in (importlib.import_module(f"minirs.kernels.cuda.{name}") for name in files):  # the kernel files
        for fn, sigs in mod.SIGS.items():
            if subs and not any(s in fn.__name__ for s in subs):
                continue
            for sig in sigs:
                print(f"{fn.__name__:24s} {sig[5:50]:46s} {regs(fn, sig)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
