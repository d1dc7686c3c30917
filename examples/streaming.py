"""examples/python/streaming.py: stream=True returns an iterator of chunks, model path changed."""
import os

from minirs import ChatCompletionRequest, Runner, Which

runner = Runner(
    which=Which.GGUF(
        tok_model_id="mistralai/Mistral-7B-Instruct-v0.1",
        quantized_model_id=os.path.expanduser("~/.cache/minirs/models"),
        quantized_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
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
for chunk in res:
    print(chunk)
