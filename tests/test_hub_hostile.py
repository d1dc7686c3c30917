"""minirs.hub against hostile names: revisions and filenames from a caller, ETags, commits and file listings from a
hub on 127.0.0.1 (the FakeHub of test_hub.py). Nothing may be written outside the repo's cache folder, each
refusal is a FetchError that names the repo, and the cache still works for a later honest download.
"""

from pathlib import Path

import pytest

import minirs
from minirs import hub
from minirs.hub import cache as hub_cache
from tests import test_hub
from tests.test_hub import COMMIT, COMMIT2, CONFIG, GGUF, REPO, data_files, download, storage

fake = test_hub.fake    # the local hub fixture, under the name the tests ask for

BAD_REVISIONS = ["", ".", "..", "/abs", "../x", "a/../b", "./x", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb",
                 "a\x7fb"]
BAD_FILENAMES = ["", ".", "..", "/abs.gguf", "../x.gguf", "a/../x.gguf", "./x.gguf", "a//x.gguf", "sub/",
                 "a\\x.gguf", "a\x00b.gguf", "a\nb.gguf"]


def serve_headers(fake_hub, monkeypatch, headers: dict[str, str]):
    """Make the hub send these values in place of its own headers of the same names; returns an undo."""
    handler = fake_hub.servers[0].RequestHandlerClass    # servers[0] is the hub
    real_reply = handler.reply

    def reply(self, status, h=None, body=b"", send_body=True):
        h = {k: headers.get(k, v) for k, v in h.items()} if h else h
        real_reply(self, status, h, body, send_body)

    monkeypatch.setattr(handler, "reply", reply)
    return lambda: monkeypatch.setattr(handler, "reply", real_reply)


def assert_cache_clean(st: Path):
    """No partial download left in the repo's folder, and its blobs/ (when there) still a folder."""
    assert not [p for p in st.rglob("*") if p.name.endswith(".incomplete")]
    assert not (st / "blobs").exists() or (st / "blobs").is_dir()


# ---------------------------------------------------------------------------------------------------- revisions

def test_absolute_revision_cannot_overwrite_a_file(fake, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    fake.repos[REPO]["refs"][str(victim)] = COMMIT    # a hub that answers for any revision name
    cache = tmp_path / "cache"
    with pytest.raises(hub.InvalidReferenceError, match=rf"revision '{victim}' for repo org/model.*absolute"):
        hub.resolve_model_ref(f"org/model@{victim}:model.gguf", cache_dir=cache, endpoint=fake.hub_url,
                              progress=False)
    with pytest.raises(hub.InvalidReferenceError, match="absolute"):
        download(revision=str(victim), cache_dir=cache)
    with pytest.raises(hub.InvalidReferenceError, match="absolute"):
        hub.resolve_file(REPO, "model.gguf", str(victim), cache_dir=cache, endpoint=fake.hub_url, progress=False)
    with pytest.raises(hub.InvalidReferenceError, match="absolute"):
        hub.resolve_folder(REPO, str(victim), cache_dir=cache, endpoint=fake.hub_url, progress=False)
    with pytest.raises(hub.InvalidReferenceError, match="absolute"):
        minirs.Runner(minirs.Which.GGUF(quantized_model_id=REPO, quantized_filename="model.gguf"), device="cpu",
                      revision=str(victim))
    assert victim.read_text() == "precious"
    assert not fake.requests


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_bad_revisions_are_refused_before_any_request(fake, tmp_path, revision):
    fake.repos[REPO]["refs"][revision] = COMMIT
    with pytest.raises(hub.InvalidReferenceError, match=r"revision .* for repo org/model") as e:
        download(revision=revision)
    assert isinstance(e.value, minirs.MinirsError)
    with pytest.raises(hub.InvalidReferenceError):
        hub.list_repo_files(REPO, revision)
    with pytest.raises(hub.InvalidReferenceError):
        hub.try_to_load_from_cache(REPO, "model.gguf", revision)
    assert not fake.requests
    assert not (tmp_path / "hf").exists()


def test_slashes_in_a_branch_name_still_work(fake, tmp_path):
    fake.repos[REPO]["refs"]["refs/pr/1"] = COMMIT2
    assert download(revision="refs/pr/1").parent == storage(tmp_path) / "snapshots" / COMMIT2
    assert (storage(tmp_path) / "refs" / "refs" / "pr" / "1").read_text() == COMMIT2


# ---------------------------------------------------------------------------------------------------- filenames

@pytest.mark.parametrize("filename", BAD_FILENAMES)
def test_bad_filenames_are_refused_before_any_request(fake, tmp_path, filename):
    with pytest.raises(hub.InvalidReferenceError, match=r"filename .* in repo org/model"):
        download(filename=filename)
    with pytest.raises(hub.InvalidReferenceError):
        hub.try_to_load_from_cache(REPO, filename)
    assert not fake.requests


def test_nul_in_a_model_ref_is_a_minirs_error(fake):
    with pytest.raises(hub.InvalidReferenceError, match="control character"):
        hub.resolve_model_ref("org/model:a\x00b.gguf", progress=False)
    assert not fake.requests


# ---------------------------------------------------------------------------------------------------- server names

@pytest.mark.parametrize("filename, header", [("config.json", "ETag"), ("model.gguf", "X-Linked-Etag"),
                                              ("config.json", "X-Repo-Commit"), ("model.gguf", "X-Repo-Commit")])
@pytest.mark.parametrize("value", ["..", ".", "../x", "a\\b"])
def test_hostile_etag_or_commit_is_refused_and_the_cache_still_works(fake, tmp_path, monkeypatch, filename,
                                                                     header, value):
    honest = serve_headers(fake, monkeypatch, {header: value if header == "X-Repo-Commit" else f'"{value}"'})
    with pytest.raises(hub.DownloadError, match=rf"{header} header.*org/model file '{filename}'"):
        download(filename=filename)
    st = storage(tmp_path)
    assert data_files(st) == [] and not (st / "refs").exists()
    assert_cache_clean(st)
    assert not (st / "snapshots").exists() and not list(st.glob(f"*{filename}"))
    honest()
    assert download(filename=filename).read_bytes() == (CONFIG if filename == "config.json" else GGUF)
    assert_cache_clean(st)


def test_hostile_listing_is_refused(fake, tmp_path):
    for bad in ("../evil.safetensors", "/abs.safetensors", "sub/../../evil.json", "a\x00b.safetensors"):
        fake.add_repo("org/hostile", {bad: b"x", "config.json": CONFIG, "model.safetensors": b"w"})
        with pytest.raises(hub.DownloadError, match=r"file name .* in the listing of org/hostile"):
            hub.list_repo_files("org/hostile")
        with pytest.raises(hub.DownloadError, match="org/hostile"):
            hub.resolve_folder("org/hostile", progress=False)
    assert not (tmp_path / "hf" / "hub").exists()


def test_garbled_ref_is_ignored_and_rewritten(fake, tmp_path):
    refs = storage(tmp_path) / "refs"
    refs.mkdir(parents=True)
    (storage(tmp_path) / "snapshots").mkdir()
    (refs / "main").write_text("../../../../outside")    # snapshots/../../../../outside is tmp_path/outside
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("not from the cache")
    assert hub.try_to_load_from_cache(REPO, "config.json") is None
    assert download(filename="config.json").read_bytes() == CONFIG
    assert (refs / "main").read_text() == COMMIT


def test_cache_path_stays_inside_its_root(tmp_path):
    root = tmp_path / "models--org--model"
    assert hub_cache._cache_path(root, "refs", "refs/pr/1") == root / "refs" / "refs" / "pr" / "1"
    for parts in (("refs", "/tmp/x"), ("blobs", ".."), ("snapshots", "../../x"), ("..",)):
        with pytest.raises(hub.FetchError, match="outside the cache folder"):
            hub_cache._cache_path(root, *parts)
    (tmp_path / "elsewhere").mkdir()
    root.mkdir()
    (root / "refs").symlink_to(tmp_path / "elsewhere")    # a planted link out of the cache
    with pytest.raises(hub.FetchError, match="outside the cache folder"):
        hub_cache._cache_path(root, "refs", "main")
