"""The mistral.rs-compatible Python API: `from minirs import Runner, Which, ChatCompletionRequest`.

types.py holds the data classes (Which, Architecture, requests, responses), runner.py the Runner over the
batching engine, loaders.py the older loader classes (ModelKind, MistralLoader, ..., QuantizedLoader, XLoraLoader),
adapters.py what the adapter forms of Which load.
"""

from minirs.api.loaders import (
                                GemmaLoader,
                                LlamaLoader,
                                MistralLoader,
                                MixtralLoader,
                                ModelKind,
                                NormalLoader,
                                Phi2Loader,
                                Phi3Loader,
                                QuantizedLoader,
                                Qwen2Loader,
                                XLoraLoader,
                                XLoraQuantizedLoader,
)
from minirs.api.runner import Runner
from minirs.api.types import (
                                Architecture,
                                ChatCompletionChunkResponse,
                                ChatCompletionRequest,
                                ChatCompletionResponse,
                                Choice,
                                ChunkChoice,
                                CompletionChoice,
                                CompletionChunkChoice,
                                CompletionChunkResponse,
                                CompletionRequest,
                                CompletionResponse,
                                Delta,
                                Logprobs,
                                ModelDType,
                                Request,
                                ResponseLogprob,
                                ResponseMessage,
                                ToolChoice,
                                TopLogprob,
                                Usage,
                                Which,
)

__all__ = ["Architecture", "ChatCompletionChunkResponse", "ChatCompletionRequest", "ChatCompletionResponse",
           "Choice", "ChunkChoice", "CompletionChoice", "CompletionChunkChoice", "CompletionChunkResponse",
           "CompletionRequest", "CompletionResponse", "Delta", "GemmaLoader", "LlamaLoader", "Logprobs",
           "MistralLoader", "MixtralLoader", "ModelDType", "ModelKind", "NormalLoader", "Phi2Loader", "Phi3Loader",
           "QuantizedLoader", "Qwen2Loader", "Request", "ResponseLogprob", "ResponseMessage", "Runner", "ToolChoice",
           "TopLogprob", "Usage", "Which", "XLoraLoader", "XLoraQuantizedLoader"]
