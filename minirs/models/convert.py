"""Hugging Face folder -> GGUF, with the names, metadata and weight transforms of llama.cpp's converter.

models/hf.py does the mapping (one name table per family, q/k row permutation, gemma's norm + 1, stacked
experts, RoPE factor tensors); this file only writes its ModelFile with gguf.GGUFWriter. Matrices are written
as F32, F16 or quantized (Q8_0, Q4_K, ... by minirs.formats.quantize); vectors, the MoE router and the RoPE
factors stay F32, as llama.cpp keeps them. Tokenizer metadata is not written yet.

    python -m minirs.models.convert MODEL_FOLDER out.gguf --type Q8_0
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from minirs.formats import ModelFile, StringArray, dequantize
from minirs.models.hf import KEEP_F32, quantize_model_file, read_hf_folder


def _add_metadata(w, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, list | StringArray):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"metadata {key!r}: cannot write a {type(value).__name__}")


def write_gguf(mf: ModelFile, out, qtype: str = "F32") -> Path:
    """Write a GGUF-named ModelFile (e.g. from read_hf_folder) with its matrices in qtype."""
    import gguf

    out = Path(out)
    if qtype not in ("F32", "F16"):
        mf = quantize_model_file(mf, qtype)
    w = gguf.GGUFWriter(str(out), mf.architecture)
    for key, value in mf.metadata.items():
        if key == "general.architecture" or key.startswith("hf."):
            continue
        _add_metadata(w, key, value)
    for name, t in mf.tensors.items():
        if t.qtype in ("F32", "F16", "BF16"):
            a = dequantize(t).reshape(t.shape)
            keep_f32 = len(t.shape) == 1 or name.endswith(KEEP_F32)
            w.add_tensor(name, a.astype(np.float16 if qtype == "F16" and not keep_f32 else np.float32))
        else:
            raw = t.data.reshape(*t.shape[:-1], -1)  # (..., row_bytes)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[t.qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def convert(folder, out, qtype: str = "F32") -> Path:
    """Convert a Hugging Face model folder (or a Mistral one: params.json + consolidated.safetensors) to GGUF."""
    from minirs.models.mistral import is_mistral_folder, read_mistral_folder
    return write_gguf(read_mistral_folder(folder) if is_mistral_folder(folder) else read_hf_folder(folder), out, qtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Convert a Hugging Face or Mistral model folder to GGUF (llama.cpp "
                                             "names).")
    ap.add_argument("folder", type=Path, help="folder with config.json and *.safetensors, or Mistral's params.json "
                                              "and consolidated.safetensors")
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument("--type", default="F32", help="matrix type: F32, F16, Q8_0, Q4_K, ... (default F32)")
    args = ap.parse_args(argv)
    path = convert(args.folder, args.out, args.type)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
