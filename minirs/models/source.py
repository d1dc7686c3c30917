"""A model source opened as a ModelFile with GGUF names: a GGUF / GGML / safetensors file, a Hugging Face folder
(config.json + safetensors, its names mapped through models/hf.py's tables), or a folder in Mistral's layout
(params.json + consolidated*.safetensors, models/mistral.py). A folder with both (many Mistral repositories ship
both) is read in Mistral's layout: its own weights and tokenizer, with mistral_common's instruct encoding."""

from pathlib import Path

from minirs.formats import ModelFile, load_model_file


def open_model(source, gqa: int | None = None) -> ModelFile:
    """A model file path (GGUF, GGML, safetensors), a Hugging Face folder (config.json + safetensors) or a Mistral
    folder (params.json + consolidated*.safetensors) as a ModelFile with GGUF names; an open ModelFile is returned
    as it is."""
    if isinstance(source, ModelFile):
        if source.format == "safetensors" and "hf.config" in source.metadata:  # HF names: map them
            from minirs.models.hf import read_hf_folder
            return read_hf_folder(source)
        return source
    from minirs.models.mistral import is_mistral_folder
    if is_mistral_folder(source):
        from minirs.models.mistral import read_mistral_folder
        return read_mistral_folder(source)
    if Path(source).is_dir() and (Path(source) / "config.json").is_file():
        from minirs.models.hf import read_hf_folder
        return read_hf_folder(source)
    return load_model_file(source, gqa=gqa) if gqa else load_model_file(source)
