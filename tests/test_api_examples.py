"""Every seed example in examples/ runs as written (only max_tokens shrunk, to keep the test fast)."""

import runpy
from pathlib import Path

import pytest

from tests.test_api import single_threaded  # noqa: F401 - the same one-thread fixture

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, smollm2_path, tmp_path, capsys):
    src = path.read_text().replace("max_tokens=256", "max_tokens=8")
    assert "max_tokens=8" in src
    script = tmp_path / path.name
    script.write_text(src)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip()
