"""The first mistralrs README: `Request` and `runner.add_request`, model path changed."""
import os

from minirs import MistralLoader, ModelKind, Request

kind = ModelKind.QuantizedGGUF
loader = MistralLoader(
    model_id="mistralai/Mistral-7B-Instruct-v0.1",
    kind=kind,
    no_kv_cache=False,
    repeat_last_n=64,
    quantized_model_id=os.path.expanduser("~/.cache/minirs/models"),
    quantized_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
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
print(res)
