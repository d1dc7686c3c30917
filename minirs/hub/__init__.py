"""Hugging Face hub client: turn `org/name` repo ids into local files, downloading each file once.

Files land in the standard Hugging Face cache, so they are shared with `huggingface_hub`, transformers and
mistral.rs (any of them can fill it, any of them can read it):

    $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
      models--{org}--{name}/
        blobs/{etag}                    the bytes; for LFS files the etag is their sha256
        blobs/{etag}.incomplete         a download in progress; the next call resumes it with `Range`
        snapshots/{commit}/{filename}   relative symlink to ../../blobs/{etag} (hard link or copy without symlinks)
        refs/{revision}                 the commit sha that a branch or tag pointed at when last asked

A download follows huggingface_hub: a HEAD to `{endpoint}/{repo}/resolve/{revision}/{filename}` without following
the CDN redirect reads `X-Repo-Commit`, `X-Linked-Etag`/`ETag` and `X-Linked-Size`/`Content-Length`; a GET then
streams the bytes (from the CDN for LFS files) with a tqdm bar on stderr, resumes with `Range` after a dropped
connection, checks the size and the sha256 (when the etag is one) and only then renames the file into `blobs/`.
The token goes in the `Authorization` header to the endpoint's own origin only, never to a redirect target on
another host, and never into a log line or an error message.

Offline: with `HF_HUB_OFFLINE=1` nothing touches the network and files come from `refs/` and `snapshots/`; when the
network fails, a cached copy is used too. Errors are `minirs.MinirsError` subclasses that name the repo and file.
Every name that becomes part of a cache path (revision, filename, ETag, commit, a listed file) passes _check_name
first, and _cache_path then checks that the path stays inside its folder.

    from minirs.hub import resolve_model_ref
    path = resolve_model_ref("TheBloke/Mistral-7B-Instruct-v0.1-GGUF:mistral-7b-instruct-v0.1.Q4_K_M.gguf")
"""

import errno
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import requests

from minirs.errors import FetchError

log = logging.getLogger("minirs.hub")

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRIES = 5                # extra attempts after a connection error, a timeout or a 429/5xx reply
BACKOFF_S = 1.0            # wait before the first retry; doubles each time up to BACKOFF_MAX_S
BACKOFF_MAX_S = 10.0
TIMEOUT_S = (10.0, 60.0)   # (connect, read) seconds for each request
CHUNK = 1 << 20            # bytes read from the socket per write
MAX_REDIRECTS = 10
_RETRY_STATUS = {429, 500, 502, 503, 504}
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SAFE_NAME_RE = re.compile(r"[\w.-]+")   # what a server may put in an etag or commit we use as a file name
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters (NUL too) and backslashes, in any name
_REPO_RE = re.compile(r"[\w.-]+(/[\w.-]+)?")
_REF_RE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(@(?P<revision>[^:]+))?:(?P<filename>.+)")
_TRUE = {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------------------------------- errors

class RepoNotFoundError(FetchError):
    """The repository does not exist at the endpoint (or is private and no valid token was sent)."""


class RevisionNotFoundError(FetchError):
    """The branch, tag or commit does not exist in the repository."""


class EntryNotFoundError(FetchError):
    """The repository exists but has no such file at that revision (or a local model folder lacks it)."""


class AuthError(FetchError):
    """The endpoint refused the request: the token is missing, invalid or has no access."""


class GatedRepoError(AuthError):
    """The repository is gated: it needs a token of an account that accepted its conditions."""


class DownloadError(FetchError):
    """The network failed after retries, or the server's reply made no sense."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the sha256 the server announced; nothing was kept."""


class DiskFullError(FetchError):
    """The disk filled up while writing a download; the partial file was deleted."""


class NotCachedError(FetchError):
    """A file is needed offline (HF_HUB_OFFLINE=1 or no network) but is not in the cache."""


class TokenSourceError(FetchError, ValueError):
    """A `token_source` is malformed, or what it points at (env var, file) is missing."""


class InvalidReferenceError(FetchError, ValueError):
    """A repo id, revision, filename or model reference is malformed."""


# ---------------------------------------------------------------------------------------------------- settings

def hf_home() -> Path:
    """$HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (as huggingface_hub)."""
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """The hub cache root: $HF_HUB_CACHE (or the older $HUGGINGFACE_HUB_CACHE), else hf_home()/hub."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    return hf_home() / "hub"


def hub_endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE is 1/ON/YES/TRUE: then nothing in this module touches the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _progress_disabled() -> bool:
    return os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().upper() in _TRUE


# ---------------------------------------------------------------------------------------------------- tokens

def get_token(token_source: str = "cache", token_source_value: str | None = None) -> str | None:
    """The hub token a `token_source` names, or None for no token.

    Sources (as mistral.rs): "cache" (HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then the file that `hf auth login`
    writes: $HF_TOKEN_PATH or $HF_HOME/token; no token is fine), "literal:TOKEN", "env:NAME" / "envvar:NAME"
    (default NAME: HF_TOKEN), "path:FILE", "none". The older loader API passes the value apart:
    token_source="literal", token_source_value="hf_...". Error messages never contain the token.
    """
    scheme, sep, value = token_source.partition(":")
    scheme = scheme.strip().lower()
    shown = scheme if scheme.isalpha() and len(scheme) <= 8 else "<hidden>"   # a pasted token must not echo
    if sep and token_source_value is not None:
        raise TokenSourceError(f"token_source {shown}: give its value after ':' or as token_source_value, not both")
    if not sep:
        value = token_source_value
    if scheme == "none":
        return None
    if scheme == "cache":
        if value:
            raise TokenSourceError("token_source 'cache' takes no value")
        return _cached_token()
    if scheme == "literal":
        if not value:
            raise TokenSourceError("token_source 'literal' needs the token: 'literal:hf_...'")
        return value.strip()
    if scheme in ("env", "envvar"):
        name = value or "HF_TOKEN"
        if not (token := os.environ.get(name, "").strip()):
            raise TokenSourceError(f"token_source {scheme}:{name}: environment variable {name} is not set or empty")
        return token
    if scheme == "path":
        if not value:
            raise TokenSourceError("token_source 'path' needs a file: 'path:/path/to/token'")
        path = Path(value).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise TokenSourceError(f"token_source path:{path}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise TokenSourceError(f"token_source path:{path}: the token file is empty")
        return token
    raise TokenSourceError(f"unknown token_source {shown!r}: expected 'cache', 'none', 'literal:TOKEN', "
                           "'env:NAME', 'envvar:NAME' or 'path:FILE'")


def _cached_token() -> str | None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if token := os.environ.get(name, "").strip():
            return token
    path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home() / "token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- references

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


def _cache_path(root: Path, *names: str) -> Path:
    """root/names, refused unless it stays inside root: a second guard behind _check_name, which saw the names.

    Only the parent is resolved: a snapshot file is itself a symlink into blobs/, and it is replaced, not followed.
    """
    path = root.joinpath(*names)
    inside = Path(os.path.normpath(path.parent.resolve() / path.name))
    if root.resolve() not in inside.parents:
        raise FetchError(f"{path} lies outside the cache folder {root}; refusing to touch it")
    return path


# ---------------------------------------------------------------------------------------------------- cache layout

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


# ---------------------------------------------------------------------------------------------------- HTTP

def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


class _Http:
    """Requests to one endpoint with one token. Redirects are followed by hand so that the token goes to the
    endpoint's own origin only (never to a CDN), and so a HEAD can stop at the LFS redirect and read its headers."""

    def __init__(self, endpoint: str, token: str | None):
        self.endpoint = endpoint
        self._token = token
        self._origin = _origin(endpoint)
        self.session = requests.Session()

    def headers(self, url: str) -> dict[str, str]:
        # identity: byte counts and Range offsets must be those of the file, not of a gzip stream
        h = {"User-Agent": "minirs", "Accept-Encoding": "identity"}
        if self._token and _origin(url) == self._origin:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def head(self, url: str) -> requests.Response:
        """HEAD that follows same-origin redirects (a renamed repo) and stops at the CDN one (an LFS file)."""
        for _ in range(MAX_REDIRECTS):
            r = self.session.head(url, headers=self.headers(url), allow_redirects=False, timeout=TIMEOUT_S)
            if not r.is_redirect:
                return r
            target = urljoin(url, r.headers["Location"])
            if "X-Linked-Etag" in r.headers or _origin(target) != _origin(url):
                return r
            url = target
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def get(self, url: str, extra: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        for _ in range(MAX_REDIRECTS):
            r = self.session.get(url, headers={**self.headers(url), **(extra or {})}, allow_redirects=False,
                                 stream=stream, timeout=TIMEOUT_S)
            if not r.is_redirect:
                return r
            url = urljoin(url, r.headers["Location"])
            r.close()
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def retrying(self, send, what: str, retries: int) -> requests.Response:
        """Call send() until it gives a reply other than 429/5xx, backing off after connection errors."""
        delay, last = BACKOFF_S, ""
        for attempt in range(retries + 1):
            try:
                r = send()
            except (requests.ConnectionError, requests.Timeout) as e:
                last = f"{type(e).__name__}: {self.scrub(str(e))[:300]}"
            else:
                if r.status_code not in _RETRY_STATUS:
                    return r
                last = f"HTTP {r.status_code}"
                r.close()
            if attempt < retries:
                log.info("%s failed (%s); retrying in %.1f s", what, last, delay)
                _sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX_S)
        raise DownloadError(f"{what}: network failure after {retries + 1} attempt(s): {last}")


def _raise_for_status(http: _Http, r: requests.Response, repo_id: str, revision: str,
                      filename: str | None = None) -> None:
    """Map an error reply to the error a user can act on, the way the hub's X-Error-Code headers mean it."""
    if r.status_code < 400:
        return
    code = r.headers.get("X-Error-Code", "")
    detail = http.scrub(r.headers.get("X-Error-Message", ""))[:300]
    detail = f" ({detail})" if detail else ""
    where = f"{repo_id} at {http.endpoint}"
    token_hint = ("pass a token with token_source: 'cache' (after `hf auth login` or with HF_TOKEN set), "
                  "'env:NAME', 'path:FILE' or 'literal:TOKEN'")
    if code == "RevisionNotFound":
        raise RevisionNotFoundError(f"revision {revision!r} not found in {where}{detail}")
    if code == "EntryNotFound":
        raise EntryNotFoundError(f"file {filename!r} not found in {repo_id} (revision {revision}) at "
                                 f"{http.endpoint}{detail}")
    if code == "GatedRepo":
        if http._token:
            raise GatedRepoError(f"{where} is gated and the token sent has no access to it: accept its "
                                 f"conditions at {http.endpoint}/{repo_id}{detail}")
        raise GatedRepoError(f"{where} is gated and no token was sent: {token_hint}{detail}")
    invalid_token = "invalid" in detail.lower() and "credential" in detail.lower()
    if code == "RepoNotFound" or r.status_code == 404 or (r.status_code == 401 and not invalid_token):
        what = f"repository {repo_id!r}" + (f" (or file {filename!r} in it)" if filename and not code else "")
        hint = "; check the id, or if it is private " + token_hint if not http._token else ""
        raise RepoNotFoundError(f"{what} not found at {http.endpoint} (HTTP {r.status_code}){hint}{detail}")
    if r.status_code in (401, 403):
        raise AuthError(f"{where} refused access (HTTP {r.status_code}); "
                        f"{'the token was rejected' if http._token else token_hint}{detail}")
    raise DownloadError(f"HTTP {r.status_code} from {http.scrub(r.url)} for {repo_id} file {filename!r}{detail}")


# ---------------------------------------------------------------------------------------------------- downloads

@dataclass(frozen=True)
class _FileMeta:
    commit: str
    etag: str
    size: int | None
    url: str          # where the bytes are: the CDN for LFS files, else the resolve URL


def _normalize_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    return etag.removeprefix("W/").strip('"') or None


def _file_meta(http: _Http, url: str, repo_id: str, revision: str, filename: str, retries: int) -> _FileMeta:
    r = http.retrying(lambda: http.head(url), f"HEAD {url}", retries)
    _raise_for_status(http, r, repo_id, revision, filename)
    commit = r.headers.get("X-Repo-Commit")
    etag_header = "X-Linked-Etag" if r.headers.get("X-Linked-Etag") else "ETag"
    etag = _normalize_etag(r.headers.get(etag_header))
    # a redirect's own Content-Length is that of its empty body, not of the file
    size = r.headers.get("X-Linked-Size") or (None if r.is_redirect else r.headers.get("Content-Length"))
    for name, value in (("X-Repo-Commit", commit), (etag_header, etag)):
        if not value:
            raise DownloadError(f"{url}: the server sent no {name} header; "
                                f"is HF_ENDPOINT ({http.endpoint}) a Hugging Face hub?")
        # both become file names in the cache: snapshots/{commit}/ and blobs/{etag}
        _check_name(value, f"{name} header {value!r} from {http.endpoint} for {repo_id} file {filename!r}",
                    nested=False, error=DownloadError)
    target = urljoin(r.url, r.headers["Location"]) if r.is_redirect else r.url
    return _FileMeta(commit, etag, int(size) if size and size.isdigit() else None, target)


def _write_chunk(f, chunk: bytes) -> None:
    f.write(chunk)


def _download(http: _Http, meta: _FileMeta, blob: Path, label: str, progress: bool) -> None:
    """Stream meta.url into blob.incomplete (resuming what is there), verify, then rename it to blob."""
    from tqdm.auto import tqdm

    blob.parent.mkdir(parents=True, exist_ok=True)
    tmp = blob.with_name(blob.name + ".incomplete")
    have = tmp.stat().st_size if tmp.exists() else 0
    if meta.size is not None and have > meta.size:
        tmp.unlink()
        have = 0
    if meta.size is not None and (free := shutil.disk_usage(blob.parent).free) < meta.size - have:
        log.warning("%s needs %d more bytes but only %d are free in %s", label, meta.size - have, free, blob.parent)
    tmp.touch()    # so an empty file is a file too
    want_sha = meta.etag if _SHA256_RE.fullmatch(meta.etag) else None
    sha, hashed = hashlib.sha256(), 0
    failures = 0
    with tqdm(total=meta.size, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, disable=not progress or _progress_disabled()) as bar:
        while meta.size is None or have < meta.size:
            if have:
                log.info("resuming %s at byte %d", label, have)
            extra = {"Range": f"bytes={have}-"} if have else None
            r = http.retrying(lambda: http.get(meta.url, extra, stream=True), f"GET {label}", RETRIES)  # noqa: B023
            try:
                with r:
                    if r.status_code == 416 and meta.size is None:    # the partial file was already whole
                        break
                    if r.status_code >= 400:    # the HEAD succeeded, so this is the CDN or a flaky server
                        raise DownloadError(f"{label}: HTTP {r.status_code} from {urlsplit(r.url).netloc} "
                                            "while downloading")
                    if have and r.status_code != 206:                   # the server ignored Range: start over
                        have = 0
                        bar.reset(total=meta.size)
                    if want_sha and hashed != have:                     # hash what an earlier run left
                        sha, hashed = _sha256_prefix(tmp, have), have
                    with open(tmp, "ab" if have else "wb") as f:
                        for chunk in r.iter_content(CHUNK):
                            _write_chunk(f, chunk)
                            if want_sha:
                                sha.update(chunk)
                                hashed += len(chunk)
                            have += len(chunk)
                            bar.update(len(chunk))
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                failures += 1
                if failures > RETRIES:
                    raise DownloadError(f"{label}: the connection kept dropping ({type(e).__name__}) after "
                                        f"{failures} attempts; {have} bytes are kept in {tmp} and the next call "
                                        "resumes from there") from None
                _sleep(min(BACKOFF_S * 2 ** (failures - 1), BACKOFF_MAX_S))
                continue
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    tmp.unlink(missing_ok=True)
                    raise DiskFullError(f"disk full while writing {label} to {tmp} ({have} bytes written, "
                                        f"{meta.size} needed); the partial file was deleted") from None
                raise
            if meta.size is None:
                break
            if have < meta.size:    # a clean close before the end counts as a drop
                failures += 1
                if failures > RETRIES:
                    raise DownloadError(f"{label}: the server kept closing the connection early ({have} of "
                                        f"{meta.size} bytes kept in {tmp}; the next call resumes)")
    size = tmp.stat().st_size
    if meta.size is not None and size != meta.size:
        tmp.unlink()
        raise DownloadError(f"{label}: downloaded {size} bytes but the server announced {meta.size}; "
                            "the file was deleted, try again")
    if want_sha:
        if hashed != size:
            sha = _sha256_prefix(tmp, size)
        if (got := sha.hexdigest()) != want_sha:
            tmp.unlink()
            raise ChecksumError(f"{label}: sha256 of the download is {got} but the server announced {want_sha}; "
                                "the file was deleted, try again")
    os.replace(tmp, blob)


def _sha256_prefix(path: Path, n: int):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while n > 0 and (block := f.read(min(n, CHUNK))):
            sha.update(block)
            n -= len(block)
    return sha


# ---------------------------------------------------------------------------------------------------- public API

def hf_hub_download(repo_id: str, filename: str, *, revision: str = "main", token_source: str = "cache",
                    token_source_value: str | None = None, cache_dir: str | Path | None = None,
                    endpoint: str | None = None, progress: bool = True, offline: bool | None = None) -> Path:
    """The local path of `filename` in hub repo `repo_id` at `revision`, downloaded into the cache if needed.

    The path is `{cache}/models--org--name/snapshots/{commit}/{filename}`. A file cached under a commit sha is
    used without network; one cached under a branch or tag is used when offline (`offline=True` or
    HF_HUB_OFFLINE=1, which sends nothing) or when the hub cannot be reached.
    """
    _check_args(repo_id, filename, revision)
    cache = Path(cache_dir or hub_cache_dir()).expanduser()
    storage = cache / repo_folder_name(repo_id)
    label = f"{repo_id}:{filename}" + ("" if revision == "main" else f" (revision {revision})")
    cached = try_to_load_from_cache(repo_id, filename, revision, cache)
    if cached is not None and _COMMIT_RE.fullmatch(revision):
        return cached    # a commit never changes
    if is_offline() if offline is None else offline:
        if cached is not None:
            return cached
        raise NotCachedError(f"{label} is not in the cache {storage} and offline mode is on (HF_HUB_OFFLINE=1); "
                             "download it once with network access")
    http = _Http((endpoint or hub_endpoint()).rstrip("/"), get_token(token_source, token_source_value))
    url = f"{http.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
    try:   # with a cached copy, one failed try is enough to fall back to it
        meta = _file_meta(http, url, repo_id, revision, filename, retries=0 if cached else RETRIES)
    except DownloadError as e:
        if cached is None:
            raise
        log.warning("%s; using the cached %s", e, cached)
        return cached
    pointer = _cache_path(storage, "snapshots", meta.commit, filename)
    if not pointer.is_file():
        blob = _cache_path(storage, "blobs", meta.etag)
        with _lock(_cache_path(cache / ".locks" / storage.name, f"{meta.etag}.lock")):
            if not blob.is_file():
                _download(http, meta, blob, label, progress)
        _link(blob, pointer)
    # only now: a failed download must not move the ref away from a snapshot that works offline
    _write_ref(storage, revision, meta.commit)
    return pointer


def list_repo_files(repo_id: str, revision: str = "main", *, token_source: str = "cache",
                    token_source_value: str | None = None, cache_dir: str | Path | None = None,
                    endpoint: str | None = None, offline: bool | None = None) -> list[str]:
    """The sorted file names of a hub repo at `revision` (or of a local folder, when `repo_id` is one).

    Asks `{endpoint}/api/models/{repo}/revision/{revision}`; offline or without network it lists the cached
    snapshot instead, which holds only the files downloaded so far.
    """
    if (local := Path(repo_id).expanduser()).is_dir():
        return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    _check_args(repo_id, None, revision)
    storage = Path(cache_dir or hub_cache_dir()).expanduser() / repo_folder_name(repo_id)
    if is_offline() if offline is None else offline:
        if (files := _cached_listing(storage, revision)) is not None:
            return files
        raise NotCachedError(f"no cached snapshot of {repo_id} (revision {revision}) in {storage} and offline mode "
                             "is on (HF_HUB_OFFLINE=1)")
    http = _Http((endpoint or hub_endpoint()).rstrip("/"), get_token(token_source, token_source_value))
    url = f"{http.endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    try:
        r = http.retrying(lambda: http.get(url), f"GET {url}", RETRIES)
    except DownloadError as e:
        if (files := _cached_listing(storage, revision)) is None:
            raise
        log.warning("%s; listing the cached snapshot instead", e)
        return files
    _raise_for_status(http, r, repo_id, revision)
    try:
        files = sorted(s["rfilename"] for s in r.json()["siblings"])
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"{url}: the reply has no 'siblings' list of files") from None
    for name in files:    # each is a path in the cache once downloaded; a git repo cannot hold '../x'
        _check_name(name, f"file name {name!r} in the listing of {repo_id} (revision {revision}) from "
                    f"{http.endpoint}", nested=True, error=DownloadError)
    return files


def resolve_file(model_id: str, filename: str, revision: str = "main", token_source: str = "cache",
                 token_source_value: str | None = None, *, progress: bool = True,
                 cache_dir: str | Path | None = None, endpoint: str | None = None) -> Path:
    """A model file by `Which`-style id: `model_id` is a local folder (the file must be in it), a local file
    (returned as is), or a hub repo id (the file is downloaded once, see hf_hub_download)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if (path := local / filename).is_file():
            return path
        raise EntryNotFoundError(f"file {filename!r} not found in the local folder {local}")
    if local.is_file():
        return local
    if not _REPO_RE.fullmatch(model_id):
        raise InvalidReferenceError(f"{model_id!r} is neither an existing local path nor a hub repo id 'org/name'")
    return hf_hub_download(model_id, filename, revision=revision, token_source=token_source,
                           token_source_value=token_source_value, cache_dir=cache_dir, endpoint=endpoint,
                           progress=progress)


# the files of a Hugging Face model folder that minirs reads (weights, config, tokenizer, chat template)
FOLDER_FILES = re.compile(r"(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|"
                          r"special_tokens_map\.json|tokenizer\.model(\.v3)?|[^/]*\.safetensors|"
                          r"[^/]*\.safetensors\.index\.json)")


def resolve_folder(model_id: str, revision: str = "main", token_source: str = "cache",
                   token_source_value: str | None = None, *, progress: bool = True,
                   cache_dir: str | Path | None = None, endpoint: str | None = None) -> Path:
    """A Hugging Face model folder by `Which.Plain`-style id: a local folder as is, or a hub repo whose
    weights, config and tokenizer files (FOLDER_FILES, top level only) are downloaded once into one snapshot
    folder of the cache, which is returned."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    if local.exists() or not _REPO_RE.fullmatch(model_id):
        raise InvalidReferenceError(f"{model_id!r} is neither a local model folder nor a hub repo id 'org/name'")
    kw = dict(token_source=token_source, token_source_value=token_source_value, cache_dir=cache_dir,
              endpoint=endpoint)
    files = [f for f in list_repo_files(model_id, revision, **kw) if FOLDER_FILES.fullmatch(f)]
    if not any(f.endswith(".safetensors") for f in files):
        raise EntryNotFoundError(f"hub repo {model_id} (revision {revision}) has no .safetensors weights; for a "
                                 "GGUF repo use Which.GGUF with quantized_filename")
    paths = [hf_hub_download(model_id, f, revision=revision, progress=progress, **kw) for f in files]
    return paths[0].parent  # every file of one commit sits in the same snapshot folder


def resolve_model_ref(ref: str | Path, *, token_source: str = "cache", token_source_value: str | None = None,
                      progress: bool = True, cache_dir: str | Path | None = None,
                      endpoint: str | None = None) -> Path:
    """A path for the CLI's `--gguf`: an existing local file as is, else `org/name[@revision]:file` downloaded."""
    if (local := Path(ref).expanduser()).exists():
        return local
    if not is_model_ref(str(ref)):
        raise InvalidReferenceError(f"{str(ref)!r} is not an existing file nor a hub reference "
                                    "'org/name:file.gguf' or 'org/name@revision:file.gguf'")
    model = parse_model_ref(str(ref))
    return hf_hub_download(model.repo_id, model.filename, revision=model.revision, token_source=token_source,
                           token_source_value=token_source_value, cache_dir=cache_dir, endpoint=endpoint,
                           progress=progress)

