"""The one loader: any model source to a model on a backend and its tokenizer.

    loaded = load("path/model.gguf")                                   # or an HF folder, or a safetensors file
    loaded = load("TheBloke/Mistral-7B-Instruct-v0.1-GGUF:mistral-7b-instruct-v0.1.Q4_0.gguf", device="cuda")
    loaded = load("org/model", filename="model.Q4_K.gguf", revision="main")
    loaded.model, loaded.tokenizer, loaded.name

    loaded = load("base.gguf", lora=["adapter_a", "adapter_b"])          # PEFT LoRA adapters (models/lora.py)
    loaded = load("base.gguf", xlora="xlora_folder", order="ordering.json")   # X-LoRA (models/xlora.py)

The CLI, the Runner (api/runner.py, from its `Which`) and the benchmarks all load through `load`. A GGUF/GGML file
carries its own tokenizer; an HF folder's tokenizer files sit beside its weights (or in `tokenizer_folder`), a
Mistral folder's tekken.json / tokenizer.model.vN too (with Mistral's instruct format for chat). The
tokenizer must fit the model: no token id at or past the embedding's rows (checked here, so no request can reach a
row that does not exist).
"""

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from minirs.errors import DeviceError, FetchError, MinirsError, ModelError
from minirs.formats import ModelFile
from minirs.models.source import open_model


@dataclass
class Loaded:
    model: object  # models.llama.Transformer
    tokenizer: object | None  # minirs.Tokenizer (None when not asked for)
    name: str  # the model file's or folder's name
    path: Path
    compiling: object | None = None  # a first run on the twins: the warmup.BackgroundCompile that will replace them

    def when_compiled(self, fn) -> None:
        """fn(compiled_model) once a first run's background compile is done (never if it was not one): pass
        Engine.replace_model so that the engine moves from the twins to the compiled kernels."""
        if self.compiling is not None:
            self.compiling.then(fn)


def cuda_available() -> bool:
    """True when CuPy imports and sees a GPU (never raises)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure here just means "no usable GPU"
        return False


def get_backend(device: str = "auto"):
    """The backend for a device name: "cpu", "cuda" or "auto" (CUDA when a GPU and CuPy are present)."""
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "auto":
        device = "cuda" if os.environ.get("MINIRS_DEVICE", "") != "cpu" and cuda_available() else "cpu"
    if device == "cuda":
        if not cuda_available():
            raise DeviceError("--device cuda: no CUDA GPU is usable (is cupy-cuda12x/13x installed and a GPU present?)")
        from minirs.kernels.cuda.backend import CudaBackend
        return CudaBackend()
    from minirs.kernels.cpu import CpuBackend
    return CpuBackend()


def resolve(source, filename: str | None = None, revision: str | None = None, token_source: str = "cache",
            token_source_value: str | None = None, progress: bool = False) -> Path:
    """A local path for a source: an existing local path (always wins); a hub ref 'org/name[@revision]:file'; or a
    hub repo id 'org/name' with `filename` (that file) or without (the repo's model files, as a folder)."""
    if isinstance(source, ModelFile):
        return source.path
    src = str(source)
    if filename is not None:
        if isinstance(filename, (list, tuple)):
            if len(filename) != 1:
                raise MinirsError(f"filename {filename!r}: minirs loads one model file per model")
            filename = filename[0]
        local = Path(filename) if os.path.isabs(filename) else Path(src) / filename
        if local.is_file():
            return local
        from minirs.hub import resolve_file
        return Path(resolve_file(src, filename, revision or "main", token_source, token_source_value))
    local = Path(src).expanduser()
    if local.exists():
        return local
    from minirs.hub import is_model_ref, resolve_folder, resolve_model_ref
    if is_model_ref(src):
        return Path(resolve_model_ref(src, token_source=token_source, token_source_value=token_source_value,
                                      progress=progress))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", src) and not src.endswith((".gguf", ".bin", ".safetensors")):
        return Path(resolve_folder(src, revision or "main", token_source, token_source_value, progress=progress))
    raise FetchError(f"{src!r} is not an existing file or folder, a hub reference 'org/name:file.gguf' or "
                     "'org/name@revision:file.gguf', or a hub repo id 'org/name'")


def load_model(source, device: str = "auto", progress: bool = False, backend=None, isq: str | None = None):
    """A Transformer from a model file path, a Hugging Face folder or an open ModelFile, on a device (or backend).

    `isq` ("Q8_0", "Q4_K", ...) quantizes the F32/F16/BF16 weight matrices at load time (in-situ quantization).
    """
    from minirs.models.llama import Transformer
    mf = open_model(source)
    if isq:
        from minirs.models.hf import quantize_model_file
        mf = quantize_model_file(mf, isq)
    be = backend or get_backend(device)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # a widget in a notebook, text on a terminal

        def bar(it):
            return tqdm(it, desc=f"loading {mf.path.name}", unit="layer", file=sys.stderr, leave=False)
    try:
        return Transformer.from_model_file(mf, be, progress=bar)
    except MinirsError:
        raise
    except (KeyError, ValueError, IndexError) as e:
        raise MinirsError(f"{mf.path}: cannot build the model: {e}") from e


def load_tokenizer(mf: ModelFile, path: Path, chat_template: str | None = None, folder: Path | None = None):
    """The tokenizer of a model: from `folder` (tokenizer.json / tokenizer.model) when given, else from a GGUF's
    metadata or the files beside an HF folder's weights."""
    from minirs.errors import TokenizerError
    from minirs.tokenizer import Tokenizer
    from minirs.tokenizer.chat import read_template
    template = read_template(chat_template)
    if folder is None and mf.format == "mistral":  # tekken.json / tokenizer.model.vN, with the instruct format
        from minirs.tokenizer.mistral import load_mistral_tokenizer
        tok = load_mistral_tokenizer(path)
        tok.chat_template = template  # a template given by the caller wins over the instruct format
        return tok
    if folder is None and mf.format in ("hf", "safetensors"):  # an HF folder: the tokenizer lives beside the weights
        folder = path if path.is_dir() else path.parent
    if folder is not None:
        return Tokenizer.from_files(folder, chat_template=template)
    try:
        return Tokenizer.from_gguf(mf, chat_template=template)
    except TokenizerError as e:
        raise MinirsError(f"{path}: the file has no usable tokenizer ({e}); give a folder with tokenizer.json "
                          "(tok_model_id or tokenizer_json in the Python API)") from e


def check_vocab(tokenizer, model) -> None:
    """Every id the tokenizer can produce or name (its tokens, BOS, EOS) must be a row of the token embedding."""
    rows = model.config.vocab_size
    named = [tokenizer.bos_id, *tokenizer.eos_ids]
    worst = max([tokenizer.vocab_size - 1] + [i for i in named if i is not None])
    if worst >= rows:
        raise ModelError(f"the tokenizer has token id {worst} but the model's embedding has {rows} rows: the "
                         "tokenizer does not belong to this model")


ADAPTER_FILES = re.compile(r"(.*/)?(adapter_config\.json|adapter_model\.safetensors|xlora_config\.json|"
                           r"xlora_classifier\.safetensors|[^/]*ordering[^/]*\.json)")


def resolve_adapters(source, revision: str | None = None, token_source: str = "cache",
                     token_source_value: str | None = None, progress: bool = False) -> Path:
    """A local folder for an adapter source: a local path as is, else a hub repo id whose adapter files (PEFT's and
    X-LoRA's, in any subfolder) are downloaded once into the Hugging Face cache."""
    local = Path(str(source)).expanduser()
    if local.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        if not local.exists():
            raise FetchError(f"adapter {str(source)!r} is neither a local folder nor a hub repo id 'org/name'")
        return local
    from minirs.hub import hf_hub_download, list_repo_files
    kw = {"token_source": token_source, "token_source_value": token_source_value}
    files = [f for f in list_repo_files(str(source), revision or "main", **kw) if ADAPTER_FILES.fullmatch(f)]
    if not files:
        raise FetchError(f"hub repo {source} has no adapter_config.json or xlora_config.json")
    paths = [hf_hub_download(str(source), f, revision=revision or "main", progress=progress, **kw) for f in files]
    return paths[0].parents[files[0].count("/")]  # the snapshot folder that holds them all


def attach_adapters(model, lora=None, order=None, xlora=None, tgt_non_granular_index: int | None = None,
                    **hub) -> None:
    """LoRA adapters (a list of folders or hub ids; with `order`, mistral.rs's ordering file naming the subfolders)
    or an X-LoRA model (`xlora`, with `order` for its ordering) on a loaded model."""
    if lora and xlora:
        raise ModelError("give LoRA adapters or an X-LoRA model, not both")
    if xlora:
        from minirs.models.xlora import load_xlora
        load_xlora(model, resolve_adapters(xlora, **hub), order, tgt_non_granular_index)
    elif lora:
        from minirs.models.lora import load_adapters
        load_adapters(model, [resolve_adapters(src, **hub) for src in lora], order)


def load(source, *, filename: str | None = None, device: str = "auto", backend=None, tokenizer: bool = True,
         tokenizer_folder=None, chat_template: str | None = None, isq: str | None = None, gqa: int | None = None,
         revision: str | None = None, token_source: str = "cache", token_source_value: str | None = None,
         progress: bool = False, warm_up: bool = True, first_run: str | None = None, lora=None, xlora=None,
         order=None, tgt_non_granular_index: int | None = None) -> Loaded:
    """Resolve a source (resolve), open it, build the model on the device and, unless tokenizer=False, its
    tokenizer (checked against the model's vocabulary); then attach LoRA adapters or an X-LoRA model
    (attach_adapters). The device is checked first: it fails fastest.

    On the CPU a first run (the kernels not yet in Numba's cache) either compiles them right away with a notice
    (first_run="compile"), or answers on the twins backend while they compile in the background
    (first_run="background", for models whose float32 copy fits; see minirs.warmup and Loaded.when_compiled).
    None takes $MINIRS_FIRST_RUN, default "background". warm_up=False leaves the compile to the first forward.
    The adapters go on the twins' model and on the compiled one alike."""
    backend = backend or get_backend(device)
    path = resolve(source, filename, revision, token_source, token_source_value, progress)
    mf = source if isinstance(source, ModelFile) else open_model(path, gqa=gqa)
    tok = load_tokenizer(mf, path, chat_template, Path(tokenizer_folder) if tokenizer_folder else None) \
        if tokenizer else None
    model = load_model(mf, backend=backend, device=device, progress=progress, isq=isq)
    if tok is not None:
        check_vocab(tok, model)
    loaded = Loaded(model, tok, path.name, path)
    if warm_up and not isq and model.backend.name == "cpu":
        _first_run(loaded, mf, first_run)
    hub = {"token_source": token_source, "token_source_value": token_source_value, "progress": progress}
    for m in {id(model): model, id(loaded.model): loaded.model}.values():  # the compiled model, and the twins'
        attach_adapters(m, lora, order, xlora, tgt_non_granular_index, **hub)
    return loaded


def _first_run(loaded: Loaded, mf: ModelFile, mode: str | None) -> None:
    """Nothing when the kernels are cached; else compile them now, or put the twins in front of a background
    compile (minirs.warmup)."""
    from minirs import warmup
    from minirs.kernels.twins import TwinsBackend, float32_bytes
    if warmup.cached(loaded.model):
        return
    mode = mode or warmup.first_run_mode()
    if mode == "compile" or float32_bytes(mf.tensors.values()) > warmup.TWINS_BUDGET:
        warmup.warm_up(loaded.model)
        return
    warmup.say("minirs: first run on this machine: the CPU kernels compile in the background (under a minute, "
               "once); meanwhile the slower NumPy kernels answer")
    compiled = loaded.model
    loaded.model = load_model(mf, backend=TwinsBackend())
    loaded.compiling = warmup.BackgroundCompile(compiled, loaded.path)
