"""KV cache: one ring buffer per sequence slot and layer.

Layer i keeps keys and values as (n_slots, n_kv_heads, L_i, head_dim); the key of position p lives at row
p % L_i. Full-attention layers get L = context length; sliding-window layers need only the window plus the
longest prefill chunk (the chunk's own keys are written before its queries read), so a small ring serves an
unbounded context for them.
"""


class KVCache:
    def __init__(self, config, backend, n_slots: int, ctx_len: int, max_chunk: int, dtype=None):
        self.n_slots, self.ctx_len, self.max_chunk = n_slots, ctx_len, max_chunk
        dtype = dtype or backend.kv_dtype  # float32 on the CPU, float16 on the GPU
        self.lengths = []
        self.k, self.v = [], []
        for i in range(config.n_layers):
            w = config.window(i)
            L = min(ctx_len, w + max_chunk) if w else ctx_len
            shape = (n_slots, config.n_kv_heads, L, config.head_dim)
            self.k.append(backend.zeros(shape, dtype))
            self.v.append(backend.zeros(shape, dtype))
            self.lengths.append(L)

    def layer(self, i: int):
        return self.k[i], self.v[i]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) * 2

    def copy_slot(self, src: int, dst: int) -> None:
        """Slot dst's keys and values become a copy of slot src's (the sequences of one prompt share its prefill)."""
        for k, v in zip(self.k, self.v):
            k[dst] = k[src]
            v[dst] = v[src]
