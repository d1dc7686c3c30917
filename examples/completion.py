"""A text completion (mistralrs.pyi's CompletionRequest), model path changed."""
import os

from minirs import CompletionRequest, Runner, Which

runner = Runner(
    which=Which.GGUF(
        quantized_model_id=os.path.expanduser("~/.cache/minirs/models"),
        quantized_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)

res = runner.send_completion_request(
    CompletionRequest(
        model="default",
        prompt="Tell me a story about the Rust type system.",
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].text)
print(res.usage)
