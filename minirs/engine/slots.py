"""The KV slots of an engine: which are free, and what each free slot's cache still holds (prefix reuse).

A sequence gets a slot for its lifetime; when it ends, the slot remembers the ids whose keys and values it holds,
so a later prompt that starts with them (a chat's history) runs only the rest. The keys and values also depend on
the LoRA adapters the sequence ran with, so a slot serves only a prompt of the same adapter set.
"""


def reusable_prefix(config, cached: list[int], ids: list[int], max_chunk: int) -> int:
    """How many leading ids a KV cache slot holding `cached` (the ids at positions 0..) can serve instead of
    recomputing them; at least one id is always left to run (its logits are needed).

    Sliding-window rings keep only the last window + max_chunk positions, so rewinding further back than
    max_chunk would read overwritten rows: then nothing is reused.
    """
    n = 0
    limit = min(len(ids) - 1, len(cached))
    while n < limit and ids[n] == cached[n]:
        n += 1
    has_local = any(config.is_local(i) for i in range(config.n_layers))
    if has_local and len(cached) - n > max_chunk:
        return 0
    return n


class SlotPool:
    """max_seqs slots: free ones, and the ids each free slot's cache holds."""

    def __init__(self, config, max_seqs: int, max_chunk: int, row_invariant: bool, reuse: bool = True):
        self.config, self.max_chunk, self.row_invariant, self.reuse = config, max_chunk, row_invariant, reuse
        self.free = list(range(max_seqs - 1, -1, -1))
        self.held: list[list[int]] = [[] for _ in range(max_seqs)]  # ids at positions 0.. in the slot
        self.adapters: list = [None] * max_seqs  # the adapter set those ids ran with
        self.exact = [0] * max_seqs  # of those, how many came from whole, aligned prefill chunks

    def reusable(self, slot: int, ids: list[int]) -> int:
        """How many leading prompt ids the free slot's cache can serve. With row_invariant, only whole chunks that
        the earlier sequence prefilled exactly as this prompt's own chunks would run (same ids, same
        max_chunk-aligned boundaries), so the rows are bit-identical to recomputing them."""
        n = reusable_prefix(self.config, self.held[slot], ids, self.max_chunk)
        if self.row_invariant:
            n = min(n, self.exact[slot]) // self.max_chunk * self.max_chunk
        return n

    def take(self, prompt: list[int], n: int, adapters=None) -> tuple[list[int], int]:
        """n free slots for a job's sequences: the leader's is the one holding the longest prefix of the prompt
        (run with the same adapters). Returns (slots, how many prompt ids the leader's slot already holds)."""
        best, reuse = len(self.free) - 1, 0  # by default the slot pop() would give
        if self.reuse:
            for i, slot in enumerate(self.free):
                k = self.reusable(slot, prompt) if self.adapters[slot] == adapters else 0
                if k > reuse:
                    best, reuse = i, k
        slots = [self.free.pop(best)] + [self.free.pop() for _ in range(n - 1)]
        return slots, reuse

    def give_back(self, slot: int, ids: list[int], prompt_len: int, adapters=None) -> None:
        """A sequence ended: its slot holds ids (the cached ones), the first prompt_len of them its prompt, run with
        the adapter set `adapters`."""
        self.held[slot] = ids
        self.adapters[slot] = adapters
        # whole prefill chunks: the prompt's full max_chunk-aligned chunks, fed from 0 or after reuse
        self.exact[slot] = min(len(ids), prompt_len) // self.max_chunk * self.max_chunk
        self.free.append(slot)
