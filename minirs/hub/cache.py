"""The Hugging Face cache on disk (its layout is in minirs/hub/__init__.py): repo folders, refs/ that map a branch
or tag to a commit, snapshots/ whose files link to blobs/, the lock files shared with huggingface_hub, and
try_to_load_from_cache, which finds a file without any network. Every path is built by _cache_path, which refuses
one that leaves its folder."""

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

from minirs.errors import FetchError
from minirs.hub.names import _COMMIT_RE, _check_args, _check_name
from minirs.hub.settings import hub_cache_dir


def _cache_path(root: Path, *names: str) -> Path:
    """root/names, refused unless it stays inside root: a second guard behind _check_name, which saw the names.

    Only the parent is resolved: a snapshot file is itself a symlink into blobs/, and it is replaced, not followed.
    """
    path = root.joinpath(*names)
    inside = Path(os.path.normpath(path.parent.resolve() / path.name))
    if root.resolve() not in inside.parents:
        raise FetchError(f"{path} lies outside the cache folder {root}; refusing to touch it")
    return path


def repo_folder_name(repo_id: str) -> str:
    """The cache folder of a model repo: 'org/name' -> 'models--org--name'."""
    return "models--" + repo_id.replace("/", "--")


def _snapshot_commit(storage: Path, revision: str) -> str | None:
    if _COMMIT_RE.fullmatch(revision):
        return revision
    try:
        commit = _cache_path(storage, "refs", revision).read_text().strip()
        return _check_name(commit, f"commit in {storage}/refs/{revision}", nested=False)
    except (OSError, FetchError):    # a missing or garbled ref: not cached, the next download rewrites it
        return None


def try_to_load_from_cache(repo_id: str, filename: str, revision: str = "main",
                           cache_dir: str | Path | None = None) -> Path | None:
    """The cached file for (repo, revision, filename) without any network, or None when it is not cached."""
    _check_args(repo_id, filename, revision)
    storage = Path(cache_dir or hub_cache_dir()) / repo_folder_name(repo_id)
    if (commit := _snapshot_commit(storage, revision)) is None:
        return None
    path = _cache_path(storage, "snapshots", commit, filename)
    return path if path.is_file() else None


def _cached_listing(storage: Path, revision: str) -> list[str] | None:
    if (commit := _snapshot_commit(storage, revision)) is None:
        return None
    snapshot = _cache_path(storage, "snapshots", commit)
    if not snapshot.is_dir():
        return None
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = _cache_path(storage, "refs", revision)
    if _snapshot_commit(storage, revision) != commit:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def _link(blob: Path, pointer: Path) -> None:
    """Make snapshots/.../file point at the blob: relative symlink, else hard link, else copy."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(f"{pointer.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        try:
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
    os.replace(tmp, pointer)


@contextmanager
def _lock(path: Path):
    """An exclusive lock shared with huggingface_hub (filelock uses flock too); a no-op where flock is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
