"""The HTTP client: _Http sends requests to one endpoint with one token, follows redirects by hand so the token
goes to the endpoint's own origin only (never to a CDN), retries connection errors, timeouts and 429/5xx replies
with a doubling backoff, and _raise_for_status maps the hub's error replies (X-Error-Code) to the errors a user can
act on. The retry and timeout settings live here and are read at call time, so changing them here reaches every
request (download.py reads them as net.RETRIES and so on)."""

import logging
import time
from urllib.parse import urljoin, urlsplit

import requests

from minirs.hub.errors import (
    AuthError,
    DownloadError,
    EntryNotFoundError,
    GatedRepoError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

log = logging.getLogger("minirs.hub")

RETRIES = 5                # extra attempts after a connection error, a timeout or a 429/5xx reply
BACKOFF_S = 1.0            # wait before the first retry; doubles each time up to BACKOFF_MAX_S
BACKOFF_MAX_S = 10.0
TIMEOUT_S = (10.0, 60.0)   # (connect, read) seconds for each request
MAX_REDIRECTS = 10
_RETRY_STATUS = {429, 500, 502, 503, 504}


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
