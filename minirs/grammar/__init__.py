"""Structured output: generation constrained by a grammar, through llguidance.

    g = compile_grammar("json_schema", '{"type": "object"}', tokenizer, field="grammar")   # RequestError if bad
    c = Constraint(g)                     # one per constrained sequence
    words = fill_masks([c, None], vocab)  # (2, mask_words(vocab)) uint32, the free row all ones
    finished = c.advance(token)           # the grammar is complete: only the end of sequence may follow

The grammar types are mistral.rs's: "regex", "json_schema" (the schema as a JSON string), "lark" and "llguidance"
(llguidance's own JSON grammar). llguidance does the parsing and the mask (written in Rust; it drops the GIL while
it computes); minirs only feeds it the tokenizer's token bytes (vocab.py) and applies the masks it gives
(minirs.sampling.mask; the GPU's kernels/cuda/mask.py).
"""

from minirs.grammar.compile import GRAMMAR_TYPES, Grammar, compile_grammar
from minirs.grammar.matcher import Constraint, fill_masks

__all__ = ["GRAMMAR_TYPES", "Constraint", "Grammar", "compile_grammar", "fill_masks"]
