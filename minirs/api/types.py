"""The mistral.rs Python API's data types: model selection (Which, Architecture), requests and responses.

Names and fields follow mistral.rs's `mistralrs` package (mistralrs.pyi / API.md), so code written for it runs
by changing the import. Responses have OpenAI's shape and serialize to OpenAI JSON with `.to_dict()` /
`.to_json()`.
"""

import json
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum

from minirs.errors import RequestError


class Architecture(Enum):
    Mistral = "mistral"
    Gemma = "gemma"
    Mixtral = "mixtral"
    Llama = "llama"
    Phi2 = "phi2"
    Phi3 = "phi3"
    Qwen2 = "qwen2"
    Gemma2 = "gemma2"
    Gemma3 = "gemma3"


class ToolChoice(Enum):
    """mistral.rs's tool_choice values (OpenAI's strings and named-function dicts are accepted too)."""
    NoTools = "None"
    Auto = "Auto"


class ModelDType(Enum):
    Auto = "auto"
    BF16 = "bf16"
    F16 = "f16"
    F32 = "f32"


def _need(obj, *names):
    for n in names:
        if not getattr(obj, n):
            raise RequestError(f"{type(obj).__qualname__}: {n} is required (got {getattr(obj, n)!r})")


class Which:
    """Which model to load: `Which.Plain(...)`, `Which.GGUF(...)` or `Which.GGML(...)`, and with adapters
    `Which.Lora` / `LoraGGUF` / `LoraGGML` (PEFT LoRA adapters) or `Which.XLora` / `XLoraGGUF` / `XLoraGGML`.

    Model ids are local paths (a folder, or a file) or Hugging Face hub repo ids ('org/name', downloaded once
    into the HF cache: the GGUF file for GGUF/GGML, the safetensors folder for Plain); `quantized_filename`
    names the file inside `quantized_model_id` (an absolute path there works too). `adapters_model_id` is a
    folder of LoRA adapter subfolders (or one adapter folder) and `order` mistral.rs's ordering file naming them;
    `xlora_model_id` an X-LoRA folder (xlora_config.json, xlora_classifier.safetensors, the adapters).
    `tgt_non_granular_index`: after that many generated tokens an X-LoRA sequence keeps its scalings. Plain, GGUF
    and GGML also take `adapters` (minirs: a list of LoRA adapter folders).
    """

    @dataclass
    class Plain:
        model_id: str = ""
        arch: Architecture | str | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto
        adapters: list[str] | None = None

        def __post_init__(self):
            _need(self, "model_id")

    @dataclass
    class XLora:
        arch: Architecture | str | None = None
        xlora_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        model_id: str | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto

        def __post_init__(self):
            _need(self, "xlora_model_id")

    @dataclass
    class Lora:
        arch: Architecture | str | None = None
        adapters_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        model_id: str | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto
        adapter_model_id: str | None = None  # the newer mistral.rs name of adapters_model_id

        def __post_init__(self):
            self.adapters_model_id = self.adapters_model_id or self.adapter_model_id
            _need(self, "adapters_model_id")

    @dataclass
    class GGUF:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str | list[str] = ""
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto
        adapters: list[str] | None = None

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename")

    @dataclass
    class XLoraGGUF:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str | list[str] = ""
        xlora_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename", "xlora_model_id")

    @dataclass
    class LoraGGUF:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str | list[str] = ""
        adapters_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        dtype: ModelDType | str = ModelDType.Auto

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename", "adapters_model_id")

    @dataclass
    class GGML:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str = ""
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        gqa: int | None = None
        dtype: ModelDType | str = ModelDType.Auto
        adapters: list[str] | None = None

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename")

    @dataclass
    class XLoraGGML:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str = ""
        xlora_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        gqa: int | None = None
        dtype: ModelDType | str = ModelDType.Auto

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename", "xlora_model_id")

    @dataclass
    class LoraGGML:
        tok_model_id: str | None = None
        quantized_model_id: str = ""
        quantized_filename: str = ""
        adapters_model_id: str = ""
        order: str | None = None
        tgt_non_granular_index: int | None = None
        tokenizer_json: str | None = None
        repeat_last_n: int = 64
        gqa: int | None = None
        dtype: ModelDType | str = ModelDType.Auto

        def __post_init__(self):
            _need(self, "quantized_model_id", "quantized_filename", "adapters_model_id")


# ----- requests --------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class _Sampling:
    logit_bias: dict[int, float] | None = None
    max_tokens: int | None = None
    n_choices: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    stop_seqs: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    stream: bool = False
    seed: int | None = None  # minirs extension (OpenAI has it): overrides the Runner's seed
    adapters: list[str] | None = None  # the LoRA adapters this request uses (None: the Runner's active ones)
    # structured output (minirs/api/structured.py): mistral.rs's grammar ("regex", "json_schema", "lark" or
    # "llguidance"; both fields or neither), or OpenAI's {"type": "text" | "json_object" | "json_schema", ...}
    grammar: str | None = None
    grammar_type: str | None = None
    response_format: dict | None = None


@dataclass
class ChatCompletionRequest(_Sampling):
    """`messages` is a list of {"role", "content"} dicts, or a string that is already templated."""
    messages: list[dict] | str = field(default_factory=list)
    model: str = "default"
    logprobs: bool = False
    top_logprobs: int | None = None
    # OpenAI's tools ({"type": "function", "function": {"name", "description", "parameters"}}); tool_schemas is
    # mistral.rs's name for them (also as JSON strings). tool_choice: "none", "auto" (the default with tools),
    # "required", or {"type": "function", "function": {"name": ...}}; mistral.rs's ToolChoice.NoTools / .Auto too.
    tools: list[dict] | None = None
    tool_schemas: list[dict | str] | None = None
    tool_choice: str | dict | ToolChoice | None = None


Request = ChatCompletionRequest  # the old mistralrs name


@dataclass
class CompletionRequest(_Sampling):
    prompt: str = ""
    model: str = "default"
    echo_prompt: bool = False
    best_of: int | None = None
    # With a suffix, a model with fill-in-the-middle tokens generates the text between prompt and suffix and returns
    # only that; a model without them appends the suffix to the completion (OpenAI's meaning for such models).
    suffix: str | None = None
    fim: bool | None = None  # minirs extension: None = FIM when the model can, True = require it, False = never
    logprobs: bool = False
    top_logprobs: int | None = None


# ----- responses -------------------------------------------------------------------------------------------------

class _Json:
    OMIT_NONE = ()  # fields left out of to_dict() while None, as OpenAI's JSON leaves them out

    def to_dict(self) -> dict:
        return _plain(self)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)


def _plain(x):
    if is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x)
                if not (getattr(x, f.name) is None and f.name in x.OMIT_NONE)}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


@dataclass
class Usage(_Json):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    avg_tok_per_sec: float
    avg_prompt_tok_per_sec: float
    avg_compl_tok_per_sec: float
    total_time_sec: float
    total_prompt_time_sec: float
    total_completion_time_sec: float


@dataclass
class TopLogprob(_Json):
    token: int
    logprob: float
    bytes: str


@dataclass
class ResponseLogprob(_Json):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@dataclass
class Logprobs(_Json):
    content: list[ResponseLogprob] | None


@dataclass
class ToolCallFunction(_Json):
    name: str
    arguments: str  # a JSON object, as a string


@dataclass
class ToolCall(_Json):
    id: str
    function: ToolCallFunction
    type: str = "function"


@dataclass
class ResponseMessage(_Json):
    content: str | None  # None when the message is tool calls only
    role: str = "assistant"
    tool_calls: list[ToolCall] | None = None
    OMIT_NONE = ("tool_calls",)


@dataclass
class Choice(_Json):
    finish_reason: str
    index: int
    message: ResponseMessage
    logprobs: Logprobs | None = None


@dataclass
class ChatCompletionResponse(_Json):
    id: str
    choices: list[Choice]
    created: int
    model: str
    system_fingerprint: str
    object: str
    usage: Usage


@dataclass
class DeltaFunction(_Json):
    name: str | None = None
    arguments: str | None = None
    OMIT_NONE = ("name", "arguments")


@dataclass
class DeltaToolCall(_Json):
    """A piece of a streamed tool call: index, id, type and function.name first, then the arguments."""
    index: int
    function: DeltaFunction
    id: str | None = None
    type: str | None = None
    OMIT_NONE = ("id", "type")


@dataclass
class Delta(_Json):
    content: str | None
    role: str = "assistant"
    tool_calls: list[DeltaToolCall] | None = None
    OMIT_NONE = ("tool_calls",)


@dataclass
class ChunkChoice(_Json):
    finish_reason: str | None
    index: int
    delta: Delta
    logprobs: ResponseLogprob | None = None


@dataclass
class ChatCompletionChunkResponse(_Json):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str = "chat.completion.chunk"
    usage: Usage | None = None  # on the request's last chunk


@dataclass
class CompletionChoice(_Json):
    finish_reason: str
    index: int
    text: str
    logprobs: Logprobs | None = None


@dataclass
class CompletionResponse(_Json):
    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str
    usage: Usage


@dataclass
class CompletionChunkChoice(_Json):
    finish_reason: str | None
    index: int
    text: str
    logprobs: ResponseLogprob | None = None


@dataclass
class CompletionChunkResponse(_Json):
    id: str
    choices: list[CompletionChunkChoice]
    created: int
    model: str
    system_fingerprint: str
    object: str = "text_completion"
    usage: Usage | None = None  # on the request's last chunk
