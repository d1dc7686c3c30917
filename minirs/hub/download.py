"""Downloads: a HEAD reads a file's commit, ETag and size; _download streams the bytes into blobs/ with a
resumable GET, checks the size and the sha256 and only then renames the file into place; hf_hub_download ties it
to the cache (offline use, fallback to a cached copy, locks, snapshot links, refs). list_repo_files, resolve_file,
resolve_folder and resolve_model_ref are the entry points the loaders and the CLI call."""

import errno
import hashlib
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import requests

from minirs.hub import http as net  # net.RETRIES, net.BACKOFF_S, net._sleep: read where they live, at call time
from minirs.hub.cache import (
    _cache_path,
    _cached_listing,
    _link,
    _lock,
    _write_ref,
    repo_folder_name,
    try_to_load_from_cache,
)
from minirs.hub.errors import (
    ChecksumError,
    DiskFullError,
    DownloadError,
    EntryNotFoundError,
    InvalidReferenceError,
    NotCachedError,
)
from minirs.hub.http import _Http, _raise_for_status
from minirs.hub.names import _COMMIT_RE, _REPO_RE, _check_args, _check_name, is_model_ref, parse_model_ref
from minirs.hub.settings import _progress_disabled, hub_cache_dir, hub_endpoint, is_offline
from minirs.hub.token import get_token

log = logging.getLogger("minirs.hub")

CHUNK = 1 << 20            # bytes read from the socket per write
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


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
            r = http.retrying(lambda: http.get(meta.url, extra, stream=True), f"GET {label}", net.RETRIES)  # noqa: B023
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
                if failures > net.RETRIES:
                    raise DownloadError(f"{label}: the connection kept dropping ({type(e).__name__}) after "
                                        f"{failures} attempts; {have} bytes are kept in {tmp} and the next call "
                                        "resumes from there") from None
                net._sleep(min(net.BACKOFF_S * 2 ** (failures - 1), net.BACKOFF_MAX_S))
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
                if failures > net.RETRIES:
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
        meta = _file_meta(http, url, repo_id, revision, filename, retries=0 if cached else net.RETRIES)
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
        r = http.retrying(lambda: http.get(url), f"GET {url}", net.RETRIES)
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
                          r"special_tokens_map\.json|tokenizer\.model(\.v\d+(m\d+)?)?|[^/]*\.safetensors|"
                          r"[^/]*\.safetensors\.index\.json|params\.json|tekken\.json)")
MISTRAL_ONLY = re.compile(r"params\.json|tekken\.json|consolidated[^/]*\.safetensors")  # Mistral's own layout


def _one_layout(files: list[str]) -> list[str]:
    """Many Mistral repos hold the weights twice: Mistral's layout (params.json, consolidated*.safetensors) and
    HF's (config.json, model-*.safetensors). Keep Mistral's where it is complete, as a local folder with both is
    read (models/source.py), else HF's: never both copies."""
    if "params.json" in files and any(re.fullmatch(r"consolidated[^/]*\.safetensors", f) for f in files):
        return [f for f in files if MISTRAL_ONLY.fullmatch(f) or f.startswith("tokenizer.model")]
    return [f for f in files if not MISTRAL_ONLY.fullmatch(f)]


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
    files = _one_layout([f for f in list_repo_files(model_id, revision, **kw) if FOLDER_FILES.fullmatch(f)])
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
