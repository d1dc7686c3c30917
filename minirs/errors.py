"""The exceptions minirs raises. Every error a user can cause is a MinirsError that names what was wrong;
`quote` puts a value from a file into a message without letting a huge one through."""

import reprlib


class MinirsError(Exception):
    """Base class of every error minirs raises on purpose."""


class FormatError(MinirsError, ValueError):
    """A model file is malformed, truncated or uses something we do not support."""


class TokenizerError(MinirsError, ValueError):
    """A tokenizer cannot be built from the given metadata or files."""


class TemplateError(MinirsError, ValueError):
    """A chat template failed to render, or tried to do something the sandbox forbids."""


class RequestError(MinirsError, ValueError):
    """A request has an invalid field; the message names the field and the value."""


class ModelError(MinirsError, ValueError):
    """A model cannot be built: unsupported architecture, missing tensor, bad config."""


class FetchError(MinirsError, RuntimeError):
    """A model file could not be found or downloaded."""


class DeviceError(MinirsError, RuntimeError):
    """The requested device (e.g. CUDA) is not available."""


class RequestTimeout(MinirsError, TimeoutError):
    """A request did not finish within its timeout; it was cancelled and its KV slot freed."""


QUOTE_CHARS = 80
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def quote(value) -> str:
    """repr(value), cut short: messages quote what a file holds, and a corrupt length must not make a message of
    hundreds of megabytes. A long string keeps its first QUOTE_CHARS characters and says how long it was."""
    if isinstance(value, str | bytes) and len(value) > QUOTE_CHARS:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:QUOTE_CHARS]!r}... ({len(value):,} {unit})"
    return _REPR.repr(value)
