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

| file | holds |
| --- | --- |
| errors.py | the FetchError subclasses (RepoNotFoundError, GatedRepoError, ChecksumError, NotCachedError, ...) |
| settings.py | the environment: hf_home, hub_cache_dir, hub_endpoint, is_offline |
| token.py | get_token: a `token_source` to a token |
| names.py | model references (ModelRef, parse_model_ref) and _check_name, the one gate for names |
| cache.py | the cache layout: repo folders, refs, snapshots, links, locks, try_to_load_from_cache |
| http.py | _Http (redirects, token origin, retries with backoff) and the hub's error replies; RETRIES, TIMEOUT_S |
| download.py | file metadata, the resumable checked download, hf_hub_download, list_repo_files, resolve_* |

The retry and timeout settings are read where they live: set `minirs.hub.http.RETRIES` (BACKOFF_S, TIMEOUT_S) and
`minirs.hub.download.CHUNK`, not attributes of this package.
"""

from minirs.errors import FetchError
from minirs.hub.cache import repo_folder_name, try_to_load_from_cache
from minirs.hub.download import (
                                 FOLDER_FILES,
                                 hf_hub_download,
                                 list_repo_files,
                                 resolve_file,
                                 resolve_folder,
                                 resolve_model_ref,
)
from minirs.hub.errors import (
                                 AuthError,
                                 ChecksumError,
                                 DiskFullError,
                                 DownloadError,
                                 EntryNotFoundError,
                                 GatedRepoError,
                                 InvalidReferenceError,
                                 NotCachedError,
                                 RepoNotFoundError,
                                 RevisionNotFoundError,
                                 TokenSourceError,
)
from minirs.hub.names import ModelRef, is_model_ref, parse_model_ref
from minirs.hub.settings import DEFAULT_ENDPOINT, hf_home, hub_cache_dir, hub_endpoint, is_offline
from minirs.hub.token import get_token

__all__ = ["DEFAULT_ENDPOINT", "FOLDER_FILES", "AuthError", "ChecksumError", "DiskFullError", "DownloadError",
           "EntryNotFoundError", "FetchError", "GatedRepoError", "InvalidReferenceError", "ModelRef", "NotCachedError",
           "RepoNotFoundError", "RevisionNotFoundError", "TokenSourceError", "get_token", "hf_home", "hf_hub_download",
           "hub_cache_dir", "hub_endpoint", "is_model_ref", "is_offline", "list_repo_files", "parse_model_ref",
           "repo_folder_name", "resolve_file", "resolve_folder", "resolve_model_ref", "try_to_load_from_cache"]
