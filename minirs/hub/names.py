"""Names that come from outside: model references (`org/name[@revision]:file`), repo ids, and the one check,
_check_name, that every revision, filename, ETag, commit or listed file passes before it becomes part of a cache
path (cache._cache_path then guards the joined path). A caller's bad name is an InvalidReferenceError; a server's
is whatever error the caller asks for (a DownloadError)."""

import re
from dataclasses import dataclass

from minirs.errors import FetchError
from minirs.hub.errors import InvalidReferenceError

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SAFE_NAME_RE = re.compile(r"[\w.-]+")   # what a server may put in an etag or commit we use as a file name
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters (NUL too) and backslashes, in any name
_REPO_RE = re.compile(r"[\w.-]+(/[\w.-]+)?")
_REF_RE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(@(?P<revision>[^:]+))?:(?P<filename>.+)")


@dataclass(frozen=True)
class ModelRef:
    """One file in a hub repo: `org/name[@revision]:filename`."""
    repo_id: str
    filename: str
    revision: str = "main"

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        return f"{self.repo_id}{rev}:{self.filename}"


def is_model_ref(ref: str) -> bool:
    """True when `ref` has the form `org/name:file` or `org/name@revision:file` (whether or not it exists)."""
    return _REF_RE.fullmatch(ref) is not None


def parse_model_ref(ref: str) -> ModelRef:
    """Split `org/name:file.gguf` or `org/name@revision:file.gguf` (revision: branch, tag or commit)."""
    m = _REF_RE.fullmatch(ref)
    if m is None:
        raise InvalidReferenceError(f"{ref!r} is not a hub reference; expected 'org/name:file.gguf' or "
                                    "'org/name@revision:file.gguf'")
    model = ModelRef(m["repo"], m["filename"], m["revision"] or "main")
    _check_args(model.repo_id, model.filename, model.revision)
    return model


def _check_args(repo_id: str, filename: str | None, revision: str) -> None:
    if not _REPO_RE.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise InvalidReferenceError(f"invalid hub repo id {repo_id!r}: expected 'org/name' or 'name' "
                                    "(letters, digits, '-', '_', '.')")
    if filename is not None:
        _check_name(filename, f"filename {filename!r} in repo {repo_id}", nested=True)
    _check_name(revision, f"revision {revision!r} for repo {repo_id}", nested=True)


def _check_name(name: str, what: str, *, nested: bool, error: type[FetchError] = InvalidReferenceError) -> str:
    """`name` when it is safe as a path inside a repo's cache folder, else `error` saying what is wrong with `what`.

    The one gate for every name that reaches the file system, from a caller (revision, filename) or from a server
    (ETag, X-Repo-Commit, the files of a listing). `nested` names are relative paths whose parts are joined by '/'
    ('refs/pr/1', 'sub/model.gguf'); the others must be one plain file name (letters, digits, '.', '-', '_').
    The string is checked, not a Path: pathlib drops '.' parts, so 'blobs/.' would silently become 'blobs'.
    """
    if not isinstance(name, str) or not name:    # a server's JSON may hold anything
        why = "it is empty or not a string"
    elif _BAD_CHAR_RE.search(name):
        why = "it has a backslash or a control character"
    elif name.startswith("/"):
        why = "it is an absolute path"
    elif {"", ".", ".."} & set(name.split("/")):
        why = "it has an empty, '.' or '..' path part"
    elif not nested and not _SAFE_NAME_RE.fullmatch(name):
        why = "a single file name of letters, digits, '.', '-' and '_' was expected"
    else:
        return name
    raise error(f"invalid {what}: {why}")
