"""minirs.hub against hostile names: revisions and filenames from a caller, with a hub on 127.0.0.1 (the FakeHub of
test_hub.py). Nothing may be written outside the repo's cache folder and each refusal is a FetchError that names the
repo.
"""

import pytest

import minirs
from minirs import hub
from tests import test_hub
from tests.test_hub import COMMIT, COMMIT2, REPO, download, storage

fake = test_hub.fake    # the local hub fixture, under the name the tests ask for

BAD_REVISIONS = ["", ".", "..", "/abs", "../x", "a/../b", "./x", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb",
                 "a\x7fb"]
BAD_FILENAMES = ["", ".", "..", "/abs.gguf", "../x.gguf", "a/../x.gguf", "./x.gguf", "a//x.gguf", "sub/",
                 "a\\x.gguf", "a\x00b.gguf", "a\nb.gguf"]


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


def test_cache_path_stays_inside_its_root(tmp_path):
    root = tmp_path / "models--org--model"
    assert hub._cache_path(root, "refs", "refs/pr/1") == root / "refs" / "refs" / "pr" / "1"
    for parts in (("refs", "/tmp/x"), ("blobs", ".."), ("snapshots", "../../x"), ("..",)):
        with pytest.raises(hub.FetchError, match="outside the cache folder"):
            hub._cache_path(root, *parts)
    (tmp_path / "elsewhere").mkdir()
    root.mkdir()
    (root / "refs").symlink_to(tmp_path / "elsewhere")    # a planted link out of the cache
    with pytest.raises(hub.FetchError, match="outside the cache folder"):
        hub._cache_path(root, "refs", "main")
