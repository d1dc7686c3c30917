"""Turn a model file path into a ready model on a backend: `load_model(path, device="auto")`."""

import os
import sys

from minirs.errors import DeviceError, MinirsError
from minirs.formats import ModelFile, load_model_file


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
        device = "cuda" if os.environ.get("MINIRS_DEVICE", "") != "cpu" and _cuda_backend_exists() \
            and cuda_available() else "cpu"
    if device == "cuda":
        if not _cuda_backend_exists():
            raise DeviceError("the CUDA backend is not part of this minirs build yet; use --device cpu")
        if not cuda_available():
            raise DeviceError("--device cuda: no CUDA GPU is usable (is cupy-cuda12x/13x installed and a GPU present?)")
        from minirs.kernels.cuda.backend import CudaBackend
        return CudaBackend()
    from minirs.kernels.cpu import CpuBackend
    return CpuBackend()


def _cuda_backend_exists() -> bool:
    import importlib.util
    return importlib.util.find_spec("minirs.kernels.cuda") is not None


def open_model(source) -> ModelFile:
    """A model file path (GGUF, GGML, safetensors) or a Hugging Face folder (config.json + safetensors) as a
    ModelFile with GGUF names; an open ModelFile is returned as it is."""
    if isinstance(source, ModelFile):
        if source.format == "safetensors" and "hf.config" in source.metadata:  # HF names: map them
            from minirs.models.hf import read_hf_folder
            return read_hf_folder(source)
        return source
    from pathlib import Path
    if Path(source).is_dir() and (Path(source) / "config.json").is_file():
        from minirs.models.hf import read_hf_folder
        return read_hf_folder(source)
    return load_model_file(source)


def load_model(source, device: str = "auto", progress: bool = False, backend=None, isq: str | None = None):
    """Load a Transformer from a model file path, a Hugging Face folder or an open ModelFile onto a device.

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
        from tqdm import tqdm

        def bar(it):
            return tqdm(it, desc=f"loading {mf.path.name}", unit="layer", file=sys.stderr, leave=False)
    try:
        return Transformer.from_model_file(mf, be, progress=bar)
    except MinirsError:
        raise
    except (KeyError, ValueError, IndexError) as e:
        raise MinirsError(f"{mf.path}: cannot build the model: {e}") from e
