"""The errors of the hub client. Each is a minirs FetchError (so a MinirsError), and the message names the repo,
the revision or the file it is about; AuthError and GatedRepoError tell how to pass a token, never the token."""

from minirs.errors import FetchError


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
