"""The HTTP server under N concurrent streaming clients (1, 4, 16, 64), next to the same requests sent to an
in-process Runner: total throughput, time to first token and inter-token latency (p50 / p99).

    python bench/bench_server.py                                        # SmolLM2-135M Q4_1 on the CPU
    python bench/bench_server.py --device cuda --preset llama-7b-q4_0   # random weights, 7B shape, on the GPU
    python bench/bench_server.py --url http://127.0.0.1:8000 --model NAME   # a server already running (no baseline)

Each client streams one chat completion ("Write a long story, part i.") of --max-tokens tokens, greedy, with the
end-of-text ids biased away so that every request generates exactly that many. Throughput = all tokens streamed
/ wall time from the first request to the last one's end; TTFT = from sending a request to its first token; ITL =
the gaps between a request's consecutive tokens, all requests pooled. The baseline runs the same requests through
`Runner.send_chat_completion_request(stream=True)` from N threads in this process, then closes the Runner (its
memory goes back) before the server starts as its own process (`python -m minirs.server`), so both have the
device to themselves. Each N runs once unmeasured first (CUDA graphs are captured, kernels loaded).

A --preset is a random-weight model of that shape (minirs.models.synthetic) carrying SmolLM2's tokenizer, so its
vocabulary is SmolLM2's 49152 tokens instead of the preset's own (a slightly larger output matrix).
"""

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story, part {i}."}]


@dataclasses.dataclass
class Run:
    tokens: int
    wall: float
    ttft: list[float]
    itl: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.wall


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Arrivals:
    """One request's token arrival times: time to the first (ttft) and the gaps between the next ones."""

    def __init__(self):
        self.t0 = self.last = time.perf_counter()
        self.first, self.gaps = None, []

    def arrived(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now - self.t0
        else:
            self.gaps.append(now - self.last)
        self.last = now


# ----- the in-process baseline -----------------------------------------------------------------------------------

def runner_run(runner, n: int, max_tokens: int, bias: dict) -> Run:
    from minirs import ChatCompletionRequest
    ttft, itl, counts = [], [], [0] * n
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def go(i):
        req = ChatCompletionRequest(messages=prompt(i), max_tokens=max_tokens, temperature=0.0, logit_bias=bias,
                                    stream=True)
        start.wait()
        times = Arrivals()
        for _ in runner.send_chat_completion_request(req, timeout=3600):
            times.arrived()
            counts[i] += 1
        with lock:
            ttft.append(times.first)
            itl.extend(times.gaps)
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return Run(sum(counts), time.perf_counter() - t0, ttft, itl)


# ----- HTTP clients ----------------------------------------------------------------------------------------------

async def _client(http, url: str, model: str, i: int, max_tokens: int, bias: dict, headers: dict):
    body = {"model": model, "messages": prompt(i), "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "logit_bias": {str(k): v for k, v in bias.items()}}
    times, tokens = Arrivals(), 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            times.arrived()
            tokens += len(chunk["choices"])
    return times.first, times.gaps, tokens


async def _server_run(url: str, model: str, n: int, max_tokens: int, bias: dict, headers: dict) -> Run:
    import httpx
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as http:
        t0 = time.perf_counter()
        out = await asyncio.gather(*[_client(http, url, model, i, max_tokens, bias, headers) for i in range(n)])
        wall = time.perf_counter() - t0
    return Run(sum(o[2] for o in out), wall, [o[0] for o in out], [g for o in out for g in o[1]])


def server_run(url, model, n, max_tokens, bias, headers) -> Run:
    return asyncio.run(_server_run(url, model, n, max_tokens, bias, headers))


# ----- setup -----------------------------------------------------------------------------------------------------

def preset_gguf(preset: str, folder: Path) -> Path:
    """A random-weight GGUF of the preset's shape with SmolLM2's tokenizer (and so its vocabulary size)."""
    from minirs.fetch import smollm2_path
    from minirs.formats import load_model_file
    from minirs.models.synthetic import PRESETS, write_random_gguf
    md = load_model_file(smollm2_path()).metadata
    tok = {k: v for k, v in md.items() if k.startswith("tokenizer.")}
    shape = dataclasses.replace(PRESETS[preset], vocab=len(md["tokenizer.ggml.tokens"]))
    return write_random_gguf(folder / f"{preset}-smollm2-vocab.gguf", shape, seed=0, metadata=tok)


def start_server(path: Path, args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minirs.server", "--gguf", str(path), "--device", args.device, "--max-seqs",
           str(args.max_seqs), "--ctx-size", str(args.ctx_size), "--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen(cmd, env=env)
    import httpx
    for _ in range(6000):
        if p.poll() is not None:
            raise RuntimeError(f"the server exited with {p.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return p
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server did not come up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line(name: str, r: Run) -> str:
    ms = 1e3
    return (f"{name:<7} {r.rate:9.1f} tok/s  TTFT p50 {pct(r.ttft, .5) * ms:8.1f} ms  "
            f"p99 {pct(r.ttft, .99) * ms:8.1f} ms  ITL p50 {pct(r.itl, .5) * ms:7.1f} ms  "
            f"p99 {pct(r.itl, .99) * ms:7.1f} ms  ({r.tokens} tokens in {r.wall:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=str, default=None, help="GGUF path (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--preset", type=str, default=None, help="a random-weight preset (e.g. llama-7b-q4_0)")
    ap.add_argument("--device", type=str, default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--clients", type=str, default="1,4,16,64", help="concurrent clients per run (default 1,4,16,64)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens streamed per request (default 64)")
    ap.add_argument("--max-seqs", type=int, default=64, help="the batch size of runner and server (default 64)")
    ap.add_argument("--ctx-size", type=int, default=512, help="context per sequence (default 512)")
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (CPU; default Numba's)")
    ap.add_argument("--url", type=str, default=None, help="bench a server already running here (no baseline)")
    ap.add_argument("--model", type=str, default="default", help="the model id to send with --url")
    ap.add_argument("--api-key", type=str, default=None, help="the key of the --url server")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
        os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # the server process too
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.url:
        for n in clients:
            server_run(args.url, args.model, n, min(4, args.max_tokens), {}, headers)
            print(f"{n:>3} clients  " + line("server", server_run(args.url, args.model, n, args.max_tokens, {},
                                                                   headers)), flush=True)
        return

    from minirs import Runner, Which
    from minirs.fetch import smollm2_path
    with tempfile.TemporaryDirectory(prefix="minirs-bench-") as tmp:
        path = preset_gguf(args.preset, Path(tmp)) if args.preset else Path(args.gguf or smollm2_path())
        runner = Runner(Which.GGUF(quantized_model_id=str(path.parent), quantized_filename=path.name),
                        device=args.device, max_seqs=args.max_seqs, max_seq_len=args.ctx_size)
        bias = {t: -100.0 for t in runner.tokenizer.eos_ids}
        print(f"{path.name} on {runner.model.backend.name}, max_seqs {args.max_seqs}, {args.max_tokens} tokens a "
              "request", flush=True)
        base = {}
        for n in clients:
            runner_run(runner, n, min(4, args.max_tokens), bias)
            base[n] = runner_run(runner, n, args.max_tokens, bias)
        runner.close()
        port = free_port()
        server = start_server(path, args, port)
        try:
            url = f"http://127.0.0.1:{port}"
            for n in clients:
                server_run(url, "default", n, min(4, args.max_tokens), bias, headers)
                r = server_run(url, "default", n, args.max_tokens, bias, headers)
                print(f"{n:>3} clients  " + line("runner", base[n]), flush=True)
                print(f"{n:>3} clients  " + line("server", r) + f"  overhead {1 - r.rate / base[n].rate:+.1%}",
                      flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


if __name__ == "__main__":
    main()
