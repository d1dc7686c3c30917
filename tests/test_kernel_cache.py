"""Numba's on-disk kernel cache follows every source file of the kernels' folder (minirs/kernels/cpu/cache.py), not
only the file of the cached function: a kernel that inlines a function of another file is compiled again when that
file changes."""

import os
import subprocess
import sys
import textwrap

import pytest

from minirs.kernels.cpu.cache import STAMP

MOD = """
from numba import njit
from dep import value

@njit(cache=True)
def kernel():
    return value()

def probe():
    pass
"""


def run(folder, drop: bool) -> str:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(folder)!r})
        from pathlib import Path
        import mod
        if {drop}:
            from minirs.kernels.cpu.cache import drop_stale
            drop_stale(Path({str(folder)!r}), mod.probe)
        print(mod.kernel())
    """)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # the cache beside the files
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip()


def write_dep(folder, value: int) -> None:
    (folder / "dep.py").write_text(f"from numba import njit\n\n\n@njit(inline='always')\ndef value():\n"
                                   f"    return {value}\n")


def test_a_change_in_an_inlined_file_recompiles_the_kernel(tmp_path):
    (tmp_path / "mod.py").write_text(MOD)
    write_dep(tmp_path, 1)
    assert run(tmp_path, drop=True) == "1"
    assert (tmp_path / "__pycache__" / STAMP).exists()
    write_dep(tmp_path, 2)
    if run(tmp_path, drop=False) == "2":
        pytest.skip("this Numba recompiles a kernel when a file it inlines changes: nothing for drop_stale to do")
    # Numba alone handed back the kernel compiled from the old dep.py (above); drop_stale gets the new one
    assert run(tmp_path, drop=True) == "2"
    assert run(tmp_path, drop=True) == "2"  # and then loads it from the cache again
    assert list((tmp_path / "__pycache__").glob("mod.kernel-*.nbc"))
