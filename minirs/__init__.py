"""minirs: a small, fast LLM inference runtime in Python (GGUF / GGML / safetensors, Numba kernels)."""

from minirs.errors import (DeviceError, FetchError, FormatError, MinirsError, ModelError, RequestError,
                           TemplateError, TokenizerError)

__version__ = "0.1.0"

# The mistral.rs-compatible API (minirs.api), loaded on first use.
_API = {"Runner", "Which", "Architecture", "ModelDType", "ChatCompletionRequest", "CompletionRequest", "Request",
        "ChatCompletionResponse", "ChatCompletionChunkResponse", "CompletionResponse", "CompletionChunkResponse",
        "Usage", "ModelKind", "MistralLoader", "MixtralLoader", "GemmaLoader", "LlamaLoader", "Phi2Loader",
        "Phi3Loader", "Qwen2Loader", "NormalLoader", "QuantizedLoader", "ToolChoice", "XLoraLoader",
        "XLoraQuantizedLoader"}

__all__ = ["MinirsError", "FormatError", "TokenizerError", "TemplateError", "RequestError", "ModelError",
           "FetchError", "DeviceError", "RepoNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
           "AuthError", "GatedRepoError", "DownloadError", "ChecksumError", "DiskFullError", "NotCachedError",
           "TokenSourceError", "InvalidReferenceError", "Tokenizer", "__version__",
           "Runner", "Which", "Architecture", "ModelDType", "ChatCompletionRequest", "CompletionRequest", "Request",
           "ChatCompletionResponse", "ChatCompletionChunkResponse", "CompletionResponse", "CompletionChunkResponse",
           "Usage", "ModelKind", "MistralLoader", "MixtralLoader", "GemmaLoader", "LlamaLoader", "Phi2Loader",
           "Phi3Loader", "Qwen2Loader", "NormalLoader", "QuantizedLoader", "ToolChoice", "XLoraLoader",
           "XLoraQuantizedLoader"]


_HUB_ERRORS = {"RepoNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "AuthError", "GatedRepoError",
               "DownloadError", "ChecksumError", "DiskFullError", "NotCachedError", "TokenSourceError",
               "InvalidReferenceError"}


def __getattr__(name):
    # Heavier parts (requests, the tokenizer tables) load on first use, so `import minirs` stays fast.
    if name == "Tokenizer":
        from minirs.tokenizer import Tokenizer
        return Tokenizer
    if name in _API:
        from minirs import api
        return getattr(api, name)
    if name in _HUB_ERRORS:
        from minirs import hub
        return getattr(hub, name)
    raise AttributeError(f"module 'minirs' has no attribute {name!r}")
