"""CI check of the CUDA kernels without a GPU: every kernel compiles to PTX for Hopper (sm_90).

Needs numba-cuda with the NVVM wheels (`pip install "numba-cuda[cu12]"`, in the `dev` extra); skips otherwise.
"""

import os
import re

import pytest

pytest.importorskip("numba.cuda")


def _nvvm_ok() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    from numba import cuda

    def k(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(k, "void(float32[::1])", cc=(9, 0))
        return True
    except Exception:  # noqa: BLE001 - no NVVM: numba-cuda[cu12] is not installed
        return False


pytestmark = pytest.mark.skipif(not _nvvm_ok(), reason="numba.cuda.compile_ptx needs NVVM: pip install 'numba-cuda[cu12]'")


# The op-family files of minirs/kernels/cuda/ that hold kernels (each has SIGS and K = kernels(SIGS)), and how many
# (kernel, signature) pairs they compile in all: a kernel that leaves SIGS, or a family file missing here, fails.
FAMILIES = ("quantize", "norm", "rope", "activation", "attention", "mmvq", "mma", "mmv_float", "dequant", "moe",
            "argmax", "prefetch", "sample", "mask", "lora", "kv_move")
N_KERNELS = 113


def _families():
    import importlib
    return [importlib.import_module(f"minirs.kernels.cuda.{name}") for name in FAMILIES]


def _all_kernels():
    for mod in _families():
        for fn, sigs in mod.SIGS.items():
            for sig in sigs:
                yield pytest.param(fn, sig, id=f"{fn.__name__}:{sig[5:40]}")


# PTX lines: a basic block's label, a branch, a return, an instruction that reads or writes device memory (not a
# kernel parameter, shared or local memory); each may be predicated (@%p / @!%p)
_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"^\s*(@!?%\w+\s+)?bra(?:\.uni)?\s+(\$L__\w+);")
_RET = re.compile(r"^\s*(@!?%\w+\s+)?ret;")
_MEMORY_OP = re.compile(r"^\s*(?:@!?%\w+\s+)?(?:ld|ldu|st|atom|red|cp\.async|prefetch|tex|suld|sust)\."
                        r"(?!param|shared|local)")


def before_wait(ptx: str) -> list[str]:
    """The device-memory instructions and returns on some path from a kernel's entry to its griddepcontrol.wait:
    the PTX cut into basic blocks at its labels, walked from the entry along branches and fall-throughs, every path
    stopping at the wait (text order is not execution order: a loop's body may come after the wait). prefetch.L1
    is allowed: the kernels prefetch only weights that way, which no kernel writes."""
    body = ptx[ptx.index(".entry"):].splitlines()
    order, blocks = ["entry"], {"entry": []}
    for line in body:
        m = _LABEL.match(line)
        if m:
            order.append(m.group(1))
            blocks[m.group(1)] = []
        else:
            blocks[order[-1]].append(line)
    found, seen, todo = [], set(), ["entry"]
    while todo:
        b = todo.pop()
        if b in seen:
            continue
        seen.add(b)
        for line in blocks[b]:
            if "griddepcontrol.wait;" in line:
                break
            ret, branch = _RET.match(line), _BRANCH.match(line)
            if ret or (_MEMORY_OP.match(line) and "prefetch.L1" not in line):
                found.append(line.strip())
            if branch:
                todo.append(branch.group(2))
            if (branch or ret) and not (branch or ret).group(1):  # unconditional: no fall-through
                break
        else:
            i = order.index(b)
            if i + 1 < len(order):
                todo.append(order[i + 1])
    return found


@pytest.mark.parametrize("fn,sig", list(_all_kernels()))
def test_kernel_compiles_for_sm90(fn, sig):
    """Every kernel compiles for sm_90, and on every path waits for the kernel before it (programmatic dependent
    launch: intrinsics.wait_prior_kernel) before it touches device memory or returns: with PDL it may start
    while that kernel still runs."""
    from numba import cuda

    from minirs.kernels.cuda.launch import dependent_launch
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    assert ".entry" in ptx and "sm_90" in ptx
    if dependent_launch():  # (off: a GPU without PDL here, or MINIRS_PDL=0)
        assert ptx.count("griddepcontrol.wait;") == 1, fn.__name__
        found = before_wait(ptx)
        assert not found, f"{fn.__name__} runs {found[:3]} before wait_prior_kernel"


def test_before_wait_follows_control_flow():
    """The check above on kernels that break the rule: a load before the wait on a path the text hides (a loop
    whose body the compiler places after the wait), a load in a branch, a return before the wait."""
    from numba import cuda

    from minirs.kernels.cuda.intrinsics import wait_prior_kernel
    from minirs.kernels.cuda.launch import dependent_launch
    if not dependent_launch():
        pytest.skip("dependent launch is off here")

    def in_loop(a, n):
        s = 0.0
        for i in range(n):
            s += a[i]
        wait_prior_kernel()
        a[0] = s

    def in_branch(a, n):
        if n > 3:
            a[1] = 2.0
        wait_prior_kernel()
        a[0] = 1.0

    def returns(a, n):
        if cuda.threadIdx.x >= n:
            return
        wait_prior_kernel()
        a[0] = 1.0

    def good(a, n):
        wait_prior_kernel()
        for i in range(n):
            a[i] += 1.0

    for fn in (in_loop, in_branch, returns):
        assert before_wait(cuda.compile_ptx(fn, "void(float32[::1], int32)", cc=(9, 0))[0]), fn.__name__
    assert before_wait(cuda.compile_ptx(good, "void(float32[::1], int32)", cc=(9, 0))[0]) == []


def test_every_kernel_has_a_signature():
    """A kernel added to K without a CI signature would escape this test; so would a kernel file not in
    FAMILIES, or a kernel that left SIGS (N_KERNELS)."""
    import pathlib

    import minirs.kernels.cuda as pkg
    for mod in _families():
        assert set(mod.K) == {f.__name__ for f in mod.SIGS}
    assert sum(len(sigs) for mod in _families() for sigs in mod.SIGS.values()) == N_KERNELS
    with_kernels = {p.stem for p in pathlib.Path(pkg.__file__).parent.glob("*.py") if "\nSIGS" in p.read_text()}
    assert with_kernels == set(FAMILIES)
