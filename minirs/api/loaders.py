"""The older mistralrs loader API, as thin adapters that build a `Which` and return a Runner.

    loader = MistralLoader(model_id="...", kind=ModelKind.QuantizedGGUF, no_kv_cache=False, repeat_last_n=64,
                           quantized_model_id="models", quantized_filename="model.gguf")
    runner = loader.load()                       # a Runner
    res = runner.add_request(Request(model="mistral", messages=[...], max_tokens=256))

    loader = QuantizedLoader(MistralLoader, is_gguf=True, model_id="...", quantized_model_id=..., ...)
    loader = NormalLoader(LlamaLoader, model_id="path/to/safetensors/folder")
    loader = XLoraLoader(MistralLoader, model_id="base folder", xlora_model_id="xlora folder",
                         order_file="ordering.json", tgt_non_granular_index=None)
    loader = XLoraQuantizedLoader(MistralLoader, is_gguf=True, quantized_model_id=..., quantized_filename=...,
                                  xlora_model_id=..., order_file=...)

The architecture-named loaders only record the family: minirs reads the architecture from the model file.
"""

from enum import Enum

from minirs.api.runner import Runner
from minirs.api.types import Architecture, Which
from minirs.errors import RequestError


class ModelKind(Enum):
    Normal = "normal"
    XLoraNormal = "xlora_normal"
    XLoraGGUF = "xlora_gguf"
    XLoraGGML = "xlora_ggml"
    QuantizedGGUF = "quantized_gguf"
    QuantizedGGML = "quantized_ggml"


_XLORA_KINDS = {ModelKind.Normal: ModelKind.XLoraNormal, ModelKind.QuantizedGGUF: ModelKind.XLoraGGUF,
                ModelKind.QuantizedGGML: ModelKind.XLoraGGML}


class _ArchLoader:
    arch: Architecture = Architecture.Llama

    def __init__(self, model_id: str | None = None, kind: ModelKind = ModelKind.Normal, no_kv_cache: bool = False,
                 use_flash_attn: bool | None = None, repeat_last_n: int = 64, gqa: int | None = None,
                 order_file: str | None = None, quantized_model_id: str | None = None,
                 quantized_filename: str | None = None, xlora_model_id: str | None = None,
                 chat_template: str | None = None, tokenizer_json: str | None = None,
                 tgt_non_granular_index: int | None = None):
        if not isinstance(kind, ModelKind):
            raise RequestError(f"{type(self).__name__}: invalid kind: {kind!r} (expected a ModelKind)")
        if xlora_model_id is not None and kind in _XLORA_KINDS:  # an X-LoRA model on a plain kind's base
            kind = _XLORA_KINDS[kind]
        if kind in _XLORA_KINDS.values() and not xlora_model_id:
            raise RequestError(f"{type(self).__name__}: kind {kind.name} needs xlora_model_id")
        self.model_id, self.kind, self.no_kv_cache = model_id, kind, no_kv_cache
        self.repeat_last_n, self.gqa = repeat_last_n, gqa
        self.quantized_model_id, self.quantized_filename = quantized_model_id, quantized_filename
        self.chat_template, self.tokenizer_json = chat_template, tokenizer_json
        self.xlora_model_id, self.order_file, self.tgt_non_granular_index = \
            xlora_model_id, order_file, tgt_non_granular_index

    def which(self):
        x = {"xlora_model_id": self.xlora_model_id, "order": self.order_file,
             "tgt_non_granular_index": self.tgt_non_granular_index}
        if self.kind is ModelKind.XLoraGGUF:
            return Which.XLoraGGUF(tok_model_id=self.model_id, quantized_model_id=self.quantized_model_id,
                                   quantized_filename=self.quantized_filename, tokenizer_json=self.tokenizer_json,
                                   repeat_last_n=self.repeat_last_n, **x)
        if self.kind is ModelKind.XLoraGGML:
            return Which.XLoraGGML(tok_model_id=self.model_id, quantized_model_id=self.quantized_model_id,
                                   quantized_filename=self.quantized_filename, tokenizer_json=self.tokenizer_json,
                                   repeat_last_n=self.repeat_last_n, gqa=self.gqa, **x)
        if self.kind is ModelKind.XLoraNormal:
            return Which.XLora(arch=self.arch, model_id=self.model_id, tokenizer_json=self.tokenizer_json,
                               repeat_last_n=self.repeat_last_n, **x)
        if self.kind is ModelKind.QuantizedGGUF:
            return Which.GGUF(tok_model_id=self.model_id, quantized_model_id=self.quantized_model_id,
                              quantized_filename=self.quantized_filename, tokenizer_json=self.tokenizer_json,
                              repeat_last_n=self.repeat_last_n)
        if self.kind is ModelKind.QuantizedGGML:
            return Which.GGML(tok_model_id=self.model_id, quantized_model_id=self.quantized_model_id,
                              quantized_filename=self.quantized_filename, tokenizer_json=self.tokenizer_json,
                              repeat_last_n=self.repeat_last_n, gqa=self.gqa)
        return Which.Plain(model_id=self.model_id, arch=self.arch, tokenizer_json=self.tokenizer_json,
                           repeat_last_n=self.repeat_last_n)

    def load(self, token_source: str = "cache", max_seqs: int = 16, truncate_sequence: bool = False,
             logfile: str | None = None, revision: str | None = None, token_source_value: str | None = None,
             **runner_kwargs) -> Runner:
        return Runner(self.which(), max_seqs=max_seqs, no_kv_cache=self.no_kv_cache, token_source=token_source,
                      chat_template=self.chat_template, truncate_sequence=truncate_sequence, logfile=logfile,
                      revision=revision, token_source_value=token_source_value, **runner_kwargs)


class MistralLoader(_ArchLoader):
    arch = Architecture.Mistral


class MixtralLoader(_ArchLoader):
    arch = Architecture.Mixtral


class GemmaLoader(_ArchLoader):
    arch = Architecture.Gemma


class LlamaLoader(_ArchLoader):
    arch = Architecture.Llama


class Phi2Loader(_ArchLoader):
    arch = Architecture.Phi2


class Phi3Loader(_ArchLoader):
    arch = Architecture.Phi3


class Qwen2Loader(_ArchLoader):
    arch = Architecture.Qwen2


def _check_class(cls, who: str):
    if not (isinstance(cls, type) and issubclass(cls, _ArchLoader)):
        raise RequestError(f"{who}: invalid class: {cls!r} (expected a loader class such as MistralLoader)")


def NormalLoader(cls, model_id: str, no_kv_cache: bool = False, use_flash_attn: bool | None = None,
                 repeat_last_n: int = 64, gqa: int | None = None, chat_template: str | None = None,
                 tokenizer_json: str | None = None) -> _ArchLoader:
    """An unquantized model of family `cls` (a folder of safetensors)."""
    _check_class(cls, "NormalLoader")
    return cls(model_id=model_id, kind=ModelKind.Normal, no_kv_cache=no_kv_cache, repeat_last_n=repeat_last_n,
               gqa=gqa, chat_template=chat_template, tokenizer_json=tokenizer_json)


def QuantizedLoader(cls, is_gguf: bool, model_id: str | None = None, no_kv_cache: bool = False,
                    use_flash_attn: bool | None = None, repeat_last_n: int = 64, gqa: int | None = None,
                    quantized_model_id: str | None = None, quantized_filename: str | None = None,
                    chat_template: str | None = None, tokenizer_json: str | None = None) -> _ArchLoader:
    """A GGUF (is_gguf=True) or GGML model of family `cls`."""
    _check_class(cls, "QuantizedLoader")
    kind = ModelKind.QuantizedGGUF if is_gguf else ModelKind.QuantizedGGML
    return cls(model_id=model_id, kind=kind, no_kv_cache=no_kv_cache, repeat_last_n=repeat_last_n, gqa=gqa,
               quantized_model_id=quantized_model_id, quantized_filename=quantized_filename,
               chat_template=chat_template, tokenizer_json=tokenizer_json)


def XLoraLoader(cls, model_id: str | None = None, no_kv_cache: bool = False, use_flash_attn: bool | None = None,
                repeat_last_n: int = 64, gqa: int | None = None, order_file: str | None = None,
                xlora_model_id: str | None = None, chat_template: str | None = None,
                tokenizer_json: str | None = None, tgt_non_granular_index: int | None = None) -> _ArchLoader:
    """An X-LoRA model (xlora_model_id, ordered by order_file) on an unquantized base of family `cls`."""
    _check_class(cls, "XLoraLoader")
    return cls(model_id=model_id, kind=ModelKind.XLoraNormal, no_kv_cache=no_kv_cache, repeat_last_n=repeat_last_n,
               gqa=gqa, order_file=order_file, xlora_model_id=xlora_model_id, chat_template=chat_template,
               tokenizer_json=tokenizer_json, tgt_non_granular_index=tgt_non_granular_index)


def XLoraQuantizedLoader(cls, is_gguf: bool, model_id: str | None = None, no_kv_cache: bool = False,
                         use_flash_attn: bool | None = None, repeat_last_n: int = 64, gqa: int | None = None,
                         order_file: str | None = None, quantized_model_id: str | None = None,
                         quantized_filename: str | None = None, xlora_model_id: str | None = None,
                         chat_template: str | None = None, tokenizer_json: str | None = None,
                         tgt_non_granular_index: int | None = None) -> _ArchLoader:
    """An X-LoRA model on a GGUF (is_gguf=True) or GGML base of family `cls`."""
    _check_class(cls, "XLoraQuantizedLoader")
    kind = ModelKind.XLoraGGUF if is_gguf else ModelKind.XLoraGGML
    return cls(model_id=model_id, kind=kind, no_kv_cache=no_kv_cache, repeat_last_n=repeat_last_n, gqa=gqa,
               order_file=order_file, quantized_model_id=quantized_model_id, quantized_filename=quantized_filename,
               xlora_model_id=xlora_model_id, chat_template=chat_template, tokenizer_json=tokenizer_json,
               tgt_non_granular_index=tgt_non_granular_index)
