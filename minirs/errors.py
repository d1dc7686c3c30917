"""The exceptions minirs raises. Every error a user can cause is a MinirsError that names what was wrong."""


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
