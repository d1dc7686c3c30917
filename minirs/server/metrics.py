"""The server's metrics in Prometheus's text exposition format (version 0.0.4), written by hand: a few counters,
two gauges read at scrape time, and histograms.

    m = Metrics(gauges={"minirs_queue_depth": ("requests waiting for a KV slot", lambda: 3)})
    m.requests.inc(endpoint="chat", outcome="ok")
    m.ttft.observe(0.12)
    text = m.render()

Counters and histograms are updated from the event loop and from worker threads, so each takes a lock.
"""

import math
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(v: float) -> str:
    return "+Inf" if v == math.inf else repr(float(v))


class Counter:
    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]
        with self._lock:
            items = sorted(self._values.items())
        return lines + [f"{self.name}_total{_labels(dict(k))} {_num(v)}" for k, v in items]


class Histogram:
    """Counts per upper bound (cumulative, as Prometheus wants them), their sum and count."""

    def __init__(self, name: str, help_text: str, buckets=LATENCY_BUCKETS):
        self.name, self.help = name, help_text
        self.bounds = tuple(buckets) + (math.inf,)
        self._counts = [0] * len(self.bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, v: float, times: int = 1) -> None:
        with self._lock:
            for i, b in enumerate(self.bounds):
                if v <= b:
                    self._counts[i] += times
                    break
            self._sum += v * times

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for b, c in zip(self.bounds, counts):
            running += c
            lines.append(f'{self.name}_bucket{{le="{_num(b)}"}} {running}')
        return lines + [f"{self.name}_sum {_num(total)}", f"{self.name}_count {running}"]


class Metrics:
    """What GET /metrics shows. `gauges` maps a name to (help, a function read at each scrape)."""

    def __init__(self, gauges: dict):
        self.requests = Counter("minirs_requests", "HTTP requests to the API by endpoint and outcome (ok, "
                                "bad_request, unauthorized, not_found, queue_full, canceled, error)")
        self.prompt_tokens = Counter("minirs_prompt_tokens", "prompt tokens of finished requests")
        self.generation_tokens = Counter("minirs_generation_tokens", "tokens generated (all choices)")
        self.ttft = Histogram("minirs_time_to_first_token_seconds", "from a request's arrival to its first token")
        self.itl = Histogram("minirs_inter_token_latency_seconds", "between two tokens of one choice")
        self.duration = Histogram("minirs_request_duration_seconds", "from a request's arrival to its end")
        self.gauges = gauges
        self.prompt_tokens.inc(0)  # a sample from the start
        self.generation_tokens.inc(0)

    def render(self) -> str:
        lines = []
        for m in (self.requests, self.prompt_tokens, self.generation_tokens):
            lines += m.render()
        for name, (help_text, read) in self.gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(read())}"]
        for h in (self.ttft, self.itl, self.duration):
            lines += h.render()
        return "\n".join(lines) + "\n"
