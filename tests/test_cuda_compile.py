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


def _all_kernels():
    from minirs.kernels import cuda_matmul, cuda_mma, cuda_ops, cuda_sample
    for mod in (cuda_ops, cuda_matmul, cuda_mma, cuda_sample):
        for fn, sigs in mod.SIGS.items():
            for sig in sigs:
                yield pytest.param(fn, sig, id=f"{fn.__name__}:{sig[5:40]}")


# a PTX instruction that reads or writes device memory (not a kernel parameter, shared or local memory)
_MEMORY_OP = re.compile(r"^\s*(?:@%p\d+\s+)?(?:ld|st|atom|red|cp\.async)\.(?!param|shared|local)", re.MULTILINE)


@pytest.mark.parametrize("fn,sig", list(_all_kernels()))
def test_kernel_compiles_for_sm90(fn, sig):
    """Every kernel compiles for sm_90, and waits for the kernel before it (programmatic dependent launch:
    cuda_intrinsics.wait_prior_kernel) before it first touches device memory: with PDL it may start while that
    kernel still runs. Only weight prefetches (prefetch.L1, not matched here) may come before the wait."""
    from numba import cuda

    from minirs.kernels.cuda_launch import dependent_launch
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    assert ".entry" in ptx and "sm_90" in ptx
    if not dependent_launch():  # a GPU without PDL here (or MINIRS_PDL=0): nothing to wait for
        return
    wait = ptx.find("griddepcontrol.wait;")
    first = _MEMORY_OP.search(ptx)
    assert wait >= 0 and (first is None or wait < first.start()), \
        f"{fn.__name__} touches device memory before wait_prior_kernel: {first and first.group(0).strip()}"


def test_every_kernel_has_a_signature():
    """A kernel added to K without a CI signature would escape this test."""
    from minirs.kernels import cuda_matmul, cuda_mma, cuda_ops, cuda_sample
    for mod in (cuda_ops, cuda_matmul, cuda_mma, cuda_sample):
        assert set(mod.K) == {f.__name__ for f in mod.SIGS}
