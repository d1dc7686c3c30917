"""minirs: a small, fast LLM inference runtime in Python (GGUF / GGML / safetensors, Numba kernels)."""

from minirs.errors import (DeviceError, FetchError, FormatError, MinirsError, ModelError, RequestError,
                           TemplateError, TokenizerError)

__version__ = "0.1.0"

__all__ = ["MinirsError", "FormatError", "TokenizerError", "TemplateError", "RequestError", "ModelError",
           "FetchError", "DeviceError", "__version__"]
