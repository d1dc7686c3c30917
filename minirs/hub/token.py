"""Hub tokens: get_token turns a mistral.rs-style `token_source` ("cache", "literal:TOKEN", "env:NAME",
"path:FILE", "none") into the token to send, or None. "cache" reads what `hf auth login` and huggingface_hub use.
No error message here contains the token (the HTTP client scrubs it from replies too)."""

import os
from pathlib import Path

from minirs.hub.errors import TokenSourceError
from minirs.hub.settings import hf_home


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
