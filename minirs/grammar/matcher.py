"""One grammar matcher per constrained sequence, and the batch's allowed-token masks.

A Constraint follows its sequence: mask() before each draw (or fill_masks for a whole batch, in parallel and with
the GIL released, so it can run on a worker thread while the model's forward runs), advance(token) after it. The
end of sequence is allowed exactly where the grammar accepts; once the grammar is complete and admits nothing more
(is_stopped), advance says so and the sequence ends with "stop".
"""

import llguidance
import llguidance.numpy as llnp
import numpy as np

from minirs.errors import MinirsError
from minirs.grammar.compile import Grammar
from minirs.sampling.mask import ALL, mask_words

_EXECUTOR: llguidance.LLExecutor | None = None


class GrammarError(MinirsError):
    """llguidance's matcher rejected a token or hit one of its limits: the sequence cannot go on under its grammar."""


class Constraint:
    """The matcher of one sequence under grammar g."""

    def __init__(self, g: Grammar):
        self.grammar = g
        self.m = g.matcher()
        self.eos_ids = frozenset(g.ll_tokenizer.eos_tokens)

    def mask(self, vocab: int) -> np.ndarray:
        """The allowed-token words (mask_words(vocab),) uint32 for the next token."""
        return fill_masks([self], vocab)[0]

    def advance(self, token: int) -> bool:
        """Feed the drawn token; True once the grammar is complete (nothing but the end of sequence may follow)."""
        if not self.m.consume_token(int(token)):
            raise GrammarError(f"the {self.grammar.kind} grammar rejected token {token}: {self.m.get_error()}")
        return self.m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.m.is_accepting()


def fill_masks(constraints: list, vocab: int) -> np.ndarray:
    """(len(constraints), mask_words(vocab)) uint32 masks for the next token of each row: all ones where the entry
    is None (a free row). The matchers run in parallel in llguidance's thread pool, without the GIL."""
    global _EXECUTOR
    words = mask_words(vocab)
    rows = [(c.m, i) for i, c in enumerate(constraints) if c is not None]
    out = np.full((len(constraints), words), ALL, np.uint32)
    if not rows:
        return out
    ll_words = mask_words(constraints[rows[0][1]].grammar.ll_tokenizer.vocab_size)
    buf = np.zeros((len(constraints), ll_words), np.int32)  # llguidance writes its own vocabulary's width
    if len(rows) == 1:
        llnp.fill_next_token_bitmask(rows[0][0], buf, rows[0][1])
    else:
        if _EXECUTOR is None:
            _EXECUTOR = llguidance.LLExecutor()
        llnp.fill_next_token_bitmask_par(_EXECUTOR, rows, buf)
    w = min(words, ll_words)
    for _, i in rows:
        out[i, :w] = buf[i, :w].view(np.uint32)
        out[i, w:] = 0  # ids past the tokenizer's vocabulary: never allowed
    return out
