"""python -m minirs.bench leaves no model file behind, unless --dir asks it to keep (and reuse) them."""

import tempfile

from minirs import bench

TINY = ["--device", "cpu", "--preset", "tiny-llama", "--pp", "4", "--tg", "2", "--reps", "1"]


def test_temp_folder_is_deleted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary folder would be left
    assert bench.main(TINY) == 0
    assert "| tiny-llama |" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_dir_keeps_and_reuses_the_files(tmp_path, capsys):
    keep = tmp_path / "models"
    assert bench.main([*TINY, "--dir", str(keep)]) == 0
    assert "# wrote" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["tiny-llama.gguf"]
    assert bench.main([*TINY, "--dir", str(keep)]) == 0
    assert "# wrote" not in capsys.readouterr().err
