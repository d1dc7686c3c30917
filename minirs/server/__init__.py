"""An OpenAI-compatible HTTP server over the Runner (`minirs serve`, `python -m minirs.server`).

main.py parses the flags and runs uvicorn, app.py holds the Starlette routes, mapping.py turns OpenAI's request
JSON into the Runner's request dataclasses and its responses back into OpenAI's JSON, metrics.py writes /metrics.
Needs the `server` extra (starlette, uvicorn).
"""
