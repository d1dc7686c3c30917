"""The engine: requests in, tokens out, many sequences batched through one model.

| file | holds |
| --- | --- |
| request.py | Job (a request), Sequence (one continuation: its slot, sampling, text and stops), Delta, GenParams |
| scheduler.py | Engine: the engine thread, admission, step planning, failures confined to their job |
| slots.py | the KV slots and prefix reuse |
| runner.py | ModelRunner: one batch forward, eager or from a captured graph, and its one host copy |
| kv_cache.py | the ring-buffer KV cache |
"""

from minirs.engine.request import Delta, GenParams, Job, Sequence
from minirs.engine.runner import GRAPH_BUCKETS, ModelRunner
from minirs.engine.scheduler import Engine

__all__ = ["GRAPH_BUCKETS", "Delta", "Engine", "GenParams", "Job", "ModelRunner", "Sequence"]
