"""The model runner: one batch forward of the model, and what comes back to the host from it.

    runner = ModelRunner(model, cache, graphs=True, spare_slot=16)
    logits = runner.forward(tokens, slots, pos, want)            # eager: host logits of the wanted rows
    out = runner.decode(tokens, slots, pos, picks)               # a decode batch, from a captured graph

A prefill chunk that starts a sequence (positions 0..n-1 of one slot, its last row wanted, no adapters) is replayed
from a graph too, on a backend with graphs: padded to the next PREFILL_BUCKETS size (token 0 at the positions after
the chunk, which the causal mask hides from its rows), run in the spare slot that the graph was recorded with (so
the host's paths, cuBLAS attention included, see the same slot and positions every time), then moved to the
sequence's slot, a graph input (backend.move_prefill). Eager, a small model's prefill is bound by Python issuing
kernels: SmolLM2's pp512 ran at 0.26x llama.cpp's. Rows past the chunk in the sequence's slot hold padding until
the sequence's next tokens overwrite them; nothing reads them before. Only where backend.prefill_graphs (on CUDA:
MINIRS_PREFILL_GRAPHS=1, until it has run on a GPU).

decode pads the batch to the next GRAPH_BUCKETS size with dummy rows (token 0 at position 0 in a spare KV slot that
no sequence owns), so a handful of graphs serve every batch size. On a backend with graphs (CUDA) each bucket's
step is captured once (backend.capture: the runner hands it the step as a function, the kernels never see the
model) and replayed, ~1.4 us per kernel instead of ~30-50 us per Python launch. With `picks` (one
(temperature, top_k, top_p, min_p, coin) per row; temperature 0 = greedy) the token is chosen where the logits
are (argmax, or the device sampler with the host drawing the rows it leaves undecided) and only ids come back;
without, the step returns the rows' logits. With picks, `masks` (n, W) uint32 (a grammar's allowed tokens per row,
packed as minirs.sampling.mask packs them; all ones for a free row) go to the device with the step's inputs, and the
step sets the disallowed logits to -inf before argmax or the sampler reads them. Each step makes one host copy.
"""

import warnings

import numpy as np

from minirs.sampling import rows as sampling_rows
from minirs.sampling.mask import ALL, mask_words

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32)  # decode batch sizes captured as graphs (32: the GEMVs' largest batch)
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # prefill chunk lengths captured as graphs


class ModelRunner:
    def __init__(self, model, cache, graphs: bool | None = None, spare_slot: int | None = None):
        self.model, self.cache = model, cache
        self.backend = model.backend
        self.graphs = self.backend.graphs if graphs is None else graphs
        self.spare_slot = spare_slot  # the padding rows' KV slot (None: no padding, n must be a bucket size)
        self.exact = None  # the backend's own default until batch_invariant is called
        self._steps = {}  # (bucket, mode, exact) -> the captured step
        self._prefills = {}  # (bucket, exact) -> the captured prefill of a chunk that starts a sequence (False:
        # its capture failed, those chunks run eagerly)

    @property
    def device_sampling(self) -> bool:
        """Whether decode() can take picks and return ids (the backend chooses tokens where the logits are)."""
        return self.graphs and self.backend.device_sampling

    def batch_invariant(self, exact: bool) -> None:
        """exact: a row's bits must not depend on the other rows of its batch (set before each step: several
        engines may share one backend)."""
        self.exact = exact
        self.backend.batch_invariant(exact)

    def forward(self, tokens, slots, pos, want, coef=None) -> np.ndarray:
        """Host logits (len(want), vocab) of rows `want` of a forward of n (token, slot, position) rows, with the
        rows' LoRA coefficients coef (n, K) (None: no adapters): eager, or a chunk that starts a sequence replayed
        from its bucket's captured prefill."""
        size = self._prefill_bucket(slots, pos, want, coef)
        key = (size, self.exact)
        if size is None or self._prefills.get(key) is False:
            return self._eager(tokens, slots, pos, want, coef)
        try:
            return self._prefill(size, tokens, slots[0])
        except Exception as e:
            if key in self._prefills:
                raise  # a recorded step that fails is a real error
            logits = self._eager(tokens, slots, pos, want, coef)  # the request's own error, if it was not recording
            self._prefills[key] = False  # recording failed: this bucket runs eagerly from now on
            warnings.warn(f"minirs: prefill chunks of {size} rows could not be captured as a graph and run "
                          f"eagerly ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
            return logits

    def _eager(self, tokens, slots, pos, want, coef) -> np.ndarray:
        coef = None if coef is None else self.backend.array(np.asarray(coef, np.float32))
        logits = self.model.forward(np.asarray(tokens, np.int64), np.asarray(slots, np.int64),
                                    np.asarray(pos, np.int64), self.cache, logit_rows=list(want), coef=coef)
        return self.backend.to_numpy(logits)

    def _prefill_bucket(self, slots, pos, want, coef) -> int | None:
        """The bucket a forward is replayed in when it is a chunk that starts a sequence (one slot, positions 0..n-1,
        the last row's logits, no adapters) and the cache has rows for its padding; else None (eager)."""
        n = len(pos)
        if not (self.graphs and self.backend.prefill_graphs) or self.spare_slot is None or coef is not None \
                or self.model.xlora is not None or self.model.config.n_experts:  # MoE routing: ids on the host
            return None
        size = next((b for b in PREFILL_BUCKETS if b >= n), None)
        if size is None or size > min(self.cache.lengths) or list(want) != [n - 1]:
            return None
        slots, pos = np.asarray(slots), np.asarray(pos)
        if (slots != slots[0]).any() or (pos != np.arange(n)).any():
            return None
        return size

    def _prefill(self, size: int, tokens, slot: int) -> np.ndarray:
        """Host logits (1, vocab) of the chunk's last row, from the bucket's captured prefill."""
        key = (size, self.exact)
        step = self._prefills.get(key)
        if step is None:
            step = self._capture_prefill(size)
        n = len(tokens)
        inputs = np.zeros(size + 2, np.int64)  # ids (padded with token 0), then the slot, then the wanted row
        inputs[:n], inputs[size], inputs[size + 1] = tokens, slot, n - 1
        out = step(inputs)  # the first call runs the step eagerly, then records it: kept only once recorded
        self._prefills[key] = step
        return out

    def _capture_prefill(self, size: int):
        model, cache, be = self.model, self.cache, self.backend
        slots, pos = be.known_index(np.full(size, self.spare_slot)), be.known_index(np.arange(size))

        def step(inputs):
            logits = model.forward(inputs[:size], slots, pos, cache, logit_rows=inputs[size + 1:size + 2])
            for i in range(model.config.n_layers):
                kc, vc = cache.layer(i)
                be.move_prefill(kc, vc, self.spare_slot, inputs[size:size + 1], size)
            return logits

        return be.capture(step, lambda out, inputs: be.to_numpy(out), [np.zeros(size + 2, np.int64)])

    def hidden(self, tokens, slots, pos, coef) -> object:
        """The final-normed hidden states (n, dim) of an eager forward (X-LoRA's scaling pass), on the backend."""
        return self.model.forward(np.asarray(tokens, np.int64), np.asarray(slots, np.int64),
                                  np.asarray(pos, np.int64), self.cache, coef=self.backend.array(coef), hidden=True)

    def decode(self, tokens, slots, pos, picks: list | None = None, masks: np.ndarray | None = None,
               coef=None) -> np.ndarray:
        """One decode row per token: host logits (n, vocab), or with picks the chosen ids (n,), under masks (n, W)
        where given. Through a captured step when graphs are on, else eagerly. coef (n, K): the rows' LoRA
        coefficients (a graph input)."""
        n = len(tokens)
        if masks is not None and picks is None:
            raise ValueError("masks apply to the tokens chosen where the logits are (picks); the host masks its own")
        if not self.graphs:
            logits = self.forward(tokens, slots, pos, range(n), coef)
            if picks is None:
                return logits
            if masks is not None:
                self.backend.mask_logits(logits, np.ascontiguousarray(masks, np.uint32))
            return self.backend.finish_sampling(np.full(n, -1, np.int64), logits, _pack(picks, n))
        size = next(b for b in GRAPH_BUCKETS if b >= n)
        pad = size - n
        if pad and self.spare_slot is None:
            raise ValueError(f"a decode batch of {n} rows needs padding to {size}, and there is no spare KV slot")
        inputs = np.array([list(tokens) + [0] * pad, list(slots) + [self.spare_slot] * pad, list(pos) + [0] * pad],
                          np.int64)
        mode = "logits" if picks is None else "argmax" if all(p[0] == 0 for p in picks) else "sample"
        args = (inputs, _pack(picks, size)) if mode == "sample" else (inputs,)  # only a draw reads parameters
        if masks is not None:
            full = np.full((size, mask_words(self.model.config.vocab_size)), ALL, np.uint32)  # padding: all ones
            full[:n] = masks
            args += (full,)
        if coef is not None:  # padding rows take no adapter
            args += (np.concatenate([np.asarray(coef, np.float32), np.zeros((pad, coef.shape[1]), np.float32)]),)
        return self._step(size, mode, masks is not None, coef is not None)(*args)[:n]

    def captured(self, size: int, mode: str, masked: bool = False, lora: bool = False):
        """The captured step of a bucket size and mode ("logits", "argmax" or "sample"), with or without a mask
        input and LoRA coefficients, capturing it on first use (its replay() re-runs it on the device alone)."""
        return self._step(size, mode, masked, lora)

    def _step(self, size: int, mode: str, masked: bool = False, lora: bool = False):
        key = (size, mode, masked, lora, self.exact)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = self._capture(size, mode, masked, lora)
        return step

    def _capture(self, size: int, mode: str, masked: bool, lora: bool):
        model, cache, be = self.model, self.cache, self.backend
        sample = mode == "sample"

        # device inputs: (3, size) ids / slots / positions, then (size, 5) parameters if it samples, then
        # (size, W) uint32 allowed-token words if masked, then (size, K) LoRA coefficients if any row has adapters
        def step(inputs, *rest):
            prm = rest[0] if sample else None
            words = rest[int(sample)] if masked else None
            coef = rest[-1] if lora else None
            logits = model.forward(inputs[0], inputs[1], inputs[2], cache, coef=coef)
            if masked:
                be.mask_logits(logits, words)
            if mode == "argmax":
                return be.argmax(logits), logits
            if sample:
                return be.sample_ids(logits, prm), logits
            return None, logits

        def finish(out, inputs, *rest) -> np.ndarray:
            ids, logits = out
            if mode == "logits":
                return be.to_numpy(logits)
            ids = be.to_numpy(ids)
            return be.finish_sampling(ids, logits, rest[0]) if sample else ids

        shapes = [np.zeros((3, size), np.int64)] + ([np.zeros((size, 5), np.float64)] if sample else [])
        shapes += [np.zeros((size, mask_words(model.config.vocab_size)), np.uint32)] if masked else []
        shapes += [np.zeros((size, model.lora.width), np.float32)] if lora else []
        return be.capture(step, finish, shapes)


def _pack(picks: list, n: int) -> np.ndarray:
    """(n, 5) sampling parameters: greedy rows and padding take top_k = 1 (the argmax)."""
    temp, top_k, top_p, min_p, coin = np.ones(n), np.ones(n, np.int64), np.ones(n), np.zeros(n), np.zeros(n)
    for row, (t, k, p, m, c) in enumerate(picks):
        if t > 0:
            temp[row], top_k[row], top_p[row], min_p[row], coin[row] = t, k, p, m, c
    return sampling_rows.pack(temp, top_k, top_p, min_p, coin)
